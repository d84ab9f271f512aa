package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
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
	n := manyFilesFromEnv(t)
	measureManyFiles(t, n, []flattenLayer{manyFilesLayer(n)})
}

func manyFilesFromEnv(t *testing.T) int {
	t.Helper()
	env := os.Getenv("BANGER_FLATTEN_FILES")
	if env == "" {
		t.Skip("BANGER_FLATTEN_FILES unset: set it to a number of files, such as 1000000, to measure")
	}
	n, err := strconv.Atoi(env)
	if err != nil || n <= 0 {
		t.Fatalf("BANGER_FLATTEN_FILES=%q: want a number of files above 0", env)
	}
	return n
}

func measureManyFiles(t *testing.T, n int, layers []flattenLayer) {
	t.Helper()
	start := time.Now()
	if err := flatten(t.Context(), discardOutput{}, layers, t.TempDir()); err != nil {
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

// TestFlattenUpperIndex fills an upperIndex past several chunks and table
// growths and reads every name back.
func TestFlattenUpperIndex(t *testing.T) {
	t.Parallel()
	u := newUpperIndex()
	const n = 200_000
	name := func(i int) string { return fmt.Sprintf("d%03d/%s%d", i%1000, strings.Repeat("n", i%50), i) }
	for i := range n {
		u.add(name(i), shadow(1<<(i%3)))
		if i%2 == 0 {
			u.add(name(i), hideNonDir) // adds to what is there
		}
	}
	for i := range n {
		want := shadow(1 << (i % 3))
		if i%2 == 0 {
			want |= hideNonDir
		}
		if got := u.get(name(i)); got != want {
			t.Fatalf("get(%q) = %v, want %v", name(i), got, want)
		}
	}
	if got := u.get("d000/missing"); got != 0 {
		t.Errorf("get(%q) = %v, want 0", "d000/missing", got)
	}
	if u.small != nil || u.used != n || len(u.chunks) < 2 {
		t.Errorf("index: got %d names in %d chunks, want %d in several", u.used, len(u.chunks), n)
	}
}

// TestFlattenManyFilesOverBaseMemory is TestFlattenManyFilesMemory with the
// files in a layer over a small base, so that their names go to the index
// of upper layers.
func TestFlattenManyFilesOverBaseMemory(t *testing.T) {
	n := manyFilesFromEnv(t)
	base := memLayer(tarBytes(t, []ent{tDir("etc"), tReg("etc/hostname", "h"), tDir("files"), tReg("files/d0000/f000", "lower")}))
	measureManyFiles(t, n, []flattenLayer{base, manyFilesLayer(n)})
}

// TestFlattenColdIndexSpills flattens a layer whose cold index writes its
// file, with hardlinks to early entries and duplicate names at its end, over
// a layer with the same names, and compares the output with that of
// keeping every entry in memory.
func TestFlattenColdIndexSpills(t *testing.T) {
	t.Parallel()
	const n = 14_000
	long := strings.Repeat("n", 200) // records of about 250 bytes: about 3.4 per bucket, 4 fill its buffer, so many spill
	name := func(i int) string { return fmt.Sprintf("d%02d/%s%05d", i%20, long, i) }
	var lower, upper []ent
	for d := range 20 {
		lower = append(lower, tDir(fmt.Sprintf("d%02d", d)))
		upper = append(upper, tDir(fmt.Sprintf("d%02d", d)))
	}
	for i := range n {
		if i%3 == 0 {
			lower = append(lower, tReg(name(i), "lower"))
		}
		upper = append(upper, tReg(name(i), fmt.Sprint(i)))
	}
	for i := 0; i < n; i += 97 {
		upper = append(upper, tLink(name(i)+".link", name(i)), tReg(name(i+1), "again"))
	}
	upper = append(upper, tWh(name(5)))
	layers := memLayers(t, [][]ent{lower, upper})
	hot, err := runFlattenOnce(t, layers, math.MaxInt)
	if err != nil {
		t.Fatalf("flatten with every entry in memory: got error %v, want nil", err)
	}
	cold, err := runFlattenOnce(t, layers, 0)
	if err != nil {
		t.Fatalf("flatten with every plain entry in the cold index: got error %v, want nil", err)
	}
	if !bytes.Equal(cold, hot) {
		t.Errorf("flatten with every plain entry in the cold index: got %d bytes of output, want the same %d bytes as with every entry in memory", len(cold), len(hot))
	}
	out := readOutput(t, cold)
	if e := findEntry(t, out, name(97)+".link"); e.hdr.Typeflag != tar.TypeLink || e.hdr.Linkname != name(97) {
		t.Errorf("%s.link: got type %q to %q, want a hardlink to %s", name(97), e.hdr.Typeflag, e.hdr.Linkname, name(97))
	}
	var links int
	for _, e := range out {
		if e.hdr.Typeflag == tar.TypeLink {
			links++
		}
	}
	if want := (n + 96) / 97; links != want {
		t.Errorf("hardlinks in the output: got %d, want %d", links, want)
	}
}
