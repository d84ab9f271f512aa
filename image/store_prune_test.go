package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPlanPrune(t *testing.T) {
	now := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	// Most recently used first, as usage sorts them.
	images := []ImageUsage{
		{ID: "a", Size: 100, LastUse: now},
		{ID: "b", Size: 200, LastUse: now.Add(-3 * day)},
		{ID: "c", Size: 300, LastUse: now.Add(-14*day - 30*time.Minute)},
		{ID: "d", Size: 400, LastUse: now.Add(-20 * day)},
	}
	tests := []struct {
		name       string
		p          PrunePolicy
		wantRemove []string // least recently used first
	}{
		{"all", PrunePolicy{All: true}, []string{"d", "c", "b", "a"}},
		{"older than 14d: within the hour of slack stays", PrunePolicy{OlderThan: 14 * day}, []string{"d"}},
		{"older than 2d", PrunePolicy{OlderThan: 2 * day}, []string{"d", "c", "b"}},
		{"max size keeps the most recent that fit", PrunePolicy{MaxSize: 300, HasMaxSize: true}, []string{"d", "c"}},
		{"max size stops at the first that does not fit", PrunePolicy{MaxSize: 350, HasMaxSize: true}, []string{"d", "c"}},
		{"max size 0 removes all", PrunePolicy{MaxSize: 0, HasMaxSize: true}, []string{"d", "c", "b", "a"}},
		{"max size above the total removes none", PrunePolicy{MaxSize: 1 << 20, HasMaxSize: true}, nil},
		{"either rule", PrunePolicy{OlderThan: 14 * day, MaxSize: 100, HasMaxSize: true}, []string{"d", "c", "b"}},
		{"age frees room for the size rule", PrunePolicy{OlderThan: 14 * day, MaxSize: 600, HasMaxSize: true}, []string{"d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, remove := planPrune(images, tt.p, now)
			var got []string
			for _, u := range remove {
				got = append(got, u.ID)
			}
			if !slices.Equal(got, tt.wantRemove) {
				t.Errorf("planPrune(%+v) removes %q, want %q", tt.p, got, tt.wantRemove)
			}
			if len(keep)+len(remove) != len(images) {
				t.Errorf("planPrune(%+v) kept %d and removed %d of %d", tt.p, len(keep), len(remove), len(images))
			}
		})
	}
}

// TestStoreIdentity: the ID is the config digest; one image under several
// names is one directory, and a name moved to another image takes the old
// one with it only when it was its last name.
func TestStoreIdentity(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	a := addImage(t, s, "a:1", "same", t0)
	b := addImage(t, s, "b:1", "same", t0.Add(time.Minute))
	if a.ID != b.ID || a.Rootfs != b.Rootfs || a.ID != sha256Hex([]byte("config:same")) {
		t.Fatalf("one config under two names = IDs %s, %s, want one ID, the config's hex", a.ID, b.ID)
	}
	if !slices.Equal(b.Names, []string{"a:1", "b:1"}) {
		t.Errorf("Names = %q, want [a:1 b:1]", b.Names)
	}
	if dirs := imageDirs(t, s.dir); !slices.Equal(dirs, []string{a.ID}) {
		t.Errorf("store = %q, want one image directory", dirs)
	}
	// Link adds a name without a stage; of an image not stored, nothing.
	if got, ok, err := s.Link(t.Context(), Image{Name: "c:1", ConfigDigest: configOf("same"), PulledAt: t0}); err != nil || !ok || got.ID != a.ID {
		t.Errorf("Link(c:1) = %s, %v, %v, want %s, true", got.ID, ok, err, a.ID)
	}
	if _, ok, err := s.Link(t.Context(), Image{Name: "d:1", ConfigDigest: configOf("other"), PulledAt: t0}); err != nil || ok {
		t.Errorf("Link(d:1) of an image not stored = %v, %v, want false", ok, err)
	}
	// a:1 moves: the image keeps b:1 and c:1, and its rootfs.
	moved := addImage(t, s, "a:1", "new", t0)
	if moved.Replaced != "" {
		t.Errorf("moving a:1 replaced %s, want nothing removed", moved.Replaced)
	}
	if _, err := os.Stat(a.Rootfs); err != nil {
		t.Errorf("rootfs of an image still named: %v", err)
	}
	if _, err := s.Remove(t.Context(), false, "b:1"); err != nil {
		t.Fatal(err)
	}
	last := addImage(t, s, "c:1", "new", t0)
	if last.Replaced != a.ID {
		t.Errorf("moving the last name c:1: Replaced = %q, want %s", last.Replaced, a.ID)
	}
	if _, err := os.Stat(a.Rootfs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rootfs of an image with no name left: Stat = %v, want it gone", err)
	}
}

func TestStoreRemoveByID(t *testing.T) {
	tests := []struct {
		name      string
		force     bool
		arg       func(id string) string
		wantErr   error
		wantNames []string // left
	}{
		{"ID with several names", false, func(id string) string { return id }, ErrHasNames, []string{"a:1", "b:1", "c:1"}},
		{"prefix with several names", false, func(id string) string { return id[:5] }, ErrHasNames, []string{"a:1", "b:1", "c:1"}},
		{"forced", true, func(id string) string { return id[:5] }, nil, []string{"c:1"}},
		{"a name is only the name", false, func(string) string { return "a:1" }, nil, []string{"b:1", "c:1"}},
		{"ambiguous prefix", true, func(string) string { return "" }, ErrAmbiguous, []string{"a:1", "b:1", "c:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "images"))
			addImage(t, s, "a:1", "x", t0)
			img := addImage(t, s, "b:1", "x", t0)
			// c:1's body is chosen so that its ID begins as img's does.
			body := "y"
			for i := 0; sha256Hex([]byte("config:" + body))[0] != img.ID[0]; i++ {
				body = fmt.Sprintf("y%d", i)
			}
			addImage(t, s, "c:1", body, t0)
			arg := tt.arg(img.ID)
			if arg == "" {
				arg = img.ID[:1]
			}
			_, err := s.Remove(t.Context(), tt.force, arg)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Remove(force=%v, %q) error = %v, want %v", tt.force, arg, err, tt.wantErr)
			}
			all, err := s.List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := imageNames(all); !slices.Equal(got, tt.wantNames) {
				t.Errorf("after Remove(force=%v, %q): List() = %q, want %q", tt.force, arg, got, tt.wantNames)
			}
		})
	}
}

// TestStoreUpToDate: a name whose manifest digest matches is up to date and
// records the use; another digest, or another name, is not.
func TestStoreUpToDate(t *testing.T) {
	now := t0.Add(48 * time.Hour)
	s := NewStore(filepath.Join(t.TempDir(), "images"), StoreOptions{Now: func() time.Time { return now }})
	img, err := add(t.Context(), s, Image{Name: "a:1", ConfigDigest: configOf("x"), ManifestDigest: "sha256:m1", PulledAt: t0}, func(dir string) error {
		return os.WriteFile(filepath.Join(dir, rootfsName), []byte("x"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	old := t0
	os.Chtimes(filepath.Join(s.dir, img.ID, metadataName), old, old)
	tests := []struct {
		name, image, digest string
		want                bool
	}{
		{"same manifest", "a:1", "sha256:m1", true},
		{"other manifest", "a:1", "sha256:m2", false},
		{"other name", "b:1", "sha256:m1", false},
		{"no digest (an archive)", "a:1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := s.UpToDate(t.Context(), tt.image, tt.digest)
			if err != nil || ok != tt.want || ok && (!got.UpToDate || got.ID != img.ID) {
				t.Errorf("UpToDate(%s, %s) = %s, %v, %v, want %v", tt.image, tt.digest, got.ID, ok, err, tt.want)
			}
		})
	}
	info, err := os.Stat(filepath.Join(s.dir, img.ID, metadataName))
	if err != nil || !info.ModTime().Equal(now) {
		t.Errorf("last use after an up-to-date check = %v, %v, want %v", info.ModTime(), err, now)
	}
}

// TestStoreTouchHourly: a use is recorded at most once an hour.
func TestStoreTouchHourly(t *testing.T) {
	now := t0
	s := NewStore(filepath.Join(t.TempDir(), "images"), StoreOptions{Now: func() time.Time { return now }})
	img := addImage(t, s, "a:1", "x", t0)
	meta := filepath.Join(s.dir, img.ID, metadataName)
	tests := []struct {
		advance time.Duration
		want    time.Time
	}{
		{30 * time.Minute, t0},
		{31 * time.Minute, t0.Add(61 * time.Minute)},
		{10 * time.Minute, t0.Add(61 * time.Minute)},
	}
	for _, tt := range tests {
		now = now.Add(tt.advance)
		if _, err := s.Get(t.Context(), "a:1"); err != nil {
			t.Fatal(err)
		}
		if info, err := os.Stat(meta); err != nil || !info.ModTime().Equal(tt.want) {
			t.Errorf("at %v: last use = %v, %v, want %v", now, info.ModTime(), err, tt.want)
		}
	}
}

// TestStorePruneRecheck: an image used between the plan and its removal
// stays; a dry run removes nothing.
func TestStorePruneRecheck(t *testing.T) {
	now := t0.Add(30 * 24 * time.Hour)
	s := NewStore(filepath.Join(t.TempDir(), "images"), StoreOptions{Now: func() time.Time { return now }})
	a := addImage(t, s, "a:1", "a", t0)
	b := addImage(t, s, "b:1", "b", t0)
	for _, img := range []Image{a, b} {
		os.Chtimes(filepath.Join(s.dir, img.ID, metadataName), t0, t0)
	}
	rep, err := s.Prune(t.Context(), PrunePolicy{OlderThan: 24 * time.Hour}, true)
	if err != nil || rep.Freed.Images != 2 {
		t.Fatalf("dry run = %+v, %v, want 2 images", rep, err)
	}
	if dirs := imageDirs(t, s.dir); len(dirs) != 2 {
		t.Errorf("after a dry run: store = %q, want both images", dirs)
	}
	s.crash = func(step string) {
		if step == "prune-plan" {
			s.touch(b.ID, true) // b is used after the plan
		}
	}
	rep, err = s.Prune(t.Context(), PrunePolicy{OlderThan: 24 * time.Hour}, false)
	if err != nil || rep.Freed.Images != 1 || rep.Kept.Images != 1 {
		t.Errorf("Prune = %+v, %v, want 1 freed, 1 kept", rep, err)
	}
	if all, _ := s.List(t.Context()); !slices.Equal(imageNames(all), []string{"b:1"}) {
		t.Errorf("after Prune: List() = %q, want [b:1]", imageNames(all))
	}
	if _, err := s.Prune(t.Context(), PrunePolicy{}, false); !errors.Is(err, ErrNoPruneFilter) {
		t.Errorf("Prune(no filter) error = %v, want ErrNoPruneFilter", err)
	}
}
