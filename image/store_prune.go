package image

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ErrNoPruneFilter is returned by Prune for a policy that selects nothing:
// flattened images are not re-pull avoidance, so removing them all must be
// asked for (PrunePolicy.All).
var ErrNoPruneFilter = errors.New("image prune needs a filter")

// PrunePolicy selects the images Prune removes: those either rule selects,
// or every one with All.
type PrunePolicy struct {
	// OlderThan removes images not used (pulled, found up to date,
	// inspected, or their rootfs path asked for) within this duration; 0
	// disables the rule. Uses are recorded at most hourly, so an image goes
	// only once its recorded use is an hour older still.
	OlderThan time.Duration
	// MaxSize removes least recently used images until the images kept
	// total at most this many bytes; it applies only with HasMaxSize.
	MaxSize    int64
	HasMaxSize bool
	// All removes every image.
	All bool
}

func (p PrunePolicy) empty() bool { return !p.All && p.OlderThan <= 0 && !p.HasMaxSize }

// Tally counts images and their bytes.
type Tally struct {
	Bytes  int64 `json:"bytes"`
	Images int   `json:"images"`
}

func (t *Tally) add(bytes int64) { t.Bytes += bytes; t.Images++ }

// ImageUsage is one image as prune and df see it.
type ImageUsage struct {
	ID      string    `json:"id"`
	Names   []string  `json:"names"`
	Size    int64     `json:"size"`
	LastUse time.Time `json:"last_use"`
}

// Inventory is what the store holds.
type Inventory struct {
	// Images is sorted most recently used first.
	Images []ImageUsage
	Total  Tally
	Names  int
	// OldestUse and NewestUse are the least and most recent last use; zero
	// when there are no images.
	OldestUse, NewestUse time.Time
	// LeftoverBytes counts temp directories, half-removed images and
	// images no name reaches (left by crashes): bytes a prune also frees.
	LeftoverBytes int64
}

// PruneReport is what Prune did, or with dryRun would do.
type PruneReport struct {
	Freed, Kept Tally
	// Removed lists the images removed (or that would be), least recently
	// used first.
	Removed []ImageUsage
	// Errors lists every removal that failed; Prune's error joins them.
	Errors []error
	// Partial is set when Prune failed after removing something.
	Partial bool
}

// Inventory lists the store's images by last use, and the leftovers a prune
// would remove, changing nothing.
func (s *Store) Inventory(ctx context.Context) (Inventory, error) {
	var inv Inventory
	if err := s.migrateIfNeeded(ctx); err != nil {
		return inv, err
	}
	idx, err := s.readIndex()
	if err != nil {
		return inv, err
	}
	inv.Images = s.usage(idx)
	for _, u := range inv.Images {
		inv.Total.add(u.Size)
		inv.Names += len(u.Names)
	}
	if n := len(inv.Images); n > 0 {
		inv.NewestUse, inv.OldestUse = inv.Images[0].LastUse, inv.Images[n-1].LastUse
	}
	inv.LeftoverBytes = s.abandoned(false) + s.orphans(idx, false)
	return inv, nil
}

// usage lists the images names reach, most recently used first.
func (s *Store) usage(idx index) []ImageUsage {
	ids := map[string]bool{}
	for _, e := range idx.Names {
		ids[e.ID] = true
	}
	var all []ImageUsage
	for id := range ids {
		u, ok := s.usageOf(idx, id)
		if ok {
			all = append(all, u)
		}
	}
	sortByUse(all)
	return all
}

func (s *Store) usageOf(idx index, id string) (ImageUsage, bool) {
	if _, err := s.readRecord(id); err != nil {
		return ImageUsage{}, false
	}
	meta, err := os.Lstat(filepath.Join(s.dir, id, metadataName))
	if err != nil {
		return ImageUsage{}, false
	}
	u := ImageUsage{ID: id, Names: idx.namesOf(id), LastUse: meta.ModTime().UTC()}
	if info, err := os.Lstat(filepath.Join(s.dir, id, rootfsName)); err == nil {
		u.Size = info.Size()
	}
	return u, true
}

func sortByUse(all []ImageUsage) {
	slices.SortFunc(all, func(a, b ImageUsage) int {
		if c := b.LastUse.Compare(a.LastUse); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// orphans counts, and with remove deletes, image directories no name
// reaches: a crash between publishing and naming, or between unnaming and
// removing. Only with remove must the caller hold the lock (a pull
// publishes and names under it).
func (s *Store) orphans(idx index, remove bool) int64 {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if !e.IsDir() || !isHex64(e.Name()) || len(idx.namesOf(e.Name())) > 0 {
			continue
		}
		n += dirBytes(filepath.Join(s.dir, e.Name()))
		if remove {
			s.removeDir(e.Name())
		}
	}
	return n
}

// planPrune splits images (most recently used first) into those to keep and
// those to remove under policy p at time now, exactly as the cache's
// planner does: the age rule allows for the hour a recorded use may lag,
// and walking from the most recent, the first image that would take the
// total over MaxSize goes, with every older one.
func planPrune(images []ImageUsage, p PrunePolicy, now time.Time) (keep, remove []ImageUsage) {
	var kept int64
	full := false
	for _, u := range images {
		tooOld := p.OlderThan > 0 && now.Sub(u.LastUse) > p.OlderThan+touchEvery
		if !tooOld && p.HasMaxSize && kept+u.Size > p.MaxSize {
			full = true
		}
		if p.All || tooOld || full {
			remove = append(remove, u)
			continue
		}
		kept += u.Size
		keep = append(keep, u)
	}
	slices.Reverse(remove) // least recently used first
	return keep, remove
}

// Prune removes the images policy p selects, least recently used first,
// and the leftovers of crashes; with dryRun it makes the same plan and
// changes nothing. A policy with no rule is refused (ErrNoPruneFilter).
//
// The plan is made without the lock; each removal then takes the store
// lock and checks the image again: one used or renamed since the plan
// stays. A name goes before its directory, so a crash leaves at worst an
// image no name reaches, which the next prune removes. A failed removal is
// recorded and the others go on. Prune never follows a symlink out of the
// store: it removes only directories named by 64 hex digits, through a
// rename and os.RemoveAll.
func (s *Store) Prune(ctx context.Context, p PrunePolicy, dryRun bool) (PruneReport, error) {
	var rep PruneReport
	if p.empty() {
		return rep, fmt.Errorf("%w: flattened images are not re-pull avoidance, so removing them all must be asked for", ErrNoPruneFilter)
	}
	if err := s.migrateIfNeeded(ctx); err != nil {
		return rep, err
	}
	if _, err := os.Stat(s.dir); errors.Is(err, fs.ErrNotExist) {
		return rep, nil
	}
	now := s.opts.Now()
	idx, err := s.readIndex()
	if err != nil {
		return rep, err
	}
	keep, remove := planPrune(s.usage(idx), p, now)
	s.crashPoint("prune-plan")
	for _, u := range keep {
		rep.Kept.add(u.Size)
	}
	if dryRun {
		for _, u := range remove {
			rep.Freed.add(u.Size)
		}
		rep.Removed = remove
		rep.Freed.Bytes += s.abandoned(false) + s.orphans(idx, false)
		return rep, nil
	}
	for _, u := range remove {
		if err := ctx.Err(); err != nil {
			rep.Errors = append(rep.Errors, err)
			break
		}
		gone, err := s.pruneOne(ctx, u)
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Errorf("removing image %s (%s): %w", ShortID(u.ID), strings.Join(u.Names, ", "), err))
			continue
		}
		if !gone {
			rep.Kept.add(u.Size) // used since the plan
			continue
		}
		rep.Freed.add(u.Size)
		rep.Removed = append(rep.Removed, u)
	}
	if len(rep.Errors) == 0 {
		rep.Freed.Bytes += s.sweepLeftovers(ctx)
	}
	if len(rep.Errors) == 0 {
		return rep, nil
	}
	rep.Partial = rep.Freed != (Tally{})
	return rep, errors.Join(rep.Errors...)
}

// pruneOne removes planned image u under the lock unless it was used or its
// names changed since the plan. It reports whether it went.
func (s *Store) pruneOne(ctx context.Context, u ImageUsage) (bool, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	idx, err := s.readIndex()
	if err != nil {
		unlock()
		return false, err
	}
	now, ok := s.usageOf(idx, u.ID)
	if !ok {
		unlock()
		return false, nil // removed by someone else
	}
	if now.LastUse.After(u.LastUse) || !slices.Equal(now.Names, u.Names) {
		unlock()
		return false, nil
	}
	for _, n := range now.Names {
		delete(idx.Names, n)
	}
	if err := s.writeIndex(idx); err != nil {
		unlock()
		return false, err
	}
	s.crashPoint("prune-index")
	doomed := filepath.Join(s.dir, removingPrefix+u.ID+"-"+randomSuffix())
	if err := os.Rename(filepath.Join(s.dir, u.ID), doomed); err != nil {
		unlock()
		return false, err
	}
	// The deletion holds the aside's flock, not the store lock: a pull
	// need not wait for it, and cleanup leaves it alone until it is done.
	release, lerr := lockDir(doomed, false)
	unlock()
	if lerr == nil {
		defer release()
	}
	s.crashPoint("prune-rename")
	if err := os.RemoveAll(doomed); err != nil {
		return true, err
	}
	return true, nil
}

// sweepLeftovers removes crash leftovers and returns their bytes: temp
// directories whose owner died, half-removed images and, under the lock,
// unnamed images (taking the lock removes names.json temp files).
func (s *Store) sweepLeftovers(ctx context.Context) int64 {
	n := s.abandoned(true)
	unlock, err := s.lock(ctx)
	if err != nil {
		return n
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return n
	}
	return n + s.orphans(idx, true)
}
