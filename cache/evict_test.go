package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSortByUse checks the order du -v lists and eviction follows: most
// recently used first, ties broken by digest, including digests that share
// their first 16 hex digits (the integer key) and differ later.
func TestSortByUse(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := func(prefix string, last byte) string {
		return "sha256:" + prefix + strings.Repeat("0", 63-len(prefix)) + string(last)
	}
	tests := []struct {
		name string
		in   []BlobInfo
		want []string // digests in order
	}{
		{name: "empty"},
		{name: "by time", in: []BlobInfo{
			{Digest: d("a", '0'), LastUse: t0},
			{Digest: d("b", '0'), LastUse: t0.Add(time.Hour)},
			{Digest: d("c", '0'), LastUse: t0.Add(-time.Nanosecond)},
		}, want: []string{d("b", '0'), d("a", '0'), d("c", '0')}},
		{name: "ties by digest", in: []BlobInfo{
			{Digest: d("f", '0'), LastUse: t0},
			{Digest: d("0", '0'), LastUse: t0},
			{Digest: d("8", '0'), LastUse: t0},
		}, want: []string{d("0", '0'), d("8", '0'), d("f", '0')}},
		{name: "ties past the first 16 digits", in: []BlobInfo{
			{Digest: d("0123456789abcdef", 'e'), LastUse: t0},
			{Digest: d("0123456789abcdef", '1'), LastUse: t0},
			{Digest: d("0123456789abcdee", 'f'), LastUse: t0},
		}, want: []string{d("0123456789abcdee", 'f'), d("0123456789abcdef", '1'), d("0123456789abcdef", 'e')}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			var got []string
			for _, b := range sortByUse(in) {
				got = append(got, b.Digest)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("sortByUse order =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if !slices.Equal(in, tt.in) {
				t.Error("sortByUse changed its input")
			}
		})
	}
	// Many ties: the result is sorted whatever the input order.
	var many []BlobInfo
	for i := range 1000 {
		many = append(many, BlobInfo{Digest: fmt.Sprintf("sha256:%064x", (i*7919)%1000), LastUse: t0.Add(time.Duration(i%3) * time.Second)})
	}
	got := sortByUse(many)
	if !slices.IsSortedFunc(got, func(a, b BlobInfo) int {
		if c := b.LastUse.Compare(a.LastUse); c != 0 {
			return c
		}
		return strings.Compare(a.Digest, b.Digest)
	}) {
		t.Error("sortByUse of 1000 blobs with tied times is not sorted")
	}
}

// TestPlan table-tests the eviction planner (issue 9 B6): age allows for
// the at-most-hourly touch, so a blob used less than OlderThan ago is never
// evicted; size evicts least recently used first; either rule evicts.
func TestPlan(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	blob := func(name string, size int64, usedAgo time.Duration) BlobInfo {
		return BlobInfo{Digest: name, Size: size, LastUse: now.Add(-usedAgo)}
	}
	// most recently used first, as listBlobs gives them
	blobs := []BlobInfo{
		blob("fresh", 100, 0),
		blob("30m", 100, 30*time.Minute),
		blob("1h59m", 100, time.Hour+59*time.Minute),
		blob("2h1m", 100, 2*time.Hour+time.Minute),
		blob("10d", 100, 240*time.Hour),
	}
	tests := []struct {
		name      string
		p         Policy
		wantEvict []string
	}{
		{"older than 1h: an mtime up to an hour older may be a use within the hour", Policy{OlderThan: time.Hour}, []string{"2h1m", "10d"}},
		{"older than 7d", Policy{OlderThan: 7 * 24 * time.Hour}, []string{"10d"}},
		{"older than 10d: the touch allowance keeps it", Policy{OlderThan: 240 * time.Hour}, nil},
		{"max size 250: least recently used go", Policy{MaxSize: 250, HasMaxSize: true}, []string{"1h59m", "2h1m", "10d"}},
		{"max size 0: every blob", Policy{MaxSize: 0, HasMaxSize: true}, []string{"fresh", "30m", "1h59m", "2h1m", "10d"}},
		{"max size without HasMaxSize is no rule", Policy{MaxSize: 0, OlderThan: 7 * 24 * time.Hour}, []string{"10d"}},
		{"either rule", Policy{OlderThan: 7 * 24 * time.Hour, MaxSize: 350, HasMaxSize: true}, []string{"2h1m", "10d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, evict := plan(blobs, tt.p, now)
			var got []string
			for _, b := range evict {
				got = append(got, b.Digest)
			}
			if !slices.Equal(got, tt.wantEvict) {
				t.Errorf("plan(%+v) evicts %q, want %q", tt.p, got, tt.wantEvict)
			}
			if len(keep)+len(evict) != len(blobs) {
				t.Errorf("plan(%+v) keeps %d and evicts %d of %d blobs", tt.p, len(keep), len(evict), len(blobs))
			}
		})
	}
}

// TestPruneByAgeClock drives a selective prune with an injected clock and
// the blobs' mtimes set relative to it: no sleeps (issue 9 B6).
func TestPruneByAgeClock(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		usedAgo   time.Duration // the blob's mtime, before now
		olderThan time.Duration
		wantFreed int
	}{
		{"used 30m ago, older than 1h", 30 * time.Minute, time.Hour, 0},
		{"mtime 1h30m ago: may have been used 31m ago", 90 * time.Minute, time.Hour, 0},
		{"mtime 2h01m ago", 2*time.Hour + time.Minute, time.Hour, 1},
		{"mtime 7d ago, older than 7d", 7 * 24 * time.Hour, 7 * 24 * time.Hour, 0},
		{"mtime 8d ago, older than 7d", 8 * 24 * time.Hour, 7 * 24 * time.Hour, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			c.now = func() time.Time { return now }
			data := content(5, 100)
			mustFetch(t, c, data)
			used := now.Add(-tt.usedAgo)
			if err := os.Chtimes(blobPath(c, data), used, used); err != nil {
				t.Fatal(err)
			}
			for _, dryRun := range []bool{true, false} {
				rep, err := c.Prune(t.Context(), Policy{OlderThan: tt.olderThan}, dryRun)
				if err != nil || rep.Freed.Blobs != tt.wantFreed || rep.Freed.Blobs+rep.Kept.Blobs != 1 {
					t.Errorf("Prune(older than %v, dryRun %v) = %+v, %v; want %d blob(s) freed", tt.olderThan, dryRun, rep, err, tt.wantFreed)
				}
			}
		})
	}
}

// TestDryRunMatchesPrune checks issue 9 B5: a selective dry run reports
// what the real run then frees, blobs and bytes, also with leftover asides
// holding blobs, abandoned temp files, and no cache directory at all.
func TestDryRunMatchesPrune(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, c *Cache)
		p     Policy
	}{
		{"blobs and an aside with blobs", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 100))
			mustFetch(t, c, content(2, 200))
			dir := aside(c, asidePrefix)
			writeFile(t, filepath.Join(dir, tagName), []byte(tagContent))
			writeFile(t, filepath.Join(dir, blobsSubdir, hexOf(content(3, 30))), content(3, 30))
			writeFile(t, filepath.Join(dir, blobsSubdir, hexOf(content(4, 40))), content(4, 40))
			writeFile(t, filepath.Join(dir, tmpSubdir, "x.partial"), content(5, 5))
		}, Policy{MaxSize: 150, HasMaxSize: true}},
		{"abandoned temp file", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 100))
			writeFile(t, filepath.Join(c.dir, tmpSubdir, "dead.partial"), content(6, 60))
		}, Policy{OlderThan: time.Hour}},
		{"only an aside, no cache", func(t *testing.T, c *Cache) {
			dir := aside(c, asidePrefix)
			writeFile(t, filepath.Join(dir, blobsSubdir, hexOf(content(3, 30))), content(3, 30))
		}, Policy{OlderThan: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			tt.setup(t, c)
			dry, err := c.Prune(t.Context(), tt.p, true)
			if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			real, err := c.Prune(t.Context(), tt.p, false)
			if err != nil {
				t.Fatalf("prune: %v", err)
			}
			if dry.Freed != real.Freed || dry.Kept != real.Kept {
				t.Errorf("dry run reported freed %+v kept %+v; the prune freed %+v kept %+v", dry.Freed, dry.Kept, real.Freed, real.Kept)
			}
			if names, _ := c.leftovers(); len(names) > 0 {
				t.Errorf("leftovers %q after the prune", names)
			}
		})
	}
}
