package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Issue 13: the store migration and image prune are killed (SIGKILL) after
// each of their steps, in a child process (this test binary run again, as
// Go's lockedfile tests do); whatever is left must read as the store before
// or the store after, and the next run must finish the job.

const (
	crashDirEnv  = "BANGER_TEST_CRASH_DIR"
	crashOpEnv   = "BANGER_TEST_CRASH_OP"
	crashStepEnv = "BANGER_TEST_CRASH_STEP"
	crashNthEnv  = "BANGER_TEST_CRASH_NTH"
)

// TestStoreCrashChild is the child: it runs the operation and kills itself
// at the nth time it reaches the step.
func TestStoreCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestStoreCrash")
	}
	nth, _ := strconv.Atoi(os.Getenv(crashNthEnv))
	s := NewStore(dir)
	seen := 0
	s.crash = func(step string) {
		if step == os.Getenv(crashStepEnv) {
			if seen++; seen == nth {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	var err error
	switch os.Getenv(crashOpEnv) {
	case "migrate":
		_, err = s.List(t.Context())
	case "prune":
		_, err = s.Prune(t.Context(), PrunePolicy{All: true}, false)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// runCrashChild runs the child and reports whether it was killed.
func runCrashChild(t *testing.T, dir, op, step string, nth int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStoreCrashChild$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashOpEnv+"="+op, crashStepEnv+"="+step, crashNthEnv+"="+strconv.Itoa(nth))
	// A child built with -race sleeps a second when it exits normally
	// (GORACE atexit_sleep_ms=1000), as the last child of every step does.
	if os.Getenv("GORACE") == "" {
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		t.Fatalf("child %s at %s #%d: %v\n%s", op, step, nth, err, out)
	}
	return false
}

// writeV1Store writes a format-1 store: three names, two of one image.
func writeV1Store(t *testing.T, dir string) map[string]string {
	t.Helper()
	want := map[string]string{"a:1": "body-a", "b:1": "body-a", "c:1": "body-c"}
	i := 0
	for _, name := range []string{"a:1", "b:1", "c:1"} {
		d := filepath.Join(dir, fmt.Sprintf("%016x", 0xabc000+i))
		i++
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v1Image{Name: name, Reference: name, ConfigDigest: configOf(want[name]), Platform: "linux/amd64", PulledAt: t0.Add(time.Duration(i) * time.Minute)})
		if err := os.WriteFile(filepath.Join(d, metadataName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, rootfsName), []byte(want[name]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// checkStore checks that List shows exactly want (name → rootfs content),
// every rootfs readable.
func checkStore(t *testing.T, s *Store, want map[string]string, when string) {
	t.Helper()
	all, err := s.List(t.Context())
	if err != nil {
		t.Fatalf("%s: List() error = %v", when, err)
	}
	got := map[string]string{}
	for _, img := range all {
		b, err := os.ReadFile(img.Rootfs)
		if err != nil {
			t.Errorf("%s: %s lists rootfs %s: %v", when, img.Name, img.Rootfs, err)
		}
		got[img.Name] = string(b)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: store = %v, want %v", when, got, want)
	}
}

func TestStoreCrashMigration(t *testing.T) {
	for _, step := range []string{"link", "image", "index", "version", "remove"} {
		for nth := 1; ; nth++ {
			dir := filepath.Join(t.TempDir(), "images")
			want := writeV1Store(t, dir)
			if !runCrashChild(t, dir, "migrate", step, nth) {
				if nth == 1 {
					t.Errorf("the migration never reached step %s", step)
				}
				break // the step is reached fewer than nth times
			}
			when := fmt.Sprintf("after a kill at %s #%d", step, nth)
			s := NewStore(dir)
			// The next reader finishes the migration and sees every name.
			checkStore(t, s, want, when)
			// The next writer leaves nothing of format 1 or of the kill.
			if _, err := add(t.Context(), s, Image{Name: "d:1", ConfigDigest: configOf("body-d")}, func(d string) error {
				return os.WriteFile(filepath.Join(d, rootfsName), []byte("body-d"), 0o644)
			}); err != nil {
				t.Fatalf("%s: add() error = %v", when, err)
			}
			want["d:1"] = "body-d"
			checkStore(t, s, want, when+" and a pull")
			wantDirs := []string{sha256Hex([]byte("config:body-a")), sha256Hex([]byte("config:body-c")), sha256Hex([]byte("config:body-d"))}
			slices.Sort(wantDirs)
			if dirs := imageDirs(t, dir); !slices.Equal(dirs, wantDirs) {
				t.Errorf("%s and a pull: store = %q, want only %q", when, dirs, wantDirs)
			}
		}
	}
}

func TestStoreCrashPrune(t *testing.T) {
	for _, step := range []string{"prune-plan", "prune-index", "prune-rename"} {
		for nth := 1; ; nth++ {
			dir := filepath.Join(t.TempDir(), "images")
			s := NewStore(dir)
			want := map[string]string{"a:1": "a", "b:1": "b", "c:1": "c"}
			for _, n := range []string{"a:1", "b:1", "c:1"} {
				addImage(t, s, n, want[n], t0)
			}
			if !runCrashChild(t, dir, "prune", step, nth) {
				if nth == 1 {
					t.Errorf("prune never reached step %s", step)
				}
				break
			}
			when := fmt.Sprintf("after a kill at %s #%d", step, nth)
			// What is listed is whole; what is gone is gone with its name.
			all, err := s.List(t.Context())
			if err != nil {
				t.Fatalf("%s: List() error = %v", when, err)
			}
			for _, img := range all {
				if b, err := os.ReadFile(img.Rootfs); err != nil || string(b) != want[img.Name] {
					t.Errorf("%s: %s has rootfs %q, %v, want %q", when, img.Name, b, err, want[img.Name])
				}
			}
			// The next prune removes the rest and every leftover.
			if _, err := s.Prune(t.Context(), PrunePolicy{All: true}, false); err != nil {
				t.Fatalf("%s: Prune() error = %v", when, err)
			}
			if dirs := imageDirs(t, dir); len(dirs) != 0 {
				t.Errorf("%s and a second prune: store = %q, want no images and no leftovers", when, dirs)
			}
		}
	}
}
