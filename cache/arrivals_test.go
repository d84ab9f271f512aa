package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// followed is what a follower read, and how it ended.
type followed struct {
	data []byte
	err  error
}

// startFetch starts a Fetch of b with Arrivals and returns a follower of
// its download and the channel that gets Fetch's error.
func startFetch(t *testing.T, c *Cache, b Blob) (io.ReadCloser, <-chan error) {
	t.Helper()
	a := NewArrivals()
	t.Cleanup(func() { a.Close() })
	b.Arrivals = a
	fetched := make(chan error, 1)
	go func() {
		f, err := c.Fetch(t.Context(), b)
		if f != nil {
			f.Close()
		}
		fetched <- err
	}()
	<-a.Started()
	r, ok := a.Follow(t.Context())
	if !ok {
		err := <-fetched
		t.Fatalf("Follow after Started = false, want a follower of the download; Fetch error %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r, fetched
}

// follow reads b's download to its end through a follower; it returns the
// follower's result and Fetch's error.
func follow(t *testing.T, c *Cache, b Blob) (followed, error) {
	t.Helper()
	r, fetched := startFetch(t, c, b)
	data, err := io.ReadAll(r)
	return followed{data, err}, <-fetched
}

func TestArrivals(t *testing.T) {
	data := content(21, 3<<20+5)
	tests := []struct {
		name string
		// open serves attempt n (from 1).
		open    func(n int) (io.ReadCloser, error)
		wantErr error // of the follower and of Fetch; nil: both succeed
	}{
		{"one attempt", func(int) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, nil},
		{"a cut attempt, then a whole one", func(n int) (io.ReadCloser, error) {
			if n == 1 {
				return io.NopCloser(io.MultiReader(bytes.NewReader(data[:1<<20]), errReader{io.ErrUnexpectedEOF})), nil
			}
			return io.NopCloser(bytes.NewReader(data)), nil
		}, nil},
		{"refused, then served", func(n int) (io.ReadCloser, error) {
			if n == 1 {
				return nil, errors.New("503 Service Unavailable")
			}
			return io.NopCloser(bytes.NewReader(data)), nil
		}, nil},
		{"wrong bytes every time", func(int) (io.ReadCloser, error) {
			bad := bytes.Clone(data)
			bad[len(bad)-1] ^= 1
			return io.NopCloser(bytes.NewReader(bad)), nil
		}, ErrDigestMismatch},
		{"too long", func(int) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(append(bytes.Clone(data), 0))), nil
		}, ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			var opens atomic.Int32
			b := blobOf(data, nil)
			b.Open = func(context.Context) (io.ReadCloser, error) { return tt.open(int(opens.Add(1))) }
			got, err := follow(t, c, b)
			if tt.wantErr != nil {
				// The follower must never end cleanly on bytes Fetch refused.
				if !errors.Is(got.err, tt.wantErr) || !errors.Is(err, tt.wantErr) {
					t.Fatalf("follower error %v, Fetch error %v, want both to wrap %v", got.err, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.err != nil {
				t.Fatalf("Fetch error %v, follower error %v, want nil", err, got.err)
			}
			if !bytes.Equal(got.data, data) {
				t.Errorf("follower read %d bytes, want the blob's %d", len(got.data), len(data))
			}
		})
	}
}

// TestArrivalsEOFOnlyWhenVerified holds a download after its last byte:
// the follower has every byte but must not see io.EOF until Fetch has
// verified them.
func TestArrivalsEOFOnlyWhenVerified(t *testing.T) {
	data := content(22, 100000)
	c := newTestCache(t, Options{})
	g := newGate(t.Context())
	r, fetched := startFetch(t, c, gatedBlob(data, len(data), g))
	<-g.reached
	got := make([]byte, len(data))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading the arrived bytes: %v", err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 1))
		ended <- err
	}()
	select {
	case err := <-ended:
		t.Fatalf("follower's read past the last byte returned %v before Fetch verified the blob, want it to wait", err)
	case <-time.After(50 * time.Millisecond): // still blocked, as it should be
	}
	close(g.release)
	if err := <-fetched; err != nil {
		t.Fatalf("Fetch error: %v", err)
	}
	if err := <-ended; err != io.EOF {
		t.Errorf("follower's read after Fetch verified the blob = %v, want io.EOF", err)
	}
}

func TestArrivalsHitAndCancel(t *testing.T) {
	data := content(23, 5000)
	t.Run("cache hit", func(t *testing.T) {
		c := newTestCache(t, Options{})
		f, err := c.Fetch(t.Context(), blobOf(data, nil))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		b := blobOf(data, nil)
		a := NewArrivals()
		defer a.Close()
		b.Arrivals = a
		if f, err = c.Fetch(t.Context(), b); err != nil {
			t.Fatal(err)
		}
		f.Close()
		<-a.Started()
		if r, ok := a.Follow(t.Context()); ok {
			r.Close()
			t.Errorf("Follow after a cache hit = true, want false: there is no download")
		}
		if n := a.Attempts(); n != 0 {
			t.Errorf("Attempts after a cache hit = %d, want 0", n)
		}
	})
	t.Run("follower's context ends while it waits", func(t *testing.T) {
		c := newTestCache(t, Options{})
		g := newGate(t.Context())
		b := gatedBlob(data, 100, g)
		a := NewArrivals()
		defer a.Close()
		b.Arrivals = a
		fetched := make(chan struct{})
		go func() {
			defer close(fetched)
			if f, err := c.Fetch(t.Context(), b); err == nil {
				f.Close()
			}
		}()
		defer func() { close(g.release); <-fetched }()
		<-a.Started()
		ctx, cancel := context.WithCancel(t.Context())
		r, ok := a.Follow(ctx)
		if !ok {
			t.Fatal("Follow after Started = false")
		}
		defer r.Close()
		<-g.reached
		if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := r.Read(make([]byte, 1)); !errors.Is(err, context.Canceled) {
			t.Errorf("follower's read after its context ended = %v, want context.Canceled", err)
		}
	})
}
