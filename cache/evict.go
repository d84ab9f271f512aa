package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Policy selects the blobs a selective prune evicts. A blob goes if either
// rule says so.
type Policy struct {
	// OlderThan evicts blobs not used (written or read by a pull) within
	// this duration; 0 disables the rule.
	OlderThan time.Duration
	// MaxSize evicts least recently used blobs until the blobs kept total at
	// most this many bytes; a negative value disables the rule.
	MaxSize int64
}

// Report is the outcome of a selective prune.
type Report struct {
	// Freed counts the evicted blobs plus abandoned temp files and leftover
	// asides.
	Freed Tally
	// Kept counts the blobs left in the cache.
	Kept Tally
	// Errors lists deletions that failed; what was deleted is still counted.
	Errors []error
}

// BlobInfo describes one cached blob.
type BlobInfo struct {
	Digest  string    `json:"digest"`
	Size    int64     `json:"size"`
	LastUse time.Time `json:"last_use"`
}

// Inventory is what the cache holds.
type Inventory struct {
	// Blobs is sorted most recently used first.
	Blobs []BlobInfo
	// Leftover counts temp files and the contents of asides left by
	// interrupted pulls and prunes: bytes a prune frees besides blobs.
	Leftover Tally
}

// Inventory lists the cache's blobs with their sizes and last use, under the
// shared lock, changing nothing. A cache that does not exist is empty.
func (c *Cache) Inventory(ctx context.Context) (Inventory, error) {
	var inv Inventory
	if c.absent() {
		return inv, nil
	}
	unlock, err := c.lock(ctx, false)
	if err != nil {
		return inv, err
	}
	defer unlock()
	if inv.Blobs, err = c.listBlobs(ctx); err != nil {
		return inv, err
	}
	temps, err := c.listTemps(false)
	if err != nil {
		return inv, err
	}
	for _, t := range temps {
		inv.Leftover.Bytes += t.size
	}
	leftovers, err := c.leftovers()
	if err != nil {
		return inv, err
	}
	for _, d := range leftovers {
		t, err := walk(ctx, c.parent(), d, false)
		if err != nil {
			return inv, err
		}
		inv.Leftover.add(t)
	}
	return inv, nil
}

// listBlobs lists blobs/sha256, most recently used first. The caller holds
// the lock.
func (c *Cache) listBlobs(ctx context.Context) ([]BlobInfo, error) {
	switch err := c.checkDir(); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, err
	}
	blobs, err := listBlobsIn(ctx, c.dir)
	if err != nil {
		return nil, err
	}
	return sortByUse(blobs), nil
}

// sortByUse sorts blobs most recently used first, then by digest. It sorts
// small integer keys rather than the records, and compares the first 16 hex
// digits as a number before whole digests: mtimes often tie (the kernel
// stamps them from a coarse clock), and comparing strings and moving
// 48-byte records made sorting 100,000 blobs an eighth of `cache du`.
func sortByUse(blobs []BlobInfo) []BlobInfo {
	type key struct {
		nanos  int64
		prefix uint64 // the digest's first 16 hex digits, in the same order
		i      int
	}
	keys := make([]key, len(blobs))
	for i, b := range blobs {
		prefix, _ := strconv.ParseUint(strings.TrimPrefix(b.Digest, "sha256:")[:16], 16, 64)
		keys[i] = key{b.LastUse.UnixNano(), prefix, i}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := cmp.Compare(b.nanos, a.nanos); c != 0 {
			return c
		}
		if c := cmp.Compare(a.prefix, b.prefix); c != 0 {
			return c
		}
		return strings.Compare(blobs[a.i].Digest, blobs[b.i].Digest)
	})
	sorted := make([]BlobInfo, len(blobs))
	for j, k := range keys {
		sorted[j] = blobs[k.i]
	}
	return sorted
}

type tempFile struct {
	name      string
	size      int64
	abandoned bool
}

// listTemps lists tmp/. With probe it tells abandoned temp files (their
// writer's flock can be taken) from ones still being written.
func (c *Cache) listTemps(probe bool) ([]tempFile, error) {
	entries, err := os.ReadDir(c.dir + "/" + tmpSubdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("listing temp files: %w", err)
	}
	var temps []tempFile
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		t := tempFile{name: e.Name(), size: info.Size()}
		if probe && e.Type().IsRegular() {
			t.abandoned = !lockedByWriter(c.dir + "/" + tmpSubdir + "/" + e.Name())
		} else if probe {
			t.abandoned = true // not a file banger writes
		}
		temps = append(temps, t)
	}
	return temps, nil
}

// lockedByWriter reports whether a live writer holds the temp file's flock.
func lockedByWriter(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	return false
}

// plan splits blobs (most recently used first) into those to keep and
// those to evict under policy p.
func plan(blobs []BlobInfo, p Policy, now time.Time) (keep, evict []BlobInfo) {
	var kept int64
	full := false
	for _, b := range blobs {
		tooOld := p.OlderThan > 0 && now.Sub(b.LastUse) > p.OlderThan
		// Walking from the most recent, the first blob that would take the
		// total over MaxSize goes, and so does every older one: least
		// recently used first, as the policy promises.
		if !tooOld && p.MaxSize >= 0 && kept+b.Size > p.MaxSize {
			full = true
		}
		if tooOld || full {
			evict = append(evict, b)
			continue
		}
		kept += b.Size
		keep = append(keep, b)
	}
	return keep, evict
}

// evictBatch bounds how many blobs are removed per hold of the exclusive
// lock, so that pulls get in between batches on a large eviction.
const evictBatch = 256

// Evict removes the blobs that policy p selects, oldest use first, plus
// abandoned temp files and leftover asides, and reports what it freed and
// kept. With dryRun it plans the same way and changes nothing.
//
// The plan is made under the shared lock; the removals happen under the
// exclusive lock in batches, and each blob is checked again before it goes:
// one used since the plan was made is kept. A pull that already opened a
// blob keeps reading it; one that looks it up after it is gone fetches it
// again.
func (c *Cache) Evict(ctx context.Context, p Policy, dryRun bool) (Report, error) {
	var rep Report
	if c.absent() {
		return rep, nil
	}
	now := c.now()
	unlock, err := c.lock(ctx, false)
	if err != nil {
		return rep, err
	}
	blobs, err := c.listBlobs(ctx)
	unlock()
	if err != nil {
		return rep, err
	}
	keep, evict := plan(blobs, p, now)
	for _, b := range keep {
		rep.Kept.add(Tally{Bytes: b.Size, Blobs: 1})
	}
	if dryRun {
		for _, b := range evict {
			rep.Freed.add(Tally{Bytes: b.Size, Blobs: 1})
		}
		garbage, err := c.garbage(ctx)
		rep.Freed.Bytes += garbage
		return rep, err
	}

	var leftovers []string
	for start := 0; start == 0 || start < len(evict); start += evictBatch {
		batch := evict[start:min(start+evictBatch, len(evict))]
		last := start+evictBatch >= len(evict)
		err := c.withExclusiveDir(ctx, func(r *os.Root) error {
			for _, b := range batch {
				name := blobsSubdir + "/" + strings.TrimPrefix(b.Digest, "sha256:")
				info, err := r.Lstat(name)
				if errors.Is(err, fs.ErrNotExist) {
					continue // removed by someone else
				}
				if err == nil && info.ModTime().After(b.LastUse) {
					rep.Kept.add(Tally{Bytes: info.Size(), Blobs: 1}) // used since the plan
					continue
				}
				if err == nil {
					err = r.Remove(name)
				}
				if err != nil {
					rep.Errors = append(rep.Errors, fmt.Errorf("removing blob %s: %w", b.Digest, err))
					continue
				}
				rep.Freed.add(Tally{Bytes: info.Size(), Blobs: 1})
			}
			if !last {
				return nil
			}
			temps, err := c.listTemps(true)
			if err != nil {
				return err
			}
			for _, t := range temps {
				if !t.abandoned {
					continue
				}
				if err := r.RemoveAll(tmpSubdir + "/" + t.name); err != nil {
					rep.Errors = append(rep.Errors, fmt.Errorf("removing temp file %s: %w", t.name, err))
					continue
				}
				rep.Freed.Bytes += t.size
			}
			// Listed under the lock, as renameAside does: a staging
			// directory seen while no pull holds the lock is a leftover.
			leftovers, err = c.leftovers()
			return err
		})
		if err != nil {
			return rep, err
		}
	}
	for _, d := range leftovers {
		t, err := walk(ctx, c.parent(), d, true)
		rep.Freed.add(t)
		if err != nil {
			rep.Errors = append(rep.Errors, err)
		}
	}
	return rep, errors.Join(rep.Errors...)
}

// withExclusiveDir runs fn on the cache directory under the exclusive lock.
func (c *Cache) withExclusiveDir(ctx context.Context, fn func(r *os.Root) error) error {
	unlock, err := c.lock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	if err := c.checkDir(); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	r, err := os.OpenRoot(c.dir)
	if err != nil {
		return fmt.Errorf("opening cache %s: %w", c.dir, err)
	}
	defer r.Close()
	return fn(r)
}

// garbage measures what an eviction frees besides blobs: abandoned temp
// files and leftover asides.
func (c *Cache) garbage(ctx context.Context) (int64, error) {
	unlock, err := c.lock(ctx, false)
	if err != nil {
		return 0, err
	}
	defer unlock()
	var bytes int64
	temps, err := c.listTemps(true)
	if err != nil {
		return 0, err
	}
	for _, t := range temps {
		if t.abandoned {
			bytes += t.size
		}
	}
	leftovers, err := c.leftovers()
	if err != nil {
		return bytes, err
	}
	for _, d := range leftovers {
		t, err := walk(ctx, c.parent(), d, false)
		bytes += t.Bytes
		if err != nil {
			return bytes, err
		}
	}
	return bytes, nil
}
