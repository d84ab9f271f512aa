package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDocsRecipes checks that the recipes in docs/ are what banger accepts:
// every banger command line in them parses, and the systemd units pass
// `systemd-analyze verify` where it is installed (issue 4 §3).
func TestDocsRecipes(t *testing.T) {
	cron, err := os.ReadFile(filepath.Join("docs", "cron.md"))
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile(filepath.Join("docs", "ci.md"))
	if err != nil {
		t.Fatal(err)
	}

	// Every prune command line in the docs runs against an empty cache and
	// an empty store (issue 13 for the image side).
	e := newBangerEnv(t, "")
	docs := string(cron) + string(ci)
	for _, tt := range []struct {
		line  *regexp.Regexp
		empty string // the text line of a prune that found nothing
		min   int
	}{
		{regexp.MustCompile(`banger (image cache prune[^\n|>]*)`), "0 B across 0 blob(s)", 4},
		{regexp.MustCompile(`banger (image prune[^\n|>]*)`), "0 B across 0 image(s)", 6},
	} {
		found := tt.line.FindAllStringSubmatch(docs, -1)
		if len(found) < tt.min {
			t.Fatalf("found %d %q lines in docs, want at least %d", len(found), tt.line, tt.min)
		}
		for _, m := range found {
			checkRecipe(t, e, m[1], tt.empty)
		}
	}

	checkWorkflow(t, string(ci))

	units := regexp.MustCompile("(?s)```ini ([a-z-]+\\.(?:service|timer))\n(.*?)```").FindAllStringSubmatch(string(cron), -1)
	if len(units) != 2 {
		t.Fatalf("found %d unit files in docs/cron.md, want a service and a timer", len(units))
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed; unit files not verified")
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		// Verify against the banger under test: systemd-analyze checks
		// that ExecStart's program exists.
		body := strings.ReplaceAll(u[2], "/usr/local/bin/banger", e.bin)
		path := filepath.Join(dir, u[1])
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...)
	out, err := cmd.CombinedOutput()
	// Outside a booted systemd (containers, CI) verify may complain about
	// the host; only problems with our units count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "banger-prune") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && !strings.Contains(string(out), "banger-prune") {
		t.Logf("systemd-analyze verify exited %v (host problems only): %s", err, out)
	}
}

// checkRecipe runs one prune command line from the docs. The recipes count
// on a successful prune printing nothing on stderr (cron mails it), -q
// nothing at all, and --json one line.
func checkRecipe(t *testing.T, e *bangerEnv, line, empty string) {
	t.Helper()
	args := strings.Fields(line)
	var stdout, stderr bytes.Buffer
	cmd := e.cmd(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("banger %s: %v; stderr: %s", line, err, stderr.String())
	}
	out := stdout.String()
	switch {
	case stderr.Len() > 0:
		t.Errorf("banger %s printed %q on stderr", line, stderr.String())
	case slices.Contains(args, "-q") && !slices.Contains(args, "--json"):
		if out != "" {
			t.Errorf("banger %s printed %q, want nothing", line, out)
		}
	case slices.Contains(args, "--json"):
		if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 1 || !strings.Contains(out, `"bytes_freed":0`) {
			t.Errorf("banger %s printed %q, want one JSON line", line, out)
		}
	case !strings.Contains(out, empty):
		t.Errorf("banger %s printed %q, want %q", line, out, empty)
	}
}

// checkWorkflow runs actionlint on the GitHub Actions workflow in
// docs/ci.md, so that it is a workflow GitHub would accept (issue 9 §4).
func checkWorkflow(t *testing.T, ci string) {
	t.Helper()
	m := regexp.MustCompile("(?s)## GitHub Actions.*?```yaml\n(.*?)```").FindStringSubmatch(ci)
	if m == nil {
		t.Fatal("docs/ci.md has no GitHub Actions workflow")
	}
	actionlint, err := exec.LookPath("actionlint")
	if err != nil {
		t.Log("actionlint not installed (go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12); the workflow in docs/ci.md is not checked")
		return
	}
	dir := filepath.Join(t.TempDir(), ".github", "workflows")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "images.yml")
	if err := os.WriteFile(path, []byte(m[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	// -shellcheck= and -pyflakes= turn off the linters of run: scripts,
	// which need programs CI may not have; the workflow itself is checked.
	if out, err := exec.Command(actionlint, "-shellcheck=", "-pyflakes=", path).CombinedOutput(); err != nil {
		t.Errorf("actionlint on the workflow in docs/ci.md: %v\n%s", err, out)
	}
}

// TestReadmeQuickstart runs the README's offline quickstart as written,
// with the banger under test in place of `go build` and a temp dir in place
// of /tmp/banger-demo, and checks that it leaves nothing in the shell that
// ran it: the variables are set for banger's processes only (issue 10 §6).
func TestReadmeQuickstart(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile("(?m)^go build -o banger \\. && (.*)$").FindSubmatch(readme)
	if line == nil {
		t.Fatal("README.md has no quickstart line starting with `go build -o banger . &&`")
	}
	e := newBangerEnv(t, "")
	dir := t.TempDir()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(wd, "testdata"), filepath.Join(dir, "testdata")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.bin, filepath.Join(dir, "banger")); err != nil {
		t.Fatal(err)
	}
	script := strings.ReplaceAll(string(line[1]), "/tmp/banger-demo", filepath.Join(dir, "demo"))
	// The quickstart must not export anything into the user's shell.
	cmd := exec.Command("sh", "-c", script+` && echo "after: ${BANGER_CACHE_DIR-unset} ${BANGER_DATA_DIR-unset}"`)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "BANGER_CACHE_DIR=", "BANGER_DATA_DIR=")
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "BANGER_") })
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("quickstart failed: %v\n%s", err, out)
	}
	for _, want := range []string{"pulled hello:1.0", "freed ", "app/run", "after: unset unset"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("quickstart output lacks %q:\n%s", want, out)
		}
	}
}

// TestLinuxOnly: banger builds for Linux only, and building it for another
// system fails with one error that says so, not with a list of undefined
// system calls (issue 10 §4).
func TestLinuxOnly(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	cmd := exec.Command(gobin, "build", "-o", os.DevNull, ".")
	cmd.Env = append(os.Environ(), "GOOS=darwin", "GOARCH=arm64", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("GOOS=darwin go build succeeded, want it to fail")
	}
	var errs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(line, "#") {
			errs = append(errs, line)
		}
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "banger_builds_only_for_linux") {
		t.Errorf("GOOS=darwin go build printed %q, want one error naming banger_builds_only_for_linux", out)
	}
}
