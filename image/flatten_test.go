package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// ent is one input tar entry.
type ent struct {
	hdr  tar.Header
	body string
}

func tReg(name, body string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: testTime}, body: body}
}

func tRegMode(name, body string, mode int64) ent {
	e := tReg(name, body)
	e.hdr.Mode = mode
	return e
}

func tDir(name string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: testTime}}
}

func tDirMode(name string, mode int64) ent {
	e := tDir(name)
	e.hdr.Mode = mode
	return e
}

func tLink(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testTime}}
}

func tSym(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

// tWh whites out name.
func tWh(name string) ent {
	d, base := path.Split(name)
	return tReg(d+whiteoutPrefix+base, "")
}

// tOpq makes dir opaque.
func tOpq(dir string) ent {
	return tReg(path.Join(dir, opaqueMarker), "")
}

func tarBytes(t testing.TB, ents []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing test layer header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("writing test layer body %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("closing test layer: %v", err)
	}
	return buf.Bytes()
}

// bufferOutput is flatten's output in memory.
type bufferOutput struct{ bytes.Buffer }

func (b *bufferOutput) Rewind() error {
	b.Reset()
	return nil
}

// discardOutput is flatten's output thrown away.
type discardOutput struct{}

func (discardOutput) Write(p []byte) (int, error) { return len(p), nil }
func (discardOutput) Rewind() error               { return nil }

// onlyReader hides io.WriterTo, like the decompressing reader of a real layer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func memLayer(b []byte) flattenLayer {
	return flattenLayer{open: func() (io.ReadCloser, error) {
		return io.NopCloser(onlyReader{bytes.NewReader(b)}), nil
	}}
}

func memLayers(t testing.TB, layers [][]ent) []flattenLayer {
	t.Helper()
	var out []flattenLayer
	for _, l := range layers {
		out = append(out, memLayer(tarBytes(t, l)))
	}
	return out
}

// runFlatten flattens layers with a fresh spool directory and checks that
// flatten leaves nothing behind in it, whether it fails or not. The layers
// are flattened a second time with every plain entry in the cold index
// (flatten_index.go), which must change nothing, byte for byte.
func runFlatten(t *testing.T, layers []flattenLayer) ([]byte, error) {
	t.Helper()
	b, err := runFlattenOnce(t, layers, coldAfter)
	cb, cerr := runFlattenOnce(t, layers, 0)
	if fmt.Sprint(cerr) != fmt.Sprint(err) {
		t.Errorf("flatten with every plain entry in the cold index: got error %v, want %v", cerr, err)
	} else if !bytes.Equal(cb, b) {
		t.Errorf("flatten with every plain entry in the cold index: got %d bytes of output, want the same %d bytes", len(cb), len(b))
	}
	return b, err
}

// runFlattenOnce is runFlatten for layers whose streams can be read only
// once, with the given cold index threshold.
func runFlattenOnce(t *testing.T, layers []flattenLayer, coldAfter int) ([]byte, error) {
	t.Helper()
	spool := t.TempDir()
	out := &bufferOutput{}
	err := flattenCold(context.Background(), out, layers, spool, coldAfter)
	left, rerr := os.ReadDir(spool)
	if rerr != nil {
		t.Fatalf("reading spool dir: %v", rerr)
	}
	if len(left) > 0 {
		t.Errorf("spool dir: got %d leftover files (first %q), want none", len(left), left[0].Name())
	}
	return out.Bytes(), err
}

// outEntry is one entry of flatten's output.
type outEntry struct {
	hdr  *tar.Header
	body string
}

func readOutput(t *testing.T, b []byte) []outEntry {
	t.Helper()
	var out []outEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("reading output: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading output %q: %v", h.Name, err)
		}
		out = append(out, outEntry{hdr: h, body: string(body)})
	}
}

func findEntry(t *testing.T, out []outEntry, name string) outEntry {
	t.Helper()
	for _, e := range out {
		if strings.TrimSuffix(e.hdr.Name, "/") == name {
			return e
		}
	}
	t.Fatalf("output entry %q: got none, want one", name)
	return outEntry{}
}

// outputTree replays the output entries into a map name -> node, the way an
// extractor would: later entries replace earlier ones of the same name and a
// hardlink takes its target's node. Directories that only exist implicitly
// are absent.
func outputTree(out []outEntry) map[string]node {
	tree := map[string]node{}
	for _, e := range out {
		h := e.hdr
		name := strings.TrimSuffix(h.Name, "/")
		n := node{body: e.body, mode: h.Mode & 0o7777}
		switch h.Typeflag {
		case tar.TypeReg:
			n.typ = 'f'
		case tar.TypeDir:
			n.typ = 'd'
		case tar.TypeSymlink:
			n.typ, n.link = 'l', h.Linkname
		case tar.TypeChar, tar.TypeBlock:
			n.typ, n.link = 'c', fmt.Sprintf("%d,%d", h.Devmajor, h.Devminor)
			if h.Typeflag == tar.TypeBlock {
				n.typ = 'b'
			}
		case tar.TypeFifo:
			n.typ = 'p'
		case tar.TypeLink:
			n = tree[h.Linkname]
		default:
			n.typ = '?'
		}
		tree[name] = n
	}
	return tree
}

// withoutImplicit drops the directories that only tar -x creates.
func withoutImplicit(want map[string]node) map[string]node {
	out := map[string]node{}
	for name, n := range want {
		if n != nImplicit() {
			out[name] = n
		}
	}
	return out
}

// checkInvariants checks what must hold for every output: clean relative
// names, no whiteouts, every hardlink after its target, no duplicate names
// (unless the input had duplicates in one layer).
func checkInvariants(t *testing.T, out []outEntry, allowDup bool) {
	t.Helper()
	seen := map[string]bool{}
	for i, e := range out {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		if name == "" || name != path.Clean(name) || strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../") {
			t.Errorf("entry %d: got name %q, want a clean relative name", i, e.hdr.Name)
		}
		if strings.HasPrefix(path.Base(name), whiteoutPrefix) {
			t.Errorf("entry %d: got whiteout %q in output, want none", i, e.hdr.Name)
		}
		if seen[name] && !allowDup {
			t.Errorf("entry %d: got duplicate name %q, want each name once", i, name)
		}
		if e.hdr.Typeflag == tar.TypeLink && !seen[e.hdr.Linkname] {
			t.Errorf("entry %d: hardlink %q -> %q: got target not written before it, want target first", i, name, e.hdr.Linkname)
		}
		seen[name] = true
	}
}

// node is one file of an extracted tree.
type node struct {
	typ  byte // f d l(symlink) c b p
	body string
	link string // symlink target, or "major,minor" for devices
	mode int64  // permission and set-id bits; 0 for "don't care" (implicit dirs)
}

func (n node) String() string {
	return fmt.Sprintf("{%c %q %q %#o}", n.typ, n.body, n.link, n.mode)
}

func nFile(body string) node              { return node{typ: 'f', body: body, mode: 0o644} }
func nFileMode(body string, m int64) node { return node{typ: 'f', body: body, mode: m} }
func nDir() node                          { return node{typ: 'd', mode: 0o755} }
func nDirMode(m int64) node               { return node{typ: 'd', mode: m} }
func nImplicit() node                     { return node{typ: 'd'} }
func nSym(target string) node             { return node{typ: 'l', link: target, mode: 0o777} }

// withParents adds the implicit directories that tar -x creates for want's
// names.
func withParents(want map[string]node) map[string]node {
	for name := range want {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := want[d]; !ok {
				want[d] = nImplicit()
			}
		}
	}
	return want
}

// extract really unpacks b with GNU tar, the way a consumer would, and fails
// the test if tar does (for example on a hardlink to a missing target).
func extract(t *testing.T, b []byte) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("tar", "-x", "--numeric-owner", "-f", "-", "-C", dir)
	cmd.Stdin = bytes.NewReader(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: got %v (%s), want success", err, out)
	}
	return dir
}

// walkTree reads an extracted tree, and the groups of names sharing an inode.
func walkTree(t *testing.T, root string) (map[string]node, [][]string) {
	t.Helper()
	tree := map[string]node{}
	byIno := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{mode: int64(st.Mode & 0o7777)}
		switch fi.Mode().Type() {
		case 0:
			n.typ = 'f'
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.body = string(b)
		case fs.ModeDir:
			n.typ = 'd'
		case fs.ModeSymlink:
			n.typ = 'l'
			if n.link, err = os.Readlink(p); err != nil {
				return err
			}
		case fs.ModeDevice | fs.ModeCharDevice:
			n.typ = 'c'
			n.link = devString(uint64(st.Rdev))
		case fs.ModeDevice:
			n.typ = 'b'
			n.link = devString(uint64(st.Rdev))
		case fs.ModeNamedPipe:
			n.typ = 'p'
		default:
			n.typ = '?'
		}
		tree[rel] = n
		if n.typ != 'd' {
			byIno[uint64(st.Ino)] = append(byIno[uint64(st.Ino)], rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	var groups [][]string
	for _, g := range byIno {
		if len(g) > 1 {
			slices.Sort(g)
			groups = append(groups, g)
		}
	}
	slices.SortFunc(groups, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	return tree, groups
}

func devString(rdev uint64) string {
	major := (rdev>>8)&0xfff | (rdev>>32)&^0xfff
	minor := rdev&0xff | (rdev>>12)&^0xff
	return fmt.Sprintf("%d,%d", major, minor)
}

// compareTrees reports every difference between two trees; a want mode of 0
// matches any mode.
func compareTrees(t *testing.T, got, want map[string]node) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("%s: got missing, want %v", name, w)
			continue
		}
		if w.mode == 0 {
			g.mode = 0
		}
		if g != w {
			t.Errorf("%s: got %v, want %v", name, g, w)
		}
	}
	for name, g := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: got %v, want absent", name, g)
		}
	}
}

func compareGroups(t *testing.T, got, want [][]string) {
	t.Helper()
	for _, g := range want {
		slices.Sort(g)
	}
	slices.SortFunc(want, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("hardlink groups: got %v, want %v", got, want)
	}
}

func TestFlatten(t *testing.T) {
	longDir := strings.Repeat("long-directory-name/", 6)
	longName := longDir + strings.Repeat("f", 80)
	nanoTime := time.Date(2023, 1, 2, 3, 4, 5, 123456789, time.UTC)

	tests := []struct {
		name   string
		layers [][]ent
		// want is the tree tar -x makes of the output; nil when wantErr is set.
		want map[string]node
		// linked lists the groups of names that must share an inode; all
		// other files must not share one.
		linked   [][]string
		allowDup bool
		// notUmoci says why umoci's tree differs, for cases where flatten
		// deliberately does not follow it.
		notUmoci string
		wantErr  string
		// umociErr says that umoci refuses the stack too.
		umociErr bool
		// check inspects the raw output entries.
		check func(t *testing.T, out []outEntry)
	}{
		{
			name: "later layer wins",
			layers: [][]ent{
				{tDir("etc"), tReg("etc/os-release", "v1"), tReg("etc/hosts", "h")},
				{tDir("etc"), tReg("etc/os-release", "v2")},
			},
			want: map[string]node{"etc": nDir(), "etc/os-release": nFile("v2"), "etc/hosts": nFile("h")},
		},
		{
			name: "whiteout deletes file",
			layers: [][]ent{
				{tReg("a", "a"), tReg("b", "b")},
				{tWh("a")},
			},
			want: map[string]node{"b": nFile("b")},
		},
		{
			name: "whiteout deletes directory tree",
			layers: [][]ent{
				{tDir("d"), tDir("d/sub"), tReg("d/sub/f", "f"), tReg("d/g", "g"), tReg("dx", "sibling")},
				{tWh("d")},
			},
			want: map[string]node{"dx": nFile("sibling")},
		},
		{
			name: "whiteout of a missing path is ignored",
			layers: [][]ent{
				{tReg("a", "a")},
				{tWh("nothing"), tWh("dir/nothing")},
			},
			want: map[string]node{"a": nFile("a")},
		},
		{
			// ggcr issue 1897: the marker's layer has a/ and a/.wh..wh..opq only.
			name: "opaque directory hides lower contents",
			layers: [][]ent{
				{tDir("a"), tDir("a/b"), tReg("a/b/foo", "foo"), tReg("a/x", "x"), tReg("other", "o")},
				{tDirMode("a", 0o750), tOpq("a"), tReg("a/new", "new")},
			},
			want: map[string]node{"a": nDirMode(0o750), "a/new": nFile("new"), "other": nFile("o")},
		},
		{
			name: "opaque marker after its layer's own entries keeps them",
			layers: [][]ent{
				{tDir("a"), tReg("a/old", "old")},
				{tDir("a"), tReg("a/new", "new"), tOpq("a")},
			},
			want: map[string]node{"a": nDir(), "a/new": nFile("new")},
		},
		{
			name: "opaque root hides every lower layer",
			layers: [][]ent{
				{tDir("etc"), tReg("etc/a", "a"), tReg("b", "b")},
				{tOpq("."), tReg("c", "c")},
			},
			want: map[string]node{"c": nFile("c")},
		},
		{
			name: "whiteout before same-name entry in same layer keeps it",
			layers: [][]ent{
				{tReg("f", "old"), tDir("d"), tReg("d/old", "old")},
				{tWh("f"), tReg("f", "new"), tWh("d"), tDir("d"), tReg("d/new", "new")},
			},
			want: map[string]node{"f": nFile("new"), "d": nDir(), "d/new": nFile("new")},
		},
		{
			name: "whiteout after same-name entry in same layer keeps it",
			layers: [][]ent{
				{tReg("f", "old"), tDir("d"), tReg("d/old", "old")},
				{tReg("f", "new"), tWh("f"), tDir("d"), tReg("d/new", "new"), tWh("d")},
			},
			want: map[string]node{"f": nFile("new"), "d": nDir(), "d/new": nFile("new")},
		},
		{
			name: "whiteout of directory refilled without its own entry keeps the lower directory",
			layers: [][]ent{
				{tDirMode("d", 0o700), tReg("d/old", "old")},
				{tReg("d/new", "new"), tWh("d")},
			},
			want: map[string]node{"d": nDirMode(0o700), "d/new": nFile("new")},
		},
		{
			name: "whiteout of directory then refill without its own entry drops the lower directory",
			layers: [][]ent{
				{tDirMode("d", 0o700), tReg("d/old", "old")},
				{tWh("d"), tReg("d/new", "new")},
			},
			want: map[string]node{"d": nImplicit(), "d/new": nFile("new")},
		},
		{
			// ggcr issue 2029: rm -rf /test; mkdir /test; echo > /test/hello2.txt.
			name: "directory recreated after removal",
			layers: [][]ent{
				{tDir("test")},
				{tDir("test"), tReg("test/hello.txt", "Hello World\n")},
				{tWh("test")},
				{tDir("test")},
				{tDir("test"), tReg("test/hello2.txt", "Hello World\n")},
			},
			want: map[string]node{"test": nDir(), "test/hello2.txt": nFile("Hello World\n")},
		},
		{
			name: "file replacing directory hides its children",
			layers: [][]ent{
				{tDir("x"), tDir("x/sub"), tReg("x/sub/deep", "deep"), tReg("x/y", "y")},
				{tReg("x", "now a file")},
			},
			want: map[string]node{"x": nFile("now a file")},
		},
		{
			name: "symlink replacing directory hides its children",
			layers: [][]ent{
				{tDir("lib"), tReg("lib/libc.so", "libc")},
				{tSym("lib", "usr/lib")},
			},
			want: map[string]node{"lib": nSym("usr/lib")},
		},
		{
			name: "directory replacing file",
			layers: [][]ent{
				{tReg("x", "file")},
				{tDir("x"), tReg("x/y", "y")},
			},
			want: map[string]node{"x": nDir(), "x/y": nFile("y")},
		},
		{
			name: "file replaced by directory in a middle layer hides the bottom directory's children",
			layers: [][]ent{
				{tDir("x"), tReg("x/bottom", "b")},
				{tReg("x", "file")},
				{tDirMode("x", 0o700), tReg("x/top", "t")},
			},
			want: map[string]node{"x": nDirMode(0o700), "x/top": nFile("t")},
		},
		{
			name: "directory over directory merges with upper metadata",
			layers: [][]ent{
				{tDirMode("d", 0o755), tReg("d/lower", "l")},
				{tDirMode("d", 0o711), tReg("d/upper", "u")},
			},
			want: map[string]node{"d": nDirMode(0o711), "d/lower": nFile("l"), "d/upper": nFile("u")},
		},
		{
			name: "upper child without directory entry keeps lower directory metadata",
			layers: [][]ent{
				{tDirMode("d", 0o700), tReg("d/lower", "l")},
				{tReg("d/upper", "u")},
			},
			want: map[string]node{"d": nDirMode(0o700), "d/lower": nFile("l"), "d/upper": nFile("u")},
		},
		{
			name: "hardlink in same layer",
			layers: [][]ent{
				{tDir("bin"), tRegMode("bin/busybox", "bb", 0o755), tLink("bin/sh", "bin/busybox"), tLink("bin/ls", "bin/busybox")},
			},
			want: map[string]node{
				"bin": nDir(), "bin/busybox": nFileMode("bb", 0o755),
				"bin/sh": nFileMode("bb", 0o755), "bin/ls": nFileMode("bb", 0o755),
			},
			linked: [][]string{{"bin/busybox", "bin/ls", "bin/sh"}},
		},
		{
			name: "hardlink to lower-layer file",
			layers: [][]ent{
				{tDir("lib"), tReg("lib/t", "target")},
				{tDir("lib"), tLink("lib/l", "lib/t")},
			},
			want:   map[string]node{"lib": nDir(), "lib/t": nFile("target"), "lib/l": nFile("target")},
			linked: [][]string{{"lib/l", "lib/t"}},
			check: func(t *testing.T, out []outEntry) {
				var names []string
				for _, e := range out {
					names = append(names, e.hdr.Name)
				}
				ti, li := slices.Index(names, "lib/t"), slices.Index(names, "lib/l")
				if ti < 0 || li < 0 || ti > li {
					t.Errorf("output order: got %q, want lib/t before lib/l", names)
				}
				if l := findEntry(t, out, "lib/l"); l.hdr.Typeflag != tar.TypeLink || l.hdr.Linkname != "lib/t" {
					t.Errorf("lib/l: got type %q -> %q, want hardlink -> lib/t", l.hdr.Typeflag, l.hdr.Linkname)
				}
			},
		},
		{
			name: "hardlink to a file that a middle layer replaced links the newer file",
			layers: [][]ent{
				{tReg("t", "v0")},
				{tReg("t", "v1")},
				{tLink("l", "t")},
			},
			want:   map[string]node{"t": nFile("v1"), "l": nFile("v1")},
			linked: [][]string{{"l", "t"}},
		},
		{
			name: "hardlink to a lower hardlink joins its inode",
			layers: [][]ent{
				{tReg("t", "data")},
				{tLink("a", "t")},
				{tLink("b", "a")},
			},
			want:   map[string]node{"t": nFile("data"), "a": nFile("data"), "b": nFile("data")},
			linked: [][]string{{"a", "b", "t"}},
		},
		{
			name: "hardlink whose target is whited out in a later layer keeps the content",
			layers: [][]ent{
				{tReg("t", "content"), tLink("l", "t")},
				{tWh("t")},
			},
			want: map[string]node{"l": nFile("content")},
		},
		{
			name: "hardlink whose target is replaced in a later layer keeps the old content",
			layers: [][]ent{
				{tReg("t", "old"), tLink("l", "t")},
				{tReg("t", "new")},
			},
			want: map[string]node{"t": nFile("new"), "l": nFile("old")},
		},
		{
			name: "hardlink in an upper layer to a lower file that a later layer removes",
			layers: [][]ent{
				{tReg("t", "content")},
				{tLink("l", "t")},
				{tWh("t")},
			},
			want: map[string]node{"l": nFile("content")},
		},
		{
			name: "chain of links to a shadowed target across layers",
			layers: [][]ent{
				{tRegMode("t", "content", 0o600)},
				{tLink("a", "t"), tLink("b", "a")},
				{tLink("c", "t")},
				{tWh("t")},
			},
			want: map[string]node{
				"a": nFileMode("content", 0o600), "b": nFileMode("content", 0o600), "c": nFileMode("content", 0o600),
			},
			linked: [][]string{{"a", "b", "c"}},
		},
		{
			name: "chain of links to a shadowed target in one layer",
			layers: [][]ent{
				{tReg("t", "content"), tLink("a", "t"), tLink("b", "t"), tLink("c", "a")},
				{tReg("t", "new"), tWh("b")},
			},
			want:   map[string]node{"t": nFile("new"), "a": nFile("content"), "c": nFile("content")},
			linked: [][]string{{"a", "c"}},
		},
		{
			name: "hardlink target in a whited-out directory",
			layers: [][]ent{
				{tDir("usr"), tReg("usr/a", "a"), tDir("opt"), tLink("opt/a", "usr/a")},
				{tWh("usr")},
			},
			want: map[string]node{"opt": nDir(), "opt/a": nFile("a")},
		},
		{
			name: "shadowed hardlink to a shadowed target writes nothing",
			layers: [][]ent{
				{tReg("t", "old"), tLink("l", "t"), tReg("keep", "k")},
				{tWh("t"), tWh("l")},
			},
			want: map[string]node{"keep": nFile("k")},
		},
		{
			name: "hardlink before its target in the same layer links the lower version",
			layers: [][]ent{
				{tReg("t", "old")},
				{tLink("l", "t"), tReg("t", "new")},
			},
			want: map[string]node{"t": nFile("new"), "l": nFile("old")},
		},
		{
			name: "whiteout in the hardlink's own layer does not remove the target",
			layers: [][]ent{
				{tReg("t", "old")},
				{tReg("t", "new"), tLink("l", "t"), tWh("t")},
			},
			want:   map[string]node{"t": nFile("new"), "l": nFile("new")},
			linked: [][]string{{"l", "t"}},
		},
		{
			name: "hardlink to a symlink",
			layers: [][]ent{
				{tSym("s", "../../target"), tLink("h", "s")},
				{tWh("s")},
			},
			want: map[string]node{"h": nSym("../../target")},
		},
		{
			// ggcr issue 977: the target of a hardlink is created in one layer
			// and removed in a later one; ggcr writes a dangling hardlink.
			name: "ggcr 977 hardlink target removed in later layer",
			layers: [][]ent{
				{tDir("etc"), tReg("etc/os-release", "alpine")},
				{tReg("foo", "foo\n"), tLink("bar", "foo")},
				{tWh("foo")},
			},
			want: map[string]node{"etc": nDir(), "etc/os-release": nFile("alpine"), "bar": nFile("foo\n")},
		},
		{
			// The case behind 977 (kaniko issue 282 by the same reporter):
			// RUN apk add git; RUN rm /usr/bin/git && ln -s .../git /usr/bin/git.
			name: "ggcr 977 git binary replaced by symlink",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tDir("usr/libexec"), tDir("usr/libexec/git-core")},
				{
					tDir("usr"), tDir("usr/bin"), tRegMode("usr/bin/git", "git-binary", 0o755),
					tDir("usr/libexec"), tDir("usr/libexec/git-core"),
					tLink("usr/libexec/git-core/git", "usr/bin/git"),
					tLink("usr/libexec/git-core/git-receive-pack", "usr/bin/git"),
				},
				{tDir("usr"), tDir("usr/bin"), tWh("usr/bin/git"), tSym("usr/bin/git", "/usr/libexec/git-core/git")},
			},
			want: map[string]node{
				"usr": nDir(), "usr/bin": nDir(), "usr/libexec": nDir(), "usr/libexec/git-core": nDir(),
				"usr/bin/git":                           nSym("/usr/libexec/git-core/git"),
				"usr/libexec/git-core/git":              nFileMode("git-binary", 0o755),
				"usr/libexec/git-core/git-receive-pack": nFileMode("git-binary", 0o755),
			},
			linked: [][]string{{"usr/libexec/git-core/git", "usr/libexec/git-core/git-receive-pack"}},
		},
		{
			// ggcr issue 2002 as reported: RUN echo 123 -> t2; RUN ln t2 t1 &&
			// ln t2 t3; RUN echo 456 -> t1. The middle layer has t1 as the
			// content entry and t3 linking to t1; ggcr gives t3 "456 -".
			name: "ggcr 2002 hardlink target overwritten later",
			layers: [][]ent{
				{tReg("t2", "123 -\n")},
				{tReg("t1", "123 -\n"), tLink("t3", "t1")},
				{tReg("t1", "456 -\n")},
			},
			want: map[string]node{"t1": nFile("456 -\n"), "t2": nFile("123 -\n"), "t3": nFile("123 -\n")},
		},
		{
			name: "ggcr 2002 with all aliases in the middle layer",
			layers: [][]ent{
				{tReg("t2", "123 -\n")},
				{tReg("t1", "123 -\n"), tLink("t2", "t1"), tLink("t3", "t1")},
				{tReg("t1", "456 -\n")},
			},
			want:   map[string]node{"t1": nFile("456 -\n"), "t2": nFile("123 -\n"), "t3": nFile("123 -\n")},
			linked: [][]string{{"t2", "t3"}},
		},
		{
			name: "hardlink target not found",
			layers: [][]ent{
				{tReg("a", "a")},
				{tLink("l", "missing")},
			},
			wantErr: `layer 1: entry "l": hardlink target "missing" not found`,
		},
		{
			name: "hardlink to directory rejected",
			layers: [][]ent{
				{tDir("d"), tLink("l", "d")},
			},
			wantErr: `layer 0: entry "l": hardlink to directory`,
		},
		{
			name: "symlink climbing above root kept verbatim",
			layers: [][]ent{
				{tDir("a"), tDir("a/b"), tSym("a/b/passwd", "../../../etc/passwd"), tSym("abs", "/etc/passwd"), tSym("dot", "./x/../y")},
			},
			want: map[string]node{
				"a": nDir(), "a/b": nDir(), "a/b/passwd": nSym("../../../etc/passwd"),
				"abs": nSym("/etc/passwd"), "dot": nSym("./x/../y"),
			},
		},
		{
			name: "leading slash and dot-slash stripped",
			layers: [][]ent{
				{tDir("/etc"), tReg("/etc/a", "a"), tReg("./etc/b", "b"), tReg("etc//c", "c"), tReg("x/../d", "d"), tLink("/l", "/etc/a")},
				{tReg("./etc/a", "a2"), tWh("/etc/b")},
			},
			want: map[string]node{
				"etc": nDir(), "etc/a": nFile("a2"), "etc/c": nFile("c"), "d": nFile("d"), "l": nFile("a"),
			},
			check: func(t *testing.T, out []outEntry) {
				for _, e := range out {
					if strings.HasPrefix(e.hdr.Name, "/") || strings.HasPrefix(e.hdr.Name, "./") {
						t.Errorf("got name %q, want no leading / or ./", e.hdr.Name)
					}
				}
			},
		},
		{
			name: "root entry skipped",
			layers: [][]ent{
				{tDir("."), tDir("/"), tReg("a", "a")},
			},
			want: map[string]node{"a": nFile("a")},
		},
		{
			name:    "name escaping root rejected",
			layers:  [][]ent{{tReg("a", "a")}, {tReg("ok", "ok"), tReg("x/../../evil", "evil")}},
			wantErr: `layer 1: entry "x/../../evil": path "x/../../evil" escapes the root`,
		},
		{
			name:    "hardlink target escaping root rejected",
			layers:  [][]ent{{tReg("a", "a"), tLink("l", "../a")}},
			wantErr: `layer 0: entry "l": hardlink target: path "../a" escapes the root`,
		},
		{
			name:    "whiteout of parent rejected",
			layers:  [][]ent{{tReg("d/f", "f")}, {tReg("d/.wh...", "")}},
			wantErr: `layer 1: entry "d/.wh...": invalid whiteout name`,
		},
		{
			name: "PAX long name and xattrs preserved",
			layers: [][]ent{
				{func() ent {
					e := tReg(longName, "long")
					e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.test": "value", "SCHILY.xattr.user.other": "\x00binary\xff"}
					return e
				}()},
			},
			want: withParents(map[string]node{longName: nFile("long")}),
			check: func(t *testing.T, out []outEntry) {
				e := findEntry(t, out, longName)
				for k, want := range map[string]string{"SCHILY.xattr.user.test": "value", "SCHILY.xattr.user.other": "\x00binary\xff"} {
					if got := e.hdr.PAXRecords[k]; got != want {
						t.Errorf("PAX record %s: got %q, want %q", k, got, want)
					}
				}
			},
		},
		{
			// With every plain entry in the cold index (runFlatten), the
			// link reads its target back: large xattrs make a record of
			// its own chunk, and the hidden target's content is spooled.
			name: "hardlink to a hidden file with large xattrs keeps them",
			layers: [][]ent{
				{func() ent {
					e := tReg("big", "data")
					e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.big": strings.Repeat("x", 3000)}
					e.hdr.Uid, e.hdr.Gid, e.hdr.Uname, e.hdr.Gname = 1000, 1001, "user", "group"
					e.hdr.ModTime, e.hdr.Format = nanoTime, tar.FormatPAX
					return e
				}(), tLink("l1", "big")},
				{tWh("big")},
			},
			want: map[string]node{"l1": nFile("data")},
			check: func(t *testing.T, out []outEntry) {
				e := findEntry(t, out, "l1")
				if got := e.hdr.PAXRecords["SCHILY.xattr.user.big"]; got != strings.Repeat("x", 3000) {
					t.Errorf("xattr user.big: got %d bytes, want 3000", len(got))
				}
				if e.hdr.Uid != 1000 || e.hdr.Gname != "group" || !e.hdr.ModTime.Equal(nanoTime) {
					t.Errorf("l1: got uid %d, group %q, mtime %v; want 1000, group, %v", e.hdr.Uid, e.hdr.Gname, e.hdr.ModTime, nanoTime)
				}
			},
		},
		{
			name: "GNU long name input",
			layers: [][]ent{
				{func() ent {
					e := tReg(longName, "gnu")
					e.hdr.Format = tar.FormatGNU
					e.hdr.AccessTime = testTime
					e.hdr.ChangeTime = testTime
					return e
				}()},
				{func() ent {
					// An xattr on a file whose lower copy came in GNU format.
					e := tReg(longName+"2", "pax")
					e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.a": "b"}
					return e
				}()},
			},
			want: withParents(map[string]node{longName: nFile("gnu"), longName + "2": nFile("pax")}),
			check: func(t *testing.T, out []outEntry) {
				if got := findEntry(t, out, longName+"2").hdr.PAXRecords["SCHILY.xattr.user.a"]; got != "b" {
					t.Errorf("xattr user.a: got %q, want %q", got, "b")
				}
			},
		},
		{
			name: "ownership mode and mtime preserved",
			layers: [][]ent{
				{func() ent {
					e := tRegMode("suid", "x", 0o4755)
					e.hdr.Uid, e.hdr.Gid, e.hdr.Uname, e.hdr.Gname = 1000, 2000, "alice", "staff"
					e.hdr.ModTime = nanoTime
					e.hdr.Format = tar.FormatPAX // keep the nanoseconds in the input
					return e
				}(), func() ent {
					e := tDirMode("sticky", 0o1777)
					e.hdr.Uid, e.hdr.Gid = 3000000, 4000000 // beyond USTAR's octal fields
					return e
				}()},
			},
			want: map[string]node{"suid": nFileMode("x", 0o4755), "sticky": nDirMode(0o1777)},
			check: func(t *testing.T, out []outEntry) {
				s := findEntry(t, out, "suid").hdr
				if s.Uid != 1000 || s.Gid != 2000 || s.Uname != "alice" || s.Gname != "staff" {
					t.Errorf("suid owner: got %d:%d %s:%s, want 1000:2000 alice:staff", s.Uid, s.Gid, s.Uname, s.Gname)
				}
				if s.Mode != 0o4755 {
					t.Errorf("suid mode: got %#o, want %#o", s.Mode, 0o4755)
				}
				if !s.ModTime.Equal(nanoTime) {
					t.Errorf("suid mtime: got %v, want %v", s.ModTime, nanoTime)
				}
				d := findEntry(t, out, "sticky").hdr
				if d.Uid != 3000000 || d.Gid != 4000000 || d.Mode != 0o1777 || !d.ModTime.Equal(testTime) {
					t.Errorf("sticky: got %d:%d %#o %v, want 3000000:4000000 %#o %v", d.Uid, d.Gid, d.Mode, d.ModTime, 0o1777, testTime)
				}
			},
		},
		{
			name: "device and fifo entries",
			layers: [][]ent{
				{
					tDir("dev"),
					{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}},
					{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: testTime}},
					{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600, ModTime: testTime}},
					{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/gone", Mode: 0o600, Devmajor: 5, Devminor: 1, ModTime: testTime}},
					tLink("dev/null2", "dev/null"),
				},
				{tWh("dev/gone"), tWh("dev/null")},
			},
			notUmoci: "rootless umoci unpacks device nodes as empty files",
			want: map[string]node{
				"dev":       nDir(),
				"dev/null2": {typ: 'c', link: "1,3", mode: 0o666},
				"dev/sda":   {typ: 'b', link: "8,0", mode: 0o660},
				"dev/fifo":  {typ: 'p', mode: 0o600},
			},
			check: func(t *testing.T, out []outEntry) {
				n := findEntry(t, out, "dev/null2").hdr
				if n.Typeflag != tar.TypeChar || n.Devmajor != 1 || n.Devminor != 3 {
					t.Errorf("dev/null2: got type %q %d,%d, want char device 1,3", n.Typeflag, n.Devmajor, n.Devminor)
				}
			},
		},
		{
			name: "no whiteout files in output",
			layers: [][]ent{
				{
					tDir("d"), tReg("d/f", "f"), tReg(".wh..wh.aufs", ""),
					tDir(".wh..wh.plnk"), tReg(".wh..wh.plnk/123.456", "aufs"), tLink("d/aufs-link", ".wh..wh.plnk/123.456"),
				},
				{tWh("d/f"), tOpq("e"), tReg(".wh..wh.orph", ""), tWh("x/y/z")},
			},
			want:     map[string]node{"d": nDir(), "d/aufs-link": nFile("aufs")},
			notUmoci: "umoci unpacks AUFS metadata such as .wh..wh.plnk/* as ordinary files",
		},
		{
			name: "duplicate names in one layer: later entry wins",
			layers: [][]ent{
				{tReg("f", "lower"), tDir("d"), tReg("d/lower", "l")},
				{tReg("f", "first"), tReg("f", "second"), tDirMode("d", 0o700), tDirMode("d", 0o750), tReg("fd", "file"), tDir("fd"), tReg("fd/x", "x")},
			},
			want: map[string]node{
				"f": nFile("second"), "d": nDirMode(0o750), "d/lower": nFile("l"),
				"fd": nDir(), "fd/x": nFile("x"),
			},
			allowDup: true,
			check: func(t *testing.T, out []outEntry) {
				var fs []string
				for _, e := range out {
					if e.hdr.Name == "f" {
						fs = append(fs, e.body)
					}
				}
				if want := []string{"first", "second"}; !slices.Equal(fs, want) {
					t.Errorf("entries named f: got bodies %q, want %q in this order", fs, want)
				}
			},
		},
		{
			// GNU tar makes symlinks with ".." or absolute targets only at
			// the end, so a symlink written before a same-name entry would
			// win; flatten holds symlinks back and drops replaced ones.
			name: "duplicate symlink in one layer replaced by later entry",
			layers: [][]ent{
				{
					tSym("a", "../t"), tReg("a", "file"),
					tSym("b", "/abs"), tDir("b"), tReg("b/x", "x"),
					tSym("c", "../one"), tSym("c", "plain"),
					tSym("d", "/abs"), tLink("e", "d"), tReg("d", "file d"),
				},
			},
			want: map[string]node{
				"a": nFile("file"), "b": nDir(), "b/x": nFile("x"), "c": nSym("plain"),
				"d": nFile("file d"), "e": nSym("/abs"),
			},
		},
		{
			name: "duplicate file in one layer replaced by later symlink",
			layers: [][]ent{
				{tReg("a", "file"), tLink("l", "a"), tSym("a", "/abs")},
			},
			want:     map[string]node{"a": nSym("/abs"), "l": nFile("file")},
			allowDup: true,
		},
		{
			name: "duplicate name takes over upper hardlinks",
			layers: [][]ent{
				{tReg("t", "first"), tReg("t", "second")},
				{tLink("l", "t")},
			},
			want:     map[string]node{"t": nFile("second"), "l": nFile("second")},
			linked:   [][]string{{"l", "t"}},
			allowDup: true,
		},
		{
			name: "duplicate replacing a hardlink waiting for a lower target",
			layers: [][]ent{
				{tReg("t", "lower")},
				{tLink("l", "t"), tReg("l", "own")},
			},
			want: map[string]node{"t": nFile("lower"), "l": nFile("own")},
		},
		// A non-directory replacing a directory with entries under it in
		// the same layer: the later entry wins, as with umoci.
		{
			name: "file replacing a filled directory of its own layer",
			layers: [][]ent{
				{tDir("x"), tReg("x/y", "y"), tDir("x/sub"), tReg("x/sub/z", "z"), tReg("x", "file"), tReg("after", "a")},
			},
			want:     map[string]node{"x": nFile("file"), "after": nFile("a")},
			allowDup: true,
		},
		{
			name: "file replacing a filled directory of a lower layer hides its lower contents",
			layers: [][]ent{
				{tDir("x"), tReg("x/lower", "l"), tDir("x/ld"), tReg("x/ld/f", "f"), tReg("keep", "k")},
				{tReg("x/y", "y"), tReg("x", "file")},
			},
			want:     map[string]node{"x": nFile("file"), "keep": nFile("k")},
			allowDup: true,
		},
		{
			name: "file replacing a directory redeclared over a lower one",
			layers: [][]ent{
				{tDir("x"), tReg("x/lower", "l")},
				{tDir("x"), tReg("x/y", "y"), tReg("x", "file")},
			},
			want:     map[string]node{"x": nFile("file")},
			allowDup: true,
		},
		{
			name: "symlink replacing a filled directory of its own layer",
			layers: [][]ent{
				{tDir("t")},
				{tDir("x"), tReg("x/y", "y"), tSym("x", "t")},
			},
			want:     map[string]node{"t": nDir(), "x": nSym("t")},
			allowDup: true,
		},
		{
			name: "hardlink made before the replacement keeps the content",
			layers: [][]ent{
				{tDir("x"), tReg("x/f", "F"), tLink("l", "x/f"), tLink("x/g", "x/f"), tReg("x", "file")},
			},
			want:     map[string]node{"x": nFile("file"), "l": nFile("F")},
			allowDup: true,
		},
		{
			name: "hardlink to a shadowed file under the replaced directory",
			layers: [][]ent{
				{tReg("t", "T")},
				{tDir("x"), tReg("x/f", "F"), tLink("l", "x/f"), tLink("x", "t")},
			},
			want:     map[string]node{"t": nFile("T"), "x": nFile("T"), "l": nFile("F")},
			linked:   [][]string{{"t", "x"}},
			allowDup: true,
		},
		{
			name: "directory replaced twice in its layer",
			layers: [][]ent{
				{tDir("x"), tReg("x/a", "a"), tReg("x", "one"), tDir("x"), tReg("x/b", "b"), tReg("x", "two")},
			},
			want:     map[string]node{"x": nFile("two")},
			allowDup: true,
		},
		{
			name: "directory recreated after its replacement",
			layers: [][]ent{
				{tDir("x"), tReg("x/a", "a"), tReg("x", "one"), tDir("x"), tReg("x/b", "b")},
			},
			want:     map[string]node{"x": nDir(), "x/b": nFile("b")},
			allowDup: true,
		},
		{
			name: "replaced directories in two layers",
			layers: [][]ent{
				{tDir("y"), tReg("y/a", "a"), tReg("y", "lower")},
				{tDir("x"), tReg("x/a", "a"), tReg("x", "upper")},
			},
			want:     map[string]node{"x": nFile("upper"), "y": nFile("lower")},
			allowDup: true,
		},
		{
			name: "file replacing a filled directory under an upper directory of that name",
			layers: [][]ent{
				{tDir("x"), tReg("x/a", "a"), tReg("x", "file")},
				{tDir("x"), tReg("x/b", "b")},
			},
			want:     map[string]node{"x": nDir(), "x/b": nFile("b")},
			allowDup: true,
		},
		{
			// The first pass replays the layer with x/a still under x when
			// u/v makes it resolve, and fails there; the second finds y.
			name: "replaced directories before and after resolving starts, in two layers",
			layers: [][]ent{
				{tDir("p"), tReg("p/a", "a"), tReg("p", "file"), tReg("q/v", "v"), tDir("r"), tReg("r/b", "b"), tReg("r", "file")},
				{tDir("x"), tReg("x/a", "a"), tReg("x", "file"), tReg("u/v", "v"), tDir("y"), tReg("y/b", "b"), tReg("y", "file")},
			},
			want:     map[string]node{"p": nFile("file"), "q": nImplicit(), "q/v": nFile("v"), "r": nFile("file"), "x": nFile("file"), "u": nImplicit(), "u/v": nFile("v"), "y": nFile("file")},
			allowDup: true,
		},
		{
			name: "entry under a directory after its replacement",
			layers: [][]ent{
				{tDir("x"), tReg("x/a", "a"), tReg("x", "file"), tReg("x/b", "b")},
			},
			wantErr:  `layer 0: entry "x/b": parent "x" is not a directory`,
			umociErr: true,
		},
		// Issue 12: parents resolve through symlinks of the tree below, as
		// umoci (securejoin) and containerd (fs.RootPath) resolve them.
		{
			name: "merged usr: bin relative symlink keeps its contents",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tRegMode("usr/bin/sh", "sh", 0o755), tSym("bin", "usr/bin")},
				{tReg("bin/hello", "hi")},
			},
			want: map[string]node{
				"bin": nSym("usr/bin"), "usr": nDir(), "usr/bin": nDir(),
				"usr/bin/sh": nFileMode("sh", 0o755), "usr/bin/hello": nFile("hi"),
			},
		},
		{
			name: "merged usr: bin absolute symlink keeps its contents",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tRegMode("usr/bin/sh", "sh", 0o755), tSym("bin", "/usr/bin")},
				{tReg("bin/hello", "hi")},
			},
			want: map[string]node{
				"bin": nSym("/usr/bin"), "usr": nDir(), "usr/bin": nDir(),
				"usr/bin/sh": nFileMode("sh", 0o755), "usr/bin/hello": nFile("hi"),
			},
		},
		{
			name: "merged usr: lib multiarch directory through relative and absolute symlinks",
			layers: [][]ent{
				{
					tDir("usr"), tDir("usr/lib"), tDir("usr/lib/x86_64-linux-gnu"), tReg("usr/lib/x86_64-linux-gnu/libc.so.6", "libc"),
					tSym("lib", "usr/lib"), tDir("usr/lib64"), tSym("lib64", "/usr/lib64"),
				},
				{tReg("lib/x86_64-linux-gnu/libfoo.so.1", "foo"), tReg("lib64/ld-linux-x86-64.so.2", "ld")},
			},
			want: map[string]node{
				"lib": nSym("usr/lib"), "lib64": nSym("/usr/lib64"), "usr": nDir(), "usr/lib": nDir(), "usr/lib64": nDir(),
				"usr/lib/x86_64-linux-gnu": nDir(), "usr/lib/x86_64-linux-gnu/libc.so.6": nFile("libc"),
				"usr/lib/x86_64-linux-gnu/libfoo.so.1": nFile("foo"), "usr/lib64/ld-linux-x86-64.so.2": nFile("ld"),
			},
		},
		{
			name: "merged usr: lib multiarch directory through an absolute symlink",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/lib"), tDir("usr/lib/x86_64-linux-gnu"), tReg("usr/lib/x86_64-linux-gnu/libc.so.6", "libc"), tSym("lib", "/usr/lib")},
				{tReg("lib/x86_64-linux-gnu/libfoo.so.1", "foo"), tWh("lib/x86_64-linux-gnu/libc.so.6"), tReg("lib/x86_64-linux-gnu/libc.so.7", "libc7")},
			},
			want: map[string]node{
				"lib": nSym("/usr/lib"), "usr": nDir(), "usr/lib": nDir(), "usr/lib/x86_64-linux-gnu": nDir(),
				"usr/lib/x86_64-linux-gnu/libfoo.so.1": nFile("foo"), "usr/lib/x86_64-linux-gnu/libc.so.7": nFile("libc7"),
			},
		},
		{
			name: "merged usr: upper entry through the symlink replaces the lower file",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tReg("usr/bin/sh", "old sh"), tSym("bin", "usr/bin"), tReg("bin/ls", "ls")},
				{tReg("bin/sh", "new sh")},
				{tDir("etc"), tReg("etc/motd", "declared parents need no resolving")},
			},
			want: map[string]node{
				"bin": nSym("usr/bin"), "usr": nDir(), "usr/bin": nDir(), "usr/bin/sh": nFile("new sh"),
				"usr/bin/ls": nFile("ls"), "etc": nDir(), "etc/motd": nFile("declared parents need no resolving"),
			},
		},
		{
			name: "symlinked parent into the root and climbing out of it",
			layers: [][]ent{
				{tDir("r"), tSym("up", "../../.."), tSym("slash", "/"), tSym("abs", "/r"), tSym("rel", "./r/../r")},
				{tReg("up/a", "a"), tReg("slash/b", "b"), tReg("abs/c", "c"), tReg("rel/d", "d")},
			},
			want: map[string]node{
				"r": nDir(), "up": nSym("../../.."), "slash": nSym("/"), "abs": nSym("/r"), "rel": nSym("./r/../r"),
				"a": nFile("a"), "b": nFile("b"), "r/c": nFile("c"), "r/d": nFile("d"),
			},
		},
		{
			name: "symlinked grandparent",
			layers: [][]ent{
				{tDir("real"), tDir("real/sub"), tDir("real/sub/deeper"), tSym("x", "real")},
				{tReg("x/sub/deeper/f", "f")},
			},
			want: map[string]node{
				"real": nDir(), "real/sub": nDir(), "real/sub/deeper": nDir(), "real/sub/deeper/f": nFile("f"), "x": nSym("real"),
			},
		},
		{
			name: "symlink to a missing directory: the entry creates it",
			layers: [][]ent{
				{tSym("x", "/nope/deeper")},
				{tReg("x/f", "f")},
			},
			want: withParents(map[string]node{"x": nSym("/nope/deeper"), "nope/deeper/f": nFile("f")}),
		},
		{
			name: "chain of symlinks",
			layers: [][]ent{
				{tDir("real"), tSym("a", "b"), tSym("b", "/c"), tSym("c", "../real")},
				{tReg("a/f", "f")},
			},
			want: map[string]node{"real": nDir(), "real/f": nFile("f"), "a": nSym("b"), "b": nSym("/c"), "c": nSym("../real")},
		},
		{
			name: "symlink then entry in the same layer",
			layers: [][]ent{
				{tDir("real"), tReg("real/lower", "l")},
				{tSym("x", "real"), tReg("x/f", "f")},
			},
			want: map[string]node{"real": nDir(), "real/lower": nFile("l"), "real/f": nFile("f"), "x": nSym("real")},
		},
		{
			name: "symlink then entry in the bottom layer",
			layers: [][]ent{
				{tDir("real"), tSym("x", "real"), tReg("x/f", "f"), tLink("x/h", "x/f")},
			},
			want:   map[string]node{"real": nDir(), "real/f": nFile("f"), "real/h": nFile("f"), "x": nSym("real")},
			linked: [][]string{{"real/f", "real/h"}},
		},
		{
			name: "directory entry replaces a lower symlink, with children",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tReg("usr/bin/sh", "sh"), tSym("bin", "usr/bin")},
				{tDirMode("bin", 0o700), tReg("bin/hello", "hi")},
			},
			want: map[string]node{
				"bin": nDirMode(0o700), "bin/hello": nFile("hi"), "usr": nDir(), "usr/bin": nDir(), "usr/bin/sh": nFile("sh"),
			},
		},
		{
			name: "directory entry replaces the symlink that earlier entries of its layer went through",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tReg("usr/bin/sh", "sh"), tSym("bin", "usr/bin")},
				{tReg("bin/hello", "hi"), tDir("bin"), tReg("bin/two", "2")},
			},
			want: map[string]node{
				"bin": nDir(), "bin/two": nFile("2"), "usr": nDir(), "usr/bin": nDir(), "usr/bin/sh": nFile("sh"), "usr/bin/hello": nFile("hi"),
			},
		},
		{
			name: "whiteout through a symlinked parent",
			layers: [][]ent{
				{tDir("real"), tReg("real/f", "f"), tReg("real/g", "g"), tSym("x", "real")},
				{tWh("x/f")},
			},
			want: map[string]node{"real": nDir(), "real/g": nFile("g"), "x": nSym("real")},
		},
		{
			name: "whiteout of the symlink itself removes the link, not its target",
			layers: [][]ent{
				{tDir("real"), tReg("real/f", "f"), tSym("x", "real")},
				{tWh("x")},
			},
			want: map[string]node{"real": nDir(), "real/f": nFile("f")},
		},
		{
			name: "opaque marker through a symlinked directory",
			layers: [][]ent{
				{tDir("real"), tReg("real/f", "f"), tSym("x", "real")},
				{tOpq("x"), tReg("x/n", "n")},
			},
			want: map[string]node{"real": nDir(), "real/n": nFile("n"), "x": nSym("real")},
		},
		{
			name: "hardlink target through a symlinked parent",
			layers: [][]ent{
				{tDir("real"), tReg("real/t", "t"), tSym("x", "real")},
				{tLink("h", "x/t")},
			},
			want:   map[string]node{"real": nDir(), "real/t": nFile("t"), "h": nFile("t"), "x": nSym("real")},
			linked: [][]string{{"h", "real/t"}},
		},
		{
			name: "hardlink to a symlink is a parent for later entries",
			layers: [][]ent{
				{tDir("real"), tSym("s", "real"), tLink("h", "s")},
				{tReg("h/f", "f")},
			},
			want:   map[string]node{"real": nDir(), "real/f": nFile("f"), "s": nSym("real"), "h": nSym("real")},
			linked: [][]string{{"h", "s"}},
		},
		{
			name: "symlinked parents in a middle layer rewrite the layers below",
			layers: [][]ent{
				{tDir("usr"), tDir("usr/bin"), tReg("usr/bin/sh", "sh"), tSym("bin", "usr/bin"), tReg("bin/a", "a0"), tReg("bin/b", "b0")},
				{tDir("opt"), tReg("opt/o", "o")},
				{tReg("bin/a", "a2"), tWh("bin/b"), tLink("bin/sh2", "bin/sh")},
				{tDir("etc"), tReg("etc/x", "x")},
			},
			want: map[string]node{
				"bin": nSym("usr/bin"), "usr": nDir(), "usr/bin": nDir(), "usr/bin/sh": nFile("sh"), "usr/bin/sh2": nFile("sh"),
				"usr/bin/a": nFile("a2"), "opt": nDir(), "opt/o": nFile("o"), "etc": nDir(), "etc/x": nFile("x"),
			},
			linked: [][]string{{"usr/bin/sh", "usr/bin/sh2"}},
		},
		{
			name: "parents that only a shadowed entry created stay",
			layers: [][]ent{
				{tSym("c", "x2")},
				{tReg("c/h", "h")},
				{tWh("c/h")},
			},
			want: map[string]node{"c": nSym("x2"), "x2": nDir()},
		},
		{
			name: "lower directories above a layer's entries survive its later opaque marker",
			layers: [][]ent{
				{tDirMode("a", 0o700), tDirMode("a/b", 0o750), tDirMode("a/b/g", 0o700), tReg("a/b/g/q", "q"), tReg("a/b/old", "old")},
				{tReg("a/b/g/n", "n"), tDirMode("a/b", 0o755), tOpq("a/b")},
			},
			want: map[string]node{"a": nDirMode(0o700), "a/b": nDirMode(0o755), "a/b/g": nDirMode(0o700), "a/b/g/n": nFile("n")},
		},
		{
			name: "lower directories above a layer's entries survive its later whiteout",
			layers: [][]ent{
				{tDirMode("x", 0o750), tDirMode("x/b", 0o700), tReg("x/b/old", "old"), tReg("x/other", "o")},
				{tReg("x/b/new", "new"), tWh("x")},
			},
			want: map[string]node{"x": nDirMode(0o750), "x/b": nDirMode(0o700), "x/b/new": nFile("new")},
		},
		{
			name: "a whiteout before the layer's entries removes the lower directories",
			layers: [][]ent{
				{tDirMode("x", 0o750), tDirMode("x/b", 0o700), tReg("x/b/old", "old")},
				{tWh("x"), tReg("x/b/new", "new")},
			},
			want: map[string]node{"x": nImplicit(), "x/b": nImplicit(), "x/b/new": nFile("new")},
		},
		{
			name: "a directory kept by an opaque marker is not kept below a layer that removed it",
			layers: [][]ent{
				{tDirMode("a", 0o700), tDirMode("a/b", 0o700), tReg("a/b/bottom", "b")},
				{tWh("a/b")},
				{tDir("a"), tReg("a/b/n", "n"), tOpq("a")},
			},
			want: map[string]node{"a": nDir(), "a/b": nImplicit(), "a/b/n": nFile("n")},
		},
		{
			name: "symlink loop refused",
			layers: [][]ent{
				{tSym("a", "b"), tSym("b", "/a")},
				{tReg("a/f", "f")},
			},
			wantErr:  `layer 1: entry "a/f": resolving "a": too many levels of symbolic links`,
			umociErr: true,
		},
		{
			name: "symlink that names itself again and again refused",
			layers: [][]ent{
				{tSym("a", strings.Repeat("a/", 1000)+"a")},
				{tReg("a/f", "f")},
			},
			wantErr:  `layer 1: entry "a/f": resolving "a": symlinks expand it past Linux's limit of 4095 bytes (PATH_MAX)`,
			umociErr: true,
		},
		{
			name: "parent resolving to a file refused",
			layers: [][]ent{
				{tReg("file", "f"), tSym("x", "file")},
				{tReg("x/f", "f")},
			},
			wantErr:  `layer 1: entry "x/f": parent "file" is not a directory`,
			umociErr: true,
		},
		{
			name:     "component longer than NAME_MAX refused",
			layers:   [][]ent{{tReg("ok", "ok")}, {tReg("d/"+strings.Repeat("n", 256), "x")}},
			wantErr:  `layer 1: entry "d/nnnn`,
			umociErr: true,
		},
		{
			name: "symlink target longer than PATH_MAX refused, in a scanned lower layer too",
			layers: [][]ent{
				{tSym("far", strings.Repeat("../", 1400)+"x")},
				{tReg("d/f", "f")},
			},
			wantErr:  `layer 0: entry "far": symlink target is 4201 bytes, over Linux's limit of 4095 (PATH_MAX)`,
			umociErr: true,
		},
		{
			name:     "path longer than PATH_MAX refused",
			layers:   [][]ent{{tReg(strings.Repeat("0123456789/", 400)+"f", "x")}},
			wantErr:  `name is 4401 bytes, over Linux's limit of 4095 (PATH_MAX)`,
			umociErr: true,
		},
	}
	// With umoci on PATH, every case that flatten accepts is also unpacked by
	// umoci, and tar -x of flatten's output must give the same tree.
	umoci, _ := exec.LookPath("umoci")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := runFlatten(t, memLayers(t, tt.layers))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("flatten: got error %v, want one containing %q", err, tt.wantErr)
				}
				if msg := err.Error(); strings.ContainsAny(msg, "\n\r") {
					t.Errorf("flatten: got error %q, want one line", msg)
				}
				if !tt.umociErr {
					return
				}
				t.Run("umoci", func(t *testing.T) {
					if umoci == "" {
						t.Skip("umoci not on PATH: not checked that umoci refuses this stack too")
					}
					if _, err := tryUmociUnpack(t, umoci, tarBlobs(t, tt.layers)); err == nil {
						t.Errorf("umoci raw unpack: got success, want it to refuse the stack as flatten does")
					}
				})
				return
			}
			if err != nil {
				t.Fatalf("flatten: got error %v, want nil", err)
			}
			out := readOutput(t, b)
			checkInvariants(t, out, tt.allowDup)
			compareTrees(t, outputTree(out), withoutImplicit(tt.want))
			if tt.check != nil {
				tt.check(t, out)
			}
			hasDev := slices.ContainsFunc(out, func(e outEntry) bool {
				return e.hdr.Typeflag == tar.TypeChar || e.hdr.Typeflag == tar.TypeBlock
			})
			if hasDev && os.Geteuid() != 0 {
				t.Skip("extracting device nodes needs root")
			}
			tree, groups := walkTree(t, extract(t, b))
			compareTrees(t, tree, tt.want)
			compareGroups(t, groups, tt.linked)
			if tt.notUmoci != "" {
				return
			}
			t.Run("umoci", func(t *testing.T) {
				if umoci == "" {
					t.Skip("umoci not on PATH: tree not compared with umoci's")
				}
				uTree, uGroups := walkTree(t, umociUnpack(t, umoci, tarBlobs(t, tt.layers)))
				compareTrees(t, tree, uTree)
				compareGroups(t, groups, uGroups)
			})
		})
	}
}

var errDiffID = errors.New("diff ID mismatch")

// streamLayer serves b and then, instead of io.EOF, err (if set), recording
// whether it was closed.
type streamLayer struct {
	r      io.Reader
	err    error
	closed bool
}

func (s *streamLayer) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if errors.Is(err, io.EOF) && s.err != nil {
		err = s.err
	}
	return n, err
}

func (s *streamLayer) Close() error {
	s.closed = true
	return nil
}

func TestFlattenStreams(t *testing.T) {
	good := tarBytes(t, []ent{tReg("a", "a")})
	// Real layers carry zero padding after the end marker; the diff ID
	// check happens only once that is read too.
	padded := append(slices.Clone(good), make([]byte, 4096)...)
	truncated := tarBytes(t, []ent{tReg("big", strings.Repeat("x", 2000))})[:1024]
	// A shadowed file (spooled) followed by a bad entry in the same layer.
	spoolThenFail := tarBytes(t, []ent{tReg("t", "shadowed content"), tReg("../bad", "")})
	openErr := errors.New("blob missing")

	tests := []struct {
		name string
		// layers are bottom first; each is the stream and the error it
		// returns at EOF, or openErr to fail opening.
		streams []*streamLayer
		openErr error
		wantIs  error
		wantErr string
	}{
		{
			name:    "diff ID error at EOF after padding propagated",
			streams: []*streamLayer{{r: bytes.NewReader(good)}, {r: bytes.NewReader(padded), err: errDiffID}},
			wantIs:  errDiffID,
			wantErr: "layer 1: reading past end of archive",
		},
		{
			name:    "diff ID error at EOF of bottom layer propagated",
			streams: []*streamLayer{{r: bytes.NewReader(good), err: errDiffID}, {r: bytes.NewReader(good)}},
			wantIs:  errDiffID,
			wantErr: "layer 0:",
		},
		{
			name:    "truncated layer",
			streams: []*streamLayer{{r: bytes.NewReader(truncated)}},
			wantIs:  io.ErrUnexpectedEOF,
			wantErr: "layer 0:",
		},
		{
			name:    "open error",
			streams: []*streamLayer{{r: bytes.NewReader(good)}, nil},
			openErr: openErr,
			wantIs:  openErr,
			wantErr: "layer 1: opening",
		},
		{
			name: "spool removed when the layer fails",
			streams: []*streamLayer{
				{r: bytes.NewReader(spoolThenFail)},
				{r: bytes.NewReader(tarBytes(t, []ent{tWh("t")}))},
			},
			wantErr: `layer 0: entry "../bad"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var layers []flattenLayer
			var opened []*streamLayer
			for _, s := range tt.streams {
				layers = append(layers, flattenLayer{open: func() (io.ReadCloser, error) {
					if s == nil {
						return nil, tt.openErr
					}
					opened = append(opened, s)
					return s, nil
				}})
			}
			_, err := runFlattenOnce(t, layers, coldAfter)
			if err == nil {
				t.Fatalf("flatten: got nil error, want one containing %q", tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("flatten: got error %v, want errors.Is %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("flatten: got error %q, want it to contain %q", err, tt.wantErr)
			}
			for i, s := range opened {
				if !s.closed {
					t.Errorf("opened stream %d: got left open, want closed", i)
				}
			}
		})
	}
}

func TestFlattenDrainsAndCloses(t *testing.T) {
	var streams []*streamLayer
	var layers []flattenLayer
	for i := range 3 {
		b := append(tarBytes(t, []ent{tReg(fmt.Sprintf("f%d", i), "x")}), make([]byte, 10240)...)
		s := &streamLayer{r: bytes.NewReader(b)}
		streams = append(streams, s)
		layers = append(layers, flattenLayer{open: func() (io.ReadCloser, error) { return s, nil }})
	}
	if _, err := runFlattenOnce(t, layers, coldAfter); err != nil {
		t.Fatalf("flatten: got error %v, want nil", err)
	}
	for i, s := range streams {
		if rest := s.r.(*bytes.Reader).Len(); rest != 0 {
			t.Errorf("layer %d: got %d bytes unread, want stream read to EOF", i, rest)
		}
		if !s.closed {
			t.Errorf("layer %d: got stream open, want closed", i)
		}
	}
}

func TestFlattenCancel(t *testing.T) {
	tests := []struct {
		name string
		// cancelAt is the layer whose open cancels the context; -1 cancels
		// before flatten starts.
		cancelAt   int
		wantOpened int
	}{
		{name: "canceled before start", cancelAt: -1, wantOpened: 0},
		{name: "canceled while reading the top layer", cancelAt: 2, wantOpened: 1},
		{name: "canceled while reading a lower layer", cancelAt: 1, wantOpened: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancelAt < 0 {
				cancel()
			}
			var opened []*streamLayer
			var layers []flattenLayer
			for i := range 3 {
				b := tarBytes(t, []ent{tReg(fmt.Sprintf("f%d", i), "x"), tReg(fmt.Sprintf("g%d", i), "y")})
				layers = append(layers, flattenLayer{open: func() (io.ReadCloser, error) {
					if i == tt.cancelAt {
						cancel()
					}
					s := &streamLayer{r: bytes.NewReader(b)}
					opened = append(opened, s)
					return s, nil
				}})
			}
			err := flatten(ctx, discardOutput{}, layers, t.TempDir())
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("flatten: got error %v, want context.Canceled", err)
			}
			if len(opened) != tt.wantOpened {
				t.Errorf("layers opened: got %d, want %d", len(opened), tt.wantOpened)
			}
			for i, s := range opened {
				if !s.closed {
					t.Errorf("opened stream %d: got open, want closed", i)
				}
			}
		})
	}
}

// TestFlattenSpoolsOnlyWhenNeeded points spoolDir at a missing directory:
// flatten must not need it unless a shadowed file's content is kept for a
// later hardlink of the same layer.
func TestFlattenSpoolsOnlyWhenNeeded(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name    string
		layers  [][]ent
		wantErr string
	}{
		{
			name:   "nothing shadowed",
			layers: [][]ent{{tReg("t", "x"), tLink("l", "t")}, {tReg("u", "y")}},
		},
		{
			name:   "shadowed target needed by an upper link is written directly",
			layers: [][]ent{{tReg("t", "x")}, {tLink("l", "t")}, {tWh("t")}},
		},
		{
			name:    "shadowed target with a later link in its layer is spooled",
			layers:  [][]ent{{tReg("t", "x"), tLink("l", "t")}, {tWh("t")}},
			wantErr: "creating spool file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := flatten(context.Background(), discardOutput{}, memLayers(t, tt.layers), missing)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("flatten: got error %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("flatten: got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestFlattenSparseInput feeds GNU tar's sparse formats through flatten: the
// output must carry the expanded data as a plain file.
func TestFlattenSparseInput(t *testing.T) {
	src := t.TempDir()
	want := make([]byte, 1<<20)
	copy(want[500000:], "hello")
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	// Writing only the data leaves the rest a hole.
	if _, err := f.WriteAt([]byte("hello"), 500000); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(len(want))); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			cmd := exec.Command("tar", "--sparse", "--format="+format, "-cf", "-", "-C", src, "sparse")
			layer, err := cmd.Output()
			if err != nil {
				t.Fatalf("tar -c: got %v, want success", err)
			}
			out, err := runFlatten(t, []flattenLayer{memLayer(layer)})
			if err != nil {
				t.Fatalf("flatten: got error %v, want nil", err)
			}
			if h := findEntry(t, readOutput(t, out), "sparse").hdr; h.Typeflag != tar.TypeReg || h.Size != int64(len(want)) {
				t.Errorf("sparse header: got type %q size %d, want regular file of %d bytes", h.Typeflag, h.Size, len(want))
			}
			got, err := os.ReadFile(filepath.Join(extract(t, out), "sparse"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("sparse content: got %d bytes differing from the %d written, want equal", len(got), len(want))
			}
		})
	}
}

// TestFlattenSparseLimit feeds sparse files that declare far more than they
// store: flatten must refuse them, with one line, before writing their
// holes out, once they add up past maxSparseExpansion.
func TestFlattenSparseLimit(t *testing.T) {
	tests := []struct {
		name    string
		sizes   []int64 // logical sizes of the sparse files, in one layer
		wantErr string
	}{
		{name: "one file at the limit", sizes: []int64{maxSparseExpansion}},
		{name: "one file past the limit", sizes: []int64{maxSparseExpansion + 1}, wantErr: `entry "s0": sparse file of 1073741825 bytes`},
		{name: "a TiB from a few KiB", sizes: []int64{1 << 40}, wantErr: `entry "s0": sparse file of 1099511627776 bytes`},
		{name: "files adding up past the limit", sizes: []int64{600 << 20, 600 << 20}, wantErr: `entry "s1": sparse file of 629145600 bytes would take the image's sparse files past banger's limit of 1073741824 bytes expanded (629145600 so far)`},
	}
	for _, format := range []string{"gnu", "posix"} {
		for _, tt := range tests {
			t.Run(format+"/"+tt.name, func(t *testing.T) {
				src := t.TempDir()
				var names []string
				for i, size := range tt.sizes {
					name := fmt.Sprintf("s%d", i)
					names = append(names, name)
					f, err := os.Create(filepath.Join(src, name))
					if err != nil {
						t.Fatal(err)
					}
					// One byte of data at the start; the rest is a hole.
					if _, err := f.WriteString("x"); err != nil {
						t.Fatal(err)
					}
					if err := f.Truncate(size); err != nil {
						t.Fatal(err)
					}
					if err := f.Close(); err != nil {
						t.Fatal(err)
					}
				}
				cmd := exec.Command("tar", append([]string{"--sparse", "--format=" + format, "-cf", "-", "-C", src}, names...)...)
				layer, err := cmd.Output()
				if err != nil {
					t.Fatalf("tar -c: got %v, want success", err)
				}
				if len(layer) > 1<<20 {
					t.Fatalf("test layer: got %d bytes, want a sparse archive of a few KiB", len(layer))
				}
				w := &countingWriter{}
				err = flatten(context.Background(), w, []flattenLayer{memLayer(layer)}, t.TempDir())
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("flatten: got error %v, want nil", err)
					}
					if w.n < tt.sizes[0] {
						t.Errorf("output: got %d bytes, want the file expanded to at least %d", w.n, tt.sizes[0])
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("flatten: got error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.ContainsAny(err.Error(), "\n\r") {
					t.Errorf("flatten: got error %q, want one line", err)
				}
				// Files before the refused one are written in full.
				var before int64
				for _, size := range tt.sizes[:len(tt.sizes)-1] {
					before += size
				}
				if w.n > before+1<<20 {
					t.Errorf("output: got %d bytes written, want at most %d: the refused file must not be written", w.n, before+1<<20)
				}
			})
		}
	}
}

// countingWriter discards what it is given and counts it.
type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func (c *countingWriter) Rewind() error {
	c.n = 0
	return nil
}

// TestFlattenMatchesUmoci unpacks a tricky layer stack with umoci and compares
// its tree with tar -x of flatten's output.
func TestFlattenMatchesUmoci(t *testing.T) {
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci not on PATH: tricky stack not compared with umoci")
	}
	long := strings.Repeat("deep-directory/", 8) + strings.Repeat("n", 90)
	layers := [][]ent{
		{
			tDir("etc"), tReg("etc/passwd", "root:x:0:0\n"),
			tDir("usr"), tDir("usr/bin"), tDir("usr/libexec"), tDir("usr/libexec/git-core"),
			tRegMode("usr/bin/git", "git-v1", 0o755),
			tLink("usr/libexec/git-core/git-add", "usr/bin/git"),
			tLink("usr/libexec/git-core/git-commit", "usr/bin/git"),
			tReg("t2", "123 -\n"),
			tDir("data"), tReg("data/a", "a"), tDir("data/sub"), tReg("data/sub/b", "b"),
			tDir("opq"), tReg("opq/x", "x"), tDir("opq/sub"), tReg("opq/sub/y", "y"),
			tReg("f2d", "file"),
			tDir("d2f"), tReg("d2f/child", "c"),
			tDir("merge"), tReg("merge/lower", "l"),
			tDir("lnk"), tReg("lnk/target", "T0"), tLink("lnk/alias", "lnk/target"),
			tReg("same", "old"), tReg("same2", "old2"),
			tDir("rep"), tReg("rep/lower", "l"), tDir("rep/ld"), tReg("rep/ld/f", "f"),
		},
		{
			tDir("usr"), tDir("usr/bin"), tWh("usr/bin/git"), tSym("usr/bin/git", "/usr/libexec/git-core/git-add"),
			tReg("t1", "123 -\n"), tLink("t3", "t1"),
			tWh("data"),
			tDir("opq"), tOpq("opq"), tReg("opq/new", "new"),
			tDir("f2d"), tReg("f2d/inner", "i"),
			tReg("d2f", "now a file"),
			tDirMode("merge", 0o700), tReg("merge/upper", "u"),
			tWh("same"), tReg("same", "kept"),
			tReg("same2", "kept2"), tWh("same2"),
			tSym("climb", "../../../etc/passwd"), tSym("abs", "/etc/passwd"),
			tDir("lnk"), tWh("lnk/target"),
			tDir(path.Dir(long)), tReg(long, "long"),
			// Non-directories replacing directories filled earlier in
			// the same layer: what was under them goes, lower contents
			// included, but for a hardlink made outside in the meantime.
			tReg("rep/upper", "u"), tLink("rep-link", "rep/upper"), tReg("rep", "now a file"),
			tDir("repsym"), tDir("repsym/d"), tReg("repsym/d/a", "a"), tSym("repsym", "etc"),
			tDir("rep2"), tReg("rep2/a", "a"), tReg("rep2", "one"), tDir("rep2"), tReg("rep2/b", "b"),
		},
		{
			tReg("t1", "456 -\n"),
			tReg("dup", "first"), tReg("dup", "second"),
			tDir("data"), tReg("data/new", "recreated"),
			tDir("lnk"), tReg("lnk/target", "T2"), tLink("cross", "lnk/target"),
			tLink("lower-link", "etc/passwd"),
			tReg("hidden-src", "H"), tLink("hidden-link", "hidden-src"),
		},
		{
			tWh("hidden-src"),
		},
	}
	var blobs [][]byte
	for _, l := range layers {
		blobs = append(blobs, tarBytes(t, l))
	}

	wantTree, wantGroups := walkTree(t, umociUnpack(t, umoci, blobs))

	var flat []flattenLayer
	for _, b := range blobs {
		flat = append(flat, memLayer(b))
	}
	b, err := runFlatten(t, flat)
	if err != nil {
		t.Fatalf("flatten: got error %v, want nil", err)
	}
	checkInvariants(t, readOutput(t, b), true)
	gotTree, gotGroups := walkTree(t, extract(t, b))
	compareTrees(t, gotTree, wantTree)
	compareGroups(t, gotGroups, wantGroups)
	// Spot checks, in case umoci itself regressed.
	for name, w := range map[string]string{"t1": "456 -\n", "t3": "123 -\n", "lnk/alias": "T0", "cross": "T2", "hidden-link": "H", "rep": "now a file", "rep-link": "u", "rep2/b": "b"} {
		if g := gotTree[name].body; g != w {
			t.Errorf("%s: got %q, want %q", name, g, w)
		}
	}
}

// umociUnpack unpacks an image made of the given uncompressed layer tars
// with umoci and returns the rootfs directory.
func umociUnpack(t *testing.T, umoci string, layers [][]byte) string {
	t.Helper()
	rootfs, err := tryUmociUnpack(t, umoci, layers)
	if err != nil {
		t.Fatalf("umoci raw unpack: got %v, want success", err)
	}
	return rootfs
}

// tryUmociUnpack is umociUnpack for stacks that umoci may refuse.
func tryUmociUnpack(t *testing.T, umoci string, layers [][]byte) (string, error) {
	t.Helper()
	layout := filepath.Join(t.TempDir(), "image")
	writeOCILayout(t, layout, layers)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	cmd := exec.Command(umoci, "raw", "unpack", "--rootless", "--image", layout+":test", rootfs)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w (%s)", err, bytes.TrimSpace(out))
	}
	return rootfs, nil
}

func tarBlobs(t testing.TB, layers [][]ent) [][]byte {
	t.Helper()
	var blobs [][]byte
	for _, l := range layers {
		blobs = append(blobs, tarBytes(t, l))
	}
	return blobs
}

// writeOCILayout writes an OCI image layout with one manifest tagged "test"
// whose layers are the given uncompressed tars.
func writeOCILayout(t *testing.T, dir string, layers [][]byte) {
	t.Helper()
	blobDir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		t.Fatal(err)
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	put := func(mediaType string, b []byte) descriptor {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(blobDir, h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return descriptor{MediaType: mediaType, Digest: "sha256:" + h, Size: len(b)}
	}
	putJSON := func(mediaType string, v any) descriptor {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return put(mediaType, b)
	}

	var diffIDs []string
	var layerDescs []descriptor
	for _, l := range layers {
		sum := sha256.Sum256(l)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		if _, err := zw.Write(l); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		layerDescs = append(layerDescs, put("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes()))
	}
	config := putJSON("application/vnd.oci.image.config.v1+json", map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	manifest := putJSON("application/vnd.oci.image.manifest.v1+json", map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config,
		"layers":        layerDescs,
	})
	manifest.Annotations = map[string]string{"org.opencontainers.image.ref.name": "test"}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{manifest}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
}

// benchLayers builds layers of about perLayer bytes each, with files
// overwritten by upper layers, whiteouts and hardlinks.
func benchLayers(b *testing.B, n, perLayer int) [][]byte {
	b.Helper()
	const fileSize = 16 << 10
	body := strings.Repeat("0123456789abcdef", fileSize/16)
	var out [][]byte
	for l := range n {
		var ents []ent
		ents = append(ents, tDir("data"))
		for i := 0; i*fileSize < perLayer; i++ {
			// Half the names repeat in every layer, so lower copies are shadowed.
			name := fmt.Sprintf("data/f%04d", i)
			if i%2 == 1 {
				name = fmt.Sprintf("data/l%d-f%04d", l, i)
			}
			ents = append(ents, tReg(name, body))
			if i%10 == 0 {
				ents = append(ents, tLink(name+".link", name))
			}
			if l > 0 && i%7 == 0 {
				ents = append(ents, tWh(fmt.Sprintf("data/l%d-f%04d", l-1, i)))
			}
		}
		out = append(out, tarBytes(b, ents))
	}
	return out
}

func BenchmarkFlatten(b *testing.B) {
	blobs := benchLayers(b, 4, 2<<20)
	var total int64
	for _, bl := range blobs {
		total += int64(len(bl))
	}
	var layers []flattenLayer
	for _, bl := range blobs {
		layers = append(layers, memLayer(bl))
	}
	spool := b.TempDir()
	// flatten, against the floor of merely reading every layer stream once.
	b.Run("flatten", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			if err := flatten(context.Background(), discardOutput{}, layers, spool); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The same stack under a layer that names a parent it does not declare,
	// as image tools write them: the lower layers are scanned once more.
	resolving := append(slices.Clone(layers), memLayer(tarBytes(b, []ent{tReg("data/extra/hello", "hi")})))
	b.Run("flatten-resolving", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			if err := flatten(context.Background(), discardOutput{}, resolving, spool); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reference-copy", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			for _, bl := range blobs {
				if _, err := io.Copy(io.Discard, onlyReader{bytes.NewReader(bl)}); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("reference-tar-read", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			for _, bl := range blobs {
				tr := tar.NewReader(onlyReader{bytes.NewReader(bl)})
				for {
					_, err := tr.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(io.Discard, tr); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	})
}

// randomStack builds a layer stack over a few names that keep colliding:
// files, directories, symlinks, hardlinks, whiteouts and opaque markers in
// random order and, if dups is set, duplicate names within a layer. Parent
// directory entries come before children (as docker build writes them),
// except for a third of the entries, which name their parents through
// whatever is there, symlinks to directories included (as image tools
// write them).
func randomStack(r *rand.Rand, dups bool) [][]ent {
	paths := []string{"a", "a/b", "a/f", "a/b/g", "a/b/g/q", "c", "c/h", "x", "y", "x/f", "x/b/g", "y/h"}
	// Symlink targets: files that may not exist, and directories by
	// relative, absolute, climbing and chained names.
	targets := []string{"../t", "/abs/", "plain", "a", "/a/b", "../../c", "a/b/../b", "x", "/y"}
	modes := []int64{0o755, 0o700, 0o750}
	var layers [][]ent
	var files []string // names that held a file at some point, for hardlink targets
	for l := range 2 + r.IntN(4) {
		var es []ent
		used := map[string]byte{} // name -> 'd' for directories
		underNonDir := func(p string) bool {
			for d := path.Dir(p); d != "."; d = path.Dir(d) {
				if t, ok := used[d]; ok && t != 'd' {
					return true
				}
			}
			return false
		}
		underFile := func(p string) bool {
			for d := path.Dir(p); d != "."; d = path.Dir(d) {
				if t, ok := used[d]; ok && t != 'd' && t != 'l' {
					return true
				}
			}
			return false
		}
		addParents := func(p string) bool {
			if r.IntN(3) == 0 && !underFile(p) {
				return true // through what is there
			}
			if underNonDir(p) {
				return false
			}
			var parents []string
			for d := path.Dir(p); d != "."; d = path.Dir(d) {
				parents = append([]string{d}, parents...)
			}
			for _, d := range parents {
				if _, ok := used[d]; !ok {
					es = append(es, tDirMode(d, modes[r.IntN(len(modes))]))
					used[d] = 'd'
				}
			}
			return true
		}
		hasChildren := func(p string) bool {
			for u := range used {
				if strings.HasPrefix(u, p+"/") {
					return true
				}
			}
			return false
		}
		for i := range 1 + r.IntN(7) {
			p := paths[r.IntN(len(paths))]
			k := r.IntN(10)
			if k < 8 {
				if _, ok := used[p]; ok && (!dups || r.IntN(2) == 0) {
					continue
				}
				// With dups, a non-directory may replace a directory
				// that has entries of this layer under it.
				if k >= 2 && hasChildren(p) && (!dups || r.IntN(2) == 0) || !addParents(p) {
					continue
				}
			}
			switch {
			case k < 2:
				es = append(es, tDirMode(p, modes[r.IntN(len(modes))]))
				used[p] = 'd'
			case k < 5:
				es = append(es, tReg(p, fmt.Sprintf("L%d-%d", l, i)))
				used[p] = 'f'
				files = append(files, p)
			case k < 6:
				target := targets[r.IntN(len(targets))]
				if r.IntN(3) == 0 {
					target += strconv.Itoa(i)
				}
				es = append(es, tSym(p, target))
				used[p] = 'l'
			case k < 8:
				if len(files) == 0 {
					continue
				}
				es = append(es, tLink(p, files[r.IntN(len(files))]))
				used[p] = 'h'
				files = append(files, p)
			case k < 9:
				if !underNonDir(p) {
					es = append(es, tWh(p))
				}
			default:
				d := []string{"a", "a/b", "c"}[r.IntN(3)]
				if t, ok := used[d]; (!ok || t == 'd') && addParents(d+"/z") {
					es = append(es, tOpq(d))
				}
			}
		}
		layers = append(layers, es)
	}
	return layers
}

func describeStack(layers [][]ent) string {
	var b strings.Builder
	for i, l := range layers {
		fmt.Fprintf(&b, "layer %d:\n", i)
		for _, e := range l {
			fmt.Fprintf(&b, "  %c %s %q %q %#o\n", e.hdr.Typeflag, e.hdr.Name, e.hdr.Linkname, e.body, e.hdr.Mode)
		}
	}
	return b.String()
}

// TestFlattenMatchesUmociRandom compares flatten with umoci on random layer
// stacks. Stacks that umoci refuses (mostly hardlinks to names a layer
// removed) are skipped, but flatten's output, if any, must still extract.
func TestFlattenMatchesUmociRandom(t *testing.T) {
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci not on PATH: random stacks not compared with umoci")
	}
	if testing.Short() {
		t.Skip("-short: skipping the 200 random stacks, which run umoci each")
	}
	// Counted by the subtests, which run in parallel (as many at once as
	// -parallel allows, GOMAXPROCS by default: umoci and tar are processes).
	var compared atomic.Int32
	t.Run("stacks", func(t *testing.T) {
		for seed := range uint64(200) {
			layers := randomStack(rand.New(rand.NewPCG(seed, 1)), seed%2 == 1)
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				t.Parallel()
				defer func() {
					if t.Failed() {
						t.Logf("stack:\n%s", describeStack(layers))
					}
				}()
				var flat []flattenLayer
				blobs := tarBlobs(t, layers)
				for _, b := range blobs {
					flat = append(flat, memLayer(b))
				}
				out, ferr := runFlatten(t, flat)
				rootfs, uerr := tryUmociUnpack(t, umoci, blobs)
				if uerr != nil {
					if ferr == nil {
						checkInvariants(t, readOutput(t, out), true)
						extract(t, out)
					}
					return
				}
				if ferr != nil {
					t.Fatalf("flatten: got error %v, want nil (umoci unpacks this stack)", ferr)
				}
				compared.Add(1)
				checkInvariants(t, readOutput(t, out), true)
				tree, groups := walkTree(t, extract(t, out))
				uTree, uGroups := walkTree(t, rootfs)
				compareTrees(t, tree, uTree)
				compareGroups(t, groups, uGroups)
			})
		}
	})
	// Guards against a generator change that makes umoci refuse everything.
	t.Logf("stacks compared with umoci: %d", compared.Load())
	if compared.Load() < 100 {
		t.Errorf("stacks compared with umoci: got %d, want at least 100", compared.Load())
	}
}

// TestFlattenResolvingStaysLinear feeds shapes that would make resolving
// quadratic: one directory whited out and made opaque again and again after
// many entries under it, in a layer whose parents need resolving. The
// resolver's work is counted, not timed, so a layer of 30,000 entries tells
// linear from quadratic (10^8 visits) on any machine.
func TestFlattenResolvingStaysLinear(t *testing.T) {
	const n = 10_000
	ents := []ent{tSym("x", "d")}
	for i := range n {
		ents = append(ents, tReg(fmt.Sprintf("x/f%06d", i), ""))
	}
	for range n {
		ents = append(ents, tOpq("x"), tWh("d"))
	}
	base := []ent{tDir("d"), tReg("d/lower", "l")}
	if _, err := runFlatten(t, memLayers(t, [][]ent{base, ents})); err != nil {
		t.Fatalf("flatten: got error %v, want nil", err)
	}
	// The same entries through the resolver alone, counting its work:
	// without keep's memo, every opaque marker walks all of d's names
	// again, n² visits.
	s := newSimTree()
	for layer, l := range [][]ent{base, ents} {
		s.layer = layer
		for _, e := range l {
			if _, _, err := s.scanEntry(&e.hdr); err != nil {
				t.Fatalf("layer %d: %s: %v", layer, e.hdr.Name, err)
			}
		}
	}
	if total := len(base) + len(ents); s.walked > 2*total {
		t.Errorf("the resolver's keep visited %d nodes for %d entries, want at most %d: it should stay linear", s.walked, total, 2*total)
	}
}

// TestFlattenMemoryIndependentOfContent flattens the same names with small
// and large contents, through a top layer that makes flatten resolve its
// parents: what flatten allocates must not grow with the bytes it copies.
func TestFlattenMemoryIndependentOfContent(t *testing.T) {
	stack := func(size int) []flattenLayer {
		body := strings.Repeat("x", size)
		var layers [][]ent
		for l := range 3 {
			es := []ent{tDir("usr"), tDir("usr/bin"), tSym("bin", "usr/bin")}
			for i := range 8 {
				es = append(es, tReg(fmt.Sprintf("usr/bin/f%d", i), body), tReg(fmt.Sprintf("usr/bin/l%d-%d", l, i), body))
			}
			layers = append(layers, es)
		}
		// Shadows the lower copies, which are then spooled, and names its
		// parent through the symlink.
		layers = append(layers, []ent{tReg("bin/f0", "top"), tLink("bin/f1", "bin/f0")})
		return memLayers(t, layers)
	}
	allocated := func(layers []flattenLayer) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if err := flatten(t.Context(), discardOutput{}, layers, t.TempDir()); err != nil {
			t.Fatalf("flatten: got error %v, want nil", err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, large := stack(1<<10), stack(4<<20)
	allocated(small) // warm up lazily allocated runtime state
	s, l := allocated(small), allocated(large)
	t.Logf("allocated: %d bytes for 1 KiB files, %d for 4 MiB files", s, l)
	if l > s+1<<20 {
		t.Errorf("allocated: got %d bytes for 4 MiB files and %d for 1 KiB files, want no more than 1 MiB apart", l, s)
	}
}

// BenchmarkFlattenDuplicateHardlinks re-points n hard links within one
// layer: every link name appears twice, first linking t and then t2, so each
// second entry detaches a name from t's inode.
func BenchmarkFlattenDuplicateHardlinks(b *testing.B) {
	for _, n := range []int{25_000, 50_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			ents := []ent{tReg("t", "one"), tReg("t2", "two")}
			for i := range n {
				ents = append(ents, tLink(fmt.Sprintf("l%06d", i), "t"))
			}
			for i := range n {
				ents = append(ents, tLink(fmt.Sprintf("l%06d", i), "t2"))
			}
			layers := []flattenLayer{memLayer(tarBytes(b, ents))}
			spool := b.TempDir()
			for b.Loop() {
				if err := flatten(context.Background(), discardOutput{}, layers, spool); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestFlattenResolvesThroughPullReaders runs a merged-/usr stack through
// writeRootfs, whose layer streams are gzip readers over one shared file per
// layer that every open rewinds: the scan of the lower layers must not
// disturb the stream being read, and the diff IDs still verify.
func TestFlattenResolvesThroughPullReaders(t *testing.T) {
	layers := [][]ent{
		{tDir("usr"), tDir("usr/bin"), tRegMode("usr/bin/sh", "sh", 0o755), tSym("bin", "usr/bin")},
		{tDir("etc"), tReg("etc/hostname", "h")},
		{tReg("bin/hello", "hi")},
	}
	tree, opens := writeRootfsTree(t, layers)
	if want := []int{2, 2, 1}; !slices.Equal(opens, want) {
		t.Errorf("layer opens: got %v, want %v (the lower layers once more, to resolve)", opens, want)
	}
	compareTrees(t, tree, map[string]node{
		"bin": nSym("usr/bin"), "usr": nDir(), "usr/bin": nDir(), "usr/bin/sh": nFileMode("sh", 0o755),
		"usr/bin/hello": nFile("hi"), "etc": nDir(), "etc/hostname": nFile("h"),
	})
}

// TestFlattenRewindsRootfs replaces directories filled in their own layer,
// in two layers, through writeRootfs: one more pass finds both, and
// rootfs.tar holds only what that pass wrote.
func TestFlattenRewindsRootfs(t *testing.T) {
	body := strings.Repeat("x", 3<<20) // past writeRootfs's buffer: the first pass reaches the file
	layers := [][]ent{
		{tDir("y"), tReg("y/a", body), tLink("keep", "y/a"), tReg("y", "lower")},
		{tDir("x"), tReg("x/a", body), tReg("x", "upper"), tReg("top", "t")},
	}
	tree, opens := writeRootfsTree(t, layers)
	if want := []int{2, 2}; !slices.Equal(opens, want) {
		t.Errorf("layer opens: got %v, want %v (every layer once more, for the second pass)", opens, want)
	}
	compareTrees(t, tree, map[string]node{"x": nFile("upper"), "y": nFile("lower"), "keep": nFile(body), "top": nFile("t")})
}

// writeRootfsTree runs layers through writeRootfs, whose layer streams are
// gzip readers over a file per layer, and returns the tree tar -x makes of
// rootfs.tar and how often each layer was opened.
func writeRootfsTree(t *testing.T, layers [][]ent) (map[string]node, []int) {
	t.Helper()
	dir := t.TempDir()
	names, diffIDs := gzipBlobFiles(t, layers)
	blobs := newGatedBlobs(names) // nothing held
	if err := writeRootfs(t.Context(), dir, blobs, diffIDs); err != nil {
		t.Fatalf("writeRootfs: got error %v, want nil", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, rootfsName))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, readOutput(t, b), true)
	tree, _ := walkTree(t, extract(t, b))
	opened, _, _ := blobs.state()
	return tree, opened
}

// gzipBlobFiles writes each layer as a gzip blob file and returns their
// names and diff IDs.
func gzipBlobFiles(t *testing.T, layers [][]ent) ([]string, []v1.Hash) {
	t.Helper()
	var names []string
	var diffIDs []v1.Hash
	for i, b := range tarBlobs(t, layers) {
		sum := sha256.Sum256(b)
		diffIDs = append(diffIDs, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])})
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		if _, err := zw.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d", i))
		if err := os.WriteFile(name, gz.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names, diffIDs
}
