package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mountTmpfs mounts a small tmpfs at dir for the test, or skips the test
// where mounting is not allowed.
func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
}

// TestFilesystemFaults: a full disk, a read-only cache and a symlinked cache
// give one clear line and leave no partial blob and no half-published image.
func TestFilesystemFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	host := startRegistry(t)
	pushStressImages(t, host)
	ref := host + "/" + stressImages[0]

	tests := []struct {
		name    string
		setup   func(t *testing.T, e *bangerEnv)
		wantErr string
	}{
		{
			name:    "cache on a full disk",
			setup:   func(t *testing.T, e *bangerEnv) { mountTmpfs(t, e.cache, "size=1m") },
			wantErr: "no space left on device",
		},
		{
			name:    "image store on a full disk",
			setup:   func(t *testing.T, e *bangerEnv) { mountTmpfs(t, e.data, "size=1m") },
			wantErr: "no space left on device",
		},
		{
			name:    "read-only cache",
			setup:   func(t *testing.T, e *bangerEnv) { mountTmpfs(t, e.cache, "ro,size=1m") },
			wantErr: "read-only file system",
		},
		{
			name: "cache dir is a symlink",
			setup: func(t *testing.T, e *bangerEnv) {
				real := filepath.Join(t.TempDir(), "real")
				os.MkdirAll(real, 0o755)
				os.MkdirAll(e.cache, 0o755)
				if err := os.Symlink(real, filepath.Join(e.cache, "oci")); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "is a symlink",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBangerEnv(t, host)
			tt.setup(t, e)
			var stderr bytes.Buffer
			cmd := e.cmd("image", "pull", "-q", ref)
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil || cmd.ProcessState.ExitCode() != 1 {
				t.Fatalf("pull = %v, want exit 1; stderr: %s", err, stderr.String())
			}
			if lines := strings.Count(stderr.String(), "\n"); lines != 1 || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr = %q, want one line containing %q", stderr.String(), tt.wantErr)
			}
			checkCacheInvariants(t, e.cache, false)
			if tmp, _ := os.ReadDir(filepath.Join(e.cache, "oci", "tmp")); len(tmp) > 0 {
				t.Errorf("temp files left in the cache: %v", tmp)
			}
			entries, _ := os.ReadDir(filepath.Join(e.data, "images"))
			for _, entry := range entries {
				t.Errorf("image store holds %s after a failed pull", entry.Name())
			}
		})
	}
}

// TestPermissions: even with umask 022, what banger stores is private to
// its owner (issue 11 §1): directories 0700 and files 0600 in the cache and
// the image store,
// lock files included, as docker's and podman's storage roots are.
func TestPermissions(t *testing.T) {
	host := startRegistry(t)
	e := newBangerEnv(t, host)
	// The umask is the process's: safe because this test does not call
	// t.Parallel, so no other test runs beside it (parallel tests start
	// once every sequential one is done).
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	e.run("image", "pull", "-q", host+"/app:1")
	for _, root := range []string{e.cache, e.data} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Error(err)
				return nil
			}
			info, _ := d.Info()
			want := fs.FileMode(0o600)
			if d.IsDir() {
				want = 0o700
			}
			if got := info.Mode().Perm(); got != want {
				t.Errorf("%s has mode %v, want %v", path, got, want)
			}
			return nil
		})
	}
	if _, err := os.Stat(filepath.Join(e.cache, "oci.lock")); err != nil {
		t.Errorf("lock file: %v", err)
	}
}

// TestProgressOnTerminal: a pull shows progress on stderr when it is a
// terminal (here a pty from script(1)), and not with --quiet or when stderr
// is not a terminal.
func TestProgressOnTerminal(t *testing.T) {
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		t.Skip("script(1) not installed; cannot give banger a terminal")
	}
	e := newBangerEnv(t, "")
	layout, _ := filepath.Abs(filepath.Join("testdata", "hello"))
	tests := []struct {
		name         string
		command      string
		wantProgress bool
		cols         int // the terminal's width, when the command sets it
	}{
		{"terminal", e.bin + " image pull --name a oci:" + layout + ":1.0", true, 0},
		{"narrow terminal", "stty cols 30 && " + e.bin + " image pull --name d oci:" + layout + ":1.0", true, 30},
		{"quiet", e.bin + " image pull --quiet --name b oci:" + layout + ":1.0", false, 0},
		{"stderr not a terminal", e.bin + " image pull --name c oci:" + layout + ":1.0 2>/dev/null", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(scriptBin, "-qfec", tt.command, "/dev/null")
			// A store of its own: in a shared one, the image pulled by
			// the case before would be named without a fetch (issue 13).
			cmd.Env = append(os.Environ(), "BANGER_CACHE_DIR="+e.cache, "BANGER_DATA_DIR="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", tt.command, err, out)
			}
			if got := strings.Contains(string(out), "pulling "); got != tt.wantProgress {
				t.Errorf("progress shown = %v, want %v; terminal output: %q", got, tt.wantProgress, out)
			}
			// The progress line never wraps: it fits the terminal.
			for _, seg := range strings.FieldsFunc(strings.ReplaceAll(string(out), "\033[K", ""), func(r rune) bool { return r == '\r' || r == '\n' }) {
				if strings.Contains(seg, "pulling ") && tt.cols > 0 && len([]rune(seg)) >= tt.cols {
					t.Errorf("progress line %q takes %d columns of a %d-column terminal", seg, len([]rune(seg)), tt.cols)
				}
			}
		})
	}
}
