package image

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// randomBody is n bytes that gzip cannot shrink, so that a layer's blob is
// as large as its content.
func randomBody(seed uint64, n int) string {
	var key [32]byte
	key[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return string(b)
}

// stagedRootfsSize returns the size of the largest rootfs.tar being
// written in the store's temp directories.
func stagedRootfsSize(storeDir string) int64 {
	paths, _ := filepath.Glob(filepath.Join(storeDir, tmpPrefix+"*", rootfsName))
	var size int64
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			size = max(size, fi.Size())
		}
	}
	return size
}

// TestPullFlattensWhileDownloading holds the top layer's download halfway:
// the flattener must already have written that half to the staged rootfs
// (a pull that flattened only verified blobs would not have written a
// byte), and the pull must still succeed once the rest comes.
func TestPullFlattensWhileDownloading(t *testing.T) {
	const size = 8 << 20
	top := uncompressedLayer(t, tReg("big", randomBody(1, size)))
	layers := []v1.Layer{gzipLayer(t, baseLayerEnts()...), top}
	topDigest := digestOf(t, top).String()
	release := make(chan struct{})
	var releaseOnce sync.Once
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+topDigest) {
				next.ServeHTTP(w, r)
				return
			}
			hw := &holdingWriter{ResponseWriter: w, after: size / 2, release: release}
			next.ServeHTTP(hw, r)
		})
	}
	host := startRegistry(t, wrap)
	ref := host + "/stream:1"
	pushImage(t, ref, testImage(t, linuxAMD64, layers...))
	e := newTestEnv(t)

	pulled := make(chan error, 1)
	go func() {
		_, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{})
		pulled <- err
	}()
	// The flattener writes through a 1 MiB buffer: past 2 MiB, it has
	// flattened part of a layer whose download has not ended.
	deadline := time.Now().Add(20 * time.Second) // a failsafe, not a wait
	for stagedRootfsSize(e.storeDir) < 2<<20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	staged := stagedRootfsSize(e.storeDir)
	releaseOnce.Do(func() { close(release) })
	if err := <-pulled; err != nil {
		t.Fatalf("Pull(%s): %v", ref, err)
	}
	if staged < 2<<20 {
		t.Errorf("while the top layer's download was held at half its %d bytes, the staged rootfs had %d bytes, want over 2 MiB: the flattener waited for the whole blob", size, staged)
	}
}

// holdingWriter passes a response through until after bytes, then waits
// for release before the rest.
type holdingWriter struct {
	http.ResponseWriter
	after   int
	written int
	release chan struct{}
}

func (w *holdingWriter) Write(p []byte) (int, error) {
	if w.written < w.after && w.written+len(p) >= w.after {
		n, err := w.ResponseWriter.Write(p[:w.after-w.written])
		w.written += n
		if err != nil {
			return n, err
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		<-w.release
		m, err := w.ResponseWriter.Write(p[n:])
		w.written += m
		return n + m, err
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += n
	return n, err
}

// TestPullFlattensAgainAfterABadAttempt serves a layer's first download
// with a flipped byte, and the right bytes after: the flattener may have
// read the bad ones, but the pull must succeed, as it did when flattening
// waited for verified blobs, and hold the right content.
func TestPullFlattensAgainAfterABadAttempt(t *testing.T) {
	body := randomBody(2, 3<<20)
	layers := []v1.Layer{gzipLayer(t, baseLayerEnts()...), gzipLayer(t, tReg("data", body))}
	topDigest := digestOf(t, layers[1]).String()
	var gets atomic.Int32
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+topDigest) || gets.Add(1) > 1 {
				next.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(&flippingWriter{ResponseWriter: w, at: 1 << 20}, r)
		})
	}
	host := startRegistry(t, wrap)
	ref := host + "/flaky:1"
	pushImage(t, ref, testImage(t, linuxAMD64, layers...))
	e := newTestEnv(t)
	img, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{})
	if err != nil {
		t.Fatalf("Pull(%s) with one corrupt download of a layer: %v", ref, err)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("registry served the layer %d times, want 2 (one corrupt, one retry)", n)
	}
	if got := rootfsFiles(t, img)["data"]; got != body {
		t.Errorf("rootfs data: got %d bytes, want the layer's %d", len(got), len(body))
	}
}

// flippingWriter flips the byte at offset at of a response.
type flippingWriter struct {
	http.ResponseWriter
	at, written int
}

func (w *flippingWriter) Write(p []byte) (int, error) {
	if w.written <= w.at && w.at < w.written+len(p) {
		p = bytes.Clone(p)
		p[w.at-w.written] ^= 0xff
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += n
	return n, err
}

// TestPullLargeLayersOneAtATime checks the download schedule: layers larger
// than prefetchWindow are fetched top first, and each starts only once the
// downloads running have at most prefetchWindow bytes left, so the layer
// being flattened has the link; layers under the window still go Jobs at a
// time (TestPullJobs).
func TestPullLargeLayersOneAtATime(t *testing.T) {
	const nLayers = 3
	var layers []v1.Layer
	sizes := map[string]int64{}
	index := map[string]int{}
	for i := range nLayers {
		l := uncompressedLayer(t, tReg(fmt.Sprintf("f%d", i), randomBody(uint64(10+i), prefetchWindow+1<<20)))
		layers = append(layers, l)
		d := digestOf(t, l).String()
		size, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		sizes[d], index[d] = size, i
	}
	host := startRegistry(t, nil)
	ref := host + "/big:1"
	pushImage(t, ref, testImage(t, linuxAMD64, layers...))
	e := newTestEnv(t)
	lt := &leftTransport{sizes: sizes, index: index}
	if _, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Jobs: nLayers, Transport: lt}); err != nil {
		t.Fatalf("Pull(%s): %v", ref, err)
	}
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if want := []int{2, 1, 0}; !slices.Equal(lt.order, want) {
		t.Errorf("Pull(%s) requested layers in order %v, want top first: %v", ref, lt.order, want)
	}
	for i, left := range lt.leftAtStart {
		if left > prefetchWindow {
			t.Errorf("Pull(%s, Jobs %d): layer %d's GET started while the running downloads had %d bytes left, want at most %d", ref, nLayers, lt.order[i], left, prefetchWindow)
		}
	}
}

// leftTransport records, as each layer GET starts, how many bytes the
// layer bodies being read still have to come.
type leftTransport struct {
	sizes map[string]int64
	index map[string]int

	mu          sync.Mutex
	left        map[*leftBody]int64
	order       []int
	leftAtStart []int64
}

func (lt *leftTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	_, digest, ok := strings.Cut(r.URL.Path, "/blobs/")
	size, layer := lt.sizes[digest]
	if r.Method != http.MethodGet || !ok || !layer {
		return http.DefaultTransport.RoundTrip(r)
	}
	lt.mu.Lock()
	var left int64
	for _, n := range lt.left {
		left += n
	}
	lt.order = append(lt.order, lt.index[digest])
	lt.leftAtStart = append(lt.leftAtStart, left)
	b := &leftBody{lt: lt}
	if lt.left == nil {
		lt.left = map[*leftBody]int64{}
	}
	lt.left[b] = size
	lt.mu.Unlock()
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.ReadCloser = resp.Body
	resp.Body = b
	return resp, nil
}

type leftBody struct {
	io.ReadCloser
	lt *leftTransport
}

func (b *leftBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.lt.mu.Lock()
	if _, ok := b.lt.left[b]; ok {
		b.lt.left[b] -= int64(n)
	}
	b.lt.mu.Unlock()
	return n, err
}

func (b *leftBody) Close() error {
	b.lt.mu.Lock()
	delete(b.lt.left, b)
	b.lt.mu.Unlock()
	if b.ReadCloser == nil {
		return nil
	}
	return b.ReadCloser.Close()
}
