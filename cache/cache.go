// Package cache is banger's content-addressed blob cache: verified layer blobs
// kept under <dir>/blobs/sha256/<hex> so that a second pull of the same layer
// does not download it again. The cache is purely re-pull avoidance; emptying
// it never breaks a flattened image.
//
// Use New to get a Cache, Fetch to read a blob through it (and Arrivals to
// read a download while it streams), Inventory to see what it holds and Prune to empty it or evict blobs by a Policy; Paths says
// where it keeps its files. Every method that touches the cache namespace
// takes the advisory lock file (flock(2)) for as short a time as it can:
// pulls share it only around opening, creating and publishing files, and
// keep the files they use open, so prune's exclusive lock waits for
// milliseconds, not for whole downloads, and a pull survives a prune that
// renames the cache away underneath it.
//
// The package owns every name inside the cache directory (blobs/sha256/<hex>,
// tmp/, the tag, the .pruning- and .creating- siblings) and the gate file
// beside the lock; callers choose only the directory and the lock file.
package cache

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	// tagName and tagSignature follow the Cache Directory Tagging
	// specification (https://bford.info/cachedir/): backup tools skip a
	// directory holding this file, and prune takes it as proof that a
	// directory is banger's to delete.
	tagName      = "CACHEDIR.TAG"
	tagSignature = "Signature: 8a477f597d28d172789f06886806bc55"
	tagContent   = tagSignature + "\n# This file is a cache directory tag created by banger.\n# For information about cache directory tags see https://bford.info/cachedir/\n"

	// blobsParent/blobsLeaf is where verified blobs live, named by their
	// hex digest (blobName); tmpSubdir holds blobs being written (tempName).
	blobsParent = "blobs"
	blobsLeaf   = "sha256"
	blobsSubdir = blobsParent + "/" + blobsLeaf
	tmpSubdir   = "tmp"

	// gateSuffix names the gate file beside the lock file (see lock).
	gateSuffix = ".gate"

	// asidePrefix names a cache directory renamed away by prune and
	// creatingPrefix one being assembled; both are siblings of the cache
	// directory, so a crash leaves them where the next prune finds them.
	asidePrefix    = ".pruning-"
	creatingPrefix = ".creating-"
)

// blobName is the one place that knows a blob's name inside the cache
// directory.
func blobName(hexDigest string) string { return blobsSubdir + "/" + hexDigest }

// tempName names a new temp file for a blob inside the cache directory.
func tempName(hexDigest string) string {
	return tmpSubdir + "/" + hexDigest + "." + randomSuffix() + ".partial"
}

var (
	// ErrLockBusy is returned (as a *LockBusyError, which names the lock)
	// when the cache lock, or a lock taken with LockFile (the image
	// store's), could not be taken within the allowed wait.
	ErrLockBusy = errors.New("lock is busy")
	// ErrNotCache is returned when the cache directory exists but lacks
	// banger's CACHEDIR.TAG: it may hold someone else's files.
	ErrNotCache = errors.New("directory is not a banger cache (no CACHEDIR.TAG)")
	// ErrNotDir is returned when the cache directory's path holds something
	// other than a directory.
	ErrNotDir = errors.New("not a directory")
	// ErrSymlink is returned when the cache directory is a symlink, which
	// banger will not rename or empty through.
	ErrSymlink = errors.New("is a symlink")
	// ErrNestedCache is returned when the cache root is itself a cache
	// directory: the caller passed <root>/oci where <root> was meant.
	ErrNestedCache = errors.New("is itself a banger cache directory (oci/), not a cache root")
	// ErrDamaged is returned when the cache could not repair itself (a
	// lost subdirectory, a corrupt blob it could not remove); emptying the
	// cache starts afresh.
	ErrDamaged = errors.New("cache is damaged")
	// ErrForeignLock is returned when a lock file belongs to another user:
	// that user could hold it for ever, so banger refuses it rather than
	// wait for it.
	ErrForeignLock = errors.New("lock file belongs to another user")
	// ErrDigestMismatch is returned when a blob's content does not match its
	// descriptor.
	ErrDigestMismatch = errors.New("content does not match digest")
)

// Options tune a Cache. The zero value waits for the lock forever and says
// nothing while waiting.
type Options struct {
	// Wait bounds how long to wait for the lock; 0 waits until the context
	// ends.
	Wait time.Duration
	// NoWait fails at once with ErrLockBusy if the lock is held.
	NoWait bool
	// Notice, if set, is called once when the lock has not been taken after
	// about a second, so that a waiting user knows why nothing happens.
	Notice func(msg string)
	// Warn, if set, reports a problem that was repaired, such as a corrupt
	// cached blob that was discarded and fetched again.
	Warn func(msg string)
	// RetryBackoff is the pause before Fetch's second attempt at a blob,
	// doubling for each further one; 0 means DefaultRetryBackoff.
	RetryBackoff time.Duration
}

// DefaultRetryBackoff is the pause before Fetch's second attempt at a blob
// when Options.RetryBackoff is 0.
const DefaultRetryBackoff = backoff

// Cache is a blob cache rooted at one directory. A Cache holds no open files
// between calls and is safe for concurrent use by goroutines and by separate
// processes.
type Cache struct {
	dir      string // the directory prune empties: <root>/oci
	lockPath string // outside dir, so it survives prune's rename
	opts     Options

	// backoff is the pause before Fetch's second attempt, doubling for
	// each further one (Options.RetryBackoff, or the package default);
	// noticeAfter is how long a lock wait stays silent. They are fields,
	// set by New, so that tests can shorten them instead of sleeping.
	backoff     time.Duration
	noticeAfter time.Duration
	// now is the clock for last-use times; tests move it instead of
	// sleeping.
	now func() time.Time
}

// New returns the cache kept in dir, locked through lockPath, which must be
// outside dir (prune renames dir) and beside it on one filesystem. It
// touches no files: the cache is created by the first Fetch.
func New(dir, lockPath string, opts Options) *Cache {
	c := &Cache{
		dir:         filepath.Clean(dir),
		lockPath:    lockPath,
		opts:        opts,
		backoff:     backoff,
		noticeAfter: noticeAfter,
		now:         time.Now,
	}
	if opts.RetryBackoff > 0 {
		c.backoff = opts.RetryBackoff
	}
	return c
}

// Paths are the files and directories a Cache uses, for showing to a user
// (banger env); nothing but the cache itself should create or change them.
type Paths struct {
	Dir   string // the cache directory, which prune empties
	Blobs string // verified blobs, named by their sha256 in hex
	Tmp   string // blobs being written
	Lock  string // the lock file
	Gate  string // the gate every lock taker passes first
}

// Paths returns where c keeps its files.
func (c *Cache) Paths() Paths {
	return Paths{
		Dir:   c.dir,
		Blobs: filepath.Join(c.dir, blobsParent, blobsLeaf),
		Tmp:   filepath.Join(c.dir, tmpSubdir),
		Lock:  c.lockPath,
		Gate:  c.gatePath(),
	}
}

func (c *Cache) gatePath() string { return c.lockPath + gateSuffix }

func (c *Cache) parent() string { return filepath.Dir(c.dir) }

func (c *Cache) warn(format string, args ...any) {
	if c.opts.Warn != nil {
		c.opts.Warn(fmt.Sprintf(format, args...))
	}
}

// exists is the one check of the cache directory every operation makes: it
// reports whether the cache is there, false with a nil error when it is not,
// and an error when something else is there (checkDir) or when the cache root
// is itself a cache directory.
func (c *Cache) exists() (bool, error) {
	err := c.checkDir()
	if errors.Is(err, fs.ErrNotExist) {
		return false, c.nested()
	}
	return err == nil, err
}

// nested reports a cache root that is itself a cache directory: the oci/ of
// another root, named where its parent was meant. Only a missing oci/ is
// checked (a cache inside a cache directory would be oci/oci), before
// anything is created there, the lock file included.
func (c *Cache) nested() error {
	if _, err := os.Lstat(c.dir); errors.Is(err, fs.ErrNotExist) && tagged(c.parent()) {
		return fmt.Errorf("cache root %s %w (the cache directory of cache root %s)", c.parent(), ErrNestedCache, filepath.Dir(c.parent()))
	}
	return nil
}

// openDir opens the cache directory as an os.Root, creating it complete with
// its tag when it does not exist. The caller must hold the lock, shared or
// exclusive. Every open goes through the current directory entry, so a prune
// that renamed the cache aside is seen by the next call.
func (c *Cache) openDir() (*os.Root, error) {
	ok, err := c.exists()
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := c.create(nil); err != nil {
			return nil, err
		}
	}
	r, err := os.OpenRoot(c.dir)
	if err != nil {
		return nil, fmt.Errorf("opening cache %s: %w", c.dir, err)
	}
	return r, nil
}

// repair recreates the subdirectories of a tagged cache that lost them
// (removed by hand), which would otherwise fail every pull with a bare "no
// such file or directory" until a prune. MkdirAll writes nothing when both
// exist. Only lookup calls it: cleanup paths must work in a broken cache.
func (c *Cache) repair(r *os.Root) error {
	p := c.perms()
	for _, sub := range []string{blobsParent, blobsSubdir, tmpSubdir} {
		if _, err := r.Lstat(sub); err == nil {
			continue
		}
		if err := r.Mkdir(sub, p.dir); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("repairing cache %s: %w: %w", c.dir, ErrDamaged, err)
		}
		if err := p.fixDir(filepath.Join(c.dir, sub)); err != nil {
			return fmt.Errorf("repairing cache %s: %w: %w", c.dir, ErrDamaged, err)
		}
	}
	return nil
}

// checkDir reports whether c.dir is a real directory carrying banger's tag.
// It returns an error wrapping fs.ErrNotExist when the cache does not exist.
func (c *Cache) checkDir() error {
	info, err := os.Lstat(c.dir)
	if err != nil {
		return fmt.Errorf("cache %s: %w", c.dir, err)
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		target, _ := filepath.EvalSymlinks(c.dir)
		return fmt.Errorf("cache %s %w (to %s): banger will not rename or empty a directory through a link", c.dir, ErrSymlink, target)
	}
	if !info.IsDir() {
		return fmt.Errorf("cache %s: %w", c.dir, ErrNotDir)
	}
	if !tagged(c.dir) {
		return fmt.Errorf("cache %s: %w; refusing to touch it", c.dir, ErrNotCache)
	}
	return nil
}

// tagged reports whether dir holds banger's tag. The tag must be a regular
// file of its own: a symlink to another cache's tag would make any
// directory look like banger's to delete.
func tagged(dir string) bool {
	tagPath := filepath.Join(dir, tagName)
	var tag []byte
	if info, err := os.Lstat(tagPath); err == nil && info.Mode().IsRegular() {
		tag, _ = os.ReadFile(tagPath)
	}
	return bytes.HasPrefix(tag, []byte(tagSignature))
}

// create builds a complete, empty cache in a sibling directory and renames
// it into place, so that the cache directory is never seen without its tag
// or subdirectories, even after a crash. With like, the cache directory that
// prune just renamed aside, the new one gets its mode, owner and group (as
// Go's clean keeps its top directory), so that a cache an admin set up by
// hand stays as it was; otherwise the modes of perms.
func (c *Cache) create(like fs.FileInfo) error {
	parent := c.parent()
	p := c.perms()
	if err := p.mkdirAll(parent); err != nil {
		return fmt.Errorf("creating cache root: %w", err)
	}
	staging := filepath.Join(parent, creatingPrefix+randomSuffix())
	if err := os.Mkdir(staging, p.dir); err != nil {
		return fmt.Errorf("creating cache: %w", err)
	}
	err := func() error {
		if err := p.fixDir(staging); err != nil {
			return err
		}
		for _, sub := range []string{blobsParent, blobsSubdir, tmpSubdir} {
			if err := os.Mkdir(filepath.Join(staging, sub), p.dir); err != nil {
				return err
			}
			if err := p.fixDir(filepath.Join(staging, sub)); err != nil {
				return err
			}
		}
		tag, err := os.OpenFile(filepath.Join(staging, tagName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, p.file)
		if err != nil {
			return err
		}
		_, err = tag.WriteString(tagContent)
		if err == nil {
			err = p.fixFile(tag)
		}
		if cerr := tag.Close(); err == nil {
			err = cerr
		}
		if err != nil || like == nil {
			return err
		}
		return copyOwnerMode(staging, like)
	}()
	if err == nil {
		err = os.Rename(staging, c.dir)
		if err != nil && c.checkDir() == nil {
			// Another process created the cache first; use theirs, and
			// drop our staging copy below rather than leave it for prune.
			os.RemoveAll(staging)
			return nil
		}
	}
	if err != nil {
		os.RemoveAll(staging)
		return fmt.Errorf("creating cache %s: %w", c.dir, err)
	}
	return syncDir(parent)
}

// copyOwnerMode gives dir the owner, group and mode of like. Only root may
// give a directory away; anyone else keeps it and still sets the group
// where they may. The mode is set last, after chown, which clears setgid.
func copyOwnerMode(dir string, like fs.FileInfo) error {
	if st, ok := like.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
			if err := os.Lchown(dir, -1, int(st.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
				return err
			}
		}
	}
	mode := like.Mode() & (fs.ModePerm | fs.ModeSetgid | fs.ModeSticky)
	return os.Chmod(dir, mode)
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// randomSuffix names temp files, asides and staging directories. Prune
// deletes only siblings whose suffix has exactly this form.
func randomSuffix() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// leftoverName reports whether name is an aside or a staging directory as
// randomSuffix names them: prune deletes only names banger makes.
func leftoverName(name string) bool {
	for _, prefix := range []string{asidePrefix, creatingPrefix} {
		if suffix, ok := strings.CutPrefix(name, prefix); ok {
			return len(suffix) == 16 && validHexLen(suffix, 16)
		}
	}
	return false
}
