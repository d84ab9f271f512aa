package image

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// readAhead reads its source on a goroutine of its own, a few chunks ahead
// of the consumer. Decompressing a layer and flattening it then run on two
// cores instead of taking turns on one. Memory is bounded by
// readAheadDepth+1 chunks.
type readAhead struct {
	chunks chan chunk
	free   chan []byte
	stop   chan struct{}
	done   chan struct{}

	cur  []byte // the unread rest of the current chunk
	buf  []byte // the current chunk's buffer, returned to free when read
	err  error  // the source's error, once cur is drained
	sink io.Writer
	made int // chunk buffers made so far; the reading goroutine's

	// spill, if set, keeps what is read before the consumer comes.
	spill *spill
	// caughtUp is set once the consumer has read the spill through;
	// consumer-only.
	caughtUp bool
	sbuf     []byte // the consumer's buffer for reading the spill
}

type chunk struct {
	data []byte
	err  error
}

const (
	readAheadChunk = 256 << 10
	readAheadDepth = 4
)

// spillPool is the disk that the spills of one flatten share (see
// inflateAhead): at most limit bytes in all. One mutex guards the pool and
// its spills, which take it once per chunk.
type spillPool struct {
	mu    sync.Mutex
	cond  *sync.Cond // signalled when bytes are freed, or a spill changes state
	used  int64
	limit int64
}

func newSpillPool(limit int64) *spillPool {
	p := &spillPool{limit: limit}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// spill is a read-ahead's file for the chunks its consumer has not come for
// yet. Once the consumer has read it through, it is closed, its bytes go
// back to the pool, and chunks go through the channel as for any
// read-ahead.
type spill struct {
	pool   *spillPool
	file   *os.File // unlinked; nil once the consumer has read it through
	size   int64    // bytes written to file
	failed bool     // a write failed: what follows waits for the consumer
	end    error    // the source's error, if it came while spilling
	live   bool     // the consumer caught up: chunks go through the channel
	closed bool     // the read-ahead is closed
	off    int64    // the consumer's offset in file; consumer-only
}

// newSpill returns a spill into file (an unlinked temp file, which the
// read-ahead closes) for newReadAhead: a read-ahead whose consumer may
// come late. Until it does, what is read goes to file, as long as pool has
// room; past that, or once a write failed, reading waits for the consumer.
// A full disk is thus no failure, only the end of reading ahead.
func newSpill(pool *spillPool, file *os.File) *spill {
	return &spill{pool: pool, file: file}
}

// newReadAhead starts reading r, into s until the consumer comes if s is
// not nil (newSpill). Every byte the consumer takes is also written to
// sink, a chunk at a time, on the consumer's goroutine: with the diff ID's
// sha256 there, the two goroutines have about even work (inflate on one;
// sha256, tar parsing and writing on the other).
func newReadAhead(r io.Reader, sink io.Writer, s *spill) *readAhead {
	ra := &readAhead{
		spill:  s,
		chunks: make(chan chunk, readAheadDepth),
		free:   make(chan []byte, readAheadDepth+1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		sink:   sink,
	}
	go ra.fill(r)
	return ra
}

// next returns a free chunk buffer, making one while fewer than
// readAheadDepth+1 exist: a consumer that keeps up, or a spill, needs only
// one or two. It returns nil once the read-ahead is closed.
func (ra *readAhead) next() []byte {
	select {
	case buf := <-ra.free:
		return buf
	default:
	}
	if ra.made < readAheadDepth+1 {
		ra.made++
		return make([]byte, readAheadChunk)
	}
	select {
	case buf := <-ra.free:
		return buf
	case <-ra.stop:
		return nil
	}
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.done)
	for {
		buf := ra.next()
		if buf == nil {
			return
		}
		// Not io.ReadFull: it would turn the source's own
		// io.ErrUnexpectedEOF (a truncated gzip stream) into a clean end
		// and an io.EOF into a short read; errors pass through as they are.
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var k int
			k, err = r.Read(buf[n:])
			n += k
		}
		if ra.spill != nil {
			kept, closed := ra.spill.keep(buf[:n], err)
			if closed {
				return
			}
			if kept {
				ra.free <- buf // free has room for every buffer made
				if err != nil {
					return
				}
				continue
			}
		}
		select {
		case ra.chunks <- chunk{buf[:n], err}:
		case <-ra.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.err != nil {
			return 0, ra.err
		}
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		if ra.spill != nil && !ra.caughtUp {
			ra.readSpill()
			continue
		}
		c := <-ra.chunks
		ra.buf, ra.cur, ra.err = c.data, c.data, c.err
		if len(c.data) > 0 {
			ra.sink.Write(c.data)
		}
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// keep writes a chunk the consumer has not come for to the spill file,
// waiting for the consumer while the pool is full. It reports whether it
// kept the chunk (false once the consumer is live: the chunk goes through
// the channel) and whether the read-ahead was closed meanwhile.
func (s *spill) keep(data []byte, err error) (kept, closed bool) {
	p := s.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case s.closed:
			return false, true
		case s.live:
			return false, false
		case !s.failed && p.used+int64(len(data)) <= p.limit:
			// A short write leaves size where it was: the bytes past it
			// are never read, and the chunk waits for the consumer.
			if _, werr := s.file.WriteAt(data, s.size); werr != nil {
				s.failed = true
				continue
			}
			s.size += int64(len(data))
			p.used += int64(len(data))
			s.end = err
			return true, false
		}
		p.cond.Wait()
	}
}

// release closes the spill file and gives its bytes back to the pool; the
// caller holds the pool's mutex.
func (s *spill) release() {
	if s.file == nil {
		return
	}
	s.file.Close()
	s.file = nil
	s.pool.used -= s.size
	s.pool.cond.Broadcast()
}

// readSpill makes the next bytes of the spill the current chunk, or, once
// the consumer has read the spill through, releases it and turns the
// read-ahead live.
func (ra *readAhead) readSpill() {
	s := ra.spill
	s.pool.mu.Lock()
	if s.off < s.size {
		n := min(int64(readAheadChunk), s.size-s.off)
		file := s.file
		s.pool.mu.Unlock()
		if ra.sbuf == nil {
			ra.sbuf = make([]byte, readAheadChunk)
		}
		k, err := file.ReadAt(ra.sbuf[:n], s.off)
		if int64(k) < n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			ra.err = fmt.Errorf("reading back the layer inflated ahead: %w", err)
			return
		}
		s.off += n
		ra.cur = ra.sbuf[:n]
		ra.sink.Write(ra.cur)
		return
	}
	// Everything written is read: what comes next comes through the
	// channel, unless the source ended while spilling.
	ra.err, s.live = s.end, true
	s.release()
	s.pool.mu.Unlock()
	ra.caughtUp = true
}

// Close stops the reading goroutine and waits for it, so that the source
// may be closed after. The goroutine may be blocked in the source's Read:
// a caller whose source can block (a download followed) must unblock it
// first, by cancelling its context.
func (ra *readAhead) Close() error {
	select {
	case <-ra.stop:
	default:
		close(ra.stop)
	}
	if s := ra.spill; s != nil {
		s.pool.mu.Lock()
		s.closed = true
		s.pool.cond.Broadcast()
		s.pool.mu.Unlock()
	}
	<-ra.done
	if s := ra.spill; s != nil {
		s.pool.mu.Lock()
		s.release()
		s.pool.mu.Unlock()
	}
	return nil
}
