package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofrs/flock"
)

// holdLock takes c's lock through a file descriptor of its own, as another
// banger process would, and returns its release.
func holdLock(t *testing.T, c *Cache, exclusive bool) (release func()) {
	t.Helper()
	fl := flock.New(c.lockPath)
	lock := fl.RLock
	if exclusive {
		lock = fl.Lock
	}
	if err := lock(); err != nil {
		t.Fatalf("taking lock %s: %v", c.lockPath, err)
	}
	t.Cleanup(func() { fl.Close() })
	return func() { fl.Close() }
}

func TestLockBusy(t *testing.T) {
	prune := func(ctx context.Context, c *Cache) error { _, err := pruneAll(ctx, c, false); return err }
	dryRun := func(ctx context.Context, c *Cache) error { _, err := pruneAll(ctx, c, true); return err }
	usage := func(ctx context.Context, c *Cache) error { _, err := usageOf(ctx, c); return err }
	fetch := func(ctx context.Context, c *Cache) error {
		f, err := c.Fetch(ctx, blobOf(content(9, 99), nil))
		if f != nil {
			f.Close()
		}
		return err
	}
	hit := func(ctx context.Context, c *Cache) error {
		f, err := c.Fetch(ctx, blobOf(content(1, 100), nil))
		if f != nil {
			f.Close()
		}
		return err
	}
	tests := []struct {
		name      string
		opts      Options
		exclusive bool // the lock held elsewhere
		op        func(ctx context.Context, c *Cache) error
		wantBusy  bool
		minWait   time.Duration
		maxWait   time.Duration
	}{
		{name: "no-wait prune vs exclusive", opts: Options{NoWait: true}, exclusive: true, op: prune, wantBusy: true, maxWait: 500 * time.Millisecond},
		{name: "no-wait prune vs shared", opts: Options{NoWait: true}, op: prune, wantBusy: true, maxWait: 500 * time.Millisecond},
		{name: "no-wait dry run vs exclusive", opts: Options{NoWait: true}, exclusive: true, op: dryRun, wantBusy: true, maxWait: 500 * time.Millisecond},
		{name: "no-wait usage vs shared", opts: Options{NoWait: true}, op: usage},
		{name: "no-wait dry run vs shared", opts: Options{NoWait: true}, op: dryRun},
		{name: "no-wait fetch vs shared", opts: Options{NoWait: true}, op: fetch},
		{name: "no-wait hit vs shared", opts: Options{NoWait: true}, op: hit},
		{name: "no-wait fetch vs exclusive", opts: Options{NoWait: true}, exclusive: true, op: fetch, wantBusy: true, maxWait: 500 * time.Millisecond},
		{name: "wait 200ms prune vs exclusive", opts: Options{Wait: 200 * time.Millisecond}, exclusive: true, op: prune, wantBusy: true, minWait: 200 * time.Millisecond, maxWait: 1500 * time.Millisecond},
		{name: "wait 200ms prune vs shared", opts: Options{Wait: 200 * time.Millisecond}, op: prune, wantBusy: true, minWait: 200 * time.Millisecond, maxWait: 1500 * time.Millisecond},
		{name: "wait 200ms fetch vs exclusive", opts: Options{Wait: 200 * time.Millisecond}, exclusive: true, op: fetch, wantBusy: true, minWait: 200 * time.Millisecond, maxWait: 1500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, tt.opts)
			kept := content(1, 100)
			mustFetch(t, c, kept)
			before := snapshot(t, c.parent(), "oci.lock")
			holdLock(t, c, tt.exclusive)

			// The deadline only keeps a lock that never gives up from
			// hanging the test; it is far beyond any wanted wait.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			start := time.Now()
			err := tt.op(ctx, c)
			waited := time.Since(start)
			if !tt.wantBusy {
				if err != nil {
					t.Fatalf("error = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrLockBusy) {
				t.Fatalf("error = %v, want %v", err, ErrLockBusy)
			}
			if !strings.Contains(err.Error(), c.lockPath) || !strings.Contains(err.Error(), "retry") {
				t.Errorf("error %q does not name the lock and say what to do", err)
			}
			if waited < tt.minWait {
				t.Errorf("gave up after %v, want at least %v", waited, tt.minWait)
			}
			// Giving up late is no error, as in Go's lockedfile tests: a
			// loaded machine can take its time; say so and go on.
			if waited > tt.maxWait {
				t.Logf("gave up after %v, expected within %v: a slow machine?", waited, tt.maxWait)
			}
			checkSame(t, "after a busy lock", before, snapshot(t, c.parent(), "oci.lock"))
		})
	}
}

// TestLockNotice checks that a waiting user hears, once, why nothing
// happens, and that a wait ends as soon as the lock is free.
func TestLockNotice(t *testing.T) {
	tests := []struct {
		name        string
		opts        Options
		noticeAfter time.Duration
		// releaseOnNotice frees the lock when the notice comes.
		releaseOnNotice bool
		wantErr         error
		wantNotices     int32
	}{
		{name: "no wait: no notice", opts: Options{NoWait: true}, noticeAfter: 0, wantErr: ErrLockBusy, wantNotices: 0},
		{name: "short wait: no notice", opts: Options{Wait: 30 * time.Millisecond}, noticeAfter: time.Hour, wantErr: ErrLockBusy, wantNotices: 0},
		{name: "long wait: one notice", opts: Options{Wait: 300 * time.Millisecond}, noticeAfter: 20 * time.Millisecond, wantErr: ErrLockBusy, wantNotices: 1},
		{name: "released after the notice", noticeAfter: 20 * time.Millisecond, releaseOnNotice: true, wantNotices: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var notices atomic.Int32
			noticed := make(chan string, 10)
			tt.opts.Notice = func(msg string) {
				notices.Add(1)
				noticed <- msg
			}
			c := newTestCache(t, tt.opts)
			c.noticeAfter = tt.noticeAfter
			mustFetch(t, c, content(1, 100))
			release := holdLock(t, c, false) // shared: blocks prune's rename
			if tt.releaseOnNotice {
				go func() {
					<-noticed
					release()
				}()
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			got, err := pruneAll(ctx, c, false)
			if !errors.Is(err, tt.wantErr) || err != nil && tt.wantErr == nil {
				t.Fatalf("Prune() = %+v, %v; want error %v", got, err, tt.wantErr)
			}
			if n := notices.Load(); n != tt.wantNotices {
				t.Errorf("Notice called %d times, want %d", n, tt.wantNotices)
			}
			if tt.wantErr == nil && got != (Tally{Bytes: 100, Blobs: 1}) {
				t.Errorf("Prune() after waiting = %+v, want the blob freed", got)
			}
			if tt.wantNotices > 0 && !tt.releaseOnNotice {
				if msg := <-noticed; !strings.Contains(msg, c.lockPath) {
					t.Errorf("notice %q does not name the lock %s", msg, c.lockPath)
				}
			}
		})
	}
}

// TestSharedLockBlocksPruneRename holds a shared lock, as a pull between
// namespace operations would not, and checks that prune waits for it
// before renaming anything, and that a pull arriving while prune waits
// queues behind it instead of starving it.
func TestSharedLockBlocksPruneRename(t *testing.T) {
	tests := []struct {
		name string
		// blobs fetched before the prune, all under the held shared lock
		blobs int
	}{
		{"one blob", 1},
		{"three blobs", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			waiting := make(chan struct{})
			var once sync.Once
			c := newTestCache(t, Options{Notice: func(string) { once.Do(func() { close(waiting) }) }})
			c.noticeAfter = 10 * time.Millisecond
			var want Tally
			for i := range tt.blobs {
				mustFetch(t, c, content(byte(i), 10+i))
				want.Bytes += int64(10 + i)
				want.Blobs++
			}
			release := holdLock(t, c, false)
			type result struct {
				tally Tally
				err   error
			}
			done := make(chan result, 1)
			go func() {
				tally, err := pruneAll(t.Context(), c, false)
				done <- result{tally, err}
			}()
			select {
			case <-waiting:
			case r := <-done:
				t.Fatalf("Prune() = %+v, %v while a shared lock is held, want it to wait", r.tally, r.err)
			}
			// Prune is waiting: nothing renamed, and pulls still work.
			if got := len(names(t, c.dir+"/"+blobsSubdir)); got != tt.blobs {
				t.Errorf("%d blobs while prune waits, want %d", got, tt.blobs)
			}
			checkNoLeftovers(t, c)
			fetched := make(chan error, 1)
			go func() {
				f, err := c.Fetch(t.Context(), blobOf(content(0, 10), nil))
				if err == nil {
					f.Close()
				}
				fetched <- err
			}()
			select {
			case err := <-fetched:
				t.Fatalf("Fetch finished (%v) while prune waits, want it queued behind prune", err)
			case <-time.After(50 * time.Millisecond):
			}
			release()
			if err := <-fetched; err != nil {
				t.Errorf("Fetch after prune: %v", err)
			}
			if r := <-done; r.err != nil || r.tally != want {
				t.Errorf("Prune() = %+v, %v; want %+v", r.tally, r.err, want)
			}
			// The queued Fetch ran after the prune, into the fresh cache.
			if got := names(t, c.dir+"/"+blobsSubdir); len(got) != 1 {
				t.Errorf("blobs/sha256 holds %q after prune and one queued Fetch, want one blob", got)
			}
		})
	}
}

const (
	helperLockEnv = "BANGER_CACHE_TEST_LOCK"
	helperModeEnv = "BANGER_CACHE_TEST_LOCK_MODE"
)

// TestHelperProcess is not a test: run as a child by TestLockCrossProcess,
// it takes the lock named in its environment, says so, and holds it until
// it is killed or its stdin closes.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperLockEnv)
	if path == "" {
		t.Skip("helper process for TestLockCrossProcess")
	}
	fl := flock.New(path)
	lock := fl.Lock
	if os.Getenv(helperModeEnv) == "shared" {
		lock = fl.RLock
	}
	if err := lock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startLockHolder runs this test binary as a child that holds c's lock.
func startLockHolder(t *testing.T, c *Cache, mode string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperLockEnv+"="+c.lockPath, helperModeEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // held open: the child waits on it
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v; want \"locked\"", line, err)
	}
	return cmd
}

// TestLockCrossProcess checks the lock against another process, and that
// the kernel frees it when that process dies without unlocking.
func TestLockCrossProcess(t *testing.T) {
	tests := []struct {
		name      string
		mode      string
		fetchBusy bool
	}{
		{"exclusive", "exclusive", true},
		{"shared", "shared", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{NoWait: true})
			mustFetch(t, c, content(1, 100))
			child := startLockHolder(t, c, tt.mode)

			if _, err := pruneAll(t.Context(), c, false); !errors.Is(err, ErrLockBusy) {
				t.Errorf("Prune() while another process holds the lock = %v, want %v", err, ErrLockBusy)
			}
			f, err := c.Fetch(t.Context(), blobOf(content(2, 200), nil))
			if f != nil {
				f.Close()
			}
			if got := errors.Is(err, ErrLockBusy); got != tt.fetchBusy {
				t.Errorf("Fetch() while another process holds a %s lock = %v, want busy: %v", tt.mode, err, tt.fetchBusy)
			}

			if err := child.Process.Kill(); err != nil { // SIGKILL: no unlock
				t.Fatal(err)
			}
			child.Wait()
			got, err := pruneAll(t.Context(), c, false)
			if err != nil {
				t.Fatalf("Prune() after the holder was killed = %v, want nil", err)
			}
			if got.Blobs < 1 {
				t.Errorf("Prune() after the holder was killed = %+v, want the blobs freed", got)
			}
			checkEmptyCache(t, c)
		})
	}
}

// TestForeignLockRefused checks issue 11 §1: a lock file or gate that
// belongs to another user is refused at once, naming the file, and never
// waited on, even while that user holds it; a lock file of ours that an
// older banger left 0644 is narrowed to 0600.
func TestForeignLockRefused(t *testing.T) {
	tests := []struct {
		name    string
		file    func(c *Cache) string
		owner   int // uid and gid given to the file; -1: keep ours
		mode    os.FileMode
		shared  bool // the cache root is group-shared (setgid, group 65534)
		wantErr error
		// wantMode is the file's mode after a successful lock.
		wantMode os.FileMode
	}{
		{name: "lock of another user", file: func(c *Cache) string { return c.lockPath }, owner: 65534, mode: 0o600, wantErr: ErrForeignLock},
		{name: "gate of another user", file: func(c *Cache) string { return c.gatePath() }, owner: 65534, mode: 0o600, wantErr: ErrForeignLock},
		{name: "lock of the root's group in a group-shared root", file: func(c *Cache) string { return c.lockPath }, owner: 65534, mode: 0o660, shared: true, wantMode: 0o660},
		{name: "our lock left 0644", file: func(c *Cache) string { return c.lockPath }, owner: -1, mode: 0o644, wantMode: 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.owner >= 0 && os.Geteuid() != 0 {
				t.Skip("only root can give a file to another user")
			}
			c := newTestCache(t, Options{}) // waits for ever: a refusal must not wait
			mustFetch(t, c, content(1, 100))
			if tt.shared {
				if err := os.Chown(c.parent(), -1, 65534); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(c.parent(), os.ModeSetgid|0o770); err != nil {
					t.Fatal(err)
				}
			}
			path := tt.file(c)
			if tt.owner >= 0 {
				if err := os.Chown(path, tt.owner, tt.owner); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != nil {
				// The other user holds it: waiting would hang.
				holdLockPath(t, path)
			}
			before := snapshot(t, c.parent(), "oci.lock", "oci.lock.gate")
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err := c.Prune(ctx, Policy{}, false)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Prune() = %v, want nil", err)
				}
				if info, err := os.Stat(path); err != nil || info.Mode().Perm() != tt.wantMode {
					t.Errorf("%s mode after a lock = %v (%v), want %v", path, info.Mode().Perm(), err, tt.wantMode)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Prune() = %v, want %v at once", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
			checkSame(t, "after a refused lock", before, snapshot(t, c.parent(), "oci.lock", "oci.lock.gate"))
		})
	}
}

// holdLockPath holds an exclusive flock on path until the test ends.
func holdLockPath(t *testing.T, path string) {
	t.Helper()
	fl := flock.New(path)
	if err := fl.Lock(); err != nil {
		t.Fatalf("taking lock %s: %v", path, err)
	}
	t.Cleanup(func() { fl.Close() })
}

// TestGateWaitHonoursOptions checks issue 11 §1: a wait at the gate (held by
// a waiting prune, or by another process) ends as a wait for the lock does:
// at once with NoWait, after Wait, and when the context ends.
func TestGateWaitHonoursOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		cancel  bool // the context is cancelled while waiting
		wantErr error
	}{
		{name: "no wait", opts: Options{NoWait: true}, wantErr: ErrLockBusy},
		{name: "wait 50ms", opts: Options{Wait: 50 * time.Millisecond}, wantErr: ErrLockBusy},
		{name: "context cancelled", cancel: true, wantErr: context.Canceled},
	}
	ops := []struct {
		name string
		run  func(ctx context.Context, c *Cache) error
	}{
		{"fetch", func(ctx context.Context, c *Cache) error {
			f, err := c.Fetch(ctx, blobOf(content(9, 99), nil))
			if f != nil {
				f.Close()
			}
			return err
		}},
		{"inventory", func(ctx context.Context, c *Cache) error { _, err := c.Inventory(ctx); return err }},
		{"prune", func(ctx context.Context, c *Cache) error { _, err := c.Prune(ctx, Policy{}, false); return err }},
	}
	for _, tt := range tests {
		for _, op := range ops {
			t.Run(tt.name+"/"+op.name, func(t *testing.T) {
				c := newTestCache(t, tt.opts)
				mustFetch(t, c, content(1, 100))
				holdLockPath(t, c.gatePath())
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				if tt.cancel {
					c.noticeAfter = 0
					c.opts.Notice = func(string) { cancel() } // cancel once it waits
				}
				err := op.run(ctx, c)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%s while the gate is held = %v, want %v", op.name, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), c.lockPath) {
					t.Errorf("error %q does not name the lock", err)
				}
			})
		}
	}
}
