package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"time"
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

// Policy selects what Prune removes. The zero Policy empties the cache; with
// a rule set, Prune evicts the blobs that either rule selects.
type Policy struct {
	// OlderThan evicts blobs not used (written or read by a pull) within
	// this duration; 0 disables the rule. Uses are recorded at most hourly,
	// so a blob goes only once its recorded use is an hour older still:
	// one used less than OlderThan ago is never evicted.
	OlderThan time.Duration
	// MaxSize evicts least recently used blobs until the blobs kept total at
	// most this many bytes. It applies only when HasMaxSize is set, so that
	// a MaxSize of 0 (evict every blob) differs from no size rule.
	MaxSize    int64
	HasMaxSize bool
}

// emptiesCache reports whether p is the zero Policy: prune everything.
func (p Policy) emptiesCache() bool { return p.OlderThan <= 0 && !p.HasMaxSize }

// Report is what Prune did, or with dryRun would do.
type Report struct {
	// Freed counts what was (or would be) removed: evicted blobs, and the
	// bytes of abandoned temp files and of leftover asides, whose blobs
	// count as blobs too.
	Freed Tally
	// Kept counts the blobs a selective prune left in the cache.
	Kept Tally
	// Errors lists every failure, one per item that could not be removed
	// or measured, and the one that stopped the run, if any. Prune's error
	// joins them.
	Errors []error
	// Partial is set when Prune failed after it had begun removing, or had
	// counted something: Freed and Kept say what it did. When Prune fails
	// and Partial is false, nothing was changed and the Report is empty.
	Partial bool

	// changed records that removing began (the cache was renamed aside, a
	// batch was evicted), even if nothing could be counted.
	changed bool
}

// fail records err, if any, as the failure that stopped the run.
func (r *Report) fail(err error) {
	if err != nil {
		r.Errors = append(r.Errors, err)
	}
}

// result is the return of Prune: the report and, when something failed, its
// errors joined.
func (r *Report) result() (Report, error) {
	if len(r.Errors) == 0 {
		return *r, nil
	}
	r.Partial = r.changed || r.Freed != (Tally{}) || r.Kept != (Tally{})
	return *r, errors.Join(r.Errors...)
}

// Prune removes what policy p selects and reports what it freed and kept;
// with dryRun it makes the same plan, measures, and changes nothing.
//
// The zero Policy empties the cache: Prune holds the exclusive lock only to
// rename the cache directory to a sibling .pruning-<random> and create a
// fresh, empty cache in its place; it then releases the lock and deletes the
// aside, counting as it goes. Pulls that started before keep reading the
// files they hold open; pulls that start after see the empty cache.
//
// A Policy with a rule evicts blobs instead: it plans under the shared lock
// and removes the selected blobs, least recently used first, under the
// exclusive lock in batches, checking each one again first (a blob used
// since the plan stays). A pull that already opened a blob keeps reading it;
// one that looks it up after it is gone fetches it again.
//
// Either way, abandoned temp files (their writer died) and asides and
// half-created caches left by interrupted runs are removed and counted too.
//
// Prune refuses (ErrNotCache) a cache directory that lacks banger's
// CACHEDIR.TAG and deletes nothing, and it never follows a symlink out of a
// directory it deletes. A cache that does not exist prunes to zero. Prune
// is safe to run concurrently with Fetch and with other Prunes, in this
// process or others.
func (c *Cache) Prune(ctx context.Context, p Policy, dryRun bool) (Report, error) {
	var rep Report
	if absent, err := c.absent(); err != nil || absent {
		rep.fail(err)
		return rep.result()
	}
	switch {
	case !p.emptiesCache():
		c.evict(ctx, p, dryRun, &rep)
	case dryRun:
		var errs []error
		rep.Freed, errs = c.usage(ctx)
		rep.Errors = append(rep.Errors, errs...)
	default:
		c.pruneAll(ctx, &rep)
	}
	return rep.result()
}

// usage measures the cache and any leftovers of interrupted prunes, without
// changing anything: what a full prune would free. It holds the shared
// lock, so it sees no prune half-done.
func (c *Cache) usage(ctx context.Context) (Tally, []error) {
	unlock, err := c.lock(ctx, shared)
	if err != nil {
		return Tally{}, []error{err}
	}
	defer unlock()
	ok, err := c.exists()
	if err != nil {
		return Tally{}, []error{err}
	}
	var dirs []string
	if ok {
		dirs = append(dirs, path.Base(c.dir))
	}
	leftovers, err := c.leftovers()
	if err != nil {
		return Tally{}, []error{err}
	}
	return c.sweep(ctx, append(dirs, leftovers...), false)
}

// pruneAll empties the cache by renaming it aside, then deletes the aside
// and the leftovers of earlier runs outside the lock.
func (c *Cache) pruneAll(ctx context.Context, rep *Report) {
	dirs, err := c.renameAside(ctx)
	if err != nil {
		rep.fail(err)
		return
	}
	rep.changed = true
	// Outside the lock: deleting a large cache takes a while, and nothing
	// but prune ever looks at an aside.
	var errs []error
	rep.Freed, errs = c.sweep(ctx, dirs, true)
	rep.Errors = append(rep.Errors, errs...)
}

// sweep tallies the directories dirs (relative to the cache's parent) and,
// with remove, deletes them, going on past a directory that fails.
func (c *Cache) sweep(ctx context.Context, dirs []string, remove bool) (Tally, []error) {
	var total Tally
	var errs []error
	for _, d := range dirs {
		t, err := walk(ctx, c.parent(), d, remove)
		total.add(t)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errs
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
	unlock, err := c.lock(ctx, exclusive)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ok, err := c.exists()
	if err != nil {
		return nil, err
	}
	if ok {
		old, err := os.Lstat(c.dir)
		if err != nil {
			return nil, fmt.Errorf("renaming cache aside: %w", err)
		}
		aside := c.parent() + "/" + asidePrefix + randomSuffix()
		if err := os.Rename(c.dir, aside); err != nil {
			return nil, fmt.Errorf("renaming cache aside: %w", err)
		}
		if err := c.create(old); err != nil {
			return nil, fmt.Errorf("recreating empty cache after renaming it to %s: %w; the next pull creates it, the next prune deletes %s", aside, err, aside)
		}
	}
	return c.leftovers()
}

// absent reports whether there is nothing to measure or prune: no cache
// directory and no leftovers beside it. Then Inventory and Prune return at
// once and create nothing, not even the lock file. A missing cache whose
// root is itself a cache directory is an error (exists).
func (c *Cache) absent() (bool, error) {
	if _, err := os.Lstat(c.dir); !errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if _, err := c.exists(); err != nil {
		return false, err
	}
	names, err := c.leftovers()
	return errors.Is(err, fs.ErrNotExist) || err == nil && len(names) == 0, nil
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
