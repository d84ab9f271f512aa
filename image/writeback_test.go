package image

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestEarlyWriteback checks that the writer passes every byte through
// whatever the write sizes, and starts writeback once per writebackEvery
// bytes, never for a stretch it already started.
func TestEarlyWriteback(t *testing.T) {
	tests := []struct {
		name        string
		writes      []int
		wantStarted int64
	}{
		{"nothing", nil, 0},
		{"small writes", []int{1, 100, 4096}, 0},
		{"exactly one stretch", []int{writebackEvery}, writebackEvery},
		{"stretch built from small writes", []int{writebackEvery / 2, writebackEvery/2 - 1, 1, 5}, writebackEvery},
		{"one large write", []int{3*writebackEvery + 7}, 3*writebackEvery + 7},
		{"several stretches", []int{writebackEvery - 1, 2, writebackEvery, 10}, 2*writebackEvery + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w := &earlyWriteback{f: f}
			var want bytes.Buffer
			for i, n := range tt.writes {
				p := bytes.Repeat([]byte{byte('a' + i)}, n)
				if got, err := w.Write(p); got != n || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", n, got, err)
				}
				want.Write(p)
			}
			if w.started != tt.wantStarted {
				t.Errorf("writeback started for %d bytes, want %d", w.started, tt.wantStarted)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("file holds %d bytes, not the %d written", len(got), want.Len())
			}
		})
	}
}
