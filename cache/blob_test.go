package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// progressLog records Progress reports.
type progressLog struct {
	mu      sync.Mutex
	reports []int64
}

func (p *progressLog) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reports = append(p.reports, n)
}

// net returns the sum of all reports and whether any was negative.
func (p *progressLog) net() (sum int64, negative bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.reports {
		sum += n
		negative = negative || n < 0
	}
	return sum, negative
}

// gate is a reader that blocks at one point of a stream: the first Read
// closes reached and waits until release is closed (then reports EOF, so
// that an io.MultiReader moves on) or ctx ends.
type gate struct {
	ctx     context.Context
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func newGate(ctx context.Context) *gate {
	return &gate{ctx: ctx, reached: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) Read([]byte) (int, error) {
	g.once.Do(func() { close(g.reached) })
	select {
	case <-g.release:
		return 0, io.EOF
	case <-g.ctx.Done():
		return 0, g.ctx.Err()
	}
}

// gatedBlob serves data[:cut], then waits at g, then serves the rest.
func gatedBlob(data []byte, cut int, g *gate) Blob {
	b := blobOf(data, nil)
	b.Open = func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(data[:cut]), g, bytes.NewReader(data[cut:]))), nil
	}
	return b
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func checkDirEmpty(t *testing.T, dir string) {
	t.Helper()
	if got := names(t, dir); len(got) != 0 {
		t.Errorf("%s holds %q, want it empty", dir, got)
	}
}

func TestFetchMiss(t *testing.T) {
	tests := []struct {
		name      string
		data      []byte
		sizeKnown bool
	}{
		{"empty", nil, true},
		{"one byte", []byte{42}, true},
		{"small", content(1, 1000), true},
		{"larger than the copy buffer", content(2, 3<<20+17), true},
		{"size unknown", content(3, 5000), false},
		{"empty, size unknown", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			var progress progressLog
			b := blobOf(tt.data, &opens)
			b.Progress = progress.add
			if !tt.sizeKnown {
				b.Size = -1
			}
			f, err := c.Fetch(t.Context(), b)
			if err != nil {
				t.Fatalf("Fetch(%s) error: %v", b.Digest, err)
			}
			// The caller's descriptor must not be able to write the
			// published blob.
			if _, err := f.Write([]byte("x")); err == nil {
				t.Errorf("Fetch(%s) returned a writable file, want read-only", b.Digest)
			}
			if got := readFetched(t, f); !bytes.Equal(got, tt.data) {
				t.Errorf("Fetch(%s) = %d bytes, want %d", b.Digest, len(got), len(tt.data))
			}
			if got := opens.Load(); got != 1 {
				t.Errorf("Open called %d times, want 1", got)
			}
			if got, _ := progress.net(); got != int64(len(tt.data)) {
				t.Errorf("Progress reported %d bytes, want %d", got, len(tt.data))
			}
			published, err := os.ReadFile(blobPath(c, tt.data))
			if err != nil || !bytes.Equal(published, tt.data) {
				t.Errorf("published blob = %d bytes (err %v), want %d", len(published), err, len(tt.data))
			}
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
			if got := names(t, filepath.Join(c.dir, blobsSubdir)); len(got) != 1 {
				t.Errorf("blobs/sha256 holds %q, want one blob", got)
			}
		})
	}
}

func TestFetchHit(t *testing.T) {
	tests := []struct {
		name      string
		data      []byte
		sizeKnown bool
	}{
		{"small", content(1, 1000), true},
		{"empty", nil, true},
		{"size unknown", content(2, 2000), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warnings []string
			c := newTestCache(t, Options{Warn: func(msg string) { warnings = append(warnings, msg) }})
			mustFetch(t, c, tt.data)
			var progress progressLog
			b := blobOf(tt.data, nil)
			b.Open = func(context.Context) (io.ReadCloser, error) {
				t.Errorf("Open called on a hit")
				return nil, errors.New("unexpected Open")
			}
			b.Progress = progress.add
			if !tt.sizeKnown {
				b.Size = -1
			}
			for i := range 2 {
				f, err := c.Fetch(t.Context(), b)
				if err != nil {
					t.Fatalf("Fetch #%d (hit) error: %v", i, err)
				}
				if got := readFetched(t, f); !bytes.Equal(got, tt.data) {
					t.Errorf("Fetch #%d (hit) = %d bytes, want %d", i, len(got), len(tt.data))
				}
			}
			if got, _ := progress.net(); got != 2*int64(len(tt.data)) {
				t.Errorf("Progress reported %d bytes for two hits, want %d", got, 2*len(tt.data))
			}
			if len(warnings) != 0 {
				t.Errorf("Warn called on a good blob: %q", warnings)
			}
		})
	}
}

func TestFetchCorruptCachedBlob(t *testing.T) {
	data := content(5, 4096)
	outside := func(t *testing.T) string {
		t.Helper()
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "file"), data) // the right content, even
		writeFile(t, filepath.Join(dir, "dir", "file"), []byte("keep me"))
		return dir
	}
	tests := []struct {
		name      string
		sizeKnown bool
		corrupt   func(t *testing.T, path, outside string)
	}{
		{"flipped byte", true, func(t *testing.T, p, _ string) {
			b, _ := os.ReadFile(p)
			b[100] ^= 1
			writeFile(t, p, b)
		}},
		{"flipped byte, size unknown", false, func(t *testing.T, p, _ string) {
			b, _ := os.ReadFile(p)
			b[len(b)-1] ^= 0x80
			writeFile(t, p, b)
		}},
		{"truncated", true, func(t *testing.T, p, _ string) {
			if err := os.Truncate(p, 100); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated, size unknown", false, func(t *testing.T, p, _ string) {
			if err := os.Truncate(p, 100); err != nil {
				t.Fatal(err)
			}
		}},
		{"emptied", true, func(t *testing.T, p, _ string) {
			if err := os.Truncate(p, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"extended", true, func(t *testing.T, p, _ string) {
			b, _ := os.ReadFile(p)
			writeFile(t, p, append(b, 0))
		}},
		{"replaced by a directory", true, func(t *testing.T, p, _ string) {
			os.Remove(p)
			writeFile(t, filepath.Join(p, "inside"), []byte("x"))
		}},
		{"replaced by a symlink to a file outside", true, func(t *testing.T, p, out string) {
			os.Remove(p)
			symlink(t, filepath.Join(out, "file"), p)
		}},
		{"replaced by a symlink to a directory outside", true, func(t *testing.T, p, out string) {
			os.Remove(p)
			symlink(t, filepath.Join(out, "dir"), p)
		}},
		{"replaced by a dangling symlink", true, func(t *testing.T, p, out string) {
			os.Remove(p)
			symlink(t, filepath.Join(out, "nothing"), p)
		}},
		{"replaced by a symlink inside the cache", true, func(t *testing.T, p, _ string) {
			os.Remove(p)
			other := filepath.Join(filepath.Dir(p), "..", "..", tmpSubdir, "copy")
			writeFile(t, other, data)
			symlink(t, "../../tmp/copy", p)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warnings []string
			c := newTestCache(t, Options{Warn: func(msg string) { warnings = append(warnings, msg) }})
			mustFetch(t, c, data)
			out := outside(t)
			tt.corrupt(t, blobPath(c, data), out)
			before := snapshot(t, out)

			var opens atomic.Int32
			b := blobOf(data, &opens)
			if !tt.sizeKnown {
				b.Size = -1
			}
			f, err := c.Fetch(t.Context(), b)
			if err != nil {
				t.Fatalf("Fetch(%s) of a corrupt cached blob error: %v", b.Digest, err)
			}
			if got := readFetched(t, f); !bytes.Equal(got, data) {
				t.Errorf("Fetch(%s) = %d bytes, want %d", b.Digest, len(got), len(data))
			}
			if got := opens.Load(); got != 1 {
				t.Errorf("Open called %d times, want 1 (fetched again)", got)
			}
			if len(warnings) != 1 || !strings.Contains(warnings[0], b.Digest) {
				t.Errorf("warnings = %q, want one naming %s", warnings, b.Digest)
			}
			info, err := os.Lstat(blobPath(c, data))
			if err != nil || !info.Mode().IsRegular() {
				t.Fatalf("blob after repair: %v, mode %v; want a regular file", err, info.Mode())
			}
			if got, _ := os.ReadFile(blobPath(c, data)); !bytes.Equal(got, data) {
				t.Errorf("blob after repair holds %d bytes, want the right %d", len(got), len(data))
			}
			checkSame(t, "outside the cache", before, snapshot(t, out))

			// Repaired for good: the next Fetch is a quiet hit.
			mustFetch(t, c, data)
			if got := opens.Load(); got != 1 || len(warnings) != 1 {
				t.Errorf("after repair, Open called %d times and %d warnings, want 1 and 1", got, len(warnings))
			}
		})
	}
}

func TestFetchBadSource(t *testing.T) {
	data := content(7, 3000)
	other := content(8, 3000)
	tests := []struct {
		name      string
		serve     []byte
		size      int64
		retryable func(error) bool
		wantMsg   string
	}{
		{"different content", other, int64(len(data)), nil, "content is " + digestOf(other)},
		{"different content, size unknown", other, -1, nil, "content is " + digestOf(other)},
		{"too short", data[:2999], int64(len(data)), nil, "got 2999 bytes, want 3000"},
		{"too short, size unknown", data[:2999], -1, nil, "content is " + digestOf(data[:2999])},
		{"empty", nil, int64(len(data)), nil, "got 0 bytes, want 3000"},
		{"too long", append(bytes.Clone(data), 'x'), int64(len(data)), nil, "got more than 3000 bytes"},
		{"too long, size unknown", append(bytes.Clone(data), 'x'), -1, nil, "content is " + digestOf(append(bytes.Clone(data), 'x'))},
		{"far too long", content(9, 1<<20), int64(len(data)), nil, "got more than 3000 bytes"},
		{"not retried", other, int64(len(data)), func(error) bool { return false }, "content is " + digestOf(other)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			var progress progressLog
			b := blobOf(tt.serve, &opens)
			b.Digest, b.Size, b.Source = digestOf(data), tt.size, "registry.test/bad:source"
			b.Progress = progress.add
			b.Retryable = tt.retryable
			f, err := c.Fetch(t.Context(), b)
			if err == nil {
				f.Close()
				t.Fatalf("Fetch(%s) of bad content = nil error, want %v", b.Digest, ErrDigestMismatch)
			}
			if !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("Fetch(%s) error = %v, want it to wrap %v", b.Digest, err, ErrDigestMismatch)
			}
			for _, want := range []string{b.Digest, b.Source, tt.wantMsg} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Fetch error %q does not name %s", err, want)
				}
			}
			if tt.retryable != nil && opens.Load() != 1 {
				t.Errorf("Open called %d times with Retryable false, want 1", opens.Load())
			}
			if sum, _ := progress.net(); sum != 0 {
				t.Errorf("Progress nets to %d bytes after failure, want 0", sum)
			}
			checkDirEmpty(t, filepath.Join(c.dir, blobsSubdir))
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
		})
	}
}

// TestFetchBadDigest checks that a digest that cannot name a blob is
// refused before anything is created: no cache root, no lock file.
func TestFetchBadDigest(t *testing.T) {
	good := hexOf([]byte("x"))
	tests := []struct {
		name   string
		digest string
	}{
		{"empty", ""},
		{"sha512", "sha512:" + good + good},
		{"md5", "md5:d41d8cd98f00b204e9800998ecf8427e"},
		{"no algorithm", good},
		{"short", "sha256:" + good[:63]},
		{"upper case", "sha256:" + strings.ToUpper(good)},
		{"traversal", "sha256:../../" + good[6:]},
		{"absolute", "sha256:/" + good[1:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			b := blobOf([]byte("x"), &opens)
			b.Digest = tt.digest
			f, err := c.Fetch(t.Context(), b)
			if err == nil {
				f.Close()
				t.Fatalf("Fetch(%q) = nil error, want a refusal", tt.digest)
			}
			if !strings.Contains(err.Error(), "digest") {
				t.Errorf("Fetch(%q) error = %q, want it to mention the digest", tt.digest, err)
			}
			if opens.Load() != 0 {
				t.Errorf("Open called %d times, want 0", opens.Load())
			}
			if _, err := os.Lstat(c.parent()); err == nil {
				t.Errorf("Fetch(%q) created %s", tt.digest, c.parent())
			}
		})
	}
}

// TestFetchRetry serves bodies cut mid-stream, or fails Open, a number of
// times before serving the blob whole.
func TestFetchRetry(t *testing.T) {
	data := content(11, 10000)
	cutBody := func(int) (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(data[:4000]), errReader{io.ErrUnexpectedEOF})), nil
	}
	refuse := func(int) (io.ReadCloser, error) { return nil, errors.New("503 Service Unavailable") }
	tests := []struct {
		name      string
		failures  int
		fail      func(attempt int) (io.ReadCloser, error)
		retryable func(error) bool
		wantErr   error // nil: success
		wantOpens int32
		// wantVoid: some bytes were reported and then taken back.
		wantVoid bool
	}{
		{name: "one cut body", failures: 1, fail: cutBody, wantOpens: 2, wantVoid: true},
		{name: "three cut bodies", failures: 3, fail: cutBody, wantOpens: 4, wantVoid: true},
		{name: "cut bodies exhaust attempts", failures: 4, fail: cutBody, wantErr: io.ErrUnexpectedEOF, wantOpens: 4, wantVoid: true},
		{name: "open fails twice", failures: 2, fail: refuse, wantOpens: 3},
		{name: "cut body not retryable", failures: 1, fail: cutBody, retryable: func(error) bool { return false }, wantErr: io.ErrUnexpectedEOF, wantOpens: 1, wantVoid: true},
		{name: "retryable asked about the error", failures: 1, fail: cutBody, retryable: func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, wantOpens: 2, wantVoid: true},
		{name: "open error wrapped", failures: 9, fail: func(int) (io.ReadCloser, error) { return nil, errUnauthorized }, retryable: func(err error) bool { return !errors.Is(err, errUnauthorized) }, wantErr: errUnauthorized, wantOpens: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			var progress progressLog
			b := blobOf(data, nil)
			b.Open = func(context.Context) (io.ReadCloser, error) {
				n := int(opens.Add(1))
				if n <= tt.failures {
					return tt.fail(n)
				}
				return io.NopCloser(bytes.NewReader(data)), nil
			}
			b.Retryable = tt.retryable
			b.Progress = progress.add
			f, err := c.Fetch(t.Context(), b)
			if got := opens.Load(); got != tt.wantOpens {
				t.Errorf("Open called %d times, want %d", got, tt.wantOpens)
			}
			sum, negative := progress.net()
			if negative != tt.wantVoid {
				t.Errorf("Progress reported a negative number: %v, want %v", negative, tt.wantVoid)
			}
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
			if tt.wantErr != nil {
				if err == nil {
					f.Close()
					t.Fatalf("Fetch(%s) = nil error, want %v", b.Digest, tt.wantErr)
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Fetch(%s) error = %v, want it to wrap %v", b.Digest, err, tt.wantErr)
				}
				if sum != 0 {
					t.Errorf("Progress nets to %d after failure, want 0", sum)
				}
				checkDirEmpty(t, filepath.Join(c.dir, blobsSubdir))
				return
			}
			if err != nil {
				t.Fatalf("Fetch(%s) error: %v", b.Digest, err)
			}
			if got := readFetched(t, f); !bytes.Equal(got, data) {
				t.Errorf("Fetch(%s) = %d bytes, want %d", b.Digest, len(got), len(data))
			}
			if sum != int64(len(data)) {
				t.Errorf("Progress nets to %d, want %d", sum, len(data))
			}
		})
	}
}

var errUnauthorized = errors.New("401 Unauthorized")

func TestFetchCancel(t *testing.T) {
	data := content(12, 8192)
	tests := []struct {
		name string
		// run starts a Fetch under ctx and cancels it at the point it
		// tests; it returns the Fetch's error.
		run       func(t *testing.T, c *Cache, ctx context.Context, cancel context.CancelFunc) error
		wantOpens int32
	}{
		{"mid-stream", func(t *testing.T, c *Cache, ctx context.Context, cancel context.CancelFunc) error {
			g := newGate(ctx)
			go func() { <-g.reached; cancel() }()
			_, err := c.Fetch(ctx, gatedBlob(data, 1000, g))
			return err
		}, 1},
		{"during backoff", func(t *testing.T, c *Cache, ctx context.Context, cancel context.CancelFunc) error {
			c.backoff = time.Hour // a test that hangs here has lost the cancellation
			b := blobOf(data, nil)
			b.Open = func(context.Context) (io.ReadCloser, error) {
				return nil, errors.New("connection reset")
			}
			// Retryable is asked after Fetch checked ctx, just before
			// it waits: cancelling here tests the wait itself.
			b.Retryable = func(error) bool { cancel(); return true }
			_, err := c.Fetch(ctx, b)
			return err
		}, 1},
		{"before fetch", func(t *testing.T, c *Cache, ctx context.Context, cancel context.CancelFunc) error {
			cancel()
			_, err := c.Fetch(ctx, blobOf(data, nil))
			return err
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			initCache(t, c)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			err := tt.run(t, c, ctx, cancel)
			if err == nil {
				t.Fatalf("Fetch with cancelled context = nil error, want one")
			}
			checkDirEmpty(t, filepath.Join(c.dir, blobsSubdir))
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
		})
	}
}

// TestFetchLocalErrorNotRetried breaks the cache itself mid-download: the
// error is the cache's, and downloading again would not help.
func TestFetchLocalErrorNotRetried(t *testing.T) {
	data := content(13, 5000)
	tests := []struct {
		name       string
		breakCache func(t *testing.T, c *Cache)
	}{
		{"blobs/sha256 replaced by a file", func(t *testing.T, c *Cache) {
			p := filepath.Join(c.dir, blobsSubdir)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			writeFile(t, p, nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			initCache(t, c)
			g := newGate(t.Context())
			var opens atomic.Int32
			b := gatedBlob(data, 100, g)
			open := b.Open
			b.Open = func(ctx context.Context) (io.ReadCloser, error) {
				opens.Add(1)
				return open(ctx)
			}
			errc := make(chan error, 1)
			go func() {
				f, err := c.Fetch(t.Context(), b)
				if f != nil {
					f.Close()
				}
				errc <- err
			}()
			<-g.reached
			tt.breakCache(t, c)
			close(g.release)
			err := <-errc
			if err == nil {
				t.Fatalf("Fetch into a broken cache = nil error, want one")
			}
			if got := opens.Load(); got != 1 {
				t.Errorf("Open called %d times after a local error, want 1", got)
			}
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
		})
	}
}

// TestStreamWriteErrorIsLocal checks that a failing write into the cache is
// told apart from a failing source.
func TestStreamWriteErrorIsLocal(t *testing.T) {
	data := content(14, 100)
	c := newTestCache(t, Options{})
	tests := []struct {
		name      string
		w         io.Writer
		open      func(context.Context) (io.ReadCloser, error)
		wantLocal bool
	}{
		{"write fails", failWriter{}, blobOf(data, nil).Open, true},
		{"read fails", io.Discard, func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(errReader{io.ErrUnexpectedEOF}), nil
		}, false},
		{"open fails", io.Discard, func(context.Context) (io.ReadCloser, error) {
			return nil, errors.New("no route to host")
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := blobOf(data, nil)
			b.Open = tt.open
			_, err := c.stream(t.Context(), tt.w, hexOf(data), b)
			var local *localError
			if err == nil || errors.As(err, &local) != tt.wantLocal {
				t.Errorf("stream() = %v, want an error that is local: %v", err, tt.wantLocal)
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

func TestFetchConcurrentSameDigest(t *testing.T) {
	data := content(15, 200<<10)
	tests := []struct {
		name  string
		n     int
		gated bool // hold every download until all have started
	}{
		{"free for all", 16, false},
		{"all download at once", 8, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			all := make(chan struct{})
			b := blobOf(data, nil)
			b.Open = func(ctx context.Context) (io.ReadCloser, error) {
				if int(opens.Add(1)) == tt.n {
					close(all)
				}
				if !tt.gated {
					return io.NopCloser(bytes.NewReader(data)), nil
				}
				g := newGate(ctx)
				g.release = all
				return io.NopCloser(io.MultiReader(bytes.NewReader(data[:1]), g, bytes.NewReader(data[1:]))), nil
			}
			var wg sync.WaitGroup
			for i := range tt.n {
				wg.Go(func() {
					f, err := c.Fetch(t.Context(), b)
					if err != nil {
						t.Errorf("Fetch #%d error: %v", i, err)
						return
					}
					if got := readFetched(t, f); !bytes.Equal(got, data) {
						t.Errorf("Fetch #%d = %d bytes, want %d", i, len(got), len(data))
					}
				})
			}
			wg.Wait()
			if tt.gated && opens.Load() != int32(tt.n) {
				t.Errorf("Open called %d times, want %d", opens.Load(), tt.n)
			}
			if got := names(t, filepath.Join(c.dir, blobsSubdir)); len(got) != 1 || got[0] != hexOf(data) {
				t.Errorf("blobs/sha256 holds %q, want only %s", got, hexOf(data))
			}
			checkDirEmpty(t, filepath.Join(c.dir, tmpSubdir))
			if got, _ := os.ReadFile(blobPath(c, data)); !bytes.Equal(got, data) {
				t.Errorf("published blob holds %d bytes, want %d", len(got), len(data))
			}
		})
	}
}

// TestPruneDuringFetch prunes while a download is half done: the download
// still returns the right content, the blob went with the old cache, and
// later fetches use the fresh one.
func TestPruneDuringFetch(t *testing.T) {
	data := content(16, 100000)
	tests := []struct {
		name string
		cut  int
	}{
		{"early", 1},
		{"half way", 50000},
		{"all but the end", 99999},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			kept := content(17, 123)
			mustFetch(t, c, kept)
			g := newGate(t.Context())
			type result struct {
				data []byte
				err  error
			}
			done := make(chan result, 1)
			go func() {
				f, err := c.Fetch(t.Context(), gatedBlob(data, tt.cut, g))
				if err != nil {
					done <- result{nil, err}
					return
				}
				defer f.Close()
				b, err := io.ReadAll(f)
				done <- result{b, err}
			}()
			<-g.reached
			tally, err := pruneAll(t.Context(), c, false)
			if err != nil {
				t.Fatalf("Prune during Fetch error: %v", err)
			}
			if want := (Tally{Bytes: int64(len(kept) + tt.cut), Blobs: 1}); tally != want {
				t.Errorf("Prune during Fetch = %+v, want %+v (a blob and a partial)", tally, want)
			}
			close(g.release)
			r := <-done
			if r.err != nil || !bytes.Equal(r.data, data) {
				t.Fatalf("Fetch across a prune = %d bytes, %v; want %d bytes", len(r.data), r.err, len(data))
			}
			checkEmptyCache(t, c)
			checkNoLeftovers(t, c)

			var opens atomic.Int32
			f, err := c.Fetch(t.Context(), blobOf(data, &opens))
			if err != nil {
				t.Fatal(err)
			}
			if got := readFetched(t, f); !bytes.Equal(got, data) || opens.Load() != 1 {
				t.Errorf("Fetch after prune = %d bytes with %d opens, want %d bytes downloaded again", len(got), opens.Load(), len(data))
			}
			if _, err := os.Stat(blobPath(c, data)); err != nil {
				t.Errorf("blob not published in the fresh cache: %v", err)
			}
		})
	}
}

// TestUsageDuringFetches measures the cache while blobs arrive: every
// measure succeeds and never goes backwards.
func TestUsageDuringFetches(t *testing.T) {
	tests := []struct {
		name  string
		blobs int
		size  int
	}{
		{"few large", 4, 256 << 10},
		{"many small", 32, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			initCache(t, c)
			var wg sync.WaitGroup
			fetched := make(chan struct{})
			for i := range tt.blobs {
				wg.Go(func() {
					data := content(byte(i), tt.size+i)
					f, err := c.Fetch(t.Context(), blobOf(data, nil))
					if err != nil {
						t.Errorf("Fetch #%d error: %v", i, err)
						return
					}
					f.Close()
				})
			}
			go func() { wg.Wait(); close(fetched) }()
			last := 0
			for running := true; running; {
				select {
				case <-fetched:
					running = false
				default:
				}
				u, err := usageOf(t.Context(), c)
				if err != nil {
					t.Fatalf("Usage during fetches error: %v", err)
				}
				if u.Blobs < last || u.Blobs > tt.blobs {
					t.Fatalf("Usage().Blobs = %d after %d, want between %d and %d", u.Blobs, last, last, tt.blobs)
				}
				last = u.Blobs
			}
			var want Tally
			for i := range tt.blobs {
				want.Bytes += int64(tt.size + i)
				want.Blobs++
			}
			if u, err := usageOf(t.Context(), c); err != nil || u != want {
				t.Errorf("Usage after fetches = %+v, %v; want %+v", u, err, want)
			}
		})
	}
}

// TestFetchRemovesStaleTemps checks issue 11 §1: a pull that downloads
// removes temp files a killed writer left (unflocked and older than
// staleAfter), and leaves one being written (flocked) or just created.
func TestFetchRemovesStaleTemps(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		age      time.Duration
		locked   bool
		wantGone bool
	}{
		{"abandoned an hour ago", time.Hour, false, true},
		{"abandoned 11s ago", 11 * time.Second, false, true},
		{"just created, not yet flocked", time.Second, false, false},
		{"being written, stalled for an hour", time.Hour, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			c.now = func() time.Time { return now }
			initCache(t, c)
			path := filepath.Join(c.dir, tmpSubdir, hexOf(content(8, 8))+".0123456789abcdef.partial")
			writeFile(t, path, content(8, 8))
			if err := os.Chtimes(path, now.Add(-tt.age), now.Add(-tt.age)); err != nil {
				t.Fatal(err)
			}
			if tt.locked {
				holdLockPath(t, path)
			}
			mustFetch(t, c, content(9, 90)) // a miss: downloads
			_, err := os.Lstat(path)
			if gone := errors.Is(err, os.ErrNotExist); gone != tt.wantGone {
				t.Errorf("temp file gone after a download = %v, want %v", gone, tt.wantGone)
			}
		})
	}
}
