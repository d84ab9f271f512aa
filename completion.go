package main

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shell scripts that ask `banger ... --generate-bash-completion` for
// candidates: urfave/cli's own autocomplete scripts (its autocomplete/
// directory), with the program name filled in.
const bashCompletion = `# bash completion for banger; load with: source <(banger completion bash)
_banger_complete() {
  local cur words
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=("${COMP_WORDS[@]:0:$COMP_CWORD}")
  local opts
  if [[ "$cur" == "-"* ]]; then
    opts=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
  return 0
}
complete -o bashdefault -o default -F _banger_complete banger
`

const zshCompletion = `#compdef banger
# zsh completion for banger; load with: source <(banger completion zsh)
_banger() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _banger banger
`

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
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				_, err = fmt.Fprint(c.App.Writer, script)
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
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
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
