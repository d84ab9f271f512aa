package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// migratingPrefix marks an image being built from a format-1 directory.
const migratingPrefix = ".migrating-"

// v1Image is image.json as format 1 wrote it: one directory per name, under
// a random 16-hex-digit ID.
type v1Image struct {
	Name           string    `json:"name"`
	Reference      string    `json:"reference"`
	ManifestDigest string    `json:"manifest_digest,omitempty"`
	ConfigDigest   string    `json:"config_digest"`
	Platform       string    `json:"platform"`
	Size           int64     `json:"size"`
	Created        time.Time `json:"created"`
	PulledAt       time.Time `json:"pulled_at"`
	Env            []string  `json:"env,omitempty"`
	Entrypoint     []string  `json:"entrypoint,omitempty"`
	Cmd            []string  `json:"cmd,omitempty"`
	WorkingDir     string    `json:"workdir,omitempty"`
	User           string    `json:"user,omitempty"`
}

// isV1Dir reports whether a directory name is one format 1 made.
func isV1Dir(name string) bool {
	return len(name) == 16 && strings.Trim(name, "0123456789abcdef") == ""
}

// readVersion returns the store's format: 0 when there is no VERSION file.
func (s *Store) readVersion() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, versionName))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading image store format: %w", err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v < 1 {
		return 0, fmt.Errorf("reading image store format: %s holds %q, not a format number", filepath.Join(s.dir, versionName), strings.TrimSpace(string(b)))
	}
	if v > storeFormat {
		return v, fmt.Errorf("image store %s has format %d; this banger reads format %d and older: use a newer banger", s.dir, v, storeFormat)
	}
	return v, nil
}

// v1Dirs lists the format-1 image directories in the store.
func (s *Store) v1Dirs() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && isV1Dir(e.Name()) {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs, nil
}

// migrateIfNeeded migrates a format-1 store, for readers: a store that is
// current, missing or empty is left as it is (not even created).
func (s *Store) migrateIfNeeded(ctx context.Context) error {
	v, err := s.readVersion()
	if err != nil || v == storeFormat {
		return err
	}
	dirs, err := s.v1Dirs()
	if err != nil || len(dirs) == 0 {
		return err
	}
	return s.migrate(ctx)
}

// migrate brings the store to storeFormat under the store lock, once. The
// store directory exists.
//
// From format 1 it builds each image's new directory beside the old one
// (the rootfs hard-linked, not copied, then the record; published by
// renaming the finished .migrating- directory), then writes names.json,
// then VERSION, and only then removes the old directories. A crash before
// VERSION leaves the old directories all there, and the next run does it
// again, reusing what it published; a crash after leaves old directories
// that the next writer removes. Old directories that cannot be read are
// left alone, never deleted.
func (s *Store) migrate(ctx context.Context) error {
	v, err := s.readVersion()
	if err != nil {
		return err
	}
	if v == storeFormat {
		if dirs, err := s.v1Dirs(); err != nil || len(dirs) == 0 {
			return err
		}
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if v, err = s.readVersion(); err != nil {
		return err
	}
	dirs, err := s.v1Dirs()
	if err != nil {
		return err
	}
	if v != storeFormat {
		if err := s.migrateV1(ctx, dirs); err != nil {
			return fmt.Errorf("migrating image store %s to format %d: %w", s.dir, storeFormat, err)
		}
		if err := s.writeVersion(); err != nil {
			return err
		}
		s.crashPoint("version")
	}
	for _, d := range dirs {
		old, err := s.readV1(d)
		if err != nil {
			continue
		}
		id, err := idOf(old.ConfigDigest)
		if err != nil {
			continue
		}
		if _, err := s.readRecord(id); err != nil {
			continue // not migrated: keep it
		}
		doomed := filepath.Join(s.dir, removingPrefix+d)
		if err := os.Rename(filepath.Join(s.dir, d), doomed); err == nil {
			os.RemoveAll(doomed)
		}
		s.crashPoint("remove")
	}
	return nil
}

func (s *Store) readV1(dir string) (v1Image, error) {
	var old v1Image
	b, err := os.ReadFile(filepath.Join(s.dir, dir, metadataName))
	if err != nil {
		return old, err
	}
	if err := json.Unmarshal(b, &old); err != nil {
		return old, err
	}
	if old.Name == "" {
		return old, fmt.Errorf("%s has no name", dir)
	}
	return old, nil
}

// migrateV1 publishes a format-2 image for every readable format-1
// directory and writes names.json. The caller holds the lock.
func (s *Store) migrateV1(ctx context.Context, dirs []string) error {
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		old, err := s.readV1(d)
		if err != nil {
			continue // unreadable: left alone, as format 1 listings skipped it
		}
		id, err := idOf(old.ConfigDigest)
		if err != nil {
			continue
		}
		if _, err := s.readRecord(id); err != nil {
			if err := s.migrateImage(d, id, old); err != nil {
				return fmt.Errorf("image %s (%s): %w", old.Name, d, err)
			}
		}
		// Format 1 could briefly hold two directories of one name while a
		// pull replaced it: the newer wins.
		if e, ok := idx.Names[old.Name]; !ok || e.PulledAt.Before(old.PulledAt) {
			idx.Names[old.Name] = nameEntry{ID: id, Reference: old.Reference, ManifestDigest: old.ManifestDigest, PulledAt: old.PulledAt.UTC()}
		}
	}
	if err := s.writeIndex(idx); err != nil {
		return err
	}
	s.crashPoint("index")
	return nil
}

// migrateImage builds <id> from format-1 directory dir.
func (s *Store) migrateImage(dir, id string, old v1Image) error {
	build := filepath.Join(s.dir, migratingPrefix+id)
	if err := os.RemoveAll(build); err != nil {
		return err
	}
	if err := os.Mkdir(build, dirPerm); err != nil {
		return err
	}
	unlock, err := lockDir(build, false)
	if err != nil {
		return err
	}
	defer unlock()
	src := filepath.Join(s.dir, dir, rootfsName)
	info, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	if err := os.Link(src, filepath.Join(build, rootfsName)); err != nil {
		return fmt.Errorf("linking rootfs: %w", err)
	}
	s.crashPoint("link")
	rec := record{
		ConfigDigest: old.ConfigDigest, Platform: old.Platform, Size: info.Size(), Created: old.Created,
		Env: old.Env, Entrypoint: old.Entrypoint, Cmd: old.Cmd, WorkingDir: old.WorkingDir, User: old.User,
	}
	if err := writeJSONFile(filepath.Join(build, metadataName), rec); err != nil {
		return err
	}
	// The last use of a migrated image is when it was pulled.
	if !old.PulledAt.IsZero() {
		os.Chtimes(filepath.Join(build, metadataName), old.PulledAt, old.PulledAt)
	}
	if err := syncDir(build); err != nil {
		return err
	}
	if err := os.Rename(build, filepath.Join(s.dir, id)); err != nil {
		return err
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.crashPoint("image")
	return nil
}

// writeVersion replaces VERSION with storeFormat.
func (s *Store) writeVersion() error {
	tmp := filepath.Join(s.dir, tmpPrefix+versionName+"-"+randomSuffix())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err == nil {
		_, err = fmt.Fprintf(f, "%d\n", storeFormat)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, versionName))
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing image store format: %w", err)
	}
	return nil
}

// crashPoint calls the test hook, if any, after a step of a migration or
// prune: crash tests kill the process there.
func (s *Store) crashPoint(step string) {
	if s.crash != nil {
		s.crash(step)
	}
}
