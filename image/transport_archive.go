package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// transportsHelp lists what banger reads, for errors about transports.
const transportsHelp = "banger reads a registry reference, oci:DIR[:TAG], oci-archive:FILE[:TAG] and docker-archive:FILE[:REF] (FILE may be - for standard input, and gzip-compressed)"

// otherTransports are skopeo's transports banger does not read, with what
// to do instead. A reference starting with one is refused rather than
// taken for a Docker Hub name ("dir:x" would otherwise be image dir, tag x).
var otherTransports = map[string]string{
	"docker-daemon":      "export the image with `docker save IMAGE | banger image pull docker-archive:-`",
	"containers-storage": "export the image with `podman save IMAGE | banger image pull docker-archive:-`",
	"dir":                "convert it with `skopeo copy dir:PATH oci:DIR`",
	"ostree":             "convert it with `skopeo copy ostree:REF oci:DIR`",
	"sif":                "convert it with `skopeo copy sif:FILE oci:DIR`",
	"tarball":            "convert it with `skopeo copy tarball:FILE oci:DIR`",
}

// refuseTransport is the one-line error for a transport banger does not
// read. docker:// is skopeo's registry transport: banger takes the
// reference without it.
func refuseTransport(name, ref string) error {
	if name == "docker" {
		return errorf(ErrInvalidReference, "unknown transport %q in %q: write the registry reference without docker://, as in %s; %s", name, ref, strings.TrimPrefix(ref, "docker://"), transportsHelp)
	}
	if what, ok := otherTransports[name]; ok {
		return errorf(ErrInvalidReference, "unknown transport %q in %q (one of skopeo's that banger does not read): %s; %s", name, ref, what, transportsHelp)
	}
	return errorf(ErrInvalidReference, "unknown transport %q in %q; %s", name, ref, transportsHelp)
}

// spool holds a copy of an archive that banger cannot read in place
// (standard input, a gzip-compressed file): an unlinked temp file, kept by
// its descriptor and read through /proc/self/fd, so that it is gone when
// banger exits, however it exits, and prune never sees it.
type spool struct {
	f *os.File
}

// newSpool creates the spool in dir (the cache's tmp dir) if it exists,
// else in $TMPDIR: the cache directory is the cache's to create.
func newSpool(dir string) (*spool, error) {
	if fi, err := os.Stat(dir); dir == "" || err != nil || !fi.IsDir() {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, ".spool-*")
	if err != nil {
		return nil, fmt.Errorf("creating a spool file: %w", err)
	}
	// Flocked and unlinked at once: a prune that lists it in the instant
	// between sees a writer alive, and afterwards there is nothing to see.
	unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	os.Remove(f.Name())
	return &spool{f: f}, nil
}

func (s *spool) path() string { return "/proc/self/fd/" + strconv.Itoa(int(s.f.Fd())) }
func (s *spool) close()       { s.f.Close() }

// fill copies r into the spool, then syncs it.
func (s *spool) fill(r io.Reader, what string) error {
	if _, err := io.Copy(s.f, r); err != nil {
		return fmt.Errorf("spooling %s: %w", what, err)
	}
	return nil
}

var gzipMagic = []byte{0x1f, 0x8b}

// resolveArchiveInput reads docker-archive:FILE[:REF] where FILE may be -
// (standard input) or gzip-compressed (docker save | gzip): either is
// spooled, uncompressed, first, since a docker archive is read by seeking.
func resolveArchiveInput(arg string, opts PullOptions) (*source, error) {
	var in io.Reader
	var what, defaultName string
	ref := ""
	switch {
	case arg == "-" || strings.HasPrefix(arg, "-:"):
		_, ref, _ = strings.Cut(arg, ":")
		in = opts.Stdin
		if in == nil {
			in = os.Stdin
		}
		what, defaultName = "standard input", "stdin:latest"
	default:
		file, r := splitPathRef(arg)
		// O_NONBLOCK: opening a FIFO must not wait for a writer; the type
		// check in resolveArchive refuses it.
		f, err := os.OpenFile(file, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return resolveArchive(arg) // which says what is wrong
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return resolveArchive(arg)
		}
		magic := make([]byte, 2)
		if n, _ := io.ReadFull(f, magic); n < 2 || !bytes.Equal(magic, gzipMagic) {
			return resolveArchive(arg)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		in, ref, what = f, r, file
		base := filepath.Base(file)
		for _, ext := range []string{".tar.gz", ".tgz", ".gz"} {
			base = strings.TrimSuffix(base, ext)
		}
		defaultName = base + ":latest"
	}
	br := bufio.NewReaderSize(in, 1<<20)
	if magic, _ := br.Peek(2); bytes.Equal(magic, gzipMagic) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("reading docker archive %s: gzip: %w", what, err)
		}
		defer zr.Close()
		in = zr
	} else {
		in = br
	}
	sp, err := newSpool(opts.spoolDir)
	if err != nil {
		return nil, err
	}
	if err := sp.fill(in, what); err != nil {
		sp.close()
		return nil, fmt.Errorf("reading docker archive %s: %w", what, err)
	}
	arg = sp.path()
	if ref != "" {
		arg += ":" + ref
	}
	src, err := resolveArchive(arg)
	if err != nil {
		sp.close()
		return nil, &renamedError{strings.ReplaceAll(err.Error(), sp.path(), what), err}
	}
	if src.name == filepath.Base(sp.path())+":latest" {
		src.name = defaultName
	}
	closeSrc := src.close
	src.close = func() { closeSrc(); sp.close() }
	return src, nil
}

// resolveOCIArchive reads oci-archive:FILE[:TAG], a tar of an OCI layout
// (skopeo's and buildah's format, gzip-compressed or not): it is unpacked
// into a temp directory under $TMPDIR, removed when the pull ends, and
// read as oci:DIR[:TAG]. Only directories and regular files are unpacked,
// and only names inside the layout.
func resolveOCIArchive(ctx context.Context, arg string, platform v1.Platform, opts PullOptions) (*source, error) {
	file, tag := splitPathRef(arg)
	if file == "" {
		return nil, errorf(ErrInvalidReference, "oci-archive: needs a file, as in oci-archive:FILE[:TAG]")
	}
	f, err := os.OpenFile(file, os.O_RDONLY|unix.O_NONBLOCK, 0) // a FIFO must not block the open
	if err != nil {
		return nil, fmt.Errorf("opening OCI archive: %w; expected a tar of an OCI layout (skopeo copy … oci-archive:FILE)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		return nil, errorf(ErrUnsupported, "OCI archive %s is a %s, not a regular file", file, fileType(fi.Mode()))
	}
	dir, err := os.MkdirTemp("", "banger-oci-archive-")
	if err != nil {
		return nil, fmt.Errorf("unpacking OCI archive %s: %w", file, err)
	}
	if err := unpackLayout(ctx, f, dir); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("unpacking OCI archive %s: %w", file, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "oci-layout")); err != nil {
		_, dockerErr := os.Lstat(filepath.Join(dir, "manifest.json"))
		os.RemoveAll(dir)
		if dockerErr == nil {
			return nil, errorf(ErrInvalidReference, "OCI archive %s is a docker save archive; pull it as docker-archive:%s", file, arg)
		}
		return nil, fmt.Errorf("OCI archive %s has no oci-layout file: not a tar of an OCI layout", file)
	}
	target := dir
	if tag != "" {
		target += ":" + tag
	}
	src, err := resolveLayout(ctx, target, platform)
	if err != nil {
		os.RemoveAll(dir)
		return nil, &renamedError{strings.ReplaceAll(strings.ReplaceAll(err.Error(), "oci:"+dir, "oci-archive:"+file), dir, file), err}
	}
	if strings.HasPrefix(src.name, filepath.Base(dir)+":") {
		base := filepath.Base(file)
		for _, ext := range []string{".tar.gz", ".tgz", ".tar"} {
			base = strings.TrimSuffix(base, ext)
		}
		src.name = base + strings.TrimPrefix(src.name, filepath.Base(dir))
	}
	closeSrc := src.close
	src.close = func() { closeSrc(); os.RemoveAll(dir) }
	return src, nil
}

// unpackLayout unpacks the tar (or tar.gz) r into dir, refusing anything
// but directories and regular files, and names that leave dir.
func unpackLayout(ctx context.Context, r io.Reader, dir string) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var in io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, gzipMagic) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		in = zr
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(in)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == "." {
			continue
		}
		if !fs.ValidPath(name) {
			return fmt.Errorf("entry %q: not a name inside the layout", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if d := path.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		default:
			return errorf(ErrUnsupported, "entry %q is a %s; an OCI layout holds only directories and regular files", hdr.Name, tarType(hdr.Typeflag))
		}
	}
}

// renamedError is err with the temp path it names replaced by what the
// user gave; errors.Is still finds what err wraps.
type renamedError struct {
	msg string
	err error
}

func (e *renamedError) Error() string { return e.msg }
func (e *renamedError) Unwrap() error { return e.err }

func tarType(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "FIFO"
	}
	return fmt.Sprintf("tar entry of type %q", t)
}
