//go:build !linux

package cache

// banger runs on Linux only: the cache walks directories with getdents64,
// image writes rootfs.tar back with sync_file_range, and locking and
// prune rely on Linux's flock(2) and rename semantics. Building for another
// system stops here, with one error that says so.
func getdents(fd int, buf []byte) (int, error) {
	return 0, banger_builds_only_for_linux_set_GOOS_linux
}
