package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// configOf is the config digest of a test image whose rootfs holds body:
// one body, one image.
func configOf(body string) string { return "sha256:" + sha256Hex([]byte("config:"+body)) }

// addImage publishes an image named name whose rootfs.tar holds body,
// through Begin and Commit as a pull does.
func addImage(t *testing.T, s *Store, name, body string, pulledAt time.Time) Image {
	t.Helper()
	img, err := add(t.Context(), s, Image{Name: name, Reference: name, ConfigDigest: configOf(body), PulledAt: pulledAt}, func(dir string) error {
		return os.WriteFile(filepath.Join(dir, rootfsName), []byte(body), 0o644)
	})
	if err != nil {
		t.Fatalf("add(%s) error = %v", name, err)
	}
	return img
}

// add is Begin, fill, Commit.
func add(ctx context.Context, s *Store, img Image, fill func(dir string) error) (Image, error) {
	stage, err := s.Begin(ctx)
	if err != nil {
		return Image{}, err
	}
	defer stage.Abort()
	if err := fill(stage.Dir()); err != nil {
		return Image{}, err
	}
	return stage.Commit(ctx, img)
}

// imageDirs lists the image directories (and any other entries that are
// not the store's own files) in dir.
func imageDirs(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	for _, n := range dirNames(t, dir) {
		if n != versionName && n != namesName && n != lockName {
			names = append(names, n)
		}
	}
	return names
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func imageNames(images []Image) []string {
	var names []string
	for _, img := range images {
		names = append(names, img.Name)
	}
	return names
}

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func TestStoreAdd(t *testing.T) {
	errFill := errors.New("disk on fire")
	tests := []struct {
		name    string
		fill    func(t *testing.T, s *Store, dir string) error
		cancel  bool // cancel the context once fill returns
		wantErr string
	}{
		{
			name: "publishes",
			fill: func(t *testing.T, s *Store, dir string) error {
				// Until it is published, the image is in a temp dir that
				// listings skip.
				if base := filepath.Base(dir); !strings.HasPrefix(base, tmpPrefix) {
					t.Errorf("fill dir = %s, want a %s directory", base, tmpPrefix)
				}
				if all, err := s.List(t.Context()); err != nil || len(all) != 0 {
					t.Errorf("List() during fill = %v, %v, want nothing", imageNames(all), err)
				}
				return os.WriteFile(filepath.Join(dir, rootfsName), []byte("rootfs"), 0o644)
			},
		},
		{
			name: "failing fill",
			fill: func(t *testing.T, s *Store, dir string) error {
				if err := os.WriteFile(filepath.Join(dir, rootfsName), []byte("half"), 0o644); err != nil {
					t.Fatal(err)
				}
				return errFill
			},
			wantErr: "disk on fire",
		},
		{
			name:    "fill without rootfs",
			fill:    func(*testing.T, *Store, string) error { return nil },
			wantErr: rootfsName,
		},
		{
			name: "cancelled after fill",
			fill: func(t *testing.T, s *Store, dir string) error {
				return os.WriteFile(filepath.Join(dir, rootfsName), []byte("rootfs"), 0o644)
			},
			cancel:  true,
			wantErr: "context canceled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "images"))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			img, err := add(ctx, s, Image{Name: "x:1", Reference: "x:1", ConfigDigest: configOf("rootfs"), PulledAt: t0.Local()}, func(dir string) error {
				if tt.cancel {
					defer cancel()
				}
				return tt.fill(t, s, dir)
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("add() error = %v, want one containing %q", err, tt.wantErr)
				}
				if names := imageDirs(t, s.dir); len(names) != 0 {
					t.Errorf("store after a failed add = %q, want no entries", names)
				}
				return
			}
			if err != nil {
				t.Fatalf("add() error = %v", err)
			}
			if names := imageDirs(t, s.dir); !slices.Equal(names, []string{img.ID}) {
				t.Errorf("store after add = %q, want only [%s]", names, img.ID)
			}
			if img.Size != int64(len("rootfs")) || img.Rootfs != filepath.Join(s.dir, img.ID, rootfsName) || !img.PulledAt.Equal(t0) || img.PulledAt.Location() != time.UTC {
				t.Errorf("add() = size %d rootfs %s pulled %v, want 6, %s, %v in UTC", img.Size, img.Rootfs, img.PulledAt, filepath.Join(s.dir, img.ID, rootfsName), t0)
			}
			got, err := s.Get(t.Context(), img.ID)
			if err != nil || !reflect.DeepEqual(got, img) || img.ID != sha256Hex([]byte("config:rootfs")) || !slices.Equal(img.Names, []string{"x:1"}) {
				t.Errorf("Get(%s) = %+v, %v, want %+v", img.ID, got, err, img)
			}
		})
	}
}

func TestStoreReplace(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	old := addImage(t, s, "app:1", "old", t0)
	other := addImage(t, s, "other:1", "other", t0)
	replaced := addImage(t, s, "app:1", "new", t0.Add(time.Minute))
	all, err := s.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, img := range all {
		ids = append(ids, img.ID)
	}
	if want := []string{replaced.ID, other.ID}; !slices.Equal(ids, want) {
		t.Errorf("List() after replacing app:1 = %q, want %q", ids, want)
	}
	if _, err := os.Stat(filepath.Join(s.dir, old.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("replaced image dir: Stat = %v, want it gone", err)
	}
	if names := imageDirs(t, s.dir); len(names) != 2 {
		t.Errorf("store = %q, want only the two images", names)
	}
	b, err := os.ReadFile(replaced.Rootfs)
	if err != nil || string(b) != "new" {
		t.Errorf("rootfs of app:1 = %q, %v, want new", b, err)
	}
}

func TestStoreGet(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	alpine := addImage(t, s, "alpine:3.20", "a", t0)
	local := addImage(t, s, "127.0.0.1:5000/x:y", "b", t0)
	bare := addImage(t, s, "mine", "c", t0)
	tests := []struct {
		name, in string
		want     string // ID; "" for not found
	}{
		{"name", "alpine:3.20", alpine.ID},
		{"docker hub reference", "docker.io/library/alpine:3.20", alpine.ID},
		{"index.docker.io reference", "index.docker.io/library/alpine:3.20", alpine.ID},
		{"ID", alpine.ID, alpine.ID},
		{"registry name", "127.0.0.1:5000/x:y", local.ID},
		{"name without tag, stored without tag", "mine", bare.ID},
		{"missing tag", "alpine", ""},
		{"missing", "nope:1", ""},
		{"ID prefix", alpine.ID[:6], alpine.ID},
		{"short ID", ShortID(local.ID), local.ID},
		{"hex that prefixes nothing", "ffffffffffffffff", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Get(t.Context(), tt.in)
			if tt.want == "" {
				if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), tt.in) {
					t.Errorf("Get(%q) = %s, %v, want an error wrapping ErrNotFound naming it", tt.in, got.ID, err)
				}
				return
			}
			if err != nil || got.ID != tt.want {
				t.Errorf("Get(%q) = %s, %v, want %s", tt.in, got.ID, err, tt.want)
			}
		})
	}
	t.Run("missing store", func(t *testing.T) {
		s := NewStore(filepath.Join(t.TempDir(), "nothing"))
		if _, err := s.Get(t.Context(), "x"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(x) in a missing store: error = %v, want ErrNotFound", err)
		}
	})
}

func TestStoreRemove(t *testing.T) {
	tests := []struct {
		name        string
		args        []string // "$a" and "$b" stand for the IDs of a:1 and b:1
		wantRemoved []string
		wantLeft    []string
		wantMissing []string
	}{
		{"one", []string{"a:1"}, []string{"a:1"}, []string{"b:1", "c:1"}, nil},
		{"several", []string{"a:1", "c:1"}, []string{"a:1", "c:1"}, []string{"b:1"}, nil},
		{"by ID and normalized name", []string{"$b", "docker.io/library/c:1"}, []string{"b:1", "c:1"}, []string{"a:1"}, nil},
		{"one missing", []string{"a:1", "nope:1", "c:1"}, []string{"a:1", "c:1"}, []string{"b:1"}, []string{"nope:1"}},
		{"two missing", []string{"x", "b:1", "y"}, []string{"b:1"}, []string{"a:1", "c:1"}, []string{"x", "y"}},
		{"named twice", []string{"a:1", "$a"}, []string{"a:1"}, []string{"b:1", "c:1"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(filepath.Join(t.TempDir(), "images"))
			ids := map[string]string{}
			for _, n := range []string{"a:1", "b:1", "c:1"} {
				ids["$"+n[:1]] = addImage(t, s, n, n, t0).ID
			}
			var args []string
			for _, a := range tt.args {
				if id, ok := ids[a]; ok {
					a = id
				}
				args = append(args, a)
			}
			removed, err := s.Remove(t.Context(), false, args...)
			var got []string
			for _, r := range removed {
				got = append(got, r.Names...)
			}
			if !slices.Equal(got, tt.wantRemoved) {
				t.Errorf("Remove(%q) removed %q, want %q", args, got, tt.wantRemoved)
			}
			if tt.wantMissing == nil && err != nil {
				t.Errorf("Remove(%q) error = %v, want none", args, err)
			}
			if tt.wantMissing != nil {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("Remove(%q) error = %v, want ErrNotFound", args, err)
				}
				for _, m := range tt.wantMissing {
					if err != nil && !strings.Contains(err.Error(), `"`+m+`"`) {
						t.Errorf("Remove(%q) error = %q, want it to name %q", args, err, m)
					}
				}
			}
			left, err := s.List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := imageNames(left); !slices.Equal(got, tt.wantLeft) {
				t.Errorf("after Remove(%q): List() = %q, want %q", args, got, tt.wantLeft)
			}
			if names := imageDirs(t, s.dir); len(names) != len(tt.wantLeft) {
				t.Errorf("after Remove(%q): store = %q, want only the %d images left", args, names, len(tt.wantLeft))
			}
		})
	}
}

func TestStoreList(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	if all, err := s.List(t.Context()); err != nil || len(all) != 0 {
		t.Errorf("List() of a missing store = %v, %v, want nothing and no error", all, err)
	}
	b := addImage(t, s, "b:1", "b", t0)
	a := addImage(t, s, "a:1", "a", t0)
	// Entries that are not complete images.
	mk := func(name string, files map[string]string) {
		t.Helper()
		dir := filepath.Join(s.dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, body := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	good, err := os.ReadFile(filepath.Join(s.dir, a.ID, metadataName))
	if err != nil {
		t.Fatal(err)
	}
	mk("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", map[string]string{metadataName: string(good), rootfsName: "unnamed"})
	mk(".tmp-0123456789abcdef", map[string]string{metadataName: string(good), rootfsName: "x"})
	mk(".removing-0123456789abcdef", map[string]string{metadataName: string(good), rootfsName: "x"})
	mk(".hidden", map[string]string{metadataName: string(good)})
	mk("badjson", map[string]string{metadataName: "{not json", rootfsName: "x"})
	mk("nojson", map[string]string{rootfsName: "x"})
	mk("jsondir/"+metadataName, nil)
	if err := os.WriteFile(filepath.Join(s.dir, "stray-file"), good, 0o644); err != nil {
		t.Fatal(err)
	}

	all, err := s.List(t.Context())
	if err != nil {
		t.Fatalf("List() error = %v", err)
	}
	var ids []string
	for _, img := range all {
		ids = append(ids, img.ID)
		if !filepath.IsAbs(img.Rootfs) || img.Rootfs != filepath.Join(s.dir, img.ID, rootfsName) {
			t.Errorf("List(): %s Rootfs = %q, want %s", img.ID, img.Rootfs, filepath.Join(s.dir, img.ID, rootfsName))
		}
	}
	if want := []string{a.ID, b.ID}; !slices.Equal(ids, want) {
		t.Errorf("List() = %q, want %q (a:1, b:1)", ids, want)
	}
}

// TestStoreRemoveAbandoned checks which leftovers a pull cleans up: temp and
// half-removed directories whose flock is free, unlocked staging dirs once
// they are old, and nothing else.
func TestStoreRemoveAbandoned(t *testing.T) {
	tests := []struct {
		name     string
		dir      string
		lock     bool
		age      time.Duration
		wantKept bool
	}{
		{"abandoned temp dir", tmpPrefix + "aaaa", false, 0, false},
		{"temp dir of a live pull", tmpPrefix + "bbbb", true, 0, true},
		{"old temp dir of a live pull", tmpPrefix + "cccc", true, 2 * abandonedAfter, true},
		{"abandoned removal", removingPrefix + "dddd", false, 0, false},
		{"removal in progress", removingPrefix + "eeee", true, 0, true},
		{"fresh staging dir", newPrefix + "ffff", false, 0, true},
		{"old staging dir", newPrefix + "gggg", false, 2 * abandonedAfter, false},
		{"other dot dir", ".keep", false, 2 * abandonedAfter, true},
		{"image-like dir", "0123456789abcdef", false, 2 * abandonedAfter, true},
	}
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	for _, tt := range tests {
		dir := filepath.Join(s.dir, tt.dir)
		if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "sub", "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if tt.age > 0 {
			old := time.Now().Add(-tt.age)
			if err := os.Chtimes(dir, old, old); err != nil {
				t.Fatal(err)
			}
		}
		if tt.lock {
			// A live holder: another open file description with the flock,
			// as another pull's process would have.
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				t.Fatalf("flock %s: %v", dir, err)
			}
		}
	}
	s.removeAbandoned()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := os.Stat(filepath.Join(s.dir, tt.dir))
			if kept := err == nil; kept != tt.wantKept {
				t.Errorf("removeAbandoned(): %s kept = %v (Stat: %v), want %v", tt.dir, kept, err, tt.wantKept)
			}
		})
	}
	// add runs the same cleanup, and publishes beside what is kept.
	img := addImage(t, s, "x:1", "x", t0)
	if _, err := os.Stat(filepath.Join(s.dir, tmpPrefix+"bbbb")); err != nil {
		t.Errorf("add() removed a locked temp dir: %v", err)
	}
	if _, err := s.Get(t.Context(), img.ID); err != nil {
		t.Errorf("Get(%s) after add = %v", img.ID, err)
	}
}

// TestStoreIndexTempLeftover: a writer of names.json or VERSION killed
// before its rename leaves its temp file; the next taker of the store lock
// removes it, a pull that adds an image as well as one found up to date,
// and the index stays whole.
func TestStoreIndexTempLeftover(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	if _, err := add(t.Context(), s, Image{Name: "a:1", ConfigDigest: configOf("a"), ManifestDigest: "sha256:aaaa"}, func(d string) error {
		return os.WriteFile(filepath.Join(d, rootfsName), []byte("a"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	plant := func() {
		for _, name := range []string{tmpPrefix + namesName + "-dead", tmpPrefix + versionName + "-dead"} {
			if err := os.WriteFile(filepath.Join(s.dir, name), []byte(`{"names":`), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantDirs := func(bodies ...string) []string {
		var dirs []string
		for _, b := range bodies {
			dirs = append(dirs, sha256Hex([]byte("config:"+b)))
		}
		slices.Sort(dirs)
		return dirs
	}

	plant()
	if _, ok, err := s.UpToDate(t.Context(), "a:1", "sha256:aaaa"); !ok || err != nil {
		t.Fatalf("UpToDate(a:1) = %v, %v; want true", ok, err)
	}
	if dirs := imageDirs(t, s.dir); !slices.Equal(dirs, wantDirs("a")) {
		t.Errorf("store after a pull found up to date = %q, want only %q", dirs, wantDirs("a"))
	}

	plant()
	addImage(t, s, "b:1", "b", t0)
	if dirs := imageDirs(t, s.dir); !slices.Equal(dirs, wantDirs("a", "b")) {
		t.Errorf("store after a pull = %q, want only %q", dirs, wantDirs("a", "b"))
	}
	checkStore(t, s, map[string]string{"a:1": "a", "b:1": "b"}, "after a pull")
}

func TestStoreRootfsAbsolute(t *testing.T) {
	tests := []struct {
		name string
		dir  string // relative to the working directory
	}{
		{"relative", "images"},
		{"dot relative", "./data/../images2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wd := t.TempDir()
			t.Chdir(wd)
			s := NewStore(tt.dir)
			img := addImage(t, s, "x:1", "x", t0)
			want := filepath.Join(wd, filepath.Clean(tt.dir), img.ID, rootfsName)
			if img.Rootfs != want {
				t.Errorf("add() Rootfs = %q, want %q", img.Rootfs, want)
			}
			got, err := s.Get(t.Context(), "x:1")
			if err != nil || got.Rootfs != want {
				t.Errorf("Get(x:1) Rootfs = %q, %v, want %q", got.Rootfs, err, want)
			}
			// Still right after the process changes directory.
			t.Chdir(t.TempDir())
			if got, err := s.Get(t.Context(), "x:1"); err != nil || got.Rootfs != want {
				t.Errorf("Get(x:1) after chdir: Rootfs = %q, %v, want %q", got.Rootfs, err, want)
			}
			if _, err := os.Stat(want); err != nil {
				t.Errorf("rootfs: %v", err)
			}
		})
	}
}

// TestStoreLookup: a lookup says whether it matched a name or an ID, and a
// string that is one image's ID and another's name (a store written before
// such names were refused) matches neither, in Get and in Remove.
func TestStoreLookup(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "images"))
	a := addImage(t, s, "a:1", "a", t0)
	// An old image named after a's ID, as ValidateName now refuses.
	shadow := addImage(t, s, a.ID, "s", t0)
	b := addImage(t, s, "b:1", "b", t0)
	tests := []struct {
		in        string
		wantID    string
		wantMatch Match
		wantErr   error
	}{
		{"a:1", a.ID, MatchName, nil},
		{b.ID, b.ID, MatchID, nil},
		{shadow.ID, shadow.ID, MatchID, nil},
		{a.ID, "", 0, ErrInvalidReference},
		{"nope:1", "", 0, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			img, m, err := s.Lookup(t.Context(), tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Lookup(%q) = %s, %v, %v, want %v", tt.in, img.ID, m, err, tt.wantErr)
				}
				return
			}
			if err != nil || img.ID != tt.wantID || m != tt.wantMatch {
				t.Errorf("Lookup(%q) = %s, %v, %v, want %s by %v", tt.in, img.ID, m, err, tt.wantID, tt.wantMatch)
			}
		})
	}
	t.Run("Remove of an ambiguous name removes nothing", func(t *testing.T) {
		removed, err := s.Remove(t.Context(), false, "b:1", a.ID)
		if !errors.Is(err, ErrInvalidReference) || len(removed) != 0 {
			t.Errorf("Remove(b:1, %s) = %d removed, %v; want none removed and ErrInvalidReference", a.ID, len(removed), err)
		}
		if all, _ := s.List(t.Context()); len(all) != 3 {
			t.Errorf("after the refused Remove, List() has %d images, want 3", len(all))
		}
	})
}
