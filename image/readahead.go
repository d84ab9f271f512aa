package image

import "io"

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
}

type chunk struct {
	data []byte
	err  error
}

const (
	readAheadChunk = 256 << 10
	readAheadDepth = 4
)

// newReadAhead starts reading r. Every byte the consumer takes is also
// written to sink, a chunk at a time, on the consumer's goroutine: with the
// diff ID's sha256 there, the two goroutines have about even work (inflate
// on one; sha256, tar parsing and writing on the other).
func newReadAhead(r io.Reader, sink io.Writer) *readAhead {
	ra := &readAhead{
		chunks: make(chan chunk, readAheadDepth),
		free:   make(chan []byte, readAheadDepth+1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		sink:   sink,
	}
	for range readAheadDepth + 1 {
		ra.free <- make([]byte, readAheadChunk)
	}
	go ra.fill(r)
	return ra
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.done)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
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

// Close stops the reading goroutine and waits for it, so that the source
// may be closed after.
func (ra *readAhead) Close() error {
	select {
	case <-ra.stop:
	default:
		close(ra.stop)
	}
	<-ra.done
	return nil
}
