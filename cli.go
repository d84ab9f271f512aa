package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/banger/banger/cache"
	"github.com/banger/banger/image"
	"github.com/banger/banger/layout"
	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// Exit codes, documented in the README and in `banger --help`.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitLockBusy    = 75 // EX_TEMPFAIL: try again later
	exitInterrupted = 130
)

const exitCodesHelp = `EXIT CODES:
   0    success (including nothing to do)
   1    failure
   2    usage error (bad flag, argument, reference or platform)
   75   cache or image store lock busy (--no-wait, or --wait timed out): try again later
   130  interrupted`

// errUsage marks command-line mistakes, which exit 2.
var errUsage = errors.New("usage")

type usageErr struct{ error }

func (usageErr) Is(target error) bool { return target == errUsage }
func (e usageErr) Unwrap() error      { return e.error }

// run executes banger with args and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	out := &stdoutWriter{w: stdout, tty: isTerminal(stdout)}
	app := newApp(out, stderr)
	if len(args) > 1 && args[1] == completeCommand {
		return runComplete(ctx, app, args[2:])
	}
	line, err := parseCommandLine(app, args[1:])
	if err == nil {
		err = app.RunContext(ctx, line.argv(args[0]))
	}
	if err == nil {
		return exitOK
	}
	code := exitCode(ctx, err)
	msg := "interrupted; nothing half-done was kept"
	if code != exitInterrupted {
		msg = image.Escape(oneLine(err.Error()))
		if h := hint(err); h != "" {
			msg += "; " + h
		}
	}
	fmt.Fprintf(stderr, "banger: %s\n", msg)
	// A script reading --json output gets a document even when the command
	// failed before printing its own.
	if out.n == 0 && wantsJSON(line, args[1:]) {
		printJSON(out, struct {
			Error    string `json:"error"`
			ExitCode int    `json:"exit_code"`
		}{msg, code})
	}
	return code
}

// wantsJSON says whether --json was given: from the parsed command line, or
// from the raw words when parsing failed.
func wantsJSON(line commandLine, args []string) bool {
	words := line.flags
	if line.leaf() == nil && len(line.operands) == 0 {
		words = args
		if i := slices.Index(words, "--"); i >= 0 {
			words = words[:i]
		}
	}
	for _, w := range words {
		if w == "--json" || w == "--json=true" || w == "-json" {
			return true
		}
	}
	return false
}

// stdoutWriter counts what a command printed, so that run knows whether a
// failed --json command still owes its caller a document.
type stdoutWriter struct {
	w   io.Writer
	tty bool
	n   int64
}

// Write escapes control characters other than newline and tab, so that no
// name, reference or path that a source chose can drive the terminal
// (image.Escape's rules; JSON output has none: encoding/json escapes them).
func (s *stdoutWriter) Write(p []byte) (int, error) {
	out := p
	if esc := escapeText(string(p)); esc != string(p) {
		out = []byte(esc)
	}
	n, err := s.w.Write(out)
	s.n += int64(n)
	if err == nil && n == len(out) {
		n = len(p)
	}
	return n, err
}

// escapeText is image.Escape for each run of text between newlines and tabs.
func escapeText(s string) string {
	var b strings.Builder
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' || s[i] == '\t' {
			b.WriteString(image.Escape(s[start:i]))
			b.WriteByte(s[i])
			start = i + 1
		}
	}
	b.WriteString(image.Escape(s[start:]))
	return b.String()
}

// table aligns tab-separated cells as tabwriter does, escaping each cell
// first (escapeText): stdout's writer escapes too, but only after the
// columns were aligned on the unescaped text. Each Write must hold whole
// cells, as one Fprintf of a row does.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table { return &table{tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)} }

func (t *table) Write(p []byte) (int, error) {
	if _, err := io.WriteString(t.tw, escapeText(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *table) Flush() error { return t.tw.Flush() }

func exitCode(ctx context.Context, err error) int {
	switch {
	case errors.Is(err, errUsage), errors.Is(err, image.ErrInvalidReference), errors.Is(err, image.ErrInvalidPlatform), errors.Is(err, image.ErrInvalidName),
		errors.Is(err, layout.ErrOverlap):
		return exitUsage
	case errors.Is(err, cache.ErrLockBusy):
		return exitLockBusy
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return exitInterrupted
	}
	return exitFailure
}

// oneLine keeps every failure to a single line on stderr.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "banger",
		Usage: "import OCI container images as flattened root filesystems, and keep their download cache in check",
		Description: `banger pulls an image, passes every layer blob through a verified,
content-addressed cache, and flattens the layers into one root filesystem tar
in its image store. There is no daemon: each run resolves its own paths and
coordinates with other runs through an advisory lock file.

Example:
   banger image pull alpine:3.20
   banger image cache prune`,
		Version:         version(),
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		// Errors are printed and mapped to exit codes by run, in one place.
		ExitErrHandler:        func(*cli.Context, error) {},
		CustomAppHelpTemplate: cli.AppHelpTemplate + "\n" + exitCodesHelp + "\n",
		Flags:                 pathFlags(),
		Commands: []*cli.Command{
			envCommand(),
			completionCommand(),
			manCommand(),
			dfCommand(),
			systemCommand(),
			{
				Name:  "image",
				Usage: "pull, list, inspect and remove images; manage the blob cache",
				Subcommands: []*cli.Command{
					pullCommand(),
					lsCommand(),
					inspectCommand(),
					rmCommand(),
					imagePruneCommand(),
					{
						Name:        "cache",
						Usage:       "measure and prune the blob cache",
						Subcommands: []*cli.Command{duCommand(), pruneCommand()},
					},
				},
			},
		},
	}
	app.OnUsageError = onUsageError
	setUsageErrors(app.Commands)
	return app
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageErr{fmt.Errorf("%w; see `%s --help`", err, c.Command.HelpName)}
}

// setUsageErrors makes every command report flag mistakes as usage errors
// (exit 2), reject unknown subcommands instead of printing help and exiting
// 0, and list the exit codes in its --help.
func setUsageErrors(cmds []*cli.Command) {
	for _, cmd := range cmds {
		cmd.OnUsageError = onUsageError
		cmd.CustomHelpTemplate = cli.CommandHelpTemplate + "\n" + exitCodesHelp + "\n"
		if len(cmd.Subcommands) > 0 {
			cmd.CustomHelpTemplate = cli.SubcommandHelpTemplate + "\n" + exitCodesHelp + "\n"
			cmd.HideHelpCommand = true
			cmd.Action = func(c *cli.Context) error {
				if c.Args().Present() {
					return usageErr{fmt.Errorf("unknown command %q; see `%s --help`", c.Args().First(), c.Command.HelpName)}
				}
				return cli.ShowSubcommandHelp(c)
			}
			setUsageErrors(cmd.Subcommands)
		}
	}
}

// pathFlags are accepted before or after the command name.
func pathFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cache-dir", Usage: "cache root (default: $BANGER_CACHE_DIR, /var/cache/banger as root, else $XDG_CACHE_HOME/banger or ~/.cache/banger)"},
		&cli.StringFlag{Name: "data-dir", Usage: "data root holding images/ (default: $BANGER_DATA_DIR, /var/lib/banger as root, else $XDG_DATA_HOME/banger or ~/.local/share/banger)"},
	}
}

func lockFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "wait", Usage: "give up after waiting `DURATION` for the cache lock (exit 75); 0 waits as long as it takes"},
		&cli.BoolFlag{Name: "no-wait", Usage: "fail at once (exit 75) if another banger holds the cache lock"},
	}
}

// jsonFlag is a constructor, like pathFlags: urfave records a flag's
// value in the flag itself, so commands must not share one.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print one JSON document on stdout (one line unless stdout is a terminal)"}
}

func withFlags(groups ...[]cli.Flag) []cli.Flag {
	var all []cli.Flag
	for _, g := range groups {
		all = append(all, g...)
	}
	return all
}

// lookupString returns the innermost value of a flag that is set, so that
// --cache-dir works before or after the command name.
func lookupString(c *cli.Context, name string) string {
	for _, lc := range c.Lineage() {
		if lc.Command != nil && lc.IsSet(name) {
			return lc.String(name)
		}
	}
	return c.String(name)
}

func resolveLayout(c *cli.Context) (layout.Layout, error) {
	return layout.Resolve(layout.Source{
		CacheDirFlag: lookupString(c, "cache-dir"),
		DataDirFlag:  lookupString(c, "data-dir"),
		Getenv:       os.Getenv,
		UID:          os.Getuid(),
	})
}

func openCache(c *cli.Context, l layout.Layout) *cache.Cache {
	return cache.New(l.CacheDir, l.LockFile, cacheOptions(c))
}

// cacheOptions is the cache's lock wait policy (--wait, --no-wait) and
// where it reports, for every command that opens the cache.
func cacheOptions(c *cli.Context) cache.Options {
	stderr := c.App.ErrWriter
	return cache.Options{
		Wait:   c.Duration("wait"),
		NoWait: c.Bool("no-wait"),
		Notice: func(msg string) { fmt.Fprintf(stderr, "banger: %s\n", image.Escape(msg)) },
		Warn:   func(msg string) { fmt.Fprintf(stderr, "banger: warning: %s\n", image.Escape(msg)) },
	}
}

// Environment variables that change how long a pull waits on a registry,
// for a link slower or faster than the defaults suit (and for tests, which
// cannot wait 30 s for each stall).
const (
	envStallTimeout = "BANGER_STALL_TIMEOUT"
	envRetryBackoff = "BANGER_RETRY_BACKOFF"
)

// pullWaits are a pull's waits on a registry; zero means the default.
type pullWaits struct {
	stall   time.Duration // image.PullOptions.StallTimeout
	backoff time.Duration // cache.Options.RetryBackoff
}

// resolvePullWaits reads $BANGER_STALL_TIMEOUT and $BANGER_RETRY_BACKOFF
// through getenv. An unset or empty variable keeps the default; anything
// but a positive Go duration is a usage error naming the variable.
func resolvePullWaits(getenv func(string) string) (pullWaits, error) {
	var w pullWaits
	for _, v := range []struct {
		name string
		dst  *time.Duration
		def  string
	}{
		{envStallTimeout, &w.stall, image.DefaultStallTimeout.String()},
		{envRetryBackoff, &w.backoff, cache.DefaultRetryBackoff.String()},
	} {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return pullWaits{}, usageErr{fmt.Errorf("$%s is %q, not a positive duration such as 5s or 500ms; unset it for the default (%s)", v.name, s, v.def)}
		}
		*v.dst = d
	}
	return w, nil
}

// openStore returns the image store with the same lock wait policy as the
// cache (--wait, --no-wait) where the command has those flags.
func openStore(c *cli.Context, l layout.Layout) *image.Store {
	stderr := c.App.ErrWriter
	return image.NewStore(l.ImagesDir, image.StoreOptions{
		Wait:   c.Duration("wait"),
		NoWait: c.Bool("no-wait"),
		Notice: func(msg string) { fmt.Fprintf(stderr, "banger: %s\n", image.Escape(msg)) },
	})
}

func needArgs(c *cli.Context, min, max int, what string) error {
	n := c.Args().Len()
	if n < min || (max >= 0 && n > max) {
		return usageErr{fmt.Errorf("%s needs %s; see `%s --help`", c.Command.HelpName, what, c.Command.HelpName)}
	}
	return nil
}

// withLayout wraps a command's body: it checks the number of arguments
// and resolves the layout, which every command needs first.
func withLayout(min, max int, what string, body func(c *cli.Context, l layout.Layout) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if err := needArgs(c, min, max, what); err != nil {
			return err
		}
		l, err := resolveLayout(c)
		if err != nil {
			return err
		}
		return body(c, l)
	}
}

// printJSON writes v as one JSON document: indented for a person at a
// terminal, on one line otherwise, so that a log of --json runs can be read
// line by line (`jq -c .`, JSON Lines).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	if s, ok := w.(*stdoutWriter); ok && s.tty {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// printTemplate executes tmpl on v's JSON fields, as docker inspect
// --format does, and ends the line.
func printTemplate(w io.Writer, tmpl *template.Template, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		return err
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, fields); err != nil {
		return usageErr{fmt.Errorf("--format: %w", err)}
	}
	_, err = fmt.Fprintln(w, b.String())
	return err
}

func envCommand() *cli.Command {
	return &cli.Command{
		Name:  "env",
		Usage: "print the resolved paths, like `go env`",
		UsageText: `banger env [--json] [NAME...]

With NAMEs, prints just those values, one a line (with --json, an object of
them). BANGER_CACHE_DIR and BANGER_DATA_DIR are environment variables banger
reads; the others are derived from them and are not read from the
environment.

Example:
   banger env
   banger env BANGER_LOCK_FILE
   BANGER_CACHE_DIR=/tmp/c banger env --json`,
		Flags: withFlags(pathFlags(), []cli.Flag{jsonFlag()}),
		Action: withLayout(0, -1, "only variable NAMEs", func(c *cli.Context, l layout.Layout) error {
			p := openCache(c, l).Paths()
			vars := []struct {
				name, value string
				settable    bool
			}{
				{"BANGER_CACHE_DIR", l.CacheRoot, true},
				{"BANGER_DATA_DIR", l.DataRoot, true},
				{"BANGER_OCI_DIR", p.Dir, false},
				{"BANGER_BLOBS_DIR", p.Blobs, false},
				{"BANGER_TMP_DIR", p.Tmp, false},
				{"BANGER_LOCK_FILE", p.Lock, false},
				{"BANGER_GATE_FILE", p.Gate, false},
				{"BANGER_IMAGES_DIR", l.ImagesDir, false},
			}
			if c.Args().Present() {
				values := map[string]string{}
				var known []string
				for _, v := range vars {
					values[v.name] = v.value
					known = append(known, v.name)
				}
				// Every name is checked before anything is printed.
				for _, name := range c.Args().Slice() {
					if _, ok := values[name]; !ok {
						return usageErr{fmt.Errorf("unknown variable %q; banger env knows %s", name, strings.Join(known, ", "))}
					}
				}
				if c.Bool("json") {
					picked := map[string]string{}
					for _, name := range c.Args().Slice() {
						picked[name] = values[name]
					}
					return printJSON(c.App.Writer, picked)
				}
				for _, name := range c.Args().Slice() {
					fmt.Fprintln(c.App.Writer, values[name])
				}
				return nil
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, struct {
					CacheRoot string `json:"cache_root"`
					CacheDir  string `json:"cache_dir"`
					BlobsDir  string `json:"blobs_dir"`
					TmpDir    string `json:"tmp_dir"`
					LockFile  string `json:"lock_file"`
					GateFile  string `json:"gate_file"`
					DataRoot  string `json:"data_root"`
					ImagesDir string `json:"images_dir"`
				}{l.CacheRoot, p.Dir, p.Blobs, p.Tmp, p.Lock, p.Gate, l.DataRoot, l.ImagesDir})
			}
			for i, v := range vars {
				if i > 0 && !v.settable && vars[i-1].settable {
					fmt.Fprintln(c.App.Writer, "# derived from the above; not read from the environment")
				}
				fmt.Fprintf(c.App.Writer, "%s='%s'\n", v.name, strings.ReplaceAll(v.value, "'", `'\''`))
			}
			return nil
		}),
	}
}

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:  "pull",
		Usage: "fetch an image through the blob cache and flatten it into the image store",
		UsageText: `banger image pull [options] REF

REF is one of:
   NAME[:TAG|@DIGEST]          a registry reference (Docker Hub by default)
   oci:DIR[:TAG]               an OCI image layout directory
   oci-archive:FILE[:TAG]      a tar of an OCI image layout (skopeo's)
   docker-archive:FILE[:REF]   a tarball written by docker save, or gzipped;
                               FILE - reads standard input

Registry mirrors, rewrites and blocks come from registries.conf, credentials
from --authfile, containers' auth.json or Docker's config, and CAs from
certs.d directories: see the README's "Registries, mirrors and credentials".

Example:
   banger image pull alpine:3.20
   banger image pull --platform linux/arm64 127.0.0.1:5000/tools:1.2
   banger image pull --name hello oci:testdata/hello:1.0`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "store the image under `NAME` (default: the reference, normalized, e.g. alpine:3.20)"},
			&cli.StringFlag{Name: "platform", Usage: "pick `OS/ARCH[/VARIANT]` from a multi-platform image (default: linux/" + goarch() + ")"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow plain HTTP to a registry other than localhost/127.0.0.1, and skip certificate verification (both of --tls-verify=false and plain HTTP)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify registries' TLS certificates; --tls-verify=false skips it for HTTPS (plain HTTP still needs --insecure or insecure = true in registries.conf)"},
			&cli.StringFlag{Name: "registries-conf", Usage: "read registry mirrors, rewrites and blocks from `FILE` alone (default: $CONTAINERS_REGISTRIES_CONF, ~/.config/containers/registries.conf, /etc/containers/registries.conf, with registries.conf.d/*.conf)"},
			&cli.StringFlag{Name: "authfile", Usage: "read registry credentials from `FILE` first (default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json; then ~/.config/containers/auth.json and Docker's config)"},
			&cli.StringFlag{Name: "cert-dir", Usage: "use the *.crt CAs and *.cert/*.key client certificate in `DIR` for every registry (default: /etc/containers/certs.d/HOST, ~/.config/containers/certs.d/HOST, /etc/docker/certs.d/HOST)"},
			&cli.IntFlag{Name: "jobs", Value: image.DefaultJobs, Usage: "fetch at most `N` blobs at once, top layer first; layers over 4 MiB one after another, as they are flattened"},
			&cli.DurationFlag{Name: "timeout", Usage: "give up the pull after `DURATION` (exit 1); 0 means no limit"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the image name on stdout, and no progress on stderr (like docker pull -q)"},
			jsonFlag(),
		}),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, 1, "exactly one REF"); err != nil {
				return err
			}
			if c.Int("jobs") < 1 {
				return usageErr{fmt.Errorf("--jobs must be at least 1")}
			}
			l, err := resolveLayout(c)
			if err != nil {
				return err
			}
			waits, err := resolvePullWaits(os.Getenv)
			if err != nil {
				return err
			}
			opts := image.PullOptions{
				Name:     c.String("name"),
				Platform: c.String("platform"),
				Insecure: c.Bool("insecure"),
				Jobs:     c.Int("jobs"),

				SkipTLSVerify:  !c.Bool("tls-verify"),
				RegistriesConf: c.String("registries-conf"),
				AuthFile:       c.String("authfile"),
				CertDir:        c.String("cert-dir"),
				StallTimeout:   waits.stall,
				Notice:         func(msg string) { fmt.Fprintf(c.App.ErrWriter, "banger: %s\n", image.Escape(msg)) },
			}
			var bar *progressLine
			switch {
			case c.Bool("quiet"):
			case isTerminal(c.App.ErrWriter):
				bar = newProgressLine(c.App.ErrWriter, c.Args().First())
				opts.Progress = bar.update
			default:
				// A CI log has no terminal to redraw: one line per layer.
				opts.LayerDone = layerLogger(c.App.ErrWriter)
			}
			ctx := c.Context
			if d := c.Duration("timeout"); d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			cacheOpts := cacheOptions(c)
			cacheOpts.RetryBackoff = waits.backoff
			img, err := image.Pull(ctx, cache.New(l.CacheDir, l.LockFile, cacheOpts), openStore(c, l), c.Args().First(), opts)
			bar.finish()
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%w; the pull did not finish within --timeout %s", err, c.Duration("timeout"))
			}
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, img)
			}
			if c.Bool("quiet") {
				_, err := fmt.Fprintln(c.App.Writer, img.Name)
				return err
			}
			if img.UpToDate {
				_, err := fmt.Fprintf(c.App.Writer, "%s is up to date (%s)\n", img.Name, image.ShortID(img.ID))
				return err
			}
			if img.Replaced != "" {
				fmt.Fprintf(c.App.Writer, "replaced %s: its image %s had no other name and is removed\n", img.Name, image.ShortID(img.Replaced))
			}
			if img.Linked {
				// Like docker pulling a new tag of an image it has: every
				// layer "already exists", and only the name is new.
				fmt.Fprintf(c.App.Writer, "named %s: its image %s (%s, rootfs %s) was in the store already, at %s; nothing was fetched or flattened\n", img.Name, image.ShortID(img.ID), img.Platform, humanize.IBytes(uint64(img.Size)), img.Rootfs)
				return nil
			}
			fmt.Fprintf(c.App.Writer, "pulled %s (%s, rootfs %s) into %s\n", img.Name, img.Platform, humanize.IBytes(uint64(img.Size)), img.Rootfs)
			return nil
		},
	}
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list flattened images, one row per name",
		UsageText: `banger image ls [--json]

An image pulled under several names is stored once and listed once per
name, with the same ID (the config digest, as docker's image ID). --json
gives each row's fields and "names", all the names of its image.

Example:
   banger image ls
   banger image ls --json | jq -r '.[].name'`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{jsonFlag()}),
		Action: withLayout(0, 0, "no arguments", func(c *cli.Context, l layout.Layout) error {
			images, err := openStore(c, l).List(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if images == nil {
					images = []image.Image{}
				}
				return printJSON(c.App.Writer, images)
			}
			tw := newTable(c.App.Writer)
			fmt.Fprintln(tw, "NAME\tID\tPLATFORM\tSIZE\tPULLED")
			for _, img := range images {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, image.ShortID(img.ID), img.Platform, humanize.IBytes(uint64(img.Size)), img.PulledAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		}),
	}
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:  "inspect",
		Usage: "print images' metadata as JSON, including the absolute rootfs path",
		UsageText: `banger image inspect [--json] [--format TEMPLATE] NAME|ID|ID-PREFIX...

Prints one JSON object for one image, and an array of objects for several
(as docker inspect does). The output is JSON unless --format is given;
--json is accepted for scripts that pass it to every command. An image that
is not found is reported on stderr and makes the exit code 1; the others are
still printed.

--format executes a Go template once per image, with the JSON fields as
keys, as docker inspect --format does. Besides the run settings (env,
entrypoint, cmd, workdir, user) the JSON has the config's labels,
exposed_ports, volumes, stop_signal, os, architecture, variant, history
and the layer digests, and last_used. Inspecting records a use of the
image (at most hourly), which image prune --older-than goes by.

Example:
   banger image inspect alpine:3.20
   tar -tf "$(banger image inspect --format '{{.rootfs}}' alpine:3.20)"`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			jsonFlag(),
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "print each image through the Go `TEMPLATE` (fields as in the JSON: {{.rootfs}}, {{.id}})"},
		}),
		Action: withLayout(1, -1, "at least one image NAME or ID", func(c *cli.Context, l layout.Layout) error {
			var tmpl *template.Template
			if f := c.String("format"); f != "" {
				var err error
				if tmpl, err = template.New("format").Option("missingkey=error").Parse(f); err != nil {
					return usageErr{fmt.Errorf("invalid --format: %w", err)}
				}
			}
			store := openStore(c, l)
			var found []image.Image
			var errs []error
			for _, name := range c.Args().Slice() {
				img, err := store.Get(c.Context, name)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				found = append(found, img)
			}
			if err := errors.Join(errs...); c.Args().Len() == 1 && err != nil {
				return err
			}
			if tmpl != nil {
				for _, img := range found {
					if err := printTemplate(c.App.Writer, tmpl, img); err != nil {
						return err
					}
				}
				return errors.Join(errs...)
			}
			var out any = found
			if c.Args().Len() == 1 {
				out = found[0]
			} else if found == nil {
				out = []image.Image{}
			}
			if err := printJSON(c.App.Writer, out); err != nil {
				return err
			}
			return errors.Join(errs...)
		}),
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:  "rm",
		Usage: "remove image names, and images with their last name",
		UsageText: `banger image rm [--force] [--json] NAME|ID|ID-PREFIX...

A NAME removes that name; the image goes with its last name. An ID (or a
prefix of one that no other image shares, as docker accepts) removes the
image; when it still has several names, rm refuses and lists them, unless
--force is given, which removes the image with all its names.

Example:
   banger image rm alpine:3.20
   banger image rm --force 3fa2c41b7d0e`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "remove an image named by ID even when it has several names"},
			jsonFlag(),
		}),
		Action: withLayout(1, -1, "at least one image NAME or ID", func(c *cli.Context, l layout.Layout) error {
			removed, err := openStore(c, l).Remove(c.Context, c.Bool("force"), c.Args().Slice()...)
			if c.Bool("json") {
				if removed == nil {
					removed = []image.Removed{}
				}
				if jerr := printJSON(c.App.Writer, removed); jerr != nil {
					return jerr
				}
			} else {
				for _, r := range removed {
					if r.ImageRemoved {
						fmt.Fprintf(c.App.Writer, "removed %s (%s, %s freed)\n", strings.Join(r.Names, ", "), image.ShortID(r.ID), humanize.IBytes(uint64(r.Size)))
					} else {
						fmt.Fprintf(c.App.Writer, "removed name %s (%s is kept for %s)\n", strings.Join(r.Names, ", "), image.ShortID(r.ID), strings.Join(r.Kept, ", "))
					}
				}
			}
			return err
		}),
	}
}

type duJSON struct {
	Bytes         int64            `json:"bytes"`
	Blobs         int              `json:"blobs"`
	CacheDir      string           `json:"cache_dir"`
	OldestUse     *time.Time       `json:"oldest_use"`
	NewestUse     *time.Time       `json:"newest_use"`
	LeftoverBytes int64            `json:"leftover_bytes"`
	BlobList      []cache.BlobInfo `json:"blob_list,omitempty"`
}

func duCommand() *cli.Command {
	return &cli.Command{
		Name:  "du",
		Usage: "measure the blob cache without changing it",
		UsageText: `banger image cache du [-v] [--json]

Reports the bytes and blobs in the cache, the oldest and newest last use
(a pull writing or reading a blob counts as a use; recorded at most hourly),
and the bytes of temp files and prune leftovers. -v lists each blob, most
recently used first.

Example:
   banger image cache du
   banger image cache du -v --json | jq '.blob_list[0]'`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "list each blob with its size and last use"},
			jsonFlag(),
		}),
		Action: withLayout(0, 0, "no arguments", func(c *cli.Context, l layout.Layout) error {
			inv, err := openCache(c, l).Inventory(c.Context)
			if err != nil {
				return err
			}
			out := duJSON{CacheDir: l.CacheDir, Bytes: inv.Total.Bytes, Blobs: inv.Total.Blobs, LeftoverBytes: inv.Leftover.Bytes}
			if inv.Total.Blobs > 0 {
				newest, oldest := inv.NewestUse.UTC(), inv.OldestUse.UTC()
				out.NewestUse, out.OldestUse = &newest, &oldest
			}
			if c.Bool("verbose") {
				out.BlobList = inv.Blobs
				if out.BlobList == nil {
					out.BlobList = []cache.BlobInfo{}
				}
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, out)
			}
			w := c.App.Writer
			fmt.Fprintf(w, "%s in %d blob(s) in %s", humanize.IBytes(uint64(out.Bytes)), out.Blobs, l.CacheDir)
			if out.Blobs > 0 {
				fmt.Fprintf(w, "; last use: oldest %s, newest %s", humanize.Time(*out.OldestUse), humanize.Time(*out.NewestUse))
			}
			if out.LeftoverBytes > 0 {
				fmt.Fprintf(w, "; plus %s of leftovers the next prune removes", humanize.IBytes(uint64(out.LeftoverBytes)))
			}
			fmt.Fprintln(w)
			if c.Bool("verbose") {
				tw := newTable(w)
				fmt.Fprintln(tw, "DIGEST\tSIZE\tLAST USE")
				for _, b := range inv.Blobs {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Digest, humanize.IBytes(uint64(b.Size)), b.LastUse.Local().Format(time.DateTime))
				}
				return tw.Flush()
			}
			return nil
		}),
	}
}

type pruneJSON struct {
	BytesFreed int64    `json:"bytes_freed"`
	BlobsFreed int      `json:"blobs_freed"`
	BytesKept  int64    `json:"bytes_kept"`
	BlobsKept  int      `json:"blobs_kept"`
	DryRun     bool     `json:"dry_run"`
	CacheDir   string   `json:"cache_dir"`
	DurationMS int64    `json:"duration_ms"`
	Errors     []string `json:"errors"`
}

func pruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "empty the blob cache, or evict blobs by age and size (flattened images are not affected)",
		UsageText: `banger image cache prune [--dry-run] [--older-than DURATION] [--max-size SIZE] [-q] [--json]

Without filters, renames the cache aside under an exclusive lock held for
milliseconds, recreates it empty, then deletes the aside. Pulls already
running keep the blobs they have open; pulls that start later see the empty
cache.

With --older-than and/or --max-size, removes only the blobs selected (a blob
goes if either filter says so), least recently used first, re-checking each
blob before removing it; blobs in use stay readable by the pulls using them.
Abandoned temp files and leftovers of interrupted prunes always go.

--dry-run plans exactly as the real run does and changes nothing. -q prints
nothing on success, for cron jobs that mail only failures.

Example:
   banger image cache prune --dry-run
   banger image cache prune --older-than 7d --max-size 20GiB --no-wait`,
		Flags: withFlags(pathFlags(), lockFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "only report what would be freed"},
			&cli.StringFlag{Name: "older-than", Usage: "remove blobs not used within `DURATION` (Go duration or days: 36h, 7d)"},
			&cli.StringFlag{Name: "max-size", Usage: "remove least recently used blobs until the cache holds at most `SIZE` (20GiB, 500MB)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print nothing on stdout (errors still go to stderr); --json still prints its document"},
			jsonFlag(),
		}),
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 0, 0, "no arguments"); err != nil {
				return err
			}
			policy, err := parsePolicy(c.String("older-than"), c.String("max-size"))
			if err != nil {
				return err
			}
			l, err := resolveLayout(c)
			if err != nil {
				return err
			}
			dryRun := c.Bool("dry-run")
			start := time.Now()
			rep, err := openCache(c, l).Prune(c.Context, policy, dryRun)
			if err != nil && !rep.Partial {
				return err
			}
			// What was deleted is reported even when some deletion failed;
			// the exit code still says it failed.
			if c.Bool("json") {
				out := pruneJSON{
					BytesFreed: rep.Freed.Bytes, BlobsFreed: rep.Freed.Blobs,
					BytesKept: rep.Kept.Bytes, BlobsKept: rep.Kept.Blobs,
					DryRun: dryRun, CacheDir: l.CacheDir,
					DurationMS: time.Since(start).Milliseconds(),
					Errors:     []string{},
				}
				for _, e := range rep.Errors {
					out.Errors = append(out.Errors, oneLine(e.Error()))
				}
				if jerr := printJSON(c.App.Writer, out); jerr != nil {
					return jerr
				}
			} else if !c.Bool("quiet") {
				printPruneSummary(c.App.Writer, dryRun, "blob", l.CacheDir, rep.Freed.Bytes, rep.Freed.Blobs, rep.Kept.Bytes, rep.Kept.Blobs)
			}
			return err
		},
	}
}

// parsePolicy reads --older-than and --max-size; neither gives the zero
// Policy, which empties the cache.
func parsePolicy(olderThan, maxSize string) (cache.Policy, error) {
	var p cache.Policy
	if olderThan != "" {
		d, err := parseAge(olderThan)
		if err != nil {
			return p, err
		}
		p.OlderThan = d
	}
	if maxSize != "" {
		n, err := humanize.ParseBytes(maxSize)
		if err != nil || n > math.MaxInt64 {
			return p, usageErr{fmt.Errorf("invalid --max-size %q: want a size such as 20GiB, 500MB or 0", maxSize)}
		}
		p.MaxSize, p.HasMaxSize = int64(n), true
	}
	return p, nil
}

// parseAge accepts Go durations and whole or fractional days ("7d").
func parseAge(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n float64
		n, err = strconv.ParseFloat(days, 64)
		d = time.Duration(n * float64(24*time.Hour))
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, usageErr{fmt.Errorf("invalid --older-than %q: want a positive duration such as 36h or 7d", s)}
	}
	return d, nil
}

// layerLogger prints one line per verified layer blob, for a log:
// "fetched sha256:0123456789ab… 52 MiB" or "cached sha256:… 52 MiB".
func layerLogger(w io.Writer) func(image.LayerDone) {
	var mu sync.Mutex
	return func(l image.LayerDone) {
		verb := "fetched"
		if l.Cached {
			verb = "cached"
		}
		mu.Lock()
		defer mu.Unlock()
		digest := l.Digest
		if len(digest) > len("sha256:")+12 {
			digest = digest[:len("sha256:")+12] + "…"
		}
		fmt.Fprintf(w, "%s %s %s\n", verb, digest, humanize.IBytes(uint64(l.Size)))
	}
}

// progressLine redraws one stderr line with the pull's phase, the bytes
// pulled so far and the rate, at most ten times a second. The line always
// fits the terminal, so it never wraps and leaves a trail of lines behind.
type progressLine struct {
	w     io.Writer
	label string
	width int // the terminal's columns
	start time.Time
	mu    sync.Mutex
	last  time.Time
	drawn bool
}

func newProgressLine(w io.Writer, label string) *progressLine {
	return &progressLine{w: w, label: label, width: terminalWidth(w), start: time.Now()}
}

func (p *progressLine) update(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	p.drawn = true
	fmt.Fprint(p.w, "\r\033[K"+renderProgress(p.label, done, total, now.Sub(p.start), p.width))
}

// renderProgress is the progress line for a terminal width columns wide:
// "pulling REF: fetching 12 MiB / 52 MiB, 8.1 MiB/s". The reference is
// shortened in the middle first, then the figures are dropped from the end,
// so that the line takes at most width-1 columns (a line that fills the
// last column makes some terminals wrap).
func renderProgress(label string, done, total int64, elapsed time.Duration, width int) string {
	done = max(done, 0)
	phase := "fetching"
	if total > 0 && done >= total {
		phase = "flattening"
	}
	figures := []string{phase + " " + humanize.IBytes(uint64(done))}
	if total > 0 {
		figures[0] += " / " + humanize.IBytes(uint64(total))
	}
	if elapsed >= time.Second && phase == "fetching" {
		figures = append(figures, humanize.IBytes(uint64(float64(done)/elapsed.Seconds()))+"/s")
	}
	room := width - 1
	for {
		tail := ": " + strings.Join(figures, ", ")
		head := "pulling "
		if n := room - len([]rune(head+tail)); n >= min(len([]rune(label)), 12) {
			return head + shorten(label, n) + tail
		}
		if len(figures) == 1 {
			return shorten(head+label+tail, room)
		}
		figures = figures[:len(figures)-1]
	}
}

// shorten cuts s to at most n runes, replacing its middle with "…".
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n <= 1 {
		return string(r[:max(n, 0)])
	}
	keep := n - 1
	return string(r[:keep-keep/2]) + "…" + string(r[len(r)-keep/2:])
}

func (p *progressLine) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// terminalWidth is w's width in columns: from the terminal, else $COLUMNS,
// else 80.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 80
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func goarch() string { return runtime.GOARCH }

// printPruneSummary prints the one line of a cache or image prune:
// "freed 1.2 GiB across 47 blob(s) in DIR" ("would free" for a dry run),
// with "(kept … in N blob(s))" when a filter kept some.
func printPruneSummary(w io.Writer, dryRun bool, unit, dir string, freedBytes int64, freed int, keptBytes int64, kept int) {
	verb := "freed"
	if dryRun {
		verb = "would free"
	}
	fmt.Fprintf(w, "%s %s across %d %s(s) in %s", verb, humanize.IBytes(uint64(freedBytes)), freed, unit, dir)
	if kept > 0 {
		fmt.Fprintf(w, " (kept %s in %d %s(s))", humanize.IBytes(uint64(keptBytes)), kept, unit)
	}
	fmt.Fprintln(w)
}
