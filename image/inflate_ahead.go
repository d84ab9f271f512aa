package image

import (
	"context"
	"io"
	"os"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// inflateAhead opens the layers for the flattener, and meanwhile inflates
// the layers below the one it reads into spill files. Inflating is most of
// a flatten's CPU, and a layer's runs on one goroutine: with a second layer
// inflating at once, both cores are busy where the flattener would read one
// layer after another at one inflater's pace while the link, or the cache,
// could give it more (see docs/BENCHMARKS.md).
//
// The maxAhead layers below the lowest one opened are read ahead, each on
// a goroutine of its own that follows the layer's download if it is not in
// the cache yet (and so takes no CPU while the link is the limit). Their
// spills share aheadLimit bytes of disk, past which reading ahead waits for
// the flattener. A layer is read ahead at most once (a second pass, or a
// scan of a lower layer, opens it as usual), and its diff ID is checked as
// the flattener reads it, as for any layer: nothing read ahead is trusted
// before that.
type inflateAhead struct {
	ctx     context.Context
	dir     string // where spill files are made, unlinked at once
	blobs   layerBlobs
	diffIDs []v1.Hash
	pool    *spillPool

	mu      sync.Mutex
	floor   int                // the lowest layer opened or read ahead
	waiting map[int]*aheadRead // layers read ahead, not yet opened
	closed  bool
}

const (
	// aheadLimit is the disk the spills of one flatten may take.
	aheadLimit = 256 << 20
	// maxAhead is how many layers may be read ahead of the flattener.
	maxAhead = 2
)

type aheadRead struct {
	cancel context.CancelFunc
	done   chan struct{} // closed once rc or err is set
	rc     io.ReadCloser
	err    error
}

func newInflateAhead(ctx context.Context, dir string, blobs layerBlobs, diffIDs []v1.Hash) *inflateAhead {
	return &inflateAhead{
		ctx: ctx, dir: dir, blobs: blobs, diffIDs: diffIDs,
		pool:    newSpillPool(aheadLimit),
		floor:   len(diffIDs),
		waiting: make(map[int]*aheadRead),
	}
}

// open returns layer i's tar stream: the one read ahead, if layer i was,
// else a new one.
func (a *inflateAhead) open(i int) (io.ReadCloser, error) {
	a.mu.Lock()
	n := a.waiting[i]
	delete(a.waiting, i)
	a.floor = min(a.floor, i)
	a.next()
	a.mu.Unlock()
	a.blobs.reading(i)
	if n == nil {
		return a.openLayer(a.ctx, i, nil)
	}
	<-n.done
	if n.err != nil {
		return nil, n.err
	}
	return &cancelingReader{ReadCloser: n.rc, cancel: n.cancel}, nil
}

// next starts reading ahead the layers it may; a.mu is held.
func (a *inflateAhead) next() {
	for !a.closed && a.floor > 0 && len(a.waiting) < maxAhead {
		a.floor--
		a.start(a.floor)
	}
}

// start reads layer i ahead; a.mu is held.
func (a *inflateAhead) start(i int) {
	ctx, cancel := context.WithCancel(a.ctx)
	n := &aheadRead{cancel: cancel, done: make(chan struct{})}
	a.waiting[i] = n
	go func() {
		defer close(n.done)
		file, err := os.CreateTemp(a.dir, ".inflate-")
		if err != nil {
			// Nowhere to spill: only the few chunks of a plain
			// read-ahead are read before the flattener comes.
			n.rc, n.err = a.openLayer(ctx, i, nil)
			return
		}
		os.Remove(file.Name()) // nothing is left of it whatever happens
		n.rc, n.err = a.openLayer(ctx, i, newSpill(a.pool, file))
	}()
}

// openLayer opens layer i's blob and its tar stream, spilling it until it
// is read if spill is set.
func (a *inflateAhead) openLayer(ctx context.Context, i int, spill *spill) (io.ReadCloser, error) {
	f, release, err := a.blobs.layer(ctx, i)
	var rc io.ReadCloser
	if err == nil {
		if rc, err = uncompress(f, i, a.diffIDs[i], spill); err != nil {
			release()
		}
	}
	if err != nil {
		if spill != nil {
			spill.file.Close() // no read-ahead owns it
		}
		return nil, err
	}
	return &releasingReader{ReadCloser: rc, release: release}, nil
}

// close stops reading ahead the layers the flattener did not come for.
func (a *inflateAhead) close() {
	a.mu.Lock()
	a.closed = true
	waiting := a.waiting
	a.waiting = nil
	a.mu.Unlock()
	for _, n := range waiting {
		n.cancel()
		<-n.done
		if n.rc != nil {
			n.rc.Close()
		}
	}
}

// cancelingReader ends the context a layer read ahead was opened with
// before closing it: its read-ahead may be waiting on a download for bytes
// no one will read.
type cancelingReader struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (r *cancelingReader) Close() error {
	r.cancel()
	return r.ReadCloser.Close()
}
