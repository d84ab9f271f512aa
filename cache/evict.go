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
	// Total counts the blobs.
	Total Tally
	// OldestUse and NewestUse are the least and the most recent last use
	// of a blob; zero when there are none.
	OldestUse, NewestUse time.Time
	// Leftover counts temp files and the contents of asides left by
	// interrupted pulls and prunes: bytes a prune frees besides blobs.
	Leftover Tally
}

// Inventory lists the cache's blobs with their sizes and last use, and the
// leftovers a prune would also remove, under the shared lock, changing
// nothing. A cache that does not exist is empty. It is safe to run
// concurrently with Fetch and Prune.
func (c *Cache) Inventory(ctx context.Context) (Inventory, error) {
	var inv Inventory
	if absent, err := c.absent(); err != nil || absent {
		return inv, err
	}
	unlock, err := c.lock(ctx, shared)
	if err != nil {
		return inv, err
	}
	defer unlock()
	if inv.Blobs, err = c.listBlobs(ctx); err != nil {
		return inv, err
	}
	for _, b := range inv.Blobs {
		inv.Total.add(Tally{Bytes: b.Size, Blobs: 1})
	}
	if n := len(inv.Blobs); n > 0 {
		inv.NewestUse, inv.OldestUse = inv.Blobs[0].LastUse, inv.Blobs[n-1].LastUse
	}
	temps, _, err := c.sweepTemps(nil, false)
	if err != nil {
		return inv, err
	}
	inv.Leftover.Bytes += temps
	leftovers, err := c.leftovers()
	if err != nil {
		return inv, err
	}
	t, errs := c.sweep(ctx, leftovers, false)
	inv.Leftover.add(t)
	return inv, errors.Join(errs...)
}

// listBlobs lists blobs/sha256, most recently used first. The caller holds
// the lock.
func (c *Cache) listBlobs(ctx context.Context) ([]BlobInfo, error) {
	if ok, err := c.exists(); err != nil || !ok {
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

// sweepTemps tallies the files in tmp/ (with abandonedOnly, only those whose
// writer died: its flock can be taken) and, with r set, removes them through
// r. The caller holds the lock, exclusive when it removes. It returns the
// bytes counted (removed), the removals that failed, and a failure to list.
func (c *Cache) sweepTemps(r *os.Root, abandonedOnly bool) (int64, []error, error) {
	entries, err := os.ReadDir(c.dir + "/" + tmpSubdir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, nil
	} else if err != nil {
		return 0, nil, fmt.Errorf("listing temp files: %w", err)
	}
	var bytes int64
	var errs []error
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		// What is not a regular file is not a temp file banger writes:
		// abandoned.
		if abandonedOnly && e.Type().IsRegular() && lockedByWriter(c.dir+"/"+tmpSubdir+"/"+e.Name()) {
			continue
		}
		if r != nil {
			if err := r.RemoveAll(tmpSubdir + "/" + e.Name()); err != nil {
				errs = append(errs, fmt.Errorf("removing temp file %s: %w", e.Name(), err))
				continue
			}
		}
		bytes += info.Size()
	}
	return bytes, errs, nil
}

// staleAfter is how old an unflocked temp file must be before a pull
// removes it. A writer creates its temp file and flocks it within one hold
// of the shared lock, microseconds apart; a file older than this that no
// one holds was left by a writer that died.
const staleAfter = 10 * time.Second

// removeStaleTemps removes the temp files that writers which died left
// behind, so that the next pull cleans up after a killed one without
// waiting for a prune. It runs under the shared lock, beside live writers:
// the age is what keeps it off a file whose writer has created it and not
// yet taken its flock. Failures are ignored: prune removes what this misses.
func (c *Cache) removeStaleTemps(r *os.Root) {
	entries, err := os.ReadDir(c.dir + "/" + tmpSubdir)
	if err != nil {
		return
	}
	now := c.now()
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue // not a file banger writes: left for prune
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < staleAfter {
			continue
		}
		if !lockedByWriter(c.dir + "/" + tmpSubdir + "/" + e.Name()) {
			r.Remove(tmpSubdir + "/" + e.Name())
		}
	}
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
// those to evict under policy p at time now.
//
// A blob's recorded last use lags its real one by up to touchEvery (a hit
// updates the mtime at most hourly), so the age rule allows for that lag, as
// Go's build cache Trim does: a blob goes only when its recorded use is
// older than OlderThan plus touchEvery, and a blob used less than OlderThan
// ago is never evicted by age.
func plan(blobs []BlobInfo, p Policy, now time.Time) (keep, evict []BlobInfo) {
	var kept int64
	full := false
	for _, b := range blobs {
		tooOld := p.OlderThan > 0 && now.Sub(b.LastUse) > p.OlderThan+touchEvery
		// Walking from the most recent, the first blob that would take the
		// total over MaxSize goes, and so does every older one: least
		// recently used first, as the policy promises.
		if !tooOld && p.HasMaxSize && kept+b.Size > p.MaxSize {
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

// evict removes the blobs that policy p selects, oldest use first, plus
// abandoned temp files and leftover asides, recording in rep what it freed
// and kept. With dryRun it plans the same way and changes nothing. See Prune.
func (c *Cache) evict(ctx context.Context, p Policy, dryRun bool, rep *Report) {
	now := c.now()
	unlock, err := c.lock(ctx, shared)
	if err != nil {
		rep.fail(err)
		return
	}
	blobs, err := c.listBlobs(ctx)
	var leftovers []string
	if err == nil && dryRun {
		// A dry run counts the garbage in the same hold of the lock; the
		// real run removes it under the exclusive lock, below, through the
		// same function.
		leftovers = c.garbage(nil, rep)
	}
	unlock()
	if err != nil {
		rep.fail(err)
		return
	}
	keep, evict := plan(blobs, p, now)
	for _, b := range keep {
		rep.Kept.add(Tally{Bytes: b.Size, Blobs: 1})
	}
	if dryRun {
		for _, b := range evict {
			rep.Freed.add(Tally{Bytes: b.Size, Blobs: 1})
		}
	}
	for start := 0; !dryRun && (start == 0 || start < len(evict)); start += evictBatch {
		batch := evict[start:min(start+evictBatch, len(evict))]
		last := start+evictBatch >= len(evict)
		err := c.withDir(ctx, exclusive, func(r *os.Root) error {
			rep.changed = true
			c.removeBlobs(r, batch, rep)
			if last {
				leftovers = c.garbage(r, rep)
			}
			return nil
		})
		if err != nil {
			rep.fail(err)
			return
		}
	}
	t, errs := c.sweep(ctx, leftovers, !dryRun)
	rep.Freed.add(t)
	rep.Errors = append(rep.Errors, errs...)
}

// removeBlobs removes the planned blobs through r, under the exclusive lock,
// keeping each one used since the plan. A nil r is a cache gone since the
// plan: nothing to remove.
func (c *Cache) removeBlobs(r *os.Root, batch []BlobInfo, rep *Report) {
	if r == nil {
		return
	}
	for _, b := range batch {
		name := blobName(strings.TrimPrefix(b.Digest, "sha256:"))
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
}

// garbage counts into rep, and with r set removes through r, the abandoned
// temp files, and returns the leftover asides for the caller to tally (and
// delete) with sweep once it released the lock: nothing but prune ever
// looks at an aside. The caller holds the lock, exclusive when r is set;
// the leftovers are listed under it, as renameAside does: a staging
// directory seen while no pull holds the lock is a leftover. A dry run and
// a real run call this one function, so they count the same things.
func (c *Cache) garbage(r *os.Root, rep *Report) []string {
	bytes, errs, err := c.sweepTemps(r, true)
	rep.Freed.Bytes += bytes
	rep.Errors = append(rep.Errors, errs...)
	if err != nil {
		rep.fail(err)
		return nil
	}
	leftovers, err := c.leftovers()
	rep.fail(err)
	return leftovers
}
