package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"golang.org/x/sys/unix"
)

// layoutDir reads an OCI image layout. go-containerregistry's layout
// package reads index.json and every manifest and config with os.ReadFile,
// whatever they are: a FIFO blocks it for ever and a symlink to /dev/zero
// fills memory. banger reads them itself, through an os.Root (symlinks may
// not leave the layout), opening without blocking, and only regular files
// within their cap.
type layoutDir struct {
	dir  string
	root *os.Root
}

func openLayout(dir string) (*layoutDir, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout %s: %w; expected a directory with index.json and oci-layout", dir, err)
	}
	l := &layoutDir{dir: dir, root: root}
	if _, err := l.readFile("oci-layout", maxLayoutFile); err != nil {
		root.Close()
		return nil, err
	}
	return l, nil
}

// resolve finds the image tagged tag (any, if there is one image) for
// platform.
func (l *layoutDir) resolve(ctx context.Context, arg, tag string, platform v1.Platform) (*source, error) {
	im, err := l.index()
	if err != nil {
		return nil, err
	}
	// An exact ref.name wins; "3.20" also finds "docker.io/library/alpine:3.20"
	// when nothing is tagged "3.20" itself.
	var match, suffixMatch []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		refName := d.Annotations[refNameAnnotation]
		tags = append(tags, refName)
		switch {
		case tag == "" || refName == tag:
			match = append(match, d)
		case strings.HasSuffix(refName, ":"+tag):
			suffixMatch = append(suffixMatch, d)
		}
	}
	if len(match) == 0 {
		match = suffixMatch
	}
	dir := l.dir
	if len(match) != 1 {
		what := fmt.Sprintf("no image tagged %q", tag)
		if tag == "" {
			what = fmt.Sprintf("%d images and no tag given", len(match))
		}
		return nil, errorf(ErrInvalidReference, "OCI layout %s has %s; pick one with oci:%s:TAG, available tags: %s", dir, what, dir, strings.Join(showTags(nonEmpty(tags)), ", "))
	}
	d := match[0]
	src := &source{kind: fromLayout, manifestDigest: d.Digest, readConfig: l.readConfig, openBlob: l.openBlob, close: func() { l.root.Close() }}
	src.name = layoutName(dir, tag, d.Annotations[refNameAnnotation])
	switch {
	case d.MediaType.IsIndex():
		raw, err := l.readBlob("index", d, maxManifestSize)
		if err != nil {
			return nil, err
		}
		// The image is checked against the digest this index lists:
		// check the index itself first.
		if got := sha256Hex(raw); got != d.Digest.Hex {
			return nil, fmt.Errorf("OCI layout %s: index content is sha256:%s, index.json says %s; the layout is corrupt", dir, got, d.Digest)
		}
		child, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("OCI layout %s: parsing index %s: %w", dir, d.Digest, err)
		}
		src.img, src.manifestDigest, err = pickPlatform(child, platform, "oci:"+arg, l.image)
		if err != nil {
			return nil, err
		}
		src.picked = true
	case d.MediaType.IsImage():
		if src.img, err = l.image(d); err != nil {
			return nil, err
		}
	default:
		return nil, errorf(ErrUnsupported, "OCI layout %s: unsupported media type %s: not a container image or image index", dir, d.MediaType)
	}
	return src, nil
}

// showTags lists plain tags as they are and quotes odd ones (spaces,
// commas, control characters), which come from a layout's annotations.
func showTags(tags []string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = t
		if Escape(t) != t || strings.ContainsAny(t, " ,\"\\") {
			out[i] = strconv.Quote(t)
		}
	}
	return out
}

// open opens name in the layout for reading and checks that it is a
// regular file. O_NONBLOCK makes opening a FIFO return at once (and has no
// effect on regular files); the type check then refuses it.
func (l *layoutDir) open(name string) (*os.File, fs.FileInfo, error) {
	f, err := l.root.OpenFile(name, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(name, "blobs/") {
			return nil, nil, fmt.Errorf("OCI layout %s: %s is missing; the layout is incomplete", l.dir, name)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("opening OCI layout %s: %w; expected a directory with index.json and oci-layout", l.dir, err)
		}
		// os.Root refuses a symlink that leaves the layout ("path escapes
		// from parent").
		return nil, nil, errorf(ErrUnsupported, "OCI layout %s: opening %s: %w; a layout's files must be inside it", l.dir, name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, errorf(ErrUnsupported, "OCI layout %s: %s is a %s, not a regular file", l.dir, name, fileType(fi.Mode()))
	}
	return f, fi, nil
}

// readFile reads a layout file of at most limit bytes.
func (l *layoutDir) readFile(name string, limit int64) ([]byte, error) {
	f, fi, err := l.open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > limit {
		return nil, errorf(ErrTooLarge, "OCI layout %s: %s: size %d bytes is over the %s cap", l.dir, name, fi.Size(), capString(limit))
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: reading %s: %w", l.dir, name, err)
	}
	if int64(len(b)) > limit {
		return nil, errorf(ErrTooLarge, "OCI layout %s: %s: more than the %s cap", l.dir, name, capString(limit))
	}
	return b, nil
}

func blobName(d v1.Descriptor) string { return "blobs/sha256/" + d.Digest.Hex }

// readBlob reads the blob d describes, refusing d first if its digest or
// size is unacceptable for what (manifest, index, config) with that limit.
func (l *layoutDir) readBlob(what string, d v1.Descriptor, limit int64) ([]byte, error) {
	if err := checkDescriptor(what, d, limit); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	f, fi, err := l.open(blobName(d))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The file's size, not just the descriptor's, must be within the cap.
	if fi.Size() > limit {
		return nil, errorf(ErrTooLarge, "OCI layout %s: %s %s: size %d bytes is over the %s cap", l.dir, what, d.Digest, fi.Size(), capString(limit))
	}
	b, err := readCapped(f, what, d, limit)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	return b, nil
}

func (l *layoutDir) index() (*v1.IndexManifest, error) {
	raw, err := l.readFile("index.json", maxLayoutFile)
	if err != nil {
		return nil, err
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("reading %s/index.json: %w", l.dir, err)
	}
	if im.SchemaVersion != 2 {
		return nil, errorf(ErrUnsupported, "OCI layout %s: index.json has schemaVersion %d; banger reads only schemaVersion 2", l.dir, im.SchemaVersion)
	}
	return im, nil
}

func (l *layoutDir) readConfig(_ context.Context, d v1.Descriptor) ([]byte, error) {
	if err := checkDescriptor("config", d, maxConfigSize); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	f, _, err := l.open(blobName(d))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := readConfigBlob(f, d)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	return b, nil
}

// openBlob opens a layer blob. Its size and digest are the cache's to
// check, as it streams.
func (l *layoutDir) openBlob(_ context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	if err := checkDescriptor("layer", d, maxLayerSize); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	f, _, err := l.open(blobName(d))
	return f, err
}

// image reads the manifest d describes. The returned image reads its config
// and layers through l; its manifest's digest is checked by the caller.
func (l *layoutDir) image(d v1.Descriptor) (v1.Image, error) {
	raw, err := l.readBlob("manifest", d, maxManifestSize)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: parsing manifest %s: %w", l.dir, d.Digest, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = d.MediaType
	}
	return partial.CompressedToImage(&manifestImage{raw: raw, mediaType: mt, manifest: m,
		readConfig: func(d v1.Descriptor) ([]byte, error) { return l.readConfig(context.Background(), d) },
		openBlob:   func(d v1.Descriptor) (io.ReadCloser, error) { return l.openBlob(context.Background(), d) },
	})
}

// fileType names what a non-regular file is, for errors.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "special file"
}
