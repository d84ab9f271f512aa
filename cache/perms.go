package cache

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Permissions. A cache holds the layers of private images, pulled with the
// owner's registry credentials, and its lock decides who waits for whom: so
// everything the cache creates is private to its owner, 0700 directories and
// 0600 files (less the umask), as Docker's and podman's storage is. The one
// exception is a cache root the admin made group-owned and setgid, to share
// one cache among a group: then what banger creates takes the root's group
// (through setgid) and the root's own permission bits, set past the umask so
// that the group can write, but never wider than the root.

const (
	privateDirPerm  fs.FileMode = 0o700
	privateFilePerm fs.FileMode = 0o600
)

// perms are the modes for what the cache creates under its root.
type perms struct {
	dir, file fs.FileMode
	// shared is set for a group-shared root: modes are set explicitly,
	// past the umask, and lock files of the root's group are trusted.
	shared bool
	gid    uint32
}

// perms reads the cache root's mode: private unless the root is setgid.
func (c *Cache) perms() perms {
	info, err := os.Stat(c.parent())
	if err != nil || info.Mode()&fs.ModeSetgid == 0 {
		return perms{dir: privateDirPerm, file: privateFilePerm}
	}
	p := perms{dir: info.Mode().Perm(), file: info.Mode().Perm() &^ 0o111, shared: true}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		p.gid = st.Gid
	}
	return p
}

// fixDir gives a directory the cache just created its mode past the umask,
// in a group-shared root; keeping setgid so that what is created inside
// keeps the group.
func (p perms) fixDir(path string) error {
	if !p.shared {
		return nil
	}
	return os.Chmod(path, p.dir|fs.ModeSetgid)
}

// fixFile does the same for a file the cache just created.
func (p perms) fixFile(f *os.File) error {
	if !p.shared {
		return nil
	}
	return f.Chmod(p.file)
}

// mkdirAll creates dir and its missing parents with p's mode.
func (p perms) mkdirAll(dir string) error {
	if info, err := os.Stat(dir); err == nil && info.IsDir() {
		return nil
	}
	if err := os.MkdirAll(dir, p.dir); err != nil {
		return err
	}
	return p.fixDir(dir)
}

// checkOwner refuses a lock file that belongs to someone else: another
// user able to open it could take the lock and hold it for ever. In a
// group-shared root, a lock file of the root's group is the group's. A lock
// file of ours gets p's mode: one open to more (made by an older banger,
// which made it 0644) is narrowed, and in a group-shared root one the umask
// narrowed is opened to the group.
func (p perms) checkOwner(path string, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid := os.Geteuid()
	if int(st.Uid) != uid && !(p.shared && st.Gid == p.gid) {
		return fmt.Errorf("%w: %s is owned by uid %d, not by uid %d running banger: refusing to wait on a lock another user can hold", ErrForeignLock, path, st.Uid, uid)
	}
	want := info.Mode().Perm() & p.file
	if p.shared {
		want = p.file
	}
	if int(st.Uid) == uid && info.Mode().Perm() != want {
		if err := os.Chmod(path, want); err != nil {
			return fmt.Errorf("narrowing lock file %s to mode %v: %w", path, p.file, err)
		}
	}
	return nil
}
