package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// urfave/cli/v2 stops parsing flags at a command's first operand, and its
// maintainers declined to change that (urfave/cli#976, #1177). docker,
// crane, skopeo, kubectl and git users type flags after operands
// (`banger image pull REF --name x`), so banger reads the whole command
// line itself before urfave sees it: it finds the command, and hands urfave
// the same words with every flag moved in front of the operands and a `--`
// before them. Unknown commands and `help` are handled here too, so a
// mistyped command never does nothing and exits 0.

// commandLine is a command line resolved against the command tree.
type commandLine struct {
	path     []*cli.Command // the commands named, outermost first
	appFlags []string       // flags that only the app defines (--version)
	flags    []string       // flags for the innermost command, with values
	operands []string
	help     bool // `banger help ...`: show the innermost command's help
}

// leaf is the innermost command named, or nil for the app itself.
func (l commandLine) leaf() *cli.Command {
	if len(l.path) == 0 {
		return nil
	}
	return l.path[len(l.path)-1]
}

// argv is the command line as urfave should parse it.
func (l commandLine) argv(prog string) []string {
	out := append([]string{prog}, l.appFlags...)
	for _, c := range l.path {
		out = append(out, c.Name)
	}
	out = append(out, l.flags...)
	if l.help {
		return append(out, "--help")
	}
	if leaf := l.leaf(); leaf != nil && len(leaf.Subcommands) == 0 {
		out = append(out, "--")
	}
	return append(out, l.operands...)
}

// parseCommandLine resolves args (without the program name) against app's
// command tree. It fails with a usage error naming an unknown command and
// the closest known one.
func parseCommandLine(app *cli.App, args []string) (commandLine, error) {
	var l commandLine
	children := app.Commands
	isLeaf := func() bool { leaf := l.leaf(); return leaf != nil && len(leaf.Subcommands) == 0 }
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			if !isLeaf() && i+1 < len(args) {
				return l, unknownCommand(app, l.path, args[i+1])
			}
			l.operands = append(l.operands, args[i+1:]...)
			break
		}
		if isFlagArg(arg) {
			name, hasValue := flagName(arg)
			if name == "help" || name == "h" {
				// Help for the command named, whatever the operands: urfave
				// would take the first operand for a help topic.
				l.help = true
				continue
			}
			if !hasValue && takesValue(app, l.path, name) {
				if i+1 == len(args) {
					return l, usageErr{fmt.Errorf("flag needs an argument: %s", arg)}
				}
				// One word, so that no later step can take the value for
				// an operand or a command.
				i++
				arg += "=" + args[i]
			}
			words := []string{arg}
			if l.leaf() == nil || !definesFlag(l.leaf().Flags, name) && appFlag(app, name) {
				// Before any command, or a flag the app has and the command
				// lacks (`banger image ls --version`).
				l.appFlags = append(l.appFlags, words...)
				continue
			}
			l.flags = append(l.flags, words...)
			continue
		}
		if isLeaf() {
			l.operands = append(l.operands, arg)
			continue
		}
		if arg == "help" && !l.help {
			l.help = true // `banger help image cache`
			continue
		}
		cmd := findCommand(children, arg)
		if cmd == nil {
			return l, unknownCommand(app, l.path, arg)
		}
		l.path = append(l.path, cmd)
		children = cmd.Subcommands
	}
	return l, nil
}

// isFlagArg says whether arg is a flag; "-" alone is an operand (stdin).
func isFlagArg(arg string) bool {
	return len(arg) > 1 && arg[0] == '-'
}

// flagName returns the name in "--name=value", "-n" or "--name" and whether
// the value came with it.
func flagName(arg string) (name string, hasValue bool) {
	name = strings.TrimLeft(arg, "-")
	name, _, hasValue = strings.Cut(name, "=")
	return name, hasValue
}

func definesFlag(flags []cli.Flag, name string) bool {
	return lookupFlag(flags, name) != nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}

// appFlag says whether name is one of the app's own flags by its long
// name; short ones such as -v mean something else inside a command.
func appFlag(app *cli.App, name string) bool {
	return len(name) > 1 && (name == "version" || definesFlag(app.Flags, name))
}

// takesValue says whether the flag called name takes a value, looking at
// the innermost command named so far and then at the commands below it
// (flags may come before the subcommand that defines them).
func takesValue(app *cli.App, path []*cli.Command, name string) bool {
	if name == "version" {
		return false
	}
	var f cli.Flag
	if len(path) == 0 {
		f = lookupFlag(app.Flags, name)
		if f == nil {
			f = lookupFlagBelow(app.Commands, name)
		}
	} else {
		leaf := path[len(path)-1]
		f = lookupFlag(leaf.Flags, name)
		if f == nil {
			f = lookupFlagBelow(leaf.Subcommands, name)
		}
		if f == nil && appFlag(app, name) {
			f = lookupFlag(app.Flags, name)
		}
	}
	if f == nil {
		return false // unknown: urfave reports it, and a value-less guess keeps operands
	}
	if df, ok := f.(cli.DocGenerationFlag); ok {
		return df.TakesValue()
	}
	return true
}

func lookupFlagBelow(cmds []*cli.Command, name string) cli.Flag {
	for _, c := range cmds {
		if f := lookupFlag(c.Flags, name); f != nil {
			return f
		}
		if f := lookupFlagBelow(c.Subcommands, name); f != nil {
			return f
		}
	}
	return nil
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.Name == name || slices.Contains(c.Aliases, name) {
			return c
		}
	}
	return nil
}

// dockerHabits maps docker commands that banger spells differently to
// banger's spelling. Commands that exist deeper in banger's tree under the
// same name (`ls`, `inspect`, `du`) are found by searching the tree.
var dockerHabits = map[string]string{
	"images":  "banger image ls",
	"rmi":     "banger image rm",
	"prune":   "banger image cache prune",
	"version": "banger --version",
}

// unknownCommand explains an unknown command word at the level reached by
// path, with the closest known command.
func unknownCommand(app *cli.App, path []*cli.Command, word string) error {
	where := "banger"
	children := app.Commands
	for _, c := range path {
		where += " " + c.Name
		children = c.Subcommands
	}
	var names []string
	for _, c := range children {
		if !c.Hidden {
			names = append(names, c.Name)
		}
	}
	if len(path) == 0 {
		names = append(names, "help")
	}
	msg := fmt.Sprintf("unknown command %q", word)
	if len(path) > 0 {
		msg += fmt.Sprintf(" for %q", where)
	}
	if habit := dockerHabits[word]; len(path) == 0 && habit != "" {
		msg += fmt.Sprintf("; banger spells it %q;", habit)
	} else if s := closest(word, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	} else if full := findInTree(children, word, where); full != "" {
		msg += fmt.Sprintf("; did you mean %q?", full)
	} else {
		msg += ";"
	}
	return usageErr{fmt.Errorf("%s see %s --help", msg, where)}
}

// findInTree returns the full command line of a command called name below
// cmds, such as "banger image ls" for "ls".
func findInTree(cmds []*cli.Command, name, prefix string) string {
	for _, c := range cmds {
		if c.Hidden {
			continue
		}
		if c.Name == name {
			return prefix + " " + c.Name
		}
	}
	for _, c := range cmds {
		if found := findInTree(c.Subcommands, name, prefix+" "+c.Name); found != "" {
			return found
		}
	}
	return ""
}

// closest returns the name nearest to word by edit distance, if it is near
// enough to be a typo: at most one edit for short words, two for longer.
func closest(word string, names []string) string {
	best, bestDist := "", 3
	if len(word) <= 4 {
		bestDist = 2
	}
	for _, n := range names {
		if d := editDistance(word, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours ("imgae").
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
