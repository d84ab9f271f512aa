// Package layout resolves where banger keeps its blob cache, its lock file and
// its image store. Every invocation resolves the layout afresh with Resolve;
// nothing is remembered between runs.
//
// layout names only the directories and files the packages are handed: the
// cache directory and its lock file for cache.New, the images directory for
// the image store. The names inside them belong to those packages (the
// cache's blobs, tmp and gate file: cache.Paths).
package layout

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// Layout is the set of paths one invocation works with. All paths are absolute.
type Layout struct {
	// CacheRoot holds the blob cache directory and its lock file.
	CacheRoot string `json:"cache_root"`
	// CacheDir is the OCI blob cache: the directory prune empties.
	CacheDir string `json:"cache_dir"`
	// LockFile is the advisory lock shared by pulls and taken exclusively by
	// prune. It lives outside CacheDir so that renaming the cache aside does
	// not move the lock with it.
	LockFile string `json:"lock_file"`
	// DataRoot holds banger's persistent data.
	DataRoot string `json:"data_root"`
	// ImagesDir holds flattened images, one directory each.
	ImagesDir string `json:"images_dir"`
}

// Source is what Resolve consults, highest precedence first: the flags, then
// the environment, then the user's identity.
type Source struct {
	CacheDirFlag string // --cache-dir
	DataDirFlag  string // --data-dir
	// Getenv looks up BANGER_CACHE_DIR, BANGER_DATA_DIR, XDG_CACHE_HOME,
	// XDG_DATA_HOME and HOME.
	Getenv func(string) string
	// UID decides between the system layout (0) and the per-user one.
	UID int
}

// Resolve computes the layout:
//
//	cache root: --cache-dir > $BANGER_CACHE_DIR > /var/cache/banger (uid 0) > $XDG_CACHE_HOME/banger > $HOME/.cache/banger
//	data root:  --data-dir  > $BANGER_DATA_DIR  > /var/lib/banger   (uid 0) > $XDG_DATA_HOME/banger  > $HOME/.local/share/banger
//
// Relative paths from flags or the environment are made absolute against the
// working directory. The two roots must be apart: neither may be or hold
// the other (ErrOverlap). Resolve touches no files.
func Resolve(src Source) (Layout, error) {
	cacheRoot, err := pick("cache", src.CacheDirFlag, "--cache-dir", src, "BANGER_CACHE_DIR", "/var/cache/banger", "XDG_CACHE_HOME", ".cache")
	if err != nil {
		return Layout{}, err
	}
	dataRoot, err := pick("data", src.DataDirFlag, "--data-dir", src, "BANGER_DATA_DIR", "/var/lib/banger", "XDG_DATA_HOME", filepath.Join(".local", "share"))
	if err != nil {
		return Layout{}, err
	}
	if err := checkApart(cacheRoot, dataRoot); err != nil {
		return Layout{}, err
	}
	cacheDir := filepath.Join(cacheRoot, "oci")
	return Layout{
		CacheRoot: cacheRoot,
		CacheDir:  cacheDir,
		LockFile:  filepath.Join(cacheRoot, "oci.lock"),
		DataRoot:  dataRoot,
		ImagesDir: filepath.Join(dataRoot, "images"),
	}, nil
}

// ErrOverlap is returned when the cache root and the data root are the same
// directory or one holds the other: a full prune empties the cache, and
// flattened images must never go with it.
var ErrOverlap = errors.New("the cache and the image store must not overlap")

// checkApart refuses a cache root and a data root that are one directory or
// nested. It compares the absolute paths as written (Resolve touches no
// files), so a symlink that joins them is not caught here.
func checkApart(cacheRoot, dataRoot string) error {
	within := func(dir, parent string) bool {
		rel, err := filepath.Rel(parent, dir)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	switch {
	case cacheRoot == dataRoot:
		return fmt.Errorf("cache root and data root are both %s: %w; give them separate directories", cacheRoot, ErrOverlap)
	case within(dataRoot, cacheRoot):
		return fmt.Errorf("data root %s is inside cache root %s: %w; keep the image store outside the cache", dataRoot, cacheRoot, ErrOverlap)
	case within(cacheRoot, dataRoot):
		return fmt.Errorf("cache root %s is inside data root %s: %w; keep the cache outside the image store", cacheRoot, dataRoot, ErrOverlap)
	}
	return nil
}

// errNoHome is returned when no rule yields a directory.
var errNoHome = errors.New("HOME is not set")

func pick(what, flagValue, flagName string, src Source, envVar, system, xdgVar, homeSub string) (string, error) {
	getenv := src.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	candidates := []struct{ value, origin string }{
		{flagValue, flagName},
		{getenv(envVar), "$" + envVar},
	}
	for _, c := range candidates {
		if c.value != "" {
			abs, err := filepath.Abs(c.value)
			if err != nil {
				return "", fmt.Errorf("resolving %s directory from %s %q: %w", what, c.origin, c.value, err)
			}
			return abs, nil
		}
	}
	if src.UID == 0 {
		return system, nil
	}
	// The XDG base directory spec says relative values are invalid and must be ignored.
	if xdg := getenv(xdgVar); xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(xdg, "banger"), nil
	}
	if home := getenv("HOME"); home != "" {
		return filepath.Join(home, homeSub, "banger"), nil
	}
	return "", fmt.Errorf("resolving %s directory: %w; set %s or pass %s", what, errNoHome, envVar, flagName)
}
