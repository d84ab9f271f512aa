package image

import (
	"os"

	"golang.org/x/sys/unix"
)

// writebackEvery is how much output is written before its writeback is
// started.
const writebackEvery = 8 << 20

// earlyWriteback writes to a file and starts the kernel writing each
// finished stretch of it to disk (sync_file_range, SYNC_FILE_RANGE_WRITE,
// which does not wait) while the rest is still being produced. The fsync
// that must precede publishing then finds little left to write, instead of
// the whole rootfs.tar: about 0.2 s of a 300 MiB pull spent waiting with
// both cores idle. It changes nothing about durability: only the fsync
// promises that, and it still runs.
type earlyWriteback struct {
	f       *os.File
	written int64 // bytes written
	started int64 // bytes whose writeback was started
}

func (w *earlyWriteback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= writebackEvery {
		// Advisory: a filesystem that does not support it loses nothing.
		unix.SyncFileRange(int(w.f.Fd()), w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.written
	}
	return n, err
}
