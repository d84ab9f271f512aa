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

	"github.com/banger/banger/cache"
	"golang.org/x/sys/unix"
)

// The store's files, all directly under its directory:
//
//	VERSION          the store format (storeFormat), written last by a migration
//	names.json       every name and the image it points to, replaced atomically
//	.lock            the store lock, held briefly by every change
//	<id>/rootfs.tar  an image's flattened root filesystem
//	<id>/image.json  its record; the file's mtime is the image's last use
//
// <id> is the hex of the config digest, so one image pulled under several
// names, or pulled twice, is one directory.
const (
	rootfsName   = "rootfs.tar"
	metadataName = "image.json"
	versionName  = "VERSION"
	namesName    = "names.json"
	lockName     = ".lock"
	// storeFormat is the format this version writes; 1 (no VERSION file,
	// random IDs, one directory per name) is migrated on first use.
	storeFormat = 2

	// tmpPrefix marks a pull still assembling its image and removingPrefix
	// an image being deleted; listings skip both.
	tmpPrefix      = ".tmp-"
	removingPrefix = ".removing-"
	// newPrefix marks a temp directory not yet locked: its creator locks it
	// microseconds after creating it, so cleanup removes one only when it
	// is older than abandonedAfter and its flock is free.
	newPrefix      = ".new-"
	abandonedAfter = 10 * time.Second

	// touchEvery bounds how often a use is recorded, as for cache blobs:
	// a use rewrites no file, but an mtime update per inspect would still
	// be a write per read.
	touchEvery = time.Hour

	dirPerm  = 0o700
	filePerm = 0o600
)

// ErrNotFound is returned for an image name that is not in the store.
var ErrNotFound = errors.New("no such image")

// ErrHasNames is returned by Remove for an image ID whose image has several
// names, when force is not set.
var ErrHasNames = errors.New("image has several names")

// ErrAmbiguous is returned for an ID prefix that several images share.
var ErrAmbiguous = errors.New("ambiguous image ID prefix")

// Image describes a flattened image in the store, as seen through one of
// its names. It is what the store's methods return and what banger prints
// with --json; the record kept on disk is a separate type (record).
type Image struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Names     []string `json:"names"`
	Reference string   `json:"reference"`
	// Source is where the image came from: for a registry, the endpoint
	// (a mirror, or the location registries.conf rewrote to) that served
	// the manifest; else the reference itself.
	Source         string    `json:"source,omitempty"`
	ManifestDigest string    `json:"manifest_digest,omitempty"`
	ConfigDigest   string    `json:"config_digest"`
	Platform       string    `json:"platform"`
	Size           int64     `json:"size"` // bytes of rootfs.tar
	Created        time.Time `json:"created"`
	PulledAt       time.Time `json:"pulled_at"`
	LastUsed       time.Time `json:"last_used"`
	Env            []string  `json:"env,omitempty"`
	Entrypoint     []string  `json:"entrypoint,omitempty"`
	Cmd            []string  `json:"cmd,omitempty"`
	WorkingDir     string    `json:"workdir,omitempty"`
	User           string    `json:"user,omitempty"`

	Labels       map[string]string `json:"labels,omitempty"`
	ExposedPorts []string          `json:"exposed_ports,omitempty"`
	Volumes      []string          `json:"volumes,omitempty"`
	StopSignal   string            `json:"stop_signal,omitempty"`
	OS           string            `json:"os,omitempty"`
	Architecture string            `json:"architecture,omitempty"`
	Variant      string            `json:"variant,omitempty"`
	History      []History         `json:"history,omitempty"`
	// Layers are the layer digests, bottom first, as the manifest lists
	// them (diff IDs for a docker archive).
	Layers []string `json:"layers,omitempty"`

	// Rootfs is the absolute path of the flattened root filesystem tar. It
	// is derived from the store's location, not stored.
	Rootfs string `json:"rootfs"`
	// UpToDate is set by Pull when the name already held this image.
	UpToDate bool `json:"up_to_date,omitempty"`
	// Linked is set by Pull when the image was in the store already under
	// another name, and the pull only gave it this one: no layer was
	// fetched and nothing flattened.
	Linked bool `json:"linked,omitempty"`
	// Replaced is the ID of the image the name pointed to before this pull,
	// removed because it had no other name; its rootfs is gone.
	Replaced string `json:"replaced,omitempty"`
}

// History is one entry of the config's history.
type History struct {
	CreatedBy  string `json:"created_by,omitempty"`
	EmptyLayer bool   `json:"empty_layer,omitempty"`
}

// ShortID is the first 12 hex digits of an ID, as docker prints it.
func ShortID(id string) string { return id[:min(len(id), 12)] }

// record is <id>/image.json: what is true of the image whatever it is
// called. Per-name facts (reference, manifest, pull time) are in names.json.
type record struct {
	ConfigDigest string            `json:"config_digest"`
	Platform     string            `json:"platform"`
	Size         int64             `json:"size"`
	Created      time.Time         `json:"created"`
	Env          []string          `json:"env,omitempty"`
	Entrypoint   []string          `json:"entrypoint,omitempty"`
	Cmd          []string          `json:"cmd,omitempty"`
	WorkingDir   string            `json:"workdir,omitempty"`
	User         string            `json:"user,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	ExposedPorts []string          `json:"exposed_ports,omitempty"`
	Volumes      []string          `json:"volumes,omitempty"`
	StopSignal   string            `json:"stop_signal,omitempty"`
	OS           string            `json:"os,omitempty"`
	Architecture string            `json:"architecture,omitempty"`
	Variant      string            `json:"variant,omitempty"`
	History      []History         `json:"history,omitempty"`
	Layers       []string          `json:"layers,omitempty"`
}

// nameEntry is one name in names.json.
type nameEntry struct {
	ID             string    `json:"id"`
	Reference      string    `json:"reference"`
	Source         string    `json:"source,omitempty"`
	ManifestDigest string    `json:"manifest_digest,omitempty"`
	PulledAt       time.Time `json:"pulled_at"`
}

// index is names.json.
type index struct {
	Names map[string]nameEntry `json:"names"`
}

func recordOf(img Image) record {
	return record{
		ConfigDigest: img.ConfigDigest, Platform: img.Platform, Size: img.Size, Created: img.Created,
		Env: img.Env, Entrypoint: img.Entrypoint, Cmd: img.Cmd, WorkingDir: img.WorkingDir, User: img.User,
		Labels: img.Labels, ExposedPorts: img.ExposedPorts, Volumes: img.Volumes, StopSignal: img.StopSignal,
		OS: img.OS, Architecture: img.Architecture, Variant: img.Variant, History: img.History, Layers: img.Layers,
	}
}

func (r record) image(id string) Image {
	return Image{
		ID: id, ConfigDigest: r.ConfigDigest, Platform: r.Platform, Size: r.Size, Created: r.Created,
		Env: r.Env, Entrypoint: r.Entrypoint, Cmd: r.Cmd, WorkingDir: r.WorkingDir, User: r.User,
		Labels: r.Labels, ExposedPorts: r.ExposedPorts, Volumes: r.Volumes, StopSignal: r.StopSignal,
		OS: r.OS, Architecture: r.Architecture, Variant: r.Variant, History: r.History, Layers: r.Layers,
	}
}

// idOf derives an image's ID from its config digest, as docker does.
func idOf(configDigest string) (string, error) {
	hexDigest, ok := strings.CutPrefix(configDigest, "sha256:")
	if !ok || !isHex64(hexDigest) {
		return "", fmt.Errorf("config digest %q is not a sha256 digest", configDigest)
	}
	return hexDigest, nil
}

// StoreOptions tune a Store. The zero value waits for the store lock until
// the context ends, says nothing while waiting, and uses time.Now.
type StoreOptions struct {
	// Wait, NoWait and Notice are the lock wait policy, as for the cache
	// (cache.Options).
	Wait   time.Duration
	NoWait bool
	Notice func(msg string)
	// Now is the clock for last use and pruning; nil means time.Now.
	Now func() time.Time
}

// Store keeps flattened images under one directory (see the file list at
// the top of this file). An image appears by the rename of a finished temp
// directory and a name by the atomic replacement of names.json, both under
// the store lock, so a listing never shows half an image or a name without
// its image. A Store holds no open files between calls and is safe for
// concurrent use by goroutines and by separate processes.
type Store struct {
	dir  string
	opts StoreOptions
	// crash, if set, is called after each step of a migration or prune;
	// crash tests kill the process in it.
	crash func(step string)
}

// NewStore returns the store kept in dir, with at most one StoreOptions. It
// touches no files. A relative dir is made absolute now, so that
// Image.Rootfs is always an absolute path (and stays right if the process
// changes directory).
func NewStore(dir string, opts ...StoreOptions) *Store {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	s := &Store{dir: dir}
	if len(opts) > 0 {
		s.opts = opts[0]
	}
	if s.opts.Now == nil {
		s.opts.Now = time.Now
	}
	return s
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// lock takes the store lock with the wait policy in s.opts. Holding it, it
// removes the names.json and VERSION temp files of a writer that died
// before its rename: every taker of the lock, a pull found up to date
// included, leaves none behind.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	unlock, err = cache.LockFile(ctx, "lock", filepath.Join(s.dir, lockName), cache.Options{Wait: s.opts.Wait, NoWait: s.opts.NoWait, Notice: s.opts.Notice})
	if err != nil {
		return nil, fmt.Errorf("locking image store: %w", err)
	}
	s.removeTempFiles()
	return unlock, nil
}

// removeTempFiles removes the names.json and VERSION temp files. The
// caller holds the lock, as every writer of those files does: any found
// was left by a writer that died.
func (s *Store) removeTempFiles() {
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), tmpPrefix) {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// create makes the store directory and brings its format up to date. Every
// change calls it first.
func (s *Store) create(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, dirPerm); err != nil {
		return fmt.Errorf("creating image store: %w", err)
	}
	return s.migrate(ctx)
}

// Stage is an image being assembled by Begin: write rootfs.tar into Dir,
// then Commit it or Abort it.
type Stage struct {
	s      *Store
	dir    string
	unlock func() // the temp directory's own flock, which marks it alive
	done   bool
}

// Begin starts an image: it creates a temp directory in the store, which
// listings skip and which a crash leaves for a later Begin to remove. The
// caller writes rootfs.tar into stage.Dir(), then calls Commit or Abort.
//
// Begin creates the store directory but nothing else in it: a pull that
// fails leaves the store as it found it, and a store in the previous
// format is migrated by Commit.
func (s *Store) Begin(ctx context.Context) (*Stage, error) {
	if err := os.MkdirAll(s.dir, dirPerm); err != nil {
		return nil, fmt.Errorf("creating image store: %w", err)
	}
	s.removeAbandoned()
	suffix := randomSuffix()
	// The temp directory is created under a name cleanup ignores, locked,
	// and only then renamed to .tmp-<id>: a .tmp- directory whose flock can
	// be taken was abandoned (its owner died), never one not yet locked.
	staging := filepath.Join(s.dir, newPrefix+suffix)
	tmp := filepath.Join(s.dir, tmpPrefix+suffix)
	if err := os.Mkdir(staging, dirPerm); err != nil {
		return nil, fmt.Errorf("creating image store temp dir: %w", err)
	}
	unlock, err := lockDir(staging, false)
	if err == nil {
		if err = os.Rename(staging, tmp); err != nil {
			unlock()
		}
	}
	if err != nil {
		os.RemoveAll(staging)
		return nil, fmt.Errorf("creating image store temp dir: %w", err)
	}
	return &Stage{s: s, dir: tmp, unlock: unlock}, nil
}

// Dir is where the caller writes rootfs.tar.
func (st *Stage) Dir() string { return st.dir }

// Abort discards the stage. It is safe to call after Commit, which makes it
// a no-op, so that callers can defer it.
func (st *Stage) Abort() {
	if st.done {
		return
	}
	st.done = true
	os.RemoveAll(st.dir)
	st.unlock()
}

// Commit publishes the stage as image img (its ConfigDigest gives the ID)
// under img.Name, with img's per-name fields. If the store already holds
// that image, the stage is discarded and the name added: the rootfs already
// published, and every path printed for it, stays. If the name pointed to
// another image that has no other name, that image is removed and its ID
// returned in Replaced.
func (st *Stage) Commit(ctx context.Context, img Image) (Image, error) {
	defer st.Abort()
	s := st.s
	id, err := idOf(img.ConfigDigest)
	if err != nil {
		return Image{}, err
	}
	info, err := os.Lstat(filepath.Join(st.dir, rootfsName))
	if err != nil {
		return Image{}, fmt.Errorf("publishing image: %w", err)
	}
	if !info.Mode().IsRegular() {
		return Image{}, fmt.Errorf("publishing image: %s is not a regular file", rootfsName)
	}
	img.Size = info.Size()
	if err := ctx.Err(); err != nil {
		return Image{}, err
	}
	if err := s.create(ctx); err != nil {
		return Image{}, err
	}
	// Publishing and naming hold the store lock, briefly, so that two pulls
	// of one name cannot both miss each other, and prune cannot remove an
	// image between its check and the name being added.
	unlock, err := s.lock(ctx)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if _, err := s.readRecord(id); err != nil {
		if err := writeJSONFile(filepath.Join(st.dir, metadataName), recordOf(img)); err != nil {
			return Image{}, fmt.Errorf("writing image metadata: %w", err)
		}
		// A directory of that ID that is not a readable image is a
		// crash's leftover: move it out of the way first.
		if _, err := os.Lstat(filepath.Join(s.dir, id)); err == nil {
			if err := s.removeDir(id); err != nil {
				return Image{}, fmt.Errorf("removing damaged image %s: %w", id, err)
			}
		}
		if err := os.Rename(st.dir, filepath.Join(s.dir, id)); err != nil {
			return Image{}, fmt.Errorf("publishing image: %w", err)
		}
		if err := syncDir(s.dir); err != nil {
			return Image{}, fmt.Errorf("publishing image: %w", err)
		}
	}
	return s.setName(id, img)
}

// Link adds img.Name to the image with img's config digest if the store
// holds it, without a stage, and reports whether it did.
func (s *Store) Link(ctx context.Context, img Image) (Image, bool, error) {
	id, err := idOf(img.ConfigDigest)
	if err != nil {
		return Image{}, false, err
	}
	if _, err := s.readRecord(id); err != nil {
		return Image{}, false, nil // not there: checked again under the lock
	}
	if err := s.create(ctx); err != nil {
		return Image{}, false, err
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return Image{}, false, err
	}
	defer unlock()
	if _, err := s.readRecord(id); err != nil {
		return Image{}, false, nil
	}
	got, err := s.setName(id, img)
	if err != nil {
		return Image{}, false, err
	}
	got.Linked = true
	return got, true, nil
}

// setName points img.Name at image id and records a use of it; the caller
// holds the lock and has published id.
func (s *Store) setName(id string, img Image) (Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return Image{}, err
	}
	old, had := idx.Names[img.Name]
	idx.Names[img.Name] = nameEntry{ID: id, Reference: img.Reference, Source: img.Source, ManifestDigest: img.ManifestDigest, PulledAt: img.PulledAt.UTC()}
	if err := s.writeIndex(idx); err != nil {
		return Image{}, err
	}
	s.touch(id, true)
	replaced := ""
	if had && old.ID != id && len(idx.namesOf(old.ID)) == 0 {
		// The name was the old image's last: nothing can reach it now.
		if err := s.removeDir(old.ID); err == nil {
			replaced = old.ID
		}
	}
	got, err := s.image(idx, img.Name)
	if err != nil {
		return Image{}, err
	}
	got.Replaced = replaced
	return got, nil
}

// UpToDate reports whether name holds the image of manifestDigest already,
// and if so records the use and returns it, with UpToDate set. It changes
// nothing otherwise.
func (s *Store) UpToDate(ctx context.Context, name, manifestDigest string) (Image, bool, error) {
	if manifestDigest == "" {
		return Image{}, false, nil
	}
	idx, err := s.readIndex()
	if err != nil || idx.Names[name].ManifestDigest != manifestDigest {
		return Image{}, false, err
	}
	// Checked again under the lock, which a prune takes to remove it.
	if err := s.create(ctx); err != nil {
		return Image{}, false, err
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return Image{}, false, err
	}
	defer unlock()
	if idx, err = s.readIndex(); err != nil {
		return Image{}, false, err
	}
	e, ok := idx.Names[name]
	if !ok || e.ManifestDigest != manifestDigest {
		return Image{}, false, nil
	}
	img, err := s.image(idx, name)
	if err != nil {
		return Image{}, false, nil // damaged: pull it again
	}
	s.touch(e.ID, true)
	img.UpToDate = true
	img.LastUsed = s.opts.Now().UTC()
	return img, true, nil
}

// Touch records a use of the image (an inspect, a rootfs path asked for),
// at most once per touchEvery. It needs no lock and fails silently: a use
// not recorded only makes a prune see the image as older.
func (s *Store) Touch(id string) { s.touch(id, false) }

func (s *Store) touch(id string, always bool) {
	path := filepath.Join(s.dir, id, metadataName)
	now := s.opts.Now()
	if !always {
		if info, err := os.Lstat(path); err != nil || now.Sub(info.ModTime()) < touchEvery {
			return
		}
	}
	os.Chtimes(path, now, now)
}

// removeAbandoned deletes temp and half-removed directories whose owner is
// gone: their flock can be taken. Failures are left for a later run. It
// returns the bytes it removed (with count, only counts).
func (s *Store) removeAbandoned() { s.abandoned(true) }

func (s *Store) abandoned(remove bool) (n int64) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		path := filepath.Join(s.dir, e.Name())
		isNew := strings.HasPrefix(e.Name(), newPrefix)
		if !isNew && !strings.HasPrefix(e.Name(), tmpPrefix) && !strings.HasPrefix(e.Name(), removingPrefix) && !strings.HasPrefix(e.Name(), migratingPrefix) {
			continue
		}
		if isNew {
			info, err := e.Info()
			if err != nil || s.opts.Now().Sub(info.ModTime()) <= abandonedAfter {
				continue
			}
		}
		unlock, err := lockDir(path, false)
		if err != nil {
			continue // still being written or removed
		}
		n += dirBytes(path)
		if remove {
			os.RemoveAll(path)
		}
		unlock()
	}
	return n
}

// dirBytes is the apparent size of the regular files directly in dir.
func dirBytes(dir string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}

// lockDir takes an exclusive flock on a directory. With wait it blocks;
// without, it fails at once if another process holds it. It is for the
// per-directory liveness locks, never waited on for long.
func lockDir(dir string, wait bool) (unlock func(), err error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_DIRECTORY, 0)
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

// readIndex reads names.json; a store without one has no names.
func (s *Store) readIndex() (index, error) {
	idx := index{Names: map[string]nameEntry{}}
	b, err := os.ReadFile(filepath.Join(s.dir, namesName))
	if errors.Is(err, fs.ErrNotExist) {
		return idx, nil
	}
	if err != nil {
		return idx, fmt.Errorf("reading image names: %w", err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("reading image names: %s: %w", filepath.Join(s.dir, namesName), err)
	}
	if idx.Names == nil {
		idx.Names = map[string]nameEntry{}
	}
	return idx, nil
}

// writeIndex replaces names.json: a temp file, synced, renamed over it, and
// the directory synced, so that a crash leaves the old index or the new.
// The caller holds the lock. A crash before the rename leaves the temp
// file, which the next taker of the lock removes.
func (s *Store) writeIndex(idx index) error {
	tmp := filepath.Join(s.dir, tmpPrefix+namesName+"-"+randomSuffix())
	if err := writeJSONFile(tmp, idx); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing image names: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, namesName)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing image names: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("writing image names: %w", err)
	}
	return nil
}

// namesOf lists, sorted, the names of image id.
func (idx index) namesOf(id string) []string {
	var names []string
	for n, e := range idx.Names {
		if e.ID == id {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

func (s *Store) readRecord(id string) (record, error) {
	var r record
	if !isHex64(id) {
		return r, fmt.Errorf("image ID %q is not 64 hex digits", id)
	}
	b, err := os.ReadFile(filepath.Join(s.dir, id, metadataName))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("reading %s: %w", filepath.Join(s.dir, id, metadataName), err)
	}
	return r, nil
}

// image is the image named name, as seen through that name.
func (s *Store) image(idx index, name string) (Image, error) {
	e, ok := idx.Names[name]
	if !ok {
		return Image{}, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	r, err := s.readRecord(e.ID)
	if err != nil {
		return Image{}, err
	}
	img := r.image(e.ID)
	img.Name, img.Names = name, idx.namesOf(e.ID)
	img.Reference, img.Source, img.ManifestDigest, img.PulledAt = e.Reference, e.Source, e.ManifestDigest, e.PulledAt
	img.Rootfs = filepath.Join(s.dir, e.ID, rootfsName)
	if info, err := os.Lstat(filepath.Join(s.dir, e.ID, metadataName)); err == nil {
		img.LastUsed = info.ModTime().UTC()
	}
	return img, nil
}

// List returns one entry per name, sorted by name (an image with three
// names appears three times, with the same ID). Names whose image cannot
// be read are skipped. A store in the previous format is migrated first.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	if err := s.migrateIfNeeded(ctx); err != nil {
		return nil, err
	}
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(idx.Names))
	for n := range idx.Names {
		names = append(names, n)
	}
	slices.Sort(names)
	var images []Image
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := s.image(idx, n)
		if err != nil {
			continue
		}
		images = append(images, img)
	}
	return images, nil
}

// Match says how a lookup found its image.
type Match int

const (
	MatchName Match = iota + 1 // by name, as given or normalized
	MatchID                    // by ID or a unique ID prefix
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
// docker.io/library/alpine:3.20 finds alpine:3.20), by ID, or by a unique
// ID prefix, and records the use (it is how a rootfs path is asked for).
func (s *Store) Get(ctx context.Context, nameOrID string) (Image, error) {
	img, _, err := s.Lookup(ctx, nameOrID)
	if err == nil {
		s.Touch(img.ID)
	}
	return img, err
}

// Lookup is Get that also says whether nameOrID matched a name or an ID,
// and records no use. A name wins over an ID prefix; a string that is one
// image's full ID and another's name (possible only in a store written
// before names that look like IDs were refused) is an error naming both.
func (s *Store) Lookup(ctx context.Context, nameOrID string) (Image, Match, error) {
	if err := s.migrateIfNeeded(ctx); err != nil {
		return Image{}, 0, err
	}
	idx, err := s.readIndex()
	if err != nil {
		return Image{}, 0, err
	}
	name, id, m, err := s.find(idx, nameOrID)
	if err != nil {
		return Image{}, 0, err
	}
	if m == 0 {
		return Image{}, 0, fmt.Errorf("image %q: %w", nameOrID, ErrNotFound)
	}
	if name == "" {
		name = idx.namesOf(id)[0]
	}
	img, err := s.image(idx, name)
	return img, m, err
}

// find resolves nameOrID to a name (for a name match) or an image ID.
func (s *Store) find(idx index, nameOrID string) (name, id string, m Match, err error) {
	for _, n := range []string{nameOrID, NormalizeName(nameOrID)} {
		if e, ok := idx.Names[n]; ok {
			name, id = n, e.ID
			break
		}
	}
	ids := map[string]bool{}
	for _, e := range idx.Names {
		ids[e.ID] = true
	}
	if name != "" {
		if ids[nameOrID] && nameOrID != id {
			return "", "", 0, errorf(ErrInvalidReference, "%q is the ID of an image named %s and the name of image %s; use that image's ID", nameOrID, quoteAll(idx.namesOf(nameOrID)), ShortID(id))
		}
		return name, id, MatchName, nil
	}
	if nameOrID == "" || strings.Trim(nameOrID, "0123456789abcdef") != "" {
		return "", "", 0, nil
	}
	var matches []string
	for i := range ids {
		if strings.HasPrefix(i, nameOrID) {
			matches = append(matches, i)
		}
	}
	switch len(matches) {
	case 0:
		return "", "", 0, nil
	case 1:
		return "", matches[0], MatchID, nil
	}
	slices.Sort(matches)
	for i := range matches {
		matches[i] = ShortID(matches[i])
	}
	return "", "", 0, fmt.Errorf("%w %q: it begins the IDs %s; give more digits", ErrAmbiguous, nameOrID, strings.Join(matches, ", "))
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

// Removed is what Remove did for one argument.
type Removed struct {
	ID string `json:"id"`
	// Name is the first name removed, as rm --json printed before images
	// had several names; Names lists them all.
	Name  string   `json:"name"`
	Names []string `json:"names"`
	// ImageRemoved is set when the image itself went (its last name was
	// removed, or it was named by ID); otherwise it keeps Kept.
	ImageRemoved bool     `json:"image_removed"`
	Kept         []string `json:"kept_names,omitempty"`
	Size         int64    `json:"size"`
}

// Remove removes, for each argument, a name (and the image with its last
// name) or, for an ID or unique ID prefix, the image and all its names. An
// image named by ID that still has several names is refused (ErrHasNames,
// listing them) unless force is set. Arguments that fail are reported in
// the error after the others are done; every argument is resolved before
// anything is removed, so an ambiguous one fails the call at once.
func (s *Store) Remove(ctx context.Context, force bool, args ...string) ([]Removed, error) {
	if err := s.migrateIfNeeded(ctx); err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", quoteAll(args), ErrNotFound)
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	type target struct {
		arg, name, id string
	}
	var targets []target
	var missing []string
	var errs []error
	for _, a := range args {
		name, id, m, err := s.find(idx, a)
		switch {
		case err != nil:
			return nil, err
		case m == 0:
			missing = append(missing, a)
		case m == MatchID && !force && len(idx.namesOf(id)) > 1:
			errs = append(errs, fmt.Errorf("image %s: %w: %s", ShortID(id), ErrHasNames, quoteAll(idx.namesOf(id))))
		default:
			targets = append(targets, target{a, name, id})
		}
	}
	var removed []Removed
	for _, t := range targets {
		if _, ok := idx.Names[t.name]; t.name != "" && !ok || t.name == "" && len(idx.namesOf(t.id)) == 0 {
			continue // already removed by an earlier argument
		}
		r := Removed{ID: t.id}
		if rec, err := s.readRecord(t.id); err == nil {
			r.Size = rec.Size
		}
		if t.name != "" {
			r.Names = []string{t.name}
			delete(idx.Names, t.name)
		} else {
			r.Names = idx.namesOf(t.id)
			for _, n := range r.Names {
				delete(idx.Names, n)
			}
		}
		if len(r.Names) > 0 {
			r.Name = r.Names[0]
		}
		r.Kept = idx.namesOf(t.id)
		r.ImageRemoved = len(r.Kept) == 0
		// The name goes first, so that a crash leaves at worst an image no
		// name reaches, which prune removes, never a name without its image.
		if err := s.writeIndex(idx); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", t.arg, err))
			break
		}
		if r.ImageRemoved {
			if err := s.removeDir(t.id); err != nil {
				errs = append(errs, fmt.Errorf("removing image %s: %w", ShortID(t.id), err))
			}
		}
		removed = append(removed, r)
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("image %s: %w", quoteAll(missing), ErrNotFound))
	}
	return removed, errors.Join(errs...)
}

// removeDir takes an image out of listings with one rename, then deletes it.
// os.RemoveAll removes symlinks, never what they point to, and id is always
// a name the store makes (64 hex digits).
func (s *Store) removeDir(id string) error {
	if !isHex64(id) {
		return fmt.Errorf("refusing to remove %q: not an image ID", id)
	}
	doomed := filepath.Join(s.dir, removingPrefix+id+"-"+randomSuffix())
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

func randomSuffix() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeJSONFile writes v to a new file at path (which must not exist),
// synced before it is closed.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
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
