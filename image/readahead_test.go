package image

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"testing/iotest"
	"time"
)

// TestReadAhead checks that the consumer and the sink both see exactly the
// source's bytes, in order, whatever the source's size against the chunk
// size and however small its reads, and that the source's error comes
// after its data.
func TestReadAhead(t *testing.T) {
	errBroken := errors.New("disk on fire")
	tests := []struct {
		name    string
		size    int
		oneByte bool  // the source returns one byte per Read
		err     error // the source fails after size bytes
	}{
		{name: "empty", size: 0},
		{name: "one byte", size: 1},
		{name: "chunk minus one", size: readAheadChunk - 1},
		{name: "one chunk", size: readAheadChunk},
		{name: "chunk plus one", size: readAheadChunk + 1},
		{name: "more chunks than the depth", size: (readAheadDepth+3)*readAheadChunk + 17},
		{name: "dribbling source", size: 3000, oneByte: true},
		{name: "error after data", size: readAheadChunk + 5, err: errBroken},
		{name: "error at once", size: 0, err: errBroken},
		// A truncated gzip stream ends so; it must not read as a clean end.
		{name: "unexpected EOF", size: 10, err: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := make([]byte, tt.size)
			rng := rand.New(rand.NewPCG(uint64(tt.size), 1))
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			var src io.Reader = bytes.NewReader(want)
			if tt.oneByte {
				src = iotest.OneByteReader(src)
			}
			if tt.err != nil {
				src = io.MultiReader(src, iotest.ErrReader(tt.err))
			}
			h := sha256.New()
			ra := newReadAhead(src, h)
			// Odd-sized reads, as tar's are, cross chunk boundaries.
			var got bytes.Buffer
			buf := make([]byte, 1000)
			var err error
			for {
				var n int
				n, err = ra.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					break
				}
			}
			if tt.err == nil && err != io.EOF || tt.err != nil && !errors.Is(err, tt.err) {
				t.Errorf("final Read error = %v, want %v", err, cmpErr(tt.err))
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("read %d bytes, want the source's %d", got.Len(), len(want))
			}
			if sum := sha256.Sum256(want); !bytes.Equal(h.Sum(nil), sum[:]) {
				t.Error("the sink did not see exactly the source's bytes")
			}
			if n, err := ra.Read(buf); n != 0 || err == nil {
				t.Errorf("Read after the end = %d, %v; want 0 and the same error", n, err)
			}
			ra.Close()
		})
	}
}

func cmpErr(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// TestReadAheadCloseEarly closes a readAhead whose consumer stopped reading
// mid-way, as a failed flatten does: Close must return, and the reading
// goroutine must be gone, even though it was blocked handing over chunks.
func TestReadAheadCloseEarly(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 20 {
		ra := newReadAhead(endless{}, sha256.New())
		buf := make([]byte, 100)
		if _, err := ra.Read(buf); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { ra.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return while the reader was blocked")
		}
	}
	// Close waits for the reading goroutine, so the count is back at once.
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines after closing 20 readAheads, %d before", after, before)
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }
