package main

import (
	"context"
	"os"

	"fmt"
	"github.com/banger/banger/image"
	"github.com/banger/banger/layout"
	"github.com/cpuguy83/go-md2man/v2/md2man"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// completeCommand is the hidden command the completion scripts run:
// `banger __complete -- WORD...` prints the candidates for the last WORD
// (empty when the cursor is on a new word), one per line. banger answers it
// itself, from the same command tree and parser as a real run, so that
// flags after operands complete as they parse.
const completeCommand = "__complete"

const bashCompletion = `# bash completion for banger; load with: source <(banger completion bash)
_banger_complete() {
  local IFS=$'\\n'
  COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" __complete -- "${COMP_WORDS[@]:1:$COMP_CWORD}" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
complete -o bashdefault -o default -F _banger_complete banger
`

const zshCompletion = `#compdef banger
# zsh completion for banger; load with: source <(banger completion zsh)
_banger() {
  local -a opts
  opts=("${(@f)$(${words[1]} __complete -- ${words[2,CURRENT]} 2>/dev/null)}")
  if [[ -n "${opts[1]}" ]]; then
    compadd -a opts
  else
    _files
  fi
}
compdef _banger banger
`

const fishCompletion = `# fish completion for banger; load with: banger completion fish | source
complete -c banger -f -a '(banger __complete -- (commandline -opc)[2..] (commandline -ct) 2>/dev/null)'
`

// runComplete prints the completion candidates for args (after an optional
// "--"); it never fails, since a shell has nothing to do with an error.
func runComplete(ctx context.Context, app *cli.App, args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	for _, c := range complete(ctx, app, args) {
		fmt.Fprintln(app.Writer, c)
	}
	return exitOK
}

// complete returns the candidates for the last of words, given the words
// before it.
func complete(ctx context.Context, app *cli.App, words []string) []string {
	cur := ""
	if len(words) > 0 {
		cur, words = words[len(words)-1], words[:len(words)-1]
	}
	line, err := parseCommandLine(app, words)
	if err != nil {
		return nil
	}
	leaf := line.leaf()
	flags, children := app.Flags, app.Commands
	if leaf != nil {
		flags, children = leaf.Flags, leaf.Subcommands
	}
	var all []string
	switch {
	case strings.HasPrefix(cur, "-"):
		for _, f := range append(flags, cli.HelpFlag) {
			for _, n := range f.Names() {
				if len(n) == 1 {
					all = append(all, "-"+n)
				} else {
					all = append(all, "--"+n)
				}
			}
		}
	case len(words) > 0 && isFlagArg(words[len(words)-1]) && !strings.Contains(words[len(words)-1], "=") &&
		takesValue(app, line.path, strings.TrimLeft(words[len(words)-1], "-")):
		return nil // a flag's value: let the shell complete files
	case leaf == nil || len(children) > 0:
		for _, c := range children {
			if !c.Hidden {
				all = append(all, c.Name)
			}
		}
		if leaf == nil {
			all = append(all, "help")
		}
	case leaf.Name == "completion":
		all = []string{"bash", "zsh", "fish"}
	case leaf.Name == "rm" || leaf.Name == "inspect":
		all = imageNames(ctx, line)
	}
	var out []string
	for _, c := range all {
		if strings.HasPrefix(c, cur) {
			out = append(out, c)
		}
	}
	return out
}

// imageNames lists the images in the store the command line points at,
// for completing rm and inspect.
func imageNames(ctx context.Context, line commandLine) []string {
	l, err := layout.Resolve(layout.Source{
		CacheDirFlag: flagValue(line, "cache-dir"),
		DataDirFlag:  flagValue(line, "data-dir"),
		Getenv:       os.Getenv,
		UID:          os.Getuid(),
	})
	if err != nil {
		return nil
	}
	images, err := image.NewStore(l.ImagesDir).List(ctx)
	if err != nil {
		return nil
	}
	var names []string
	for _, img := range images {
		names = append(names, img.Name)
	}
	return names
}

// flagValue returns the last value given to --name on the command line.
func flagValue(line commandLine, name string) string {
	words := append(append([]string{}, line.appFlags...), line.flags...)
	value := ""
	for i, w := range words {
		n, v, ok := strings.Cut(strings.TrimLeft(w, "-"), "=")
		if !isFlagArg(w) || n != name {
			continue
		}
		if ok {
			value = v
		} else if i+1 < len(words) {
			value = words[i+1]
		}
	}
	return value
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		UsageText: "banger completion bash|zsh|fish\n\nExample:\n   source <(banger completion bash)\n   banger completion fish > ~/.config/fish/completions/banger.fish",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1, "one shell: bash, zsh or fish"); err != nil {
				return err
			}
			switch c.Args().First() {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			case "fish":
				_, err := fmt.Fprint(c.App.Writer, fishCompletion)
				return err
			}
			return usageErr{fmt.Errorf("unknown shell %q: want bash, zsh or fish", c.Args().First())}
		},
	}
}

func manCommand() *cli.Command {
	return &cli.Command{
		Name:      "man",
		Usage:     "print banger's man page (roff), generated from its command definitions",
		UsageText: "banger man\n\nExample:\n   banger man > /usr/local/share/man/man1/banger.1 && man banger",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 0, 0, "no arguments"); err != nil {
				return err
			}
			page, err := manPage(c.App)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}

// manSections complete the page urfave generates from the command tree
// (NAME, SYNOPSIS, DESCRIPTION, COMMANDS) with what a man page reader
// looks for next; the README's tables say the same.
const manSections = `
# EXIT STATUS

**0** success, including nothing to do (pruning a missing cache)

**1** failure or partial failure; one line on stderr says what failed, why, and what to do

**2** usage error: bad flag, argument count, unknown command, reference, transport or platform

**75** the cache lock or the image store lock is busy and --no-wait was given or --wait ran out (EX_TEMPFAIL: try again later)

**130** interrupted (SIGINT, SIGTERM)

# ENVIRONMENT

**BANGER_CACHE_DIR** cache root, when --cache-dir is not given

**BANGER_DATA_DIR** data root holding images/, when --data-dir is not given

**XDG_CACHE_HOME**, **XDG_DATA_HOME**, **HOME** the default cache and data roots of a user other than root

**REGISTRY_AUTH_FILE**, **XDG_RUNTIME_DIR**, **DOCKER_CONFIG** where registry credentials are looked up, after --authfile: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, then Docker's config.json with its credential helpers

**CONTAINERS_REGISTRIES_CONF** the registries.conf to read (mirrors, rewrites, blocks, insecure registries), when --registries-conf is not given

**BANGER_STALL_TIMEOUT** how long a registry connection may make no progress before the pull fails, as a Go duration (default 30s)

**BANGER_RETRY_BACKOFF** the pause before a blob's second download attempt, doubling for each further one, as a Go duration (default 250ms)

**GOGC** the Go garbage collector's target heap growth, in percent (banger's default 50, the Go runtime's 100)

**COLUMNS** the terminal's width, when the terminal does not say

**HTTPS_PROXY**, **HTTP_PROXY**, **NO_PROXY** the proxy for registry connections

# FILES

**/var/cache/banger**, **$XDG_CACHE_HOME/banger**, **~/.cache/banger** the cache root, for root and for other users

**CACHE/oci/** the blob cache, tagged with CACHEDIR.TAG; **CACHE/oci/blobs/sha256/HEX** the blobs; **CACHE/oci/tmp/** blobs being written

**CACHE/oci.lock**, **CACHE/oci.lock.gate** the lock file and its gate, outside the directory prune renames

**/var/lib/banger**, **$XDG_DATA_HOME/banger**, **~/.local/share/banger** the data root, for root and for other users

**DATA/images/** the image store: flattened images (rootfs.tar) and their records; see banger image ls and banger df

**~/.config/containers/registries.conf**, **/etc/containers/registries.conf** and the **registries.conf.d/*.conf** drop-ins beside it: registry mirrors and rewrites (containers-registries.conf(5))

**/etc/containers/certs.d/HOST[:PORT]/**, **~/.config/containers/certs.d/HOST[:PORT]/**, **/etc/docker/certs.d/HOST[:PORT]/** CAs (*.crt) and client certificates (*.cert, *.key) for a registry (containers-certs.d(5))

# SEE ALSO

README.md in banger's source, **docker-image-pull**(1), **skopeo-copy**(1), **umoci-unpack**(1)
`

// manPage renders banger's man page in section 1.
func manPage(app *cli.App) (string, error) {
	md, err := app.ToMarkdown()
	if err != nil {
		return "", err
	}
	md = "% " + app.Name + " 1\n\n" + strings.TrimPrefix(md, "% "+app.Name+" 8\n")
	return string(md2man.Render([]byte(md + manSections))), nil
}

// version is banger's version and the versions of the modules it is built
// from, as the Go toolchain recorded them.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "-" + s.Value[:12]
			}
		}
	}
	deps := []string{info.GoVersion}
	for _, d := range info.Deps {
		switch d.Path {
		case "github.com/google/go-containerregistry", "github.com/urfave/cli/v2", "github.com/gofrs/flock", "github.com/dustin/go-humanize":
			deps = append(deps, strings.TrimPrefix(d.Path, "github.com/")+" "+d.Version)
		}
	}
	return v + " (" + strings.Join(deps, ", ") + ")"
}
