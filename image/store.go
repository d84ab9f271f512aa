package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	rootfsName   = "rootfs.tar"
	metadataName = "image.json"
	// tmpPrefix marks a pull still assembling its image and removingPrefix
	// an image being deleted; listings skip both.
	tmpPrefix      = ".tmp-"
	removingPrefix = ".removing-"
	// newPrefix marks a temp directory not yet locked: its creator locks it
	// microseconds after creating it, so cleanup removes one only when it
	// is older than abandonedAfter and its flock is free.
	newPrefix      = ".new-"
	abandonedAfter = 10 * time.Second
)

// ErrNotFound is returned for an image name that is not in the store.
var ErrNotFound = errors.New("no such image")

// Image describes a flattened image in the store.
type Image struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Reference      string    `json:"reference"`
	ManifestDigest string    `json:"manifest_digest,omitempty"`
	ConfigDigest   string    `json:"config_digest"`
	Platform       string    `json:"platform"`
	Size           int64     `json:"size"` // bytes of rootfs.tar
	Created        time.Time `json:"created"`
	PulledAt       time.Time `json:"pulled_at"`
	Env            []string  `json:"env,omitempty"`
	Entrypoint     []string  `json:"entrypoint,omitempty"`
	Cmd            []string  `json:"cmd,omitempty"`
	WorkingDir     string    `json:"workdir,omitempty"`
	User           string    `json:"user,omitempty"`
	// Rootfs is the absolute path of the flattened root filesystem tar. It
	// is derived from the store's location, not stored.
	Rootfs string `json:"rootfs"`
}

// Store keeps flattened images under one directory, one subdirectory each:
// <dir>/<id>/rootfs.tar and <dir>/<id>/image.json. An image appears by the
// rename of a finished temp directory, so a listing never shows half an image.
type Store struct {
	dir string
}

// NewStore returns the store kept in dir. It touches no files. A relative
// dir is made absolute now, so that Image.Rootfs is always an absolute path
// (and stays right if the process changes directory).
func NewStore(dir string) *Store {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return &Store{dir: dir}
}

// add assembles an image in a temp directory with fill, publishes it, and
// then removes older images of the same name. A crash leaves at worst a temp
// directory, which a later add removes, never a broken image.
func (s *Store) add(ctx context.Context, img Image, fill func(dir string) error) (Image, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("creating image store: %w", err)
	}
	s.removeAbandoned()
	img.ID = newID()
	// The temp directory is created under a name cleanup ignores, locked,
	// and only then renamed to .tmp-<id>: a .tmp- directory whose flock can
	// be taken was abandoned (its owner died), never one not yet locked.
	staging := filepath.Join(s.dir, newPrefix+img.ID)
	tmp := filepath.Join(s.dir, tmpPrefix+img.ID)
	if err := os.Mkdir(staging, 0o755); err != nil {
		return Image{}, fmt.Errorf("creating image store: %w", err)
	}
	unlockTmp, err := lockDir(staging, false)
	if err == nil {
		err = os.Rename(staging, tmp)
	}
	if err != nil {
		os.RemoveAll(staging)
		return Image{}, fmt.Errorf("creating image store: %w", err)
	}
	defer unlockTmp()
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	if err := fill(tmp); err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", img.Reference, err)
	}
	info, err := os.Stat(filepath.Join(tmp, rootfsName))
	if err != nil {
		return Image{}, err
	}
	img.Size = info.Size()
	if err := ctx.Err(); err != nil {
		return Image{}, err
	}

	// Publishing and replacing hold the store lock, briefly, so that two
	// pulls of one name cannot both miss each other and leave two images.
	unlock, err := lockDir(s.dir, true)
	if err != nil {
		return Image{}, fmt.Errorf("locking image store: %w", err)
	}
	defer unlock()
	img.PulledAt = img.PulledAt.UTC()
	if err := writeJSONFile(filepath.Join(tmp, metadataName), img); err != nil {
		return Image{}, fmt.Errorf("writing image metadata: %w", err)
	}
	final := filepath.Join(s.dir, img.ID)
	if err := os.Rename(tmp, final); err != nil {
		return Image{}, fmt.Errorf("publishing image: %w", err)
	}
	published = true
	if err := syncDir(s.dir); err != nil {
		return Image{}, err
	}
	img.Rootfs = filepath.Join(final, rootfsName)
	all, err := s.List(ctx)
	if err != nil {
		return img, nil
	}
	for _, old := range all {
		if old.Name == img.Name && old.ID != img.ID {
			s.removeDir(old.ID)
		}
	}
	return img, nil
}

// removeAbandoned deletes temp and half-removed directories whose owner is
// gone: their flock can be taken. Failures are left for a later run.
func (s *Store) removeAbandoned() {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		path := filepath.Join(s.dir, e.Name())
		if strings.HasPrefix(e.Name(), newPrefix) {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > abandonedAfter {
				if unlock, err := lockDir(path, false); err == nil {
					os.RemoveAll(path)
					unlock()
				}
			}
			continue
		}
		if !strings.HasPrefix(e.Name(), tmpPrefix) && !strings.HasPrefix(e.Name(), removingPrefix) {
			continue
		}
		unlock, err := lockDir(path, false)
		if err != nil {
			continue // still being written or removed
		}
		os.RemoveAll(path)
		unlock()
	}
}

// lockDir takes an exclusive flock on a directory. With wait it blocks;
// without, it fails at once if another process holds it.
func lockDir(dir string, wait bool) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// List returns every complete image, sorted by name. Unreadable entries are
// skipped: a store directory may be written by another process at any time.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	var images []Image
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		img, err := s.read(e.Name())
		if err != nil {
			continue
		}
		images = append(images, img)
	}
	slices.SortFunc(images, func(a, b Image) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return b.PulledAt.Compare(a.PulledAt)
	})
	return images, nil
}

func (s *Store) read(id string) (Image, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, id, metadataName))
	if err != nil {
		return Image{}, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return Image{}, err
	}
	img.ID = id
	img.Rootfs = filepath.Join(s.dir, id, rootfsName)
	return img, nil
}

// Match says how a lookup found its image.
type Match int

const (
	MatchName Match = iota + 1 // by name, as given or normalized
	MatchID                    // by ID
)

func (m Match) String() string {
	switch m {
	case MatchName:
		return "name"
	case MatchID:
		return "ID"
	}
	return "nothing"
}

// Get finds an image by name (normalized as pull names it, so
// docker.io/library/alpine:3.20 finds alpine:3.20) or by ID.
func (s *Store) Get(ctx context.Context, nameOrID string) (Image, error) {
	img, _, err := s.Lookup(ctx, nameOrID)
	return img, err
}

// Lookup is Get that also says whether nameOrID matched the image's name
// or its ID. A string that is one image's ID and another's name (possible
// only in a store written before names that look like IDs were refused)
// matches neither: it is an error naming both.
func (s *Store) Lookup(ctx context.Context, nameOrID string) (Image, Match, error) {
	all, err := s.List(ctx)
	if err != nil {
		return Image{}, 0, err
	}
	img, m, err := find(all, nameOrID)
	if err != nil {
		return Image{}, 0, err
	}
	if m == 0 {
		return Image{}, 0, fmt.Errorf("image %q: %w", nameOrID, ErrNotFound)
	}
	return img, m, nil
}

func find(all []Image, nameOrID string) (Image, Match, error) {
	normalized := NormalizeName(nameOrID)
	var byName, byID *Image
	// List sorts newest first within a name, so the first match is current.
	for i, img := range all {
		if byName == nil && (img.Name == nameOrID || img.Name == normalized) {
			byName = &all[i]
		}
		if byID == nil && img.ID == nameOrID {
			byID = &all[i]
		}
	}
	switch {
	case byName != nil && byID != nil && byName.ID != byID.ID:
		return Image{}, 0, errorf(ErrInvalidReference, "%q is the ID of image %q and the name of image %s; use that image's ID", nameOrID, byID.Name, byName.ID)
	case byID != nil:
		return *byID, MatchID, nil
	case byName != nil:
		return *byName, MatchName, nil
	}
	return Image{}, 0, nil
}

// ValidateName checks an image name given by the user: reference-like (a
// letter or digit, then letters, digits and . _ - / : @ +, with no empty,
// . or .. path component), at most 255 bytes, and not something an image
// ID could be (12 to 64 lowercase hex digits), so that a name never
// shadows another image's ID.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errorf(ErrInvalidName, "image name is empty")
	case len(name) > 255:
		return errorf(ErrInvalidName, "image name %q is %d bytes; at most 255", name, len(name))
	case looksLikeID(name):
		return errorf(ErrInvalidName, "image name %q looks like an image ID; a name must not be mistaken for one", name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !ok && i > 0 {
			ok = strings.ContainsRune("._-/:@+", r)
		}
		if !ok {
			return errorf(ErrInvalidName, "image name %q has %q at byte %d; a name starts with a letter or digit, then letters, digits and . _ - / : @ +", name, r, i)
		}
	}
	repo, _, _ := strings.Cut(name, ":")
	for _, part := range strings.Split(repo, "/") {
		if part == "" || part == "." || part == ".." {
			return errorf(ErrInvalidName, "image name %q has an empty, . or .. path component", name)
		}
	}
	return nil
}

// checkDerivedName checks a name a source suggests (a ref.name annotation,
// a directory's name): anything printable goes, control characters do not.
func checkDerivedName(name string) error {
	if Escape(name) != name {
		return errorf(ErrInvalidName, "the name the source gives the image, %q, holds control characters", name)
	}
	return nil
}

func looksLikeID(s string) bool {
	return len(s) >= 12 && len(s) <= 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// Remove deletes the named images and returns those it removed. Names that
// are not found are reported in the error after the others are removed.
func (s *Store) Remove(ctx context.Context, names ...string) ([]Image, error) {
	all, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	var removed []Image
	var missing []string
	// An ambiguous name fails the call before anything is removed.
	found := make([]Image, len(names))
	matched := make([]Match, len(names))
	for i, n := range names {
		if found[i], matched[i], err = find(all, n); err != nil {
			return nil, err
		}
	}
	for i, n := range names {
		img := found[i]
		if matched[i] == 0 {
			missing = append(missing, n)
			continue
		}
		if slices.ContainsFunc(removed, func(r Image) bool { return r.ID == img.ID }) {
			continue // named twice, by name and ID say: report it once
		}
		for _, other := range all {
			if other.Name == img.Name || other.ID == img.ID {
				if err := s.removeDir(other.ID); err != nil {
					return removed, fmt.Errorf("removing image %s: %w", img.Name, err)
				}
			}
		}
		removed = append(removed, img)
	}
	if len(missing) > 0 {
		return removed, fmt.Errorf("image %s: %w", quoteAll(missing), ErrNotFound)
	}
	return removed, nil
}

// removeDir takes an image out of listings with one rename, then deletes it.
// os.RemoveAll removes symlinks, never what they point to.
func (s *Store) removeDir(id string) error {
	doomed := filepath.Join(s.dir, removingPrefix+id)
	if err := os.Rename(filepath.Join(s.dir, id), doomed); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed by another process
		}
		return err
	}
	return os.RemoveAll(doomed)
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func writeJSONFile(path string, v any) error {
	rec := v.(Image)
	rec.Rootfs = "" // derived on read
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
