package cache

import (
	"context"
	"fmt"
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
// Each call opens its own file description, so goroutines of one process
// can hold shared locks independently. A lock held by a process that died is
// released by the kernel with its file descriptors: there are no stale locks.
func (c *Cache) lock(ctx context.Context, exclusive bool) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(c.lockPath), dirPerm); err != nil {
		return nil, fmt.Errorf("creating lock directory: %w", err)
	}
	// 0644 (less umask) so that unprivileged users can take the shared
	// lock on a system cache to measure it.
	fl := flock.New(c.lockPath, flock.SetPermissions(filePerm))
	try := fl.TryRLock
	if exclusive {
		try = fl.TryLock
	}
	start := time.Now()
	noticed := false
	delay := pollMin
	for {
		ok, err := try()
		if err != nil {
			fl.Close()
			return nil, fmt.Errorf("locking %s: %w", c.lockPath, err)
		}
		if ok {
			return func() { fl.Unlock() }, nil
		}
		waited := time.Since(start)
		if c.opts.NoWait || (c.opts.Wait > 0 && waited >= c.opts.Wait) {
			fl.Close()
			if c.opts.NoWait {
				return nil, fmt.Errorf("%w: %s is held by another banger process; retry later, or drop --no-wait to wait for it", ErrLockBusy, c.lockPath)
			}
			return nil, fmt.Errorf("%w: %s is held by another banger process (waited %s); retry later or raise --wait", ErrLockBusy, c.lockPath, waited.Round(time.Millisecond))
		}
		if !noticed && waited >= c.noticeAfter && c.opts.Notice != nil {
			noticed = true
			c.opts.Notice(fmt.Sprintf("waiting for lock %s held by another banger process", c.lockPath))
		}
		select {
		case <-ctx.Done():
			fl.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", c.lockPath, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, pollMax)
	}
}
