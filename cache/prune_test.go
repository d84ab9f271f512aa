package cache

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// aside names a leftover directory as prune or create would.
func aside(c *Cache, prefix string) string {
	return filepath.Join(c.parent(), prefix+randomSuffix())
}

func TestPrune(t *testing.T) {
	blobA, blobB, blobC := content(1, 10), content(2, 1000), []byte{}
	hexName := func(i int) string { return fmt.Sprintf("%064x", i) }
	tests := []struct {
		name string
		// setup fills the cache and returns what a prune should free.
		setup func(t *testing.T, c *Cache) Tally
		// noCache: only leftovers exist, so no cache is there to recreate.
		noCache bool
		// keep lists paths, relative to the cache root, that prune must
		// leave alone.
		keep []string
	}{
		{name: "fresh cache", setup: func(t *testing.T, c *Cache) Tally {
			initCache(t, c)
			return Tally{}
		}},
		{name: "blobs", setup: func(t *testing.T, c *Cache) Tally {
			mustFetch(t, c, blobA)
			mustFetch(t, c, blobB)
			mustFetch(t, c, blobC)
			return Tally{Bytes: 1010, Blobs: 3}
		}},
		{name: "stale temp files", setup: func(t *testing.T, c *Cache) Tally {
			mustFetch(t, c, blobA)
			writeFile(t, filepath.Join(c.dir, tmpSubdir, hexOf(blobB)+".0123456789abcdef.partial"), content(3, 100))
			writeFile(t, filepath.Join(c.dir, tmpSubdir, "empty.partial"), nil)
			return Tally{Bytes: 110, Blobs: 1}
		}},
		{name: "names that are not blobs", setup: func(t *testing.T, c *Cache) Tally {
			initCache(t, c)
			writeFile(t, filepath.Join(c.dir, blobsSubdir, "README"), []byte("hello"))
			writeFile(t, filepath.Join(c.dir, blobsSubdir, strings.ToUpper(hexName(0xabc))), []byte("1234567"))
			writeFile(t, filepath.Join(c.dir, blobsSubdir, hexName(2)+".partial"), []byte("12"))
			writeFile(t, filepath.Join(c.dir, "blobs", "sha512", hexName(3)), []byte("123"))
			writeFile(t, filepath.Join(c.dir, hexName(4)), []byte("1"))
			return Tally{Bytes: 18}
		}},
		{name: "leftover aside", setup: func(t *testing.T, c *Cache) Tally {
			mustFetch(t, c, blobB)
			dir := aside(c, asidePrefix)
			writeFile(t, filepath.Join(dir, tagName), []byte(tagContent))
			writeFile(t, filepath.Join(dir, blobsSubdir, hexName(1)), content(4, 20))
			writeFile(t, filepath.Join(dir, tmpSubdir, "x.partial"), content(5, 5))
			return Tally{Bytes: 1025, Blobs: 2}
		}},
		{name: "half-deleted aside", setup: func(t *testing.T, c *Cache) Tally {
			initCache(t, c)
			dir := aside(c, asidePrefix)
			writeFile(t, filepath.Join(dir, blobsSubdir, hexName(1)), content(4, 30))
			if err := os.MkdirAll(filepath.Join(dir, tmpSubdir), 0o755); err != nil {
				t.Fatal(err)
			}
			return Tally{Bytes: 30, Blobs: 1}
		}},
		{name: "leftover half-created caches", setup: func(t *testing.T, c *Cache) Tally {
			initCache(t, c)
			dir := aside(c, creatingPrefix)
			writeFile(t, filepath.Join(dir, tagName), []byte(tagContent))
			writeFile(t, filepath.Join(dir, tmpSubdir, "odd"), content(6, 4))
			if err := os.MkdirAll(filepath.Join(aside(c, creatingPrefix), "blobs"), 0o755); err != nil {
				t.Fatal(err)
			}
			return Tally{Bytes: 4}
		}},
		{name: "leftovers without a cache", noCache: true, setup: func(t *testing.T, c *Cache) Tally {
			writeFile(t, filepath.Join(aside(c, asidePrefix), blobsSubdir, hexName(9)), content(7, 9))
			return Tally{Bytes: 9, Blobs: 1}
		}},
		{name: "several asides", setup: func(t *testing.T, c *Cache) Tally {
			mustFetch(t, c, blobA)
			for i := range 3 {
				writeFile(t, filepath.Join(aside(c, asidePrefix), blobsSubdir, hexName(i)), content(byte(i), 100))
			}
			return Tally{Bytes: 310, Blobs: 4}
		}},
		{name: "thousands of entries", setup: func(t *testing.T, c *Cache) Tally {
			// More than one ReadDir batch in each directory.
			initCache(t, c)
			for i := range 2500 {
				writeFile(t, filepath.Join(c.dir, blobsSubdir, hexName(i)), []byte{1, 2})
			}
			for i := range 1100 {
				writeFile(t, filepath.Join(c.dir, tmpSubdir, fmt.Sprint(i)), []byte{1})
			}
			return Tally{Bytes: 6100, Blobs: 2500}
		}},
		{name: "siblings that are not banger's", keep: []string{
			".pruning-notbangers-files", ".pruning-0123456789abcde", ".creating-0123456789ABCDEF", "other/file", ".pruning-0123456789abcdef.txt",
		}, setup: func(t *testing.T, c *Cache) Tally {
			mustFetch(t, c, blobA)
			for _, name := range []string{".pruning-notbangers-files", ".pruning-0123456789abcde", ".creating-0123456789ABCDEF"} {
				writeFile(t, filepath.Join(c.parent(), name, "file"), []byte("mine"))
			}
			writeFile(t, filepath.Join(c.parent(), "other", "file"), []byte("mine"))
			writeFile(t, filepath.Join(c.parent(), ".pruning-0123456789abcdef.txt"), []byte("a file, not a dir"))
			return Tally{Bytes: 10, Blobs: 1}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			want := tt.setup(t, c)
			before := snapshot(t, c.parent(), "oci.lock", "oci.lock.gate")

			// A dry run measures and changes nothing.
			got, err := pruneAll(t.Context(), c, true)
			if err != nil || got != want {
				t.Errorf("Prune(dry run) = %+v, %v; want %+v", got, err, want)
			}
			checkSame(t, "after dry run", before, snapshot(t, c.parent(), "oci.lock", "oci.lock.gate"))
			if got, err := usageOf(t.Context(), c); err != nil || got != want {
				t.Errorf("Usage() = %+v, %v; want %+v", got, err, want)
			}

			got, err = pruneAll(t.Context(), c, false)
			if err != nil || got != want {
				t.Errorf("Prune() = %+v, %v; want %+v", got, err, want)
			}
			if tt.noCache {
				if _, err := os.Lstat(c.dir); err == nil {
					t.Errorf("Prune() created %s where there was no cache", c.dir)
				}
			} else {
				checkEmptyCache(t, c)
			}
			checkNoLeftovers(t, c)
			for _, k := range tt.keep {
				if _, err := os.Lstat(filepath.Join(c.parent(), k)); err != nil {
					t.Errorf("Prune() removed %s, which is not banger's: %v", k, err)
				}
			}

			if got, err := pruneAll(t.Context(), c, false); err != nil || got != (Tally{}) {
				t.Errorf("second Prune() = %+v, %v; want 0 B", got, err)
			}
			if got, err := pruneAll(t.Context(), c, true); err != nil || got != (Tally{}) {
				t.Errorf("Prune(dry run) after prune = %+v, %v; want 0 B", got, err)
			}
		})
	}
}

// TestPruneAbsent prunes a cache that was never created: nothing to free,
// no error, and a dry run leaves no trace, not even a lock file.
func TestPruneAbsent(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, root string)
	}{
		{"no cache root", func(*testing.T, string) {}},
		{"empty cache root", func(t *testing.T, root string) {
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"cache root with other files", func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "other", "file"), []byte("x"))
		}},
	}
	for _, tt := range tests {
		for _, dryRun := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/dryRun=%v", tt.name, dryRun), func(t *testing.T) {
				c := newTestCache(t, Options{})
				tt.setup(t, c.parent())
				top := filepath.Dir(c.parent())
				before := snapshot(t, top)
				got, err := pruneAll(t.Context(), c, dryRun)
				if err != nil || got != (Tally{}) {
					t.Errorf("Prune(%v) of an absent cache = %+v, %v; want 0 B, nil", dryRun, got, err)
				}
				if dryRun {
					checkSame(t, "after dry run", before, snapshot(t, top))
				}
				if got, err := usageOf(t.Context(), c); err != nil || got != (Tally{}) {
					t.Errorf("Usage() of an absent cache = %+v, %v; want 0 B, nil", got, err)
				}
			})
		}
	}
}

// TestPruneRefuses checks that prune, its dry run, usage and fetch leave a
// directory alone when it is not verifiably banger's cache.
func TestPruneRefuses(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, c *Cache, elsewhere string)
		wantErr error // nil: any error
		wantMsg string
	}{
		{name: "no tag", wantErr: ErrNotCache, wantMsg: "refusing to touch it", setup: func(t *testing.T, c *Cache, _ string) {
			writeFile(t, filepath.Join(c.dir, "precious", "thesis.tex"), []byte("years of work"))
			writeFile(t, filepath.Join(c.dir, blobsSubdir, hexOf([]byte("x"))), []byte("x"))
		}},
		{name: "empty directory", wantErr: ErrNotCache, setup: func(t *testing.T, c *Cache, _ string) {
			if err := os.MkdirAll(c.dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "wrong signature", wantErr: ErrNotCache, setup: func(t *testing.T, c *Cache, _ string) {
			writeFile(t, filepath.Join(c.dir, tagName), []byte("Signature: 00000000000000000000000000000000\n"))
			writeFile(t, filepath.Join(c.dir, "file"), []byte("x"))
		}},
		{name: "empty tag", wantErr: ErrNotCache, setup: func(t *testing.T, c *Cache, _ string) {
			writeFile(t, filepath.Join(c.dir, tagName), nil)
		}},
		{name: "tag is a directory", wantErr: ErrNotCache, setup: func(t *testing.T, c *Cache, _ string) {
			if err := os.MkdirAll(filepath.Join(c.dir, tagName), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "tag is a symlink", wantErr: ErrNotCache, setup: func(t *testing.T, c *Cache, elsewhere string) {
			writeFile(t, filepath.Join(elsewhere, tagName), []byte(tagContent))
			symlink(t, filepath.Join(elsewhere, tagName), filepath.Join(c.dir, tagName))
			writeFile(t, filepath.Join(c.dir, "file"), []byte("x"))
		}},
		{name: "cache is a symlink", wantMsg: "symlink", setup: func(t *testing.T, c *Cache, elsewhere string) {
			real := New(filepath.Join(elsewhere, "oci"), filepath.Join(elsewhere, "oci.lock"), Options{})
			mustFetch(t, real, content(1, 100))
			symlink(t, real.dir, c.dir)
		}},
		{name: "cache is a file", wantMsg: "not a directory", setup: func(t *testing.T, c *Cache, _ string) {
			writeFile(t, c.dir, []byte("x"))
		}},
	}
	ops := []struct {
		name string
		run  func(t *testing.T, c *Cache) error
	}{
		{"prune", func(t *testing.T, c *Cache) error { _, err := pruneAll(t.Context(), c, false); return err }},
		{"dry run", func(t *testing.T, c *Cache) error { _, err := pruneAll(t.Context(), c, true); return err }},
		{"usage", func(t *testing.T, c *Cache) error { _, err := usageOf(t.Context(), c); return err }},
		{"fetch", func(t *testing.T, c *Cache) error {
			f, err := c.Fetch(t.Context(), blobOf([]byte("x"), nil))
			if f != nil {
				f.Close()
			}
			return err
		}},
	}
	for _, tt := range tests {
		for _, op := range ops {
			t.Run(tt.name+"/"+op.name, func(t *testing.T) {
				c := newTestCache(t, Options{})
				elsewhere := t.TempDir()
				tt.setup(t, c, elsewhere)
				// A leftover aside must survive a refused prune too.
				writeFile(t, filepath.Join(aside(c, asidePrefix), "file"), []byte("x"))
				before, beforeElsewhere := snapshot(t, c.parent(), "oci.lock", "oci.lock.gate"), snapshot(t, elsewhere)

				err := op.run(t, c)
				if err == nil {
					t.Fatalf("%s of %s = nil error, want a refusal", op.name, tt.name)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("%s error = %v, want it to wrap %v", op.name, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), c.dir) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("%s error = %q, want it to name %s and say %q", op.name, err, c.dir, tt.wantMsg)
				}
				checkSame(t, "cache root", before, snapshot(t, c.parent(), "oci.lock", "oci.lock.gate"))
				checkSame(t, "elsewhere", beforeElsewhere, snapshot(t, elsewhere))
			})
		}
	}
}

// TestPruneSymlinksInside plants symlinks to files and directories outside
// the cache: prune removes the links and nothing they point to.
func TestPruneSymlinksInside(t *testing.T) {
	tests := []struct {
		name string
		// link is where the link goes, relative to the cache root; target
		// names what it points to inside the outside directory.
		link, target string
	}{
		{"file link named like a blob", "oci/" + blobsSubdir + "/" + hexOf([]byte("secret")), "secret.txt"},
		{"directory link in blobs", "oci/" + blobsSubdir + "/dirlink", "dir"},
		{"directory link in tmp", "oci/tmp/dirlink", "dir"},
		{"directory link at the top", "oci/blobs/sha512", "dir"},
		{"file link in a leftover aside", ".pruning-0123456789abcdef/tmp/link", "secret.txt"},
		{"directory link in a leftover aside", ".pruning-0123456789abcdef/" + blobsSubdir, "dir"},
		{"link to the cache root", "oci/tmp/up", ".."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			blob := content(1, 100)
			mustFetch(t, c, blob)
			outside := t.TempDir()
			writeFile(t, filepath.Join(outside, "secret.txt"), []byte("secret"))
			writeFile(t, filepath.Join(outside, "dir", "file"), content(2, 5000))
			writeFile(t, filepath.Join(outside, "dir", blobsSubdir, hexOf([]byte("y"))), []byte("y"))
			target := filepath.Join(outside, tt.target)
			if tt.target == ".." {
				target = c.parent()
			}
			symlink(t, target, filepath.Join(c.parent(), tt.link))
			before := snapshot(t, outside)
			// A link counts as its own size, never as what it points to.
			want := Tally{Bytes: int64(len(blob) + len(target)), Blobs: 1}

			for _, dryRun := range []bool{true, false} {
				got, err := pruneAll(t.Context(), c, dryRun)
				if err != nil || got != want {
					t.Errorf("Prune(%v) = %+v, %v; want %+v", dryRun, got, err, want)
				}
				checkSame(t, fmt.Sprintf("outside after Prune(%v)", dryRun), before, snapshot(t, outside))
			}
			if _, err := os.Lstat(filepath.Join(c.parent(), tt.link)); err == nil {
				t.Errorf("link %s survived prune", tt.link)
			}
			if _, err := os.Stat(c.lockPath); err != nil {
				t.Errorf("lock file gone after prune: %v", err)
			}
			checkEmptyCache(t, c)
			checkNoLeftovers(t, c)
		})
	}
}

// TestRenameAsideListsUnderLock checks that prune decides what to delete
// while it holds the exclusive lock: a staging directory that appears
// afterwards belongs to a pull creating the cache right now, and deleting
// it could publish a cache without its tag.
func TestRenameAsideListsUnderLock(t *testing.T) {
	tests := []struct {
		name      string
		leftovers int
		cache     bool
	}{
		{"cache only", 0, true},
		{"cache and leftovers", 2, true},
		{"leftovers only", 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			if tt.cache {
				initCache(t, c)
			}
			want := map[string]bool{}
			for range tt.leftovers {
				dir := aside(c, creatingPrefix)
				writeFile(t, filepath.Join(dir, tagName), []byte(tagContent))
				want[filepath.Base(dir)] = true
			}
			dirs, err := c.renameAside(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			late := aside(c, creatingPrefix)
			if err := os.Mkdir(late, 0o755); err != nil {
				t.Fatal(err)
			}
			asides := 0
			for _, d := range dirs {
				switch {
				case want[d]:
					delete(want, d)
				case strings.HasPrefix(d, asidePrefix) && tt.cache:
					asides++
				default:
					t.Errorf("renameAside() lists %s, want only the aside and the leftovers", d)
				}
			}
			if len(want) != 0 || tt.cache && asides != 1 {
				t.Errorf("renameAside() = %q: missing %v, %d asides", dirs, want, asides)
			}
		})
	}
}

// TestConcurrentPrunesAndFetches runs pulls and prunes together: every pull
// gets its content, every prune succeeds, and a final prune leaves a clean,
// empty cache.
func TestConcurrentPrunesAndFetches(t *testing.T) {
	tests := []struct {
		name             string
		fetchers, prunes int
	}{
		{"one pruner", 6, 1},
		{"racing pruners", 6, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			initCache(t, c)
			stop := make(chan struct{})
			var fetchers, pruners sync.WaitGroup
			for i := range tt.fetchers {
				fetchers.Go(func() {
					for j := range 15 {
						data := content(byte(i*16+j%4), 20000+j%4)
						f, err := c.Fetch(t.Context(), blobOf(data, nil))
						if err != nil {
							t.Errorf("Fetch #%d.%d error: %v", i, j, err)
							return
						}
						if got := readFetched(t, f); !bytes.Equal(got, data) {
							t.Errorf("Fetch #%d.%d = %d bytes, want %d", i, j, len(got), len(data))
						}
					}
				})
			}
			for range tt.prunes {
				pruners.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := pruneAll(t.Context(), c, false); err != nil {
							t.Errorf("Prune during fetches error: %v", err)
							return
						}
						if _, err := usageOf(t.Context(), c); err != nil {
							t.Errorf("Usage during fetches error: %v", err)
							return
						}
					}
				})
			}
			fetchers.Wait()
			close(stop)
			pruners.Wait()
			if _, err := pruneAll(t.Context(), c, false); err != nil {
				t.Fatal(err)
			}
			checkEmptyCache(t, c)
			checkNoLeftovers(t, c)
		})
	}
}

// TestNestedCacheRefused checks issue 9 §4: a cache root that is itself a
// cache directory (the caller named <root>/oci as the root) is refused by
// every operation with ErrNestedCache, and nothing is created in it.
func TestNestedCacheRefused(t *testing.T) {
	ops := []struct {
		name string
		run  func(t *testing.T, c *Cache) error
	}{
		{"prune", func(t *testing.T, c *Cache) error { _, err := c.Prune(t.Context(), Policy{}, false); return err }},
		{"dry run", func(t *testing.T, c *Cache) error { _, err := c.Prune(t.Context(), Policy{}, true); return err }},
		{"evict", func(t *testing.T, c *Cache) error {
			_, err := c.Prune(t.Context(), Policy{OlderThan: time.Hour}, false)
			return err
		}},
		{"inventory", func(t *testing.T, c *Cache) error { _, err := c.Inventory(t.Context()); return err }},
		{"fetch", func(t *testing.T, c *Cache) error {
			f, err := c.Fetch(t.Context(), blobOf([]byte("x"), nil))
			if f != nil {
				f.Close()
			}
			return err
		}},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			real := newTestCache(t, Options{})
			mustFetch(t, real, content(1, 100))
			// What a user gets with --cache-dir pointing at oci/.
			c := New(filepath.Join(real.dir, "oci"), filepath.Join(real.dir, "oci.lock"), Options{})
			before := snapshot(t, real.parent())
			err := op.run(t, c)
			if !errors.Is(err, ErrNestedCache) {
				t.Fatalf("%s = %v, want %v", op.name, err, ErrNestedCache)
			}
			if !strings.Contains(err.Error(), real.dir) || !strings.Contains(err.Error(), real.parent()) {
				t.Errorf("error %q does not name %s and the root it belongs to, %s", err, real.dir, real.parent())
			}
			checkSame(t, "the real cache", before, snapshot(t, real.parent()))
		})
	}
}
