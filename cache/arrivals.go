package cache

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Arrivals lets readers take a blob's bytes as Fetch downloads them, before
// the blob is verified, so that a consumer (banger's flattener) works while
// the download runs instead of after it. Set Blob.Arrivals to one made by
// NewArrivals; a Follow reader then returns the bytes as they reach the
// temp file, and ends with io.EOF only once Fetch has verified the whole
// blob, or with Fetch's error if it failed. A consumer must therefore not
// publish anything it made from the bytes before its reader returned
// io.EOF.
//
// A retried download starts again from the first byte; a reader goes on
// from where it was, in the new attempt's bytes. Verification still covers
// what it returned when the source sends the same bytes every time, which
// is what a digest-addressed source does; a consumer that must be sure
// whatever the source does checks what it read against a digest of its own
// (banger checks each layer's diff ID).
//
// An Arrivals serves one Fetch; its methods are safe for concurrent use.
// Close it when Fetch has returned and its readers are closed.
type Arrivals struct {
	mu sync.Mutex
	// file is a read-only descriptor of the current attempt's temp file,
	// of the Arrivals' own so that it outlives the attempt's; nil between
	// attempts, and once Fetch succeeded and no reader is left (an image
	// of 2,000 layers must not hold 2,000 descriptors). Readers duplicate
	// it in turn. n is the bytes of the attempt written so far, and
	// attempt counts attempts so that a reader sees a new one start;
	// readers counts the open readers.
	file    *os.File
	readers int
	n       int64
	attempt int
	done    bool
	err     error
	// changed is closed, and replaced, whenever any of the above changes.
	changed chan struct{}
	// started is closed when the first attempt starts, or when Fetch ends
	// without one (a cache hit, a failure before downloading).
	started     chan struct{}
	startedOnce sync.Once
}

// NewArrivals returns an Arrivals for one Fetch.
func NewArrivals() *Arrivals {
	return &Arrivals{changed: make(chan struct{}), started: make(chan struct{})}
}

// Started is closed once Follow can tell whether there is a download to
// follow: when the first download attempt starts, or when Fetch ended
// without one.
func (a *Arrivals) Started() <-chan struct{} { return a.started }

// Follow returns a reader of the blob from its first byte, and true, if a
// download is under way; false if Fetch has ended (the caller then uses
// what Fetch returned) or has not started downloading. The reader waits
// for bytes until ctx ends, and holds a descriptor of its own until it is
// closed.
func (a *Arrivals) Follow(ctx context.Context) (io.ReadCloser, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done || a.attempt == 0 {
		return nil, false
	}
	a.readers++
	return &follower{a: a, ctx: ctx}, true
}

// Attempts returns how many download attempts have started.
func (a *Arrivals) Attempts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attempt
}

// Close releases the descriptor kept for readers.
func (a *Arrivals) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dropLocked()
}

func (a *Arrivals) dropLocked() error {
	var err error
	if a.file != nil {
		err = a.file.Close()
	}
	a.file, a.n = nil, 0
	return err
}

func (a *Arrivals) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// begin starts an attempt whose temp file reads through f, which stays the
// caller's.
func (a *Arrivals) begin(f *os.File) error {
	if a == nil {
		return nil
	}
	own, err := dup(f)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.dropLocked()
	a.file = own
	a.attempt++
	a.notifyLocked()
	a.mu.Unlock()
	a.startedOnce.Do(func() { close(a.started) })
	return nil
}

// grow records n more bytes of the current attempt in its temp file.
func (a *Arrivals) grow(n int) {
	if a == nil || n <= 0 {
		return
	}
	a.mu.Lock()
	a.n += int64(n)
	a.notifyLocked()
	a.mu.Unlock()
}

// abandon ends the current attempt, which failed.
func (a *Arrivals) abandon() {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.dropLocked()
	a.notifyLocked()
	a.mu.Unlock()
}

// end records Fetch's result: readers then reach io.EOF, or err.
func (a *Arrivals) end(err error) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.done, a.err = true, err
	if err != nil || a.readers == 0 {
		a.dropLocked()
	}
	a.notifyLocked()
	a.mu.Unlock()
	a.startedOnce.Do(func() { close(a.started) })
}

// follower reads an Arrivals' bytes as they come.
type follower struct {
	a       *Arrivals
	ctx     context.Context
	off     int64
	file    *os.File // a duplicate of the attempt's descriptor
	attempt int
}

// Read reads at the follower's offset, waiting for bytes to arrive until
// r.ctx ends.
func (r *follower) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		a := r.a
		a.mu.Lock()
		if a.err != nil {
			a.mu.Unlock()
			return 0, a.err
		}
		if a.file != nil && a.attempt != r.attempt {
			if err := r.reopen(a.file, a.attempt); err != nil {
				a.mu.Unlock()
				return 0, err
			}
		}
		avail, done, changed := a.n-r.off, a.done, a.changed
		if a.file == nil || a.attempt != r.attempt {
			avail = 0
		}
		a.mu.Unlock()
		if avail > 0 {
			// The bytes below a.n were written before a.n was raised,
			// so a read of them sees them.
			n, err := r.file.ReadAt(p[:min(int64(len(p)), avail)], r.off)
			r.off += int64(n)
			if n > 0 || err == nil {
				return n, nil
			}
			return 0, fmt.Errorf("reading arriving blob: %w", err)
		}
		if done {
			// A successful Fetch keeps its last attempt's file, which
			// this reader has read to its end.
			return 0, io.EOF
		}
		select {
		case <-changed:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// reopen moves the reader to attempt's descriptor f; the caller holds
// a.mu, so f is open.
func (r *follower) reopen(f *os.File, attempt int) error {
	own, err := dup(f)
	if err != nil {
		return err
	}
	if r.file != nil {
		r.file.Close()
	}
	r.file, r.attempt = own, attempt
	return nil
}

// dup returns a descriptor of f's open file of its own.
func dup(f *os.File) (*os.File, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("duplicating the descriptor of %s: %w", f.Name(), err)
	}
	var fd int
	cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("duplicating the descriptor of %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func (r *follower) Close() error {
	if r.a == nil {
		return nil
	}
	a := r.a
	r.a = nil
	a.mu.Lock()
	if a.readers--; a.readers == 0 && a.done {
		a.dropLocked()
	}
	a.mu.Unlock()
	if r.file != nil {
		return r.file.Close()
	}
	return nil
}
