package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
)

const (
	// noticeAfter is the default of Cache.noticeAfter, how long a lock wait
	// stays silent: long enough that an
	// uncontended run never prints it, short enough that a user waiting on a
	// prune or a pull knows why nothing happens.
	noticeAfter = time.Second
	// pollMin and pollMax bound the retry interval. flock(2) cannot wait with
	// a deadline, so waiting is polling; pulls hold the lock only for short
	// namespace operations, so an exclusive taker polling every few
	// milliseconds finds it free almost at once.
	pollMin = 2 * time.Millisecond
	pollMax = 50 * time.Millisecond
)

// lock takes the cache lock, shared or exclusive, honouring the wait policy
// in c.opts. It returns the function that releases it.
//
// flock(2) has no writer preference: a steady stream of overlapping shared
// holders would keep an exclusive taker out for ever. So every taker first
// passes through a gate, a second lock file beside the lock: a shared taker
// holds the gate only while it takes its shared lock, and an exclusive taker
// holds it from before it waits until it releases. Once prune is waiting,
// new pulls queue at the gate and prune gets in after the pulls already
// inside, which hold the lock only for short namespace operations.
//
// Each call opens its own file descriptions, so goroutines of one process
// can hold shared locks independently. A lock held by a process that died is
// released by the kernel with its file descriptors: there are no stale locks.
func (c *Cache) lock(ctx context.Context, mode lockMode) (unlock func(), err error) {
	excl := mode == exclusive
	if err := os.MkdirAll(filepath.Dir(c.lockPath), dirPerm); err != nil {
		return nil, fmt.Errorf("creating lock directory: %w", err)
	}
	w := &waiter{opts: c.opts, noticeAfter: c.noticeAfter, lockPath: c.lockPath, start: time.Now()}
	gate, err := w.acquire(ctx, c.gatePath(), true)
	if err != nil && !(errors.Is(err, fs.ErrPermission) && !excl) {
		return nil, err
	}
	// A reader of a system cache who may not create the gate file still
	// measures it; it just does not queue behind a waiting prune.
	main, err := w.acquire(ctx, c.lockPath, excl)
	if err != nil {
		if gate != nil {
			gate.Close()
		}
		return nil, err
	}
	if !excl && gate != nil {
		gate.Close()
		gate = nil
	}
	return func() {
		main.Close()
		if gate != nil {
			gate.Close()
		}
	}, nil
}

// lockMode says how a caller takes the cache lock.
type lockMode int

const (
	// shared is for pulls and measurements: many at once.
	shared lockMode = iota
	// exclusive is for prune: it alone.
	exclusive
)

// LockBusyError is the error (matching ErrLockBusy) of a lock that was
// still held by another process when the wait allowed by Options ran out.
type LockBusyError struct {
	Path   string        // the lock file
	NoWait bool          // Options.NoWait was set: no wait at all
	Waited time.Duration // how long it waited
}

func (e *LockBusyError) Error() string {
	if e.NoWait {
		return fmt.Sprintf("%v: %s is held by another banger process; retry later", ErrLockBusy, e.Path)
	}
	return fmt.Sprintf("%v: %s is held by another banger process (waited %s); retry later", ErrLockBusy, e.Path, e.Waited.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrLockBusy) hold.
func (e *LockBusyError) Is(target error) bool { return target == ErrLockBusy }

// waiter shares one wait budget and one notice between the locks of one
// lock call.
type waiter struct {
	opts        Options
	noticeAfter time.Duration
	lockPath    string // the lock named in messages
	start       time.Time
	noticed     bool
	perm        os.FileMode // of a lock file created; 0 means filePerm
}

// LockFile takes an exclusive flock on path (created 0600 if missing) with
// the cache lock's wait policy: opts.Wait, opts.NoWait and opts.Notice, and
// ctx, are honoured exactly as for the cache lock, and a lock still held
// when the wait runs out is a *LockBusyError. It returns the function that
// releases it. It is exported for the image store, which needs the same
// policy for its own lock file and must not grow a second polling loop; it
// has no gate, since no holder of such a lock keeps it for long.
func LockFile(ctx context.Context, path string, opts Options) (unlock func(), err error) {
	w := &waiter{opts: opts, noticeAfter: noticeAfter, lockPath: path, start: time.Now(), perm: 0o600}
	fl, err := w.acquire(ctx, path, true)
	if err != nil {
		return nil, err
	}
	return func() { fl.Close() }, nil
}

// acquire polls for one flock, since flock(2) cannot wait with a deadline.
func (w *waiter) acquire(ctx context.Context, path string, exclusive bool) (*flock.Flock, error) {
	// 0644 (less umask) so that unprivileged users can take the shared
	// lock on a system cache to measure it.
	perm := os.FileMode(filePerm)
	if w.perm != 0 {
		perm = w.perm
	}
	fl := flock.New(path, flock.SetPermissions(perm))
	try := fl.TryRLock
	if exclusive {
		try = fl.TryLock
	}
	delay := pollMin
	for {
		ok, err := try()
		if err != nil {
			fl.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if ok {
			return fl, nil
		}
		waited := time.Since(w.start)
		if w.opts.NoWait || (w.opts.Wait > 0 && waited >= w.opts.Wait) {
			fl.Close()
			return nil, &LockBusyError{Path: w.lockPath, NoWait: w.opts.NoWait, Waited: waited}
		}
		if !w.noticed && waited >= w.noticeAfter && w.opts.Notice != nil {
			w.noticed = true
			w.opts.Notice(fmt.Sprintf("waiting for lock %s held by another banger process", w.lockPath))
		}
		select {
		case <-ctx.Done():
			fl.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", w.lockPath, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, pollMax)
	}
}
