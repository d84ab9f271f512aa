package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// BenchmarkRenameAside measures how long a full prune holds the exclusive
// lock: renameAside takes the gate and the lock, renames the cache aside,
// creates a fresh tagged cache and lists the leftovers before it releases
// them. Pulls wait for exactly this long, so it must not grow with the
// number of blobs (docs/bench.sh compares 1k with 100k; the goal is flat and
// at most 5 ms at 100k).
//
// Each iteration puts the aside back in place outside the timer, so the
// tree is built once per size.
func BenchmarkRenameAside(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			root := b.TempDir()
			dir := filepath.Join(root, "oci")
			makeBenchTree(b, dir, n)
			c := New(dir, filepath.Join(root, "oci.lock"), Options{})
			// A few untimed rounds first: the first fsync after building
			// the tree commits (and may wait to checkpoint) the whole
			// tree's creation, which a real cache, filled over days, does
			// not have pending.
			for range 3 {
				swapAndRestore(b, c, root)
			}
			for b.Loop() {
				swapAndRestore(b, c, root)
			}
		})
	}
}

// swapAndRestore times one renameAside and, outside the timer, puts the
// aside back in place of the fresh cache.
func swapAndRestore(b *testing.B, c *Cache, root string) {
	dirs, err := c.renameAside(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	defer b.StartTimer()
	if len(dirs) != 1 {
		b.Fatalf("renameAside returned %q, want one aside", dirs)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, dirs[0]), c.dir); err != nil {
		b.Fatal(err)
	}
}

// makeBenchTree writes a tagged cache at dir holding n empty blobs: the
// rename that the lock covers does not read them, and empty files make the
// 100k tree quick to build and delete. It syncs at the end, so that the
// first timed fsync (create syncs the cache's parent) does not commit the
// whole tree's creation.
func makeBenchTree(b *testing.B, dir string, n int) {
	b.Helper()
	for _, sub := range []string{blobsSubdir, tmpSubdir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), dirPerm); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, tagName), []byte(tagContent), filePerm); err != nil {
		b.Fatal(err)
	}
	var seed [8]byte
	for i := range n {
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		sum := sha256.Sum256(seed[:])
		if err := os.WriteFile(filepath.Join(dir, blobsSubdir, hex.EncodeToString(sum[:])), nil, filePerm); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Sync()
}
