package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
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
		if err := os.MkdirAll(filepath.Join(dir, sub), privateDirPerm); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, tagName), []byte(tagContent), privateFilePerm); err != nil {
		b.Fatal(err)
	}
	var seed [8]byte
	for i := range n {
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		sum := sha256.Sum256(seed[:])
		if err := os.WriteFile(filepath.Join(dir, blobsSubdir, hex.EncodeToString(sum[:])), nil, privateFilePerm); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Sync()
}

// BenchmarkPruneWalk compares the one-pass tally-and-delete of a full
// prune's aside with os.RemoveAll of an identical tree (which only deletes),
// and the dry run's tally with a plain lstat of every entry (filepath.WalkDir
// plus Lstat, what du does). Every iteration deletes a fresh tree, built
// outside the timer. docs/bench.sh runs the same comparison against rm -rf
// and du -sb with the built binary.
func BenchmarkPruneWalk(b *testing.B) {
	const n = 10_000
	remove := []struct {
		name string
		run  func(b *testing.B, root string)
	}{
		{"prune", func(b *testing.B, root string) {
			if _, err := walk(b.Context(), root, "oci", true); err != nil {
				b.Fatal(err)
			}
		}},
		{"reference-removeall", func(b *testing.B, root string) {
			if err := os.RemoveAll(filepath.Join(root, "oci")); err != nil {
				b.Fatal(err)
			}
		}},
	}
	for _, r := range remove {
		b.Run(fmt.Sprintf("%s/%dk", r.name, n/1000), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				root := b.TempDir()
				makeBenchTree(b, filepath.Join(root, "oci"), n)
				b.StartTimer()
				r.run(b, root)
			}
		})
	}

	root := b.TempDir()
	makeBenchTree(b, filepath.Join(root, "oci"), n)
	b.Run(fmt.Sprintf("dry-run/%dk", n/1000), func(b *testing.B) {
		for b.Loop() {
			if t, err := walk(b.Context(), root, "oci", false); err != nil || t.Blobs != n {
				b.Fatalf("walk = %+v, %v; want %d blobs", t, err, n)
			}
		}
	})
	b.Run(fmt.Sprintf("reference-lstat-all/%dk", n/1000), func(b *testing.B) {
		for b.Loop() {
			var size int64
			err := filepath.WalkDir(filepath.Join(root, "oci"), func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				info, err := os.Lstat(p)
				if err == nil {
					size += info.Size()
				}
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
