package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
)

// Tally measures what a prune frees or the cache holds.
type Tally struct {
	// Bytes is the apparent size of every file counted: blobs, temp files
	// and the contents of leftover prune asides. The cache's own tag file,
	// recreated by prune, is not counted.
	Bytes int64
	// Blobs counts files under blobs/sha256 with a well-formed name.
	Blobs int
}

func (t *Tally) add(o Tally) { t.Bytes += o.Bytes; t.Blobs += o.Blobs }

// Usage measures the cache and any leftovers of interrupted prunes, without
// changing anything. It holds the shared lock, so it sees no prune half-done.
// A cache that does not exist measures zero.
func (c *Cache) Usage(ctx context.Context) (Tally, error) {
	var total Tally
	if c.absent() {
		return total, nil
	}
	unlock, err := c.lock(ctx, false)
	if err != nil {
		return total, err
	}
	defer unlock()
	var dirs []string
	switch err := c.checkDir(); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return total, err
	default:
		dirs = append(dirs, path.Base(c.dir))
	}
	leftovers, err := c.leftovers()
	if err != nil {
		return total, err
	}
	dirs = append(dirs, leftovers...)
	for _, d := range dirs {
		t, err := walk(ctx, c.parent(), d, false)
		total.add(t)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Prune empties the cache and reports what it freed. With dryRun it only
// measures, as Usage does.
//
// A real prune holds the exclusive lock only to rename the cache directory to
// a sibling .pruning-<random> and create a fresh, empty cache in its place;
// it then releases the lock and deletes the aside, counting as it goes.
// Pulls that started before keep reading the files they hold open; pulls
// that start after see the empty cache. Asides and half-created caches left
// by an interrupted run are deleted and counted too.
//
// Prune refuses (ErrNotCache) a cache directory that lacks banger's
// CACHEDIR.TAG and deletes nothing, and it never follows a symlink out of a
// directory it deletes. A cache that does not exist prunes to zero.
func (c *Cache) Prune(ctx context.Context, dryRun bool) (Tally, error) {
	if dryRun {
		return c.Usage(ctx)
	}
	var total Tally
	if c.absent() {
		return total, nil
	}
	dirs, err := c.renameAside(ctx)
	if err != nil {
		return total, err
	}
	// Outside the lock: deleting a large cache takes a while, and nothing
	// but prune ever looks at an aside.
	var errs []error
	for _, d := range dirs {
		t, err := walk(ctx, c.parent(), d, true)
		total.add(t)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// renameAside swaps the cache for an empty one under the exclusive lock and
// returns the directories to delete, relative to the cache's parent: the
// aside and every leftover of an interrupted prune or cache creation.
//
// It lists them before releasing the lock: a .creating- directory seen while
// no pull holds the lock is a crash's leftover, but one seen later may be a
// pull creating the cache at that very moment, and deleting it from under
// that pull could leave a cache directory without its tag.
func (c *Cache) renameAside(ctx context.Context) ([]string, error) {
	unlock, err := c.lock(ctx, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch err := c.checkDir(); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		aside := c.parent() + "/" + asidePrefix + randomSuffix()
		if err := os.Rename(c.dir, aside); err != nil {
			return nil, fmt.Errorf("renaming cache aside: %w", err)
		}
		if err := c.create(); err != nil {
			return nil, fmt.Errorf("recreating empty cache after renaming it to %s: %w; the next pull creates it, the next prune deletes %s", aside, err, aside)
		}
	}
	return c.leftovers()
}

// absent reports whether there is nothing to measure or prune: no cache
// directory and no leftovers beside it. Then Usage and Prune return at once
// and create nothing, not even the lock file.
func (c *Cache) absent() bool {
	if _, err := os.Lstat(c.dir); !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	names, err := c.leftovers()
	return errors.Is(err, fs.ErrNotExist) || err == nil && len(names) == 0
}

// leftovers lists, relative to the cache's parent, the asides and staging
// directories that interrupted prunes and cache creations left behind.
func (c *Cache) leftovers() ([]string, error) {
	entries, err := os.ReadDir(c.parent())
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", c.parent(), err)
	}
	var dirs []string
	for _, e := range entries {
		// Only names banger makes; a real directory, never a link.
		if e.IsDir() && leftoverName(e.Name()) {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs, nil
}
