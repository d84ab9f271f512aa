package image

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
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
			ra := newReadAhead(src, h, nil)
			checkReadAhead(t, ra, h, want, tt.err)
			if n, err := ra.Read(make([]byte, 10)); n != 0 || err == nil {
				t.Errorf("Read after the end = %d, %v; want 0 and the same error", n, err)
			}
			ra.Close()
		})
	}
}

// checkReadAhead reads ra to its end and checks that the consumer and the
// sink h saw exactly want, in order, and then the source's error (io.EOF if
// wantErr is nil).
func checkReadAhead(t *testing.T, ra *readAhead, h hash.Hash, want []byte, wantErr error) {
	t.Helper()
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
	if wantErr == nil && err != io.EOF || wantErr != nil && !errors.Is(err, wantErr) {
		t.Errorf("final Read error = %v, want %v", err, cmpErr(wantErr))
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("read %d bytes, want the source's %d, in order", got.Len(), len(want))
	}
	if sum := sha256.Sum256(want); !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Error("the sink did not see exactly the source's bytes")
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
		ra := newReadAhead(endless{}, sha256.New(), nil)
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

// TestReadAheadSpill checks a read-ahead whose consumer comes late: what
// was read before goes to the spill file, as long as the pool has room,
// then to the channel; the consumer and the sink see the source's bytes in
// order whatever the mix, the source's error comes after its data, and the
// pool gets its bytes back.
func TestReadAheadSpill(t *testing.T) {
	errBroken := errors.New("disk on fire")
	const c = readAheadChunk
	tests := []struct {
		name       string
		size       int
		limit      int64
		err        error // the source fails after size bytes
		failWrites bool  // the spill file cannot be written
		late       bool  // the consumer comes once the pool is full or the source ended
	}{
		{name: "empty, late", size: 0, limit: 4 * c, late: true},
		{name: "spilled whole", size: 3*c + 5, limit: 4 * c, late: true},
		{name: "exactly the pool", size: 4 * c, limit: 4 * c, late: true},
		{name: "more than the pool", size: 9*c + 17, limit: 3 * c, late: true},
		{name: "pool smaller than a chunk", size: 2 * c, limit: c - 1, late: true},
		{name: "consumer at once", size: 5*c + 3, limit: 8 * c},
		{name: "writes fail", size: 3*c + 1, limit: 8 * c, failWrites: true, late: true},
		{name: "error while spilling", size: c + 9, limit: 8 * c, err: errBroken, late: true},
		{name: "unexpected EOF while spilling", size: 10, limit: 8 * c, err: io.ErrUnexpectedEOF, late: true},
		{name: "error after the pool filled", size: 4*c + 1, limit: 2 * c, err: errBroken, late: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := []byte(randomBody(uint64(tt.size), tt.size))
			var src io.Reader = bytes.NewReader(want)
			if tt.err != nil {
				src = io.MultiReader(src, iotest.ErrReader(tt.err))
			}
			pool := newSpillPool(tt.limit)
			file := spillFile(t, tt.failWrites)
			h := sha256.New()
			ra := newReadAhead(src, h, newSpill(pool, file))
			if tt.late {
				// The source is read in whole chunks, the last one short:
				// those that fit in the pool are spilled.
				spilled := int64(0)
				for left := int64(tt.size); !tt.failWrites; left -= c {
					next := min(left, c)
					if spilled+next > tt.limit {
						break
					}
					spilled += next
					if left <= c {
						break // that was the last
					}
				}
				waitUsed(t, pool, spilled)
			}
			checkReadAhead(t, ra, h, want, tt.err)
			ra.Close()
			if pool.used != 0 {
				t.Errorf("pool holds %d bytes after Close, want 0", pool.used)
			}
		})
	}
}

// spillFile returns an unlinked temp file, or, with readOnly, one that
// refuses writes, as a full disk would.
func spillFile(t *testing.T, readOnly bool) *os.File {
	t.Helper()
	name := filepath.Join(t.TempDir(), "spill")
	if err := os.WriteFile(name, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(name)
	return f
}

// waitUsed waits until pool holds n bytes.
func waitUsed(t *testing.T, pool *spillPool, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pool.mu.Lock()
		used := pool.used
		pool.mu.Unlock()
		if used == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool holds %d bytes after 10 s, want %d", used, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReadAheadSpillsSharePool reads two spills that share a pool too
// small for both, in the other order than they filled it: the one that got
// no room waits, goes live when its consumer comes, and neither blocks the
// other.
func TestReadAheadSpillsSharePool(t *testing.T) {
	const c = readAheadChunk
	pool := newSpillPool(2 * c)
	var wants [][]byte
	var ras []*readAhead
	for i := range 2 {
		want := bytes.Repeat([]byte{byte('a' + i)}, 4*c+i)
		wants = append(wants, want)
		ras = append(ras, newReadAhead(bytes.NewReader(want), io.Discard, newSpill(pool, spillFile(t, false))))
	}
	waitUsed(t, pool, 2*c)
	for _, i := range []int{1, 0} {
		done := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(ras[i])
			done <- b
		}()
		select {
		case got := <-done:
			if !bytes.Equal(got, wants[i]) {
				t.Errorf("spill %d: read %d bytes, want its %d", i, len(got), len(wants[i]))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("spill %d: reading it blocked", i)
		}
		ras[i].Close()
	}
	if pool.used != 0 {
		t.Errorf("pool holds %d bytes once both are read, want 0", pool.used)
	}
}

// TestReadAheadSpillCloseEarly closes a spilling read-ahead whose reading
// goroutine waits for room in the pool, as a failed flatten closes the
// layers read ahead: Close returns, the goroutine is gone, and the pool is
// empty.
func TestReadAheadSpillCloseEarly(t *testing.T) {
	before := runtime.NumGoroutine()
	pool := newSpillPool(readAheadChunk)
	for range 10 {
		ra := newReadAhead(endless{}, sha256.New(), newSpill(pool, spillFile(t, false)))
		waitUsed(t, pool, readAheadChunk)
		done := make(chan struct{})
		go func() { ra.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return while the reader waited for the pool")
		}
		if pool.used != 0 {
			t.Fatalf("pool holds %d bytes after Close, want 0", pool.used)
		}
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines after closing 10 spilling readAheads, %d before", after, before)
	}
}
