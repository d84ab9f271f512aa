package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Blob describes a blob to fetch: its digest, its size, and where it comes
// from.
type Blob struct {
	// Digest is "sha256:<64 hex>". Other algorithms are refused.
	Digest string
	// Size is the expected size in bytes, or -1 when the source does not
	// say (the digest still verifies the content).
	Size int64
	// Source names where the blob comes from, for error messages.
	Source string
	// Open opens the blob at its source. It is called again for each retry.
	Open func(ctx context.Context) (io.ReadCloser, error)
	// Retryable reports whether a failed Open or read is worth another
	// attempt. Nil retries every error but a cancelled context. Failures of
	// the cache itself (a full disk, a busy lock) are never retried.
	Retryable func(error) bool
	// Progress, if set, is called with the number of bytes just read from
	// the source, and with a negative number when an attempt's bytes are
	// void because it failed and will be retried.
	Progress func(n int64)
	// Arrivals, if set, lets readers follow a download (see Arrivals).
	Arrivals *Arrivals
}

// attempts and backoff bound the retries of one blob: a body cut mid-transfer
// or a flaky mirror is retried whole, a few times, with a growing pause.
const (
	attempts = 4
	backoff  = 250 * time.Millisecond
)

// Fetch returns an open, read-only file holding the blob's verified content,
// positioned at its start; the caller must close it. On a hit the cached file is checked
// for size and digest before it is returned; a corrupt cached blob is
// discarded (with a warning) and fetched again. On a miss the blob is
// streamed from b.Open into a temp file under tmp/, verified while it
// streams, synced, and linked to its final name blobs/sha256/<hex>: no reader
// ever sees a partial blob under a final name.
//
// Fetch holds the shared cache lock only around namespace operations. If a
// prune renames the cache aside while Fetch streams, the open file stays
// valid and is returned, but it is not published in the new cache.
//
// Concurrent Fetches of one digest, in one process or many, each download and
// verify; the first to publish wins and the others remove their temp files.
//
// With b.Arrivals set, readers may take the bytes of a download while it
// streams; Fetch tells them its result before it returns.
func (c *Cache) Fetch(ctx context.Context, b Blob) (*os.File, error) {
	f, err := c.fetch(ctx, b)
	b.Arrivals.end(err)
	return f, err
}

func (c *Cache) fetch(ctx context.Context, b Blob) (*os.File, error) {
	hexDigest, err := parseDigest(b.Digest)
	if err != nil {
		return nil, fmt.Errorf("blob from %s: %w", b.Source, err)
	}
	f, err := c.lookup(ctx, hexDigest, b)
	if f != nil || err != nil {
		return f, err
	}
	if b.Open == nil {
		return nil, fmt.Errorf("fetching blob %s from %s: Blob.Open is nil", b.Digest, b.Source)
	}
	retryable := b.Retryable
	if retryable == nil {
		retryable = func(error) bool { return true }
	}
	for attempt := 1; ; attempt++ {
		f, err := c.download(ctx, hexDigest, b)
		if err == nil {
			return f, nil
		}
		// A failure of the cache's own disk (full, read-only) would only
		// repeat after downloading the whole blob again: stop at once.
		var local *localError
		if ctx.Err() != nil || errors.As(err, &local) || !retryable(err) {
			return nil, err
		}
		if attempt == attempts {
			return nil, fmt.Errorf("%w (gave up after %d attempts)", err, attempts)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(c.backoff << (attempt - 1)):
		}
	}
}

// localError marks a failure of the cache itself rather than of the blob's
// source, so that Fetch does not retry it. It reads as the error it wraps.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// localWriter marks its writer's errors as local: io.Copy does not say
// whether its reader or its writer failed.
type localWriter struct{ w io.Writer }

func (w localWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		err = &localError{err}
	}
	return n, err
}

// parseDigest validates a digest before it becomes a path.
func parseDigest(d string) (string, error) {
	hexDigest, ok := strings.CutPrefix(d, "sha256:")
	if !ok {
		return "", fmt.Errorf("unsupported digest %q: only sha256 is supported", d)
	}
	if !validHex(hexDigest) {
		return "", fmt.Errorf("malformed digest %q", d)
	}
	return hexDigest, nil
}

func validHex(s string) bool { return validHexLen(s, sha256.Size*2) }

// validHexLen reports whether s is n lowercase hex digits.
func validHexLen(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ { // bytes, not runes: this runs per blob
		if !isLowerHex[s[i]] {
			return false
		}
	}
	return true
}

// isLowerHex is a table rather than comparisons: a 100,000-blob cache
// checks 6.4 million bytes per `cache du`.
var isLowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()

// lookup returns the cached blob, verified, or nil on a miss. Anything at
// the blob's name that is not a regular file holding exactly the blob (a
// truncated or altered file, a directory, a symlink) is discarded with a
// warning and reported as a miss, so that the caller fetches it again.
func (c *Cache) lookup(ctx context.Context, hexDigest string, b Blob) (*os.File, error) {
	name := blobName(hexDigest)
	var (
		f    *os.File
		info fs.FileInfo // the entry itself, never what a symlink points to
	)
	err := c.withDir(ctx, shared, func(r *os.Root) error {
		if err := c.repair(r); err != nil {
			return err
		}
		var err error
		info, err = r.Lstat(name)
		if err == nil && info.Mode().IsRegular() {
			f, err = r.Open(name)
		}
		if errors.Is(err, fs.ErrNotExist) {
			info = nil // a miss, even if another process discarded it just now
			return nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("looking up blob sha256:%s in cache %s: %w", hexDigest, c.dir, err)
	}
	if info == nil {
		return nil, nil
	}
	var bad error
	if f == nil {
		bad = fmt.Errorf("not a regular file but %v", info.Mode())
	} else if bad = verifyFile(f, info, hexDigest, b.Size); bad != nil {
		f.Close()
	}
	if bad != nil {
		if err := c.discard(ctx, name, info); err != nil {
			return nil, fmt.Errorf("discarding corrupt blob sha256:%s (%v): %w: %w", hexDigest, bad, ErrDamaged, err)
		}
		c.warn("discarded corrupt cached blob sha256:%s (%v); fetching it again", hexDigest, bad)
		return nil, nil
	}
	c.touch(ctx, name, info)
	if b.Progress != nil {
		b.Progress(info.Size())
	}
	return f, nil
}

// touchEvery bounds how often a hit records its use: like Go's build cache,
// at most one metadata write per blob per hour, which is precise enough for
// pruning by age and cheap on every pull.
const touchEvery = time.Hour

// touch records a use of the blob as its mtime, which selective prune reads
// as the last use (a fresh write counts as a use). Failing to record it (a
// read-only cache, another user's blob) costs nothing but precision.
func (c *Cache) touch(ctx context.Context, name string, info fs.FileInfo) {
	now := c.now()
	if now.Sub(info.ModTime()) < touchEvery {
		return
	}
	c.withDir(ctx, shared, func(r *os.Root) error {
		if current, err := r.Lstat(name); err == nil && os.SameFile(current, info) {
			r.Chtimes(name, now, now)
		}
		return nil
	})
}

// verifyFile checks that f is the regular file entry describes, holding the
// blob's size and digest, and leaves it at offset 0.
func verifyFile(f *os.File, entry fs.FileInfo, hexDigest string, size int64) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() || !os.SameFile(info, entry) {
		return fmt.Errorf("replaced while being opened")
	}
	if size >= 0 && info.Size() != size {
		return fmt.Errorf("size %d, want %d", info.Size(), size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexDigest {
		return fmt.Errorf("%w: content hashes to sha256:%s", ErrDigestMismatch, got)
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// discard removes name (inside the cache) if it is still the entry
// described by opened, so that a good blob published meanwhile by another
// process is left alone. A directory is removed with its contents; a
// symlink is removed as a link, never followed.
func (c *Cache) discard(ctx context.Context, name string, opened fs.FileInfo) error {
	return c.withDir(ctx, shared, func(r *os.Root) error {
		current, err := r.Lstat(name)
		if err != nil || !os.SameFile(opened, current) {
			return nil
		}
		if err := r.RemoveAll(name); err != nil {
			return fmt.Errorf("removing %s/%s: %w", c.dir, name, err)
		}
		return nil
	})
}

// withDir runs fn on the current cache directory under the lock in mode.
// Shared holders are pulls, which need the cache, so it is created when it
// is missing; an exclusive holder (eviction) creates nothing, and gets a nil
// r when the cache is not there (its leftovers may still be).
func (c *Cache) withDir(ctx context.Context, mode lockMode, fn func(r *os.Root) error) error {
	if err := c.nested(); err != nil {
		return err
	}
	unlock, err := c.lock(ctx, mode)
	if err != nil {
		return err
	}
	defer unlock()
	if mode == exclusive {
		if ok, err := c.exists(); err != nil {
			return err
		} else if !ok {
			return fn(nil)
		}
	}
	r, err := c.openDir()
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

// download fetches the blob once into a temp file and publishes it. It
// returns a read-only descriptor of the published file; on error it removes
// the temp file and takes back the bytes it reported to Progress.
func (c *Cache) download(ctx context.Context, hexDigest string, b Blob) (_ *os.File, err error) {
	tmpName := tempName(hexDigest)
	var (
		tmp, reader *os.File
		opened      fs.FileInfo
	)
	err = c.withDir(ctx, shared, func(r *os.Root) error {
		var err error
		p := c.perms()
		tmp, err = r.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, p.file)
		if err != nil {
			return err
		}
		if err := p.fixFile(tmp); err != nil {
			tmp.Close()
			r.Remove(tmpName)
			return err
		}
		// The caller gets its own read-only descriptor: the published blob
		// is this very inode, and a caller writing through a read-write
		// one would corrupt the cache.
		reader, err = r.Open(tmpName)
		if err == nil {
			opened, err = reader.Stat()
		}
		if err == nil {
			// The flock lives as long as the writer: a selective prune
			// that can take it knows the temp file was abandoned (its
			// writer died), and never removes one still being written.
			// Blocking, not LOCK_NB: a dry run probing the new file
			// under the shared lock may hold its flock for an instant,
			// and that must not fail the pull.
			err = unix.Flock(int(reader.Fd()), unix.LOCK_EX)
		}
		if err != nil {
			tmp.Close()
			if reader != nil {
				reader.Close()
			}
			r.Remove(tmpName)
			return err
		}
		c.removeStaleTemps(r)
		return nil
	})
	if err != nil {
		return nil, &localError{fmt.Errorf("creating temp file for sha256:%s in cache %s: %w", hexDigest, c.dir, err)}
	}
	var read int64
	defer func() {
		if err == nil {
			return
		}
		b.Arrivals.abandon()
		tmp.Close()
		reader.Close()
		// Cleanup must happen even when ctx was cancelled (Ctrl-C). If a
		// prune moved the cache aside meanwhile, the temp file went with
		// it and discard finds nothing to do.
		c.discard(context.WithoutCancel(ctx), tmpName, opened)
		if b.Progress != nil && read > 0 {
			b.Progress(-read)
		}
	}()
	if err = b.Arrivals.begin(reader); err != nil {
		return nil, &localError{fmt.Errorf("following the download of sha256:%s: %w", hexDigest, err)}
	}

	var w io.Writer = tmp
	if b.Arrivals != nil {
		w = arrivingWriter{tmp, b.Arrivals}
	}
	read, err = c.stream(ctx, w, hexDigest, b)
	if err != nil {
		return nil, err
	}
	// Sync before the blob gets its final name, so that a crash cannot
	// leave a published name on unwritten data; close to catch late write
	// errors from the filesystem.
	if err := tmp.Sync(); err != nil {
		return nil, &localError{fmt.Errorf("syncing blob sha256:%s: %w", hexDigest, err)}
	}
	if err := tmp.Close(); err != nil {
		return nil, &localError{fmt.Errorf("writing blob sha256:%s: %w", hexDigest, err)}
	}
	if err := c.publish(ctx, tmpName, opened, hexDigest); err != nil {
		return nil, &localError{err}
	}
	return reader, nil
}

// stream copies the blob from its source into w, verifying size and digest.
func (c *Cache) stream(ctx context.Context, w io.Writer, hexDigest string, b Blob) (int64, error) {
	rc, err := b.Open(ctx)
	if err != nil {
		return 0, fmt.Errorf("fetching blob sha256:%s from %s: %w", hexDigest, b.Source, err)
	}
	defer rc.Close()
	h := sha256.New()
	src := io.Reader(rc)
	if b.Size >= 0 {
		// One byte past the expected size is enough to tell a blob that is
		// too long, without reading a runaway body to its end.
		src = io.LimitReader(rc, b.Size+1)
	}
	n, err := io.CopyBuffer(io.MultiWriter(localWriter{w}, h), &progressReader{ctx: ctx, r: src, progress: b.Progress}, make([]byte, 1<<20))
	var local *localError
	if errors.As(err, &local) {
		return n, &localError{fmt.Errorf("writing blob sha256:%s into cache: %w", hexDigest, local.err)}
	}
	if err != nil {
		return n, fmt.Errorf("fetching blob sha256:%s from %s: %w", hexDigest, b.Source, err)
	}
	if b.Size >= 0 && n != b.Size {
		return n, fmt.Errorf("fetching blob sha256:%s from %s: got %s bytes, want %d: %w", hexDigest, b.Source, sizeWord(n, b.Size), b.Size, ErrDigestMismatch)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexDigest {
		return n, fmt.Errorf("fetching blob sha256:%s from %s: %w (content is sha256:%s); nothing was cached", hexDigest, b.Source, ErrDigestMismatch, got)
	}
	return n, nil
}

func sizeWord(n, want int64) string {
	if n > want {
		return "more than " + fmt.Sprint(want)
	}
	return fmt.Sprint(n)
}

// publish links the verified temp file to its final name, unless a prune
// moved the cache away meanwhile (the temp file is then in the aside, and the
// blob is used without being cached).
func (c *Cache) publish(ctx context.Context, tmpName string, opened fs.FileInfo, hexDigest string) error {
	final := blobName(hexDigest)
	return c.withDir(ctx, shared, func(r *os.Root) error {
		current, err := r.Lstat(tmpName)
		if err != nil || !os.SameFile(opened, current) {
			return nil
		}
		// Link, not rename: it never replaces a blob another process
		// published first, and the loser just drops its temp file.
		err = r.Link(tmpName, final)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			// Filesystems without hard links still rename atomically.
			if err := r.Rename(tmpName, final); err != nil {
				return fmt.Errorf("publishing blob sha256:%s: %w", hexDigest, err)
			}
		} else if err := r.Remove(tmpName); err != nil {
			return fmt.Errorf("removing temp file of sha256:%s: %w", hexDigest, err)
		}
		return syncDir(c.dir + "/" + blobsSubdir)
	})
}

// arrivingWriter tells an Arrivals of each write to the temp file.
type arrivingWriter struct {
	w io.Writer
	a *Arrivals
}

func (w arrivingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.a.grow(n)
	return n, err
}

// progressReader reports bytes read and stops early when ctx ends.
type progressReader struct {
	ctx      context.Context
	r        io.Reader
	progress func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.Read(b)
	if n > 0 && p.progress != nil {
		p.progress(int64(n))
	}
	return n, err
}
