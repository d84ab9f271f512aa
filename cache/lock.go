package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
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
	p := c.perms()
	if err := p.mkdirAll(filepath.Dir(c.lockPath)); err != nil {
		return nil, fmt.Errorf("creating lock directory: %w", err)
	}
	w := &waiter{opts: c.opts, noticeAfter: c.noticeAfter, what: "cache lock", lockPath: c.lockPath, perms: p, start: time.Now()}
	gate, err := w.acquire(ctx, c.gatePath(), true)
	if err != nil {
		return nil, err
	}
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
	What   string        // which lock: "cache lock", or LockFile's what
	Path   string        // the lock file
	NoWait bool          // Options.NoWait was set: no wait at all
	Waited time.Duration // how long it waited
}

func (e *LockBusyError) Error() string {
	if e.NoWait {
		return fmt.Sprintf("%s is busy: %s is held by another banger process; retry later", e.What, e.Path)
	}
	return fmt.Sprintf("%s is busy: %s is held by another banger process (waited %s); retry later", e.What, e.Path, e.Waited.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrLockBusy) hold.
func (e *LockBusyError) Is(target error) bool { return target == ErrLockBusy }

// waiter shares one wait budget and one notice between the locks of one
// lock call.
type waiter struct {
	opts        Options
	noticeAfter time.Duration
	what        string // the lock's name in messages: "cache lock"
	lockPath    string // the lock file named in messages
	perms       perms
	start       time.Time
	noticed     bool
}

// LockFile takes an exclusive flock on path, created private (0600) if
// missing, with the cache lock's wait policy: ctx, opts.Wait, opts.NoWait
// and opts.Notice are honoured exactly as for the cache lock, a lock file
// of another user is refused, and a lock still held when the wait runs out
// is a *LockBusyError whose message calls it what: "lock" when the
// caller's wrapping says whose. It returns the function that releases it.
//
// It is exported for the image store, which needs the same policy for its
// own lock and should not grow a second polling loop. It has no gate: no
// holder of such a lock keeps it for more than a few renames.
func LockFile(ctx context.Context, what, path string, opts Options) (unlock func(), err error) {
	w := &waiter{opts: opts, noticeAfter: noticeAfter, what: what, lockPath: path, perms: perms{dir: privateDirPerm, file: privateFilePerm}, start: time.Now()}
	fl, err := w.acquire(ctx, path, true)
	if err != nil {
		return nil, err
	}
	return func() { fl.Close() }, nil
}

// acquire polls for one flock, since flock(2) cannot wait with a deadline.
func (w *waiter) acquire(ctx context.Context, path string, exclusive bool) (*flock.Flock, error) {
	// Private (perms): no other user may open the lock, or they could
	// hold it for ever. O_NOFOLLOW: the lock is this file, not one a link
	// points to.
	fl := flock.New(path, flock.SetPermissions(w.perms.file), flock.SetFlag(os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW))
	try := fl.TryRLock
	if exclusive {
		try = fl.TryLock
	}
	delay := pollMin
	for checked := false; ; {
		ok, err := try()
		if err != nil {
			fl.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		// Checked once the file exists, taken or not, and before any
		// wait: a foreign lock is refused, never waited on.
		if !checked {
			checked = true
			info, err := os.Lstat(path)
			if err != nil {
				err = fmt.Errorf("checking lock file %s: %w", path, err)
			} else {
				err = w.perms.checkOwner(path, info)
			}
			if err != nil {
				fl.Close()
				return nil, err
			}
		}
		if ok {
			return fl, nil
		}
		waited := time.Since(w.start)
		if w.opts.NoWait || (w.opts.Wait > 0 && waited >= w.opts.Wait) {
			fl.Close()
			return nil, &LockBusyError{What: w.what, Path: w.lockPath, NoWait: w.opts.NoWait, Waited: waited}
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
