package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// gatedBlobs gives writeRootfs layer blobs from files, each open its own
// descriptor as the cache's are, whose reads it can hold, as a download
// that has not arrived yet holds them; it records what was opened, read to
// its end and closed.
type gatedBlobs struct {
	names []string
	// hold[i], if set, is where layer i's reads stop until gate is closed
	// or the read's context ends: at that offset, or at once if negative.
	hold map[int]int64
	gate chan struct{}

	mu       sync.Mutex
	opened   []int
	ended    []bool // a read of layer i returned io.EOF
	released int
}

func newGatedBlobs(names []string) *gatedBlobs {
	return &gatedBlobs{names: names, hold: map[int]int64{}, gate: make(chan struct{}),
		opened: make([]int, len(names)), ended: make([]bool, len(names))}
}

func (b *gatedBlobs) layer(ctx context.Context, i int) (io.Reader, func(), error) {
	f, err := os.Open(b.names[i])
	if err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	b.opened[i]++
	b.mu.Unlock()
	r := &gatedReader{b: b, ctx: ctx, i: i, f: f, holdAt: -1}
	if at, ok := b.hold[i]; ok {
		r.holdAt = max(at, 0)
	}
	return r, func() {
		f.Close()
		b.mu.Lock()
		b.released++
		b.mu.Unlock()
	}, nil
}

func (b *gatedBlobs) reading(int) {}

func (b *gatedBlobs) state() (opened []int, ended []bool, released int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.opened...), append([]bool(nil), b.ended...), b.released
}

type gatedReader struct {
	b      *gatedBlobs
	ctx    context.Context
	i      int
	f      *os.File
	off    int64
	holdAt int64 // -1: never held
}

func (r *gatedReader) Read(p []byte) (int, error) {
	if r.holdAt >= 0 && r.off >= r.holdAt {
		select {
		case <-r.b.gate:
			r.holdAt = -1
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	if r.holdAt >= 0 {
		p = p[:min(int64(len(p)), r.holdAt-r.off)]
	}
	n, err := r.f.Read(p)
	r.off += int64(n)
	if err == io.EOF {
		r.b.mu.Lock()
		r.b.ended[r.i] = true
		r.b.mu.Unlock()
	}
	return n, err
}

// aheadLayers is a stack of layers of one file each, large enough to take
// several read-ahead chunks.
func aheadLayers(n int) [][]ent {
	var layers [][]ent
	for i := range n {
		layers = append(layers, []ent{tReg(fmt.Sprintf("f%d", i), randomBody(uint64(i), 3*readAheadChunk+i))})
	}
	return layers
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestInflateAheadReadsBelowWhileTopWaits holds the top layer's blob half
// read, as a download in progress does, and checks that the two layers
// below are inflated meanwhile (read to their ends into spills), and no
// more: then the top layer arrives, and the rootfs is whole.
func TestInflateAheadReadsBelowWhileTopWaits(t *testing.T) {
	layers := aheadLayers(5)
	names, diffIDs := gzipBlobFiles(t, layers)
	blobs := newGatedBlobs(names)
	top := len(names) - 1
	fi, err := os.Stat(names[top])
	if err != nil {
		t.Fatal(err)
	}
	blobs.hold[top] = fi.Size() / 2
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() { done <- writeRootfs(t.Context(), dir, blobs, diffIDs) }()

	waitFor(t, "layers 3 and 2 are not read to their ends while layer 4 waits", func() bool {
		_, ended, _ := blobs.state()
		return ended[top-1] && ended[top-2]
	})
	opened, ended, _ := blobs.state()
	if ended[top] || opened[top-3] != 0 || opened[0] != 0 {
		t.Errorf("while the top layer waits: opened %v, read to the end %v; want layers 4, 3 and 2 opened, and only 3 and 2 read through", opened, ended)
	}
	close(blobs.gate)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("writeRootfs: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writeRootfs did not end once the top layer arrived")
	}
	b, err := os.ReadFile(filepath.Join(dir, rootfsName))
	if err != nil {
		t.Fatal(err)
	}
	tree, _ := walkTree(t, extract(t, b))
	want := map[string]node{}
	for _, l := range layers {
		want[l[0].hdr.Name] = nFile(l[0].body)
	}
	compareTrees(t, tree, want)
	opened, _, released := blobs.state()
	for i, n := range opened {
		if n != 1 {
			t.Errorf("layer %d opened %d times, want once", i, n)
		}
	}
	if released != len(names) {
		t.Errorf("%d blobs released, want all %d", released, len(names))
	}
	checkOnlyRootfs(t, dir)
}

// TestInflateAheadStopsWithTheFlatten fails the flatten on its top layer
// while the layers read ahead wait for bytes that never come, as downloads
// held by a registry do: writeRootfs must fail at once with the top layer's
// error, having closed every blob it opened and left no spill behind.
func TestInflateAheadStopsWithTheFlatten(t *testing.T) {
	layers := aheadLayers(4)
	names, diffIDs := gzipBlobFiles(t, layers)
	blobs := newGatedBlobs(names)
	for i := range len(names) - 1 {
		blobs.hold[i] = -1 // held from the first byte
	}
	top := len(names) - 1
	diffIDs[top] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() { done <- writeRootfs(t.Context(), dir, blobs, diffIDs) }()
	select {
	case err := <-done:
		if want := fmt.Sprintf("layer %d: uncompressed content is", top); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("writeRootfs: got error %v, want one containing %q", err, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writeRootfs did not end while the layers read ahead waited")
	}
	opened, _, released := blobs.state()
	total := 0
	for _, n := range opened {
		total += n
	}
	if opened[top-1] != 1 || opened[top-2] != 1 || released != total {
		t.Errorf("opened %v and released %d blobs; want layers 2 and 1 read ahead, and every blob opened released", opened, released)
	}
	checkOnlyRootfs(t, dir)
}

// TestInflateAheadChecksLayersReadAhead corrupts a layer that is read
// ahead: its diff ID is checked as the flattener reads it, as for any
// layer, and the flatten fails on it.
func TestInflateAheadChecksLayersReadAhead(t *testing.T) {
	layers := aheadLayers(3)
	names, diffIDs := gzipBlobFiles(t, layers)
	diffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1", 64)}
	err := writeRootfs(t.Context(), t.TempDir(), newGatedBlobs(names), diffIDs)
	if want := "layer 0: uncompressed content is"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("writeRootfs: got error %v, want one containing %q", err, want)
	}
}

// checkOnlyRootfs fails unless dir holds only rootfs.tar: spills are
// unlinked as soon as they are made.
func checkOnlyRootfs(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != rootfsName {
			t.Errorf("%s left in the stage directory, want only %s", e.Name(), rootfsName)
		}
	}
}
