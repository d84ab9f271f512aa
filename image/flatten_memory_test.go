package image

import (
	"archive/tar"
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// manyFilesLayer is one layer of n empty files, 1,000 to a directory, as
// testdata/benchtool mkfiles writes it, generated while it is read so that
// the test holds none of it.
func manyFilesLayer(n int) flattenLayer {
	return flattenLayer{open: func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			// Buffered, so the pipe hands over many entries at a time.
			bw := bufio.NewWriterSize(pw, 256<<10)
			tw := tar.NewWriter(bw)
			hdr := func(typ byte, name string, mode int64) error {
				return tw.WriteHeader(&tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: testTime, Uname: "root", Gname: "root", Format: tar.FormatPAX})
			}
			err := hdr(tar.TypeDir, "files/", 0o755)
			for i := 0; i < n && err == nil; i++ {
				if i%1000 == 0 {
					err = hdr(tar.TypeDir, fmt.Sprintf("files/d%04d/", i/1000), 0o755)
				}
				if err == nil {
					err = hdr(tar.TypeReg, fmt.Sprintf("files/d%04d/f%03d", i/1000, i%1000), 0o755)
				}
			}
			if err == nil {
				err = tw.Close()
			}
			if err == nil {
				err = bw.Flush()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}}
}

// TestFlattenManyFilesMemory flattens one layer of $BANGER_FLATTEN_FILES
// empty files and reports the process's peak RSS, the heap left after a
// collection and the time per entry: what flatten's index costs an entry.
// Run it alone (-run TestFlattenManyFilesMemory -count=1), so that peak RSS
// is flatten's.
func TestFlattenManyFilesMemory(t *testing.T) {
	env := os.Getenv("BANGER_FLATTEN_FILES")
	if env == "" {
		t.Skip("BANGER_FLATTEN_FILES unset: set it to a number of files, such as 1000000, to measure")
	}
	n, err := strconv.Atoi(env)
	if err != nil || n <= 0 {
		t.Fatalf("BANGER_FLATTEN_FILES=%q: want a number of files above 0", env)
	}
	start := time.Now()
	if err := flatten(t.Context(), discardOutput{}, []flattenLayer{manyFilesLayer(n)}, t.TempDir()); err != nil {
		t.Fatalf("flatten: got error %v, want nil", err)
	}
	elapsed := time.Since(start)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d files: peak RSS %d MiB, heap in use %d MiB, allocated %d MiB in all, %d ns per entry", n, ru.Maxrss>>10, ms.HeapInuse>>20, ms.TotalAlloc>>20, elapsed.Nanoseconds()/int64(n))
}

// BenchmarkFlattenManyFiles flattens one layer of 50,000 empty files, most
// of them past coldAfter, and reports the time per entry.
func BenchmarkFlattenManyFiles(b *testing.B) {
	const n = 50_000
	rc, err := manyFilesLayer(n).open()
	if err != nil {
		b.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	if err != nil {
		b.Fatal(err)
	}
	layers := []flattenLayer{memLayer(blob)}
	spool := b.TempDir()
	for b.Loop() {
		if err := flatten(b.Context(), discardOutput{}, layers, spool); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/entry")
}
