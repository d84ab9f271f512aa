package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// epoch is every entry's and the config's time, so that one seed and size
// always give the same digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const refNameAnnotation = "org.opencontainers.image.ref.name"

// mkimage writes an OCI image layout holding one image of about SIZE
// uncompressed bytes in five gzip layers, generated from a seeded PRNG:
//
//	0 base    thousands of small files (1/4 to 8 KiB, mean 4 KiB): 70% text,
//	          30% binary-like, with symlinks and hardlinks
//	1 libs    binary-like files (64 KiB to 4 MiB): compressible about 2x
//	2 text    text files of words (16 to 496 KiB)
//	3 data    incompressible random files (1 to 8 MiB)
//	4 update  whiteouts of files and whole directories of layer 0, opaque
//	          directories, overwritten files, hardlinks to layer 2 files,
//	          symlinks, and new files
//
// Each layer is about SIZE/5. The layers are generated in parallel, each
// from its own PRNG, so the result does not depend on scheduling.
func mkimage(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ExitOnError)
	sizeFlag := fs.String("size", "300m", "uncompressed size of the image (300m, 1g)")
	seed := fs.Uint64("seed", 1, "PRNG seed; the same seed and size give the same image")
	tag := fs.String("tag", "latest", "tag recorded in index.json, for oci:DIR:TAG")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one layout DIR")
	}
	dir := fs.Arg(0)
	size, err := parseSize(*sizeFlag)
	if err != nil {
		return err
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}

	per := size / int64(len(layerKinds))
	results := make([]layerResult, len(layerKinds))
	errs := make([]error, len(layerKinds))
	var wg sync.WaitGroup
	for i, kind := range layerKinds {
		wg.Go(func() {
			g := newGen(*seed, uint64(i))
			results[i], errs[i] = writeLayer(blobs, func(lw *layerWriter) error {
				lw.g = g
				return kind.fill(lw, per)
			})
			results[i].kind = kind.name
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, layerKinds[i].name, err)
		}
	}

	return writeImage(dir, *tag, results)
}

// writeImage writes the config, manifest and index.json of an image made of
// the layers in results (bottom first) into the layout at dir, whose blobs
// are already in place.
func writeImage(dir, tag string, results []layerResult) error {
	blobs := filepath.Join(dir, "blobs", "sha256")
	cfg := v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: []string{"/bin/sh"},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1}
	var total, compressed int64
	for i, r := range results {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, r.diffID)
		cfg.History = append(cfg.History, v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "benchtool layer " + r.kind})
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayer, Size: r.size, Digest: r.digest})
		total += r.raw
		compressed += r.size
		fmt.Fprintf(os.Stderr, "layer %d %-6s %5d files %7.1f MiB -> %7.1f MiB gzip %s\n", i, r.kind, r.files, mib(r.raw), mib(r.size), r.digest)
	}
	rawCfg, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(rawCfg))}
	if m.Config.Digest, err = writeBlob(blobs, rawCfg); err != nil {
		return err
	}
	rawManifest, err := json.Marshal(m)
	if err != nil {
		return err
	}
	manifestDigest, err := writeBlob(blobs, rawManifest)
	if err != nil {
		return err
	}
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType:   types.OCIManifestSchema1,
			Size:        int64(len(rawManifest)),
			Digest:      manifestDigest,
			Annotations: map[string]string{refNameAnnotation: tag},
		}},
	}
	rawIndex, err := json.Marshal(index)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), rawIndex, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "image %s: %.1f MiB uncompressed, %.1f MiB compressed, manifest %s\n", tag, mib(total), mib(compressed), manifestDigest)
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func writeBlob(dir string, b []byte) (v1.Hash, error) {
	sum := sha256.Sum256(b)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	return h, os.WriteFile(filepath.Join(dir, h.Hex), b, 0o644)
}

type layerKind struct {
	name string
	fill func(lw *layerWriter, size int64) error
}

var layerKinds = []layerKind{
	{"base", fillBase},
	{"libs", fillLibs},
	{"text", fillText},
	{"data", fillData},
	{"update", fillUpdate},
}

// The names of layers 0 and 2 are functions of the index alone, so that
// layer 4 can whiteout, overwrite and link them without reading them.
const (
	baseMean     = 4 << 10
	basePerDir   = 64
	textMean     = 256 << 10
	textFileBase = "usr/share/text/doc"
)

func baseCount(size int64) int { return int(max(size/baseMean, basePerDir)) }
func basePkg(j int) string     { return fmt.Sprintf("usr/share/pkg%04d", j/basePerDir) }
func baseName(j int) string {
	ext := ".txt"
	if j%10 >= 7 {
		ext = ".bin"
	}
	return fmt.Sprintf("%s/f%03d%s", basePkg(j), j%basePerDir, ext)
}
func textCount(size int64) int { return int(max(size/textMean, 1)) }
func textName(j int) string    { return fmt.Sprintf("%s%05d.txt", textFileBase, j) }

func fillBase(lw *layerWriter, size int64) error {
	n := baseCount(size)
	for j := range n {
		b := lw.buf(256 + lw.g.rng.IntN(2*baseMean-512))
		if j%10 >= 7 {
			lw.g.binary(b)
		} else {
			lw.g.text(b)
		}
		if err := lw.file(baseName(j), b); err != nil {
			return err
		}
		switch j % 100 {
		case 17:
			if err := lw.symlink(fmt.Sprintf("%s/link%03d", basePkg(j), j%basePerDir), path.Base(baseName(j))); err != nil {
				return err
			}
		case 41:
			if err := lw.hardlink(fmt.Sprintf("%s/hard%03d", basePkg(j), j%basePerDir), baseName(j)); err != nil {
				return err
			}
		}
	}
	return nil
}

func fillLibs(lw *layerWriter, size int64) error {
	return fillSized(lw, size, 64<<10, 4<<20, lw.g.binary, "usr/lib/lib%04d.so.1")
}

func fillText(lw *layerWriter, size int64) error {
	for j := range textCount(size) {
		b := lw.buf(16<<10 + lw.g.rng.IntN(2*textMean-32<<10))
		lw.g.text(b)
		if err := lw.file(textName(j), b); err != nil {
			return err
		}
	}
	return nil
}

func fillData(lw *layerWriter, size int64) error {
	return fillSized(lw, size, 1<<20, 8<<20, lw.g.random, "opt/data/blob%04d.bin")
}

// fillSized writes files of minSize up to maxSize bytes, filled by fill and
// named by format with their index, until the layer holds size bytes; the
// last one is cut to fit.
func fillSized(lw *layerWriter, size int64, minSize, maxSize int, fill func([]byte), format string) error {
	for j := 0; lw.raw < size; j++ {
		n := min(int64(minSize+lw.g.rng.IntN(maxSize-minSize)), max(size-lw.raw, 1))
		b := lw.buf(int(n))
		fill(b)
		if err := lw.file(fmt.Sprintf(format, j), b); err != nil {
			return err
		}
	}
	return nil
}

func fillUpdate(lw *layerWriter, size int64) error {
	nBase, nText := baseCount(size), textCount(size)
	nPkg := (nBase + basePerDir - 1) / basePerDir
	for p := range nPkg {
		pkg := basePkg(p * basePerDir)
		switch p % 50 {
		case 7: // the whole package goes
			if err := lw.whiteout(pkg); err != nil {
				return err
			}
		case 13: // the package is replaced by a new one
			if err := lw.opaque(pkg); err != nil {
				return err
			}
			for k := range 3 {
				b := lw.buf(2 << 10)
				lw.g.text(b)
				if err := lw.file(fmt.Sprintf("%s/new%d.txt", pkg, k), b); err != nil {
					return err
				}
			}
		}
	}
	for j := range nBase {
		if p := j / basePerDir % 50; p == 7 || p == 13 {
			continue // the package is gone or replaced whole
		}
		switch j % 20 {
		case 3:
			if err := lw.whiteout(baseName(j)); err != nil {
				return err
			}
		case 11:
			b := lw.buf(256 + lw.g.rng.IntN(2*baseMean-512))
			lw.g.text(b)
			if err := lw.file(baseName(j), b); err != nil {
				return err
			}
		}
	}
	for j := range nText {
		switch j % 10 {
		case 2: // a link in this layer to a file of a lower one
			if err := lw.hardlink(fmt.Sprintf("usr/share/text/link%05d", j), textName(j)); err != nil {
				return err
			}
		case 5:
			b := lw.buf(16<<10 + lw.g.rng.IntN(64<<10))
			lw.g.text(b)
			if err := lw.file(textName(j), b); err != nil {
				return err
			}
		}
	}
	for j := range 32 {
		if err := lw.symlink(fmt.Sprintf("usr/bin/tool%03d", j), fmt.Sprintf("../lib/lib%04d.so.1", j)); err != nil {
			return err
		}
	}
	for j := 0; lw.raw < size; j++ {
		n := min(int64(4<<10+lw.g.rng.IntN(1<<20)), max(size-lw.raw, 1))
		b := lw.buf(int(n))
		if j%3 == 0 {
			lw.g.binary(b)
		} else {
			lw.g.text(b)
		}
		if err := lw.file(fmt.Sprintf("opt/app/part%05d", j), b); err != nil {
			return err
		}
	}
	return nil
}

type layerResult struct {
	kind   string
	digest v1.Hash
	diffID v1.Hash
	size   int64 // compressed
	raw    int64 // file content, uncompressed
	files  int
}

// writeLayer streams a layer's tar through gzip into dir, hashing both
// streams on the way, and names the blob by its digest.
func writeLayer(dir string, fill func(*layerWriter) error) (layerResult, error) {
	var res layerResult
	f, err := os.CreateTemp(dir, ".layer-*")
	if err != nil {
		return res, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	blobHash, diffHash := sha256.New(), sha256.New()
	counter := &countWriter{w: io.MultiWriter(f, blobHash)}
	bw := bufio.NewWriterSize(counter, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.DefaultCompression)
	if err != nil {
		return res, err
	}
	lw := &layerWriter{tw: tar.NewWriter(io.MultiWriter(zw, diffHash)), dirs: map[string]bool{}}
	if err := fill(lw); err != nil {
		return res, err
	}
	for _, c := range []io.Closer{lw.tw, zw} {
		if err := c.Close(); err != nil {
			return res, err
		}
	}
	if err := bw.Flush(); err != nil {
		return res, err
	}
	res.digest = hashOf(blobHash)
	res.diffID = hashOf(diffHash)
	res.size, res.raw, res.files = counter.n, lw.raw, lw.files
	if err := f.Close(); err != nil {
		return res, err
	}
	return res, os.Rename(f.Name(), filepath.Join(dir, res.digest.Hex))
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// layerWriter writes tar entries with fixed owners and times, creating each
// parent directory once, before its first entry.
type layerWriter struct {
	tw    *tar.Writer
	g     *gen
	dirs  map[string]bool
	b     []byte
	raw   int64
	files int
}

func (lw *layerWriter) buf(n int) []byte {
	if cap(lw.b) < n {
		lw.b = make([]byte, n)
	}
	return lw.b[:n]
}

func (lw *layerWriter) header(h *tar.Header) error {
	if err := lw.parents(path.Dir(h.Name)); err != nil {
		return err
	}
	h.ModTime, h.Uname, h.Gname, h.Format = epoch, "root", "root", tar.FormatPAX
	return lw.tw.WriteHeader(h)
}

func (lw *layerWriter) parents(dir string) error {
	if dir == "." || lw.dirs[dir] {
		return nil
	}
	if err := lw.parents(path.Dir(dir)); err != nil {
		return err
	}
	lw.dirs[dir] = true
	return lw.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch, Uname: "root", Gname: "root", Format: tar.FormatPAX})
}

func (lw *layerWriter) file(name string, b []byte) error {
	mode := int64(0o644)
	if path.Ext(name) != ".txt" {
		mode = 0o755
	}
	if err := lw.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b))}); err != nil {
		return err
	}
	lw.raw += int64(len(b))
	lw.files++
	_, err := lw.tw.Write(b)
	return err
}

func (lw *layerWriter) symlink(name, target string) error {
	return lw.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
}

func (lw *layerWriter) hardlink(name, target string) error {
	return lw.header(&tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644})
}

func (lw *layerWriter) whiteout(name string) error {
	return lw.header(&tar.Header{Typeflag: tar.TypeReg, Name: path.Join(path.Dir(name), ".wh."+path.Base(name)), Mode: 0o644})
}

func (lw *layerWriter) opaque(dir string) error {
	return lw.header(&tar.Header{Typeflag: tar.TypeReg, Name: dir + "/.wh..wh..opq", Mode: 0o644})
}

// gen makes file content. Text is words from a fixed vocabulary, common
// words far more often than rare ones; binary-like data is 8-byte tokens
// from a small dictionary mixed with zero runs and some noise, about as
// compressible as executables; random data does not compress.
type gen struct {
	rng    *rand.Rand
	words  [][]byte
	tokens [][8]byte
}

var (
	vocabOnce sync.Once
	vocab     [][]byte
	tokens    [][8]byte
)

func newGen(seed, layer uint64) *gen {
	vocabOnce.Do(func() {
		r := rand.New(rand.NewPCG(42, 42))
		const letters = "etaoinshrdlcumwfgypbvkjxqz"
		for range 4096 {
			w := make([]byte, 2+r.IntN(9))
			for i := range w {
				// Favour common letters, as English does.
				w[i] = letters[r.IntN(len(letters))*r.IntN(len(letters))/len(letters)]
			}
			vocab = append(vocab, w)
		}
		for range 512 {
			var t [8]byte
			fillRandom(r, t[:])
			tokens = append(tokens, t)
		}
	})
	return &gen{rng: rand.New(rand.NewPCG(seed, layer)), words: vocab, tokens: tokens}
}

// skewed returns an index below n, small ones much more often.
func (g *gen) skewed(n int) int {
	u := g.rng.Uint64()
	a, b := u&0xffff, (u>>16)&0xffff
	return int(a * b * uint64(n) >> 32)
}

func (g *gen) text(b []byte) {
	for i, k := 0, 0; i < len(b); k++ {
		i += copy(b[i:], g.words[g.skewed(len(g.words))])
		if i < len(b) {
			if k%12 == 11 {
				b[i] = '\n'
			} else {
				b[i] = ' '
			}
			i++
		}
	}
}

func (g *gen) binary(b []byte) {
	for i := 0; i < len(b); i += 8 {
		var t [8]byte
		switch r := g.rng.Uint64(); r & 7 {
		case 0, 1:
		case 2:
			v := g.rng.Uint64()
			for j := range t {
				t[j] = byte(v >> (8 * j))
			}
		default:
			t = g.tokens[g.skewed(len(g.tokens))]
		}
		copy(b[i:], t[:])
	}
}

func (g *gen) random(b []byte) { fillRandom(g.rng, b) }

// findImage returns the image tagged tag in the layout at dir.
func findImage(dir, tag string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Annotations[refNameAnnotation] == tag {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("no image tagged %q in %s", tag, dir)
}

// push copies the image tagged -tag in the layout DIR to the registry
// reference REF, as it is: the same blobs, manifest and digests.
func push(args []string) error {
	fs := flag.NewFlagSet("push", flag.ExitOnError)
	tag := fs.String("tag", "latest", "tag in the layout's index.json")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return fmt.Errorf("want DIR and REF")
	}
	img, err := findImage(fs.Arg(0), *tag)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(fs.Arg(1), name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(ref, img, remote.WithJobs(4))
}

// layers prints the path of each layer blob of the image tagged -tag in the
// layout DIR, one a line, bottom layer first.
func layers(args []string) error {
	fs := flag.NewFlagSet("layers", flag.ExitOnError)
	tag := fs.String("tag", "latest", "tag in the layout's index.json")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want DIR")
	}
	digests, err := layerDigests(fs.Arg(0), *tag)
	if err != nil {
		return err
	}
	for _, d := range digests {
		fmt.Println(filepath.Join(fs.Arg(0), "blobs", d.Algorithm, d.Hex))
	}
	return nil
}

func layerDigests(dir, tag string) ([]v1.Hash, error) {
	img, err := findImage(dir, tag)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var ds []v1.Hash
	for _, l := range m.Layers {
		ds = append(ds, l.Digest)
	}
	return ds, nil
}
