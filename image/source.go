package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// sourceKind says where an image comes from, and with it how its blobs are
// read and checked.
type sourceKind int

const (
	fromRegistry sourceKind = iota + 1
	fromLayout              // oci:DIR[:TAG]
	fromArchive             // docker-archive:FILE[:REF]
)

func (k sourceKind) String() string {
	switch k {
	case fromRegistry:
		return "registry"
	case fromLayout:
		return "oci"
	case fromArchive:
		return "docker-archive"
	}
	return fmt.Sprintf("sourceKind(%d)", int(k))
}

// hasManifest is false for a docker save archive, which has no manifest of
// its own (ggcr would synthesize one by gzipping every layer): its layers
// are plain tars keyed by their diff IDs, and the cache stores those.
func (k sourceKind) hasManifest() bool { return k != fromArchive }

// retryable says whether a failed blob read may succeed when tried again:
// never for local files, whose bytes will not change.
func (k sourceKind) retryable(err error) bool { return k == fromRegistry && retryable(err) }

// source is an image resolved from a reference, before any layer is read.
type source struct {
	kind sourceKind
	// img gives the manifest (registry, layout) or the layers and config
	// (archive). Blobs are read through readConfig and openBlob, which
	// bound and check what they read.
	img  v1.Image
	name string // default image name, normalized
	// manifestDigest is the digest the source claims for the manifest,
	// checked against the manifest's own hash; empty when it claims none.
	manifestDigest v1.Hash
	// picked is true when the image was chosen from an index by platform.
	picked bool
	// configDigest is the digest a docker archive's manifest.json gives the
	// config by its file name; empty when the name is not a digest.
	configDigest v1.Hash
	// readConfig returns the config blob d describes, at most
	// maxConfigSize bytes; an archive ignores d.
	readConfig func(ctx context.Context, d v1.Descriptor) ([]byte, error)
	// openBlob opens the layer blob d describes (by diff ID for an
	// archive). The cache checks its size and digest as it streams.
	openBlob func(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error)
	// close releases what the source holds open (a layout's directory).
	close func()
	// served is the reference at the endpoint that served a registry
	// image (a mirror's, or the primary's as registries.conf rewrote it).
	served string
}

// resolve turns a reference into an image:
//
//	oci:DIR[:TAG]              an OCI image layout
//	docker-archive:FILE[:REF]  a `docker save` tarball
//	anything else              a registry reference (Docker Hub by default)
func resolve(ctx context.Context, ref string, platform v1.Platform, opts PullOptions) (*source, error) {
	transportName, rest, hasPrefix := strings.Cut(ref, ":")
	switch {
	case hasPrefix && transportName == "oci":
		return resolveLayout(ctx, rest, platform)
	case hasPrefix && transportName == "docker-archive":
		return resolveArchiveInput(rest, opts)
	case hasPrefix && transportName == "oci-archive":
		return resolveOCIArchive(ctx, rest, platform, opts)
	case hasPrefix && (otherTransports[transportName] != "" || isTransportLike(transportName, rest)):
		return nil, refuseTransport(transportName, ref)
	}
	return resolveRegistry(ctx, ref, platform, opts)
}

// isTransportLike tells "docker://x" or "dir:/x" (a transport banger does not
// know) from "localhost:5000/x" or "alpine:3.20" (a registry reference).
// "docker-daemon:alpine:3.20" is a transport, but "alpine:3.20@sha256:…" (a
// tag and a digest) is a valid reference with the same shape.
func isTransportLike(prefix, rest string) bool {
	if strings.ContainsAny(prefix, "./") {
		return false // host name or repository path
	}
	if strings.HasPrefix(rest, "/") || strings.HasPrefix(rest, ".") {
		return true
	}
	if strings.ContainsAny(rest, "/") || !strings.Contains(rest, ":") {
		return false
	}
	_, err := name.ParseReference(prefix + ":" + rest)
	return err != nil
}

// readCapped reads a blob of at most limit bytes (its declared size was
// checked against limit already). A blob shorter than limit but of another
// size than declared is left to the digest check, which says what the
// content is.
func readCapped(r io.Reader, what string, d v1.Descriptor, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", what, d.Digest, err)
	}
	if int64(len(b)) > limit {
		if limit == d.Size {
			return nil, fmt.Errorf("%s %s: more than its declared size of %d bytes; the source is corrupt", what, d.Digest, d.Size)
		}
		return nil, errorf(ErrTooLarge, "%s %s: declared size %d bytes, but more than the %s cap served", what, d.Digest, d.Size, capString(limit))
	}
	return b, nil
}

// readConfigBlob reads a config of the size d declares, which is within
// maxConfigSize: memory is bounded by the declared size, not the cap.
func readConfigBlob(r io.Reader, d v1.Descriptor) ([]byte, error) {
	return readCapped(r, "config", d, d.Size)
}

// checkDescriptor refuses a descriptor before anything it names is read: a
// digest banger cannot check (only sha256, 64 lowercase hex digits, which
// is also what makes it safe as a file name), and a size that is negative
// or over limit.
func checkDescriptor(what string, d v1.Descriptor, limit int64) error {
	if d.Digest.Algorithm != "sha256" || !isHex64(d.Digest.Hex) {
		return errorf(ErrUnsupported, "%s has digest %q: banger reads only sha256 digests", what, d.Digest.String())
	}
	if d.Size < 0 {
		return errorf(ErrTooLarge, "%s %s: declared size %d is negative; the manifest is malformed", what, d.Digest, d.Size)
	}
	if d.Size > limit {
		return errorf(ErrTooLarge, "%s %s: declared size %d bytes is over the %s cap", what, d.Digest, d.Size, capString(limit))
	}
	return nil
}

func isHex64(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// normalizeName is the short form users type: Docker Hub's registry and
// "library/" are dropped, and the tag or digest is always present.
func normalizeName(r name.Reference) string {
	repo := r.Context().RepositoryStr()
	if reg := r.Context().RegistryStr(); reg != name.DefaultRegistry {
		repo = reg + "/" + repo
	} else {
		repo = strings.TrimPrefix(repo, "library/")
	}
	if d, ok := r.(name.Digest); ok {
		return repo + "@" + d.DigestStr()
	}
	return repo + ":" + r.Identifier()
}

// NormalizeName returns the name banger gives an image pulled from ref, or
// ref unchanged if it is not a registry reference. Image names given to
// Store.Get and Store.Remove are normalized the same way.
func NormalizeName(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ref
	}
	return normalizeName(r)
}

// splitPathRef splits "PATH[:REF]" at the last colon before which the path
// exists, since paths and references may both contain colons: the longest
// existing path wins, as it does when all of s exists.
func splitPathRef(s string) (path, ref string) {
	if _, err := os.Stat(s); err == nil {
		return s, ""
	}
	for i := len(s) - 1; i > 0; i-- {
		if s[i] != ':' {
			continue
		}
		if _, err := os.Stat(s[:i]); err == nil {
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

const refNameAnnotation = "org.opencontainers.image.ref.name"

func resolveLayout(ctx context.Context, arg string, platform v1.Platform) (*source, error) {
	dir, tag := splitPathRef(arg)
	if dir == "" {
		return nil, errorf(ErrInvalidReference, "oci: needs a directory, as in oci:DIR[:TAG]")
	}
	l, err := openLayout(dir)
	if err != nil {
		return nil, err
	}
	src, err := l.resolve(ctx, arg, tag, platform)
	if err != nil {
		l.root.Close()
		return nil, err
	}
	return src, nil
}

// layoutName names an image from a layout: its ref.name annotation when that
// is a full reference, else the directory's name and the tag.
func layoutName(dir, tag, refName string) string {
	if strings.ContainsAny(refName, ":/@") {
		return NormalizeName(refName)
	}
	if tag == "" {
		tag = refName
	}
	if tag == "" {
		tag = "latest"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	return filepath.Base(abs) + ":" + tag
}

func resolveArchive(arg string) (*source, error) {
	file, ref := splitPathRef(arg)
	if file == "" {
		return nil, errorf(ErrInvalidReference, "docker-archive: needs a file, as in docker-archive:FILE[:REF]")
	}
	if fi, err := os.Stat(file); err != nil {
		return nil, fmt.Errorf("opening docker archive: %w; expected a file written by `docker save`", err)
	} else if !fi.Mode().IsRegular() {
		// A FIFO would block the open for ever, a device never end.
		return nil, errorf(ErrUnsupported, "docker archive %s is a %s, not a regular file", file, fileType(fi.Mode()))
	}
	var tag *name.Tag
	if ref != "" {
		t, err := name.NewTag(ref)
		if err != nil {
			return nil, errorf(ErrInvalidReference, "parsing tag %q in docker-archive:%s: %v", ref, arg, err)
		}
		tag = &t
	}
	entries, err := readArchiveEntries(file)
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w; expected a tar file written by `docker save`", file, err)
	}
	if size, ok := entries.sizeOf("manifest.json"); ok && size > maxManifestSize {
		return nil, errorf(ErrTooLarge, "docker archive %s: manifest.json: size %d bytes is over the %s cap", file, size, capString(maxManifestSize))
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w; expected a tar file written by `docker save`", file, err)
	}
	// The image ggcr will read: the only one, or the first tagged ref,
	// compared as ggcr's tarball.Image does, by resolved name.
	var desc *tarball.Descriptor
	var all []string
	for i, d := range m {
		all = append(all, d.RepoTags...)
		for _, rt := range d.RepoTags {
			if t, err := name.NewTag(rt); err == nil && tag != nil && t.Name() == tag.Name() && desc == nil {
				desc = &m[i]
			}
		}
	}
	switch {
	case tag == nil && len(m) != 1:
		return nil, errorf(ErrInvalidReference, "docker archive %s holds %d images; pick one with docker-archive:%s:REF, available: %s", file, len(m), file, strings.Join(nonEmpty(all), ", "))
	case tag == nil:
		desc = &m[0]
	case desc == nil:
		return nil, errorf(ErrInvalidReference, "docker archive %s has no image tagged %s; available: %s", file, ref, strings.Join(nonEmpty(all), ", "))
	}
	// ggcr reads the config whole as it opens the image.
	if size, ok := entries.sizeOf(desc.Config); ok && size > maxConfigSize {
		return nil, errorf(ErrTooLarge, "docker archive %s: config %s: size %d bytes is over the %s cap", file, desc.Config, size, capString(maxConfigSize))
	}
	img, err := tarball.ImageFromPath(file, tag)
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w", file, err)
	}
	src := &source{
		kind:         fromArchive,
		img:          img,
		configDigest: archiveConfigDigest(desc.Config),
		readConfig:   func(context.Context, v1.Descriptor) ([]byte, error) { return img.RawConfigFile() },
		openBlob: func(_ context.Context, d v1.Descriptor) (io.ReadCloser, error) {
			l, err := img.LayerByDiffID(d.Digest)
			if err != nil {
				return nil, err
			}
			return l.Uncompressed()
		},
		close: func() {},
	}
	switch {
	case tag != nil:
		src.name = NormalizeName(tag.String())
	case len(m[0].RepoTags) > 0:
		src.name = NormalizeName(m[0].RepoTags[0])
	default:
		src.name = strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)) + ":latest"
	}
	return src, nil
}

// archiveConfigDigest reads the config's digest from its name in a docker
// archive's manifest.json: "<hex>.json" (docker save before 25),
// "blobs/sha256/<hex>" (an OCI layout inside) or "sha256:<hex>" (ggcr's
// tarball.Write). It returns the zero Hash for any other name.
func archiveConfigDigest(file string) v1.Hash {
	s := strings.TrimSuffix(strings.TrimPrefix(file, "blobs/sha256/"), ".json")
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
		return v1.Hash{}
	}
	return v1.Hash{Algorithm: "sha256", Hex: s}
}

// pickPlatform chooses the image for platform from an index, or says which
// platforms there are; open reads the chosen manifest. It returns the
// image's digest as the index lists it, which the image's manifest must
// hash to.
func pickPlatform(im *v1.IndexManifest, want v1.Platform, ref string, open func(v1.Descriptor) (v1.Image, error)) (v1.Image, v1.Hash, error) {
	if im.SchemaVersion != 2 {
		return nil, v1.Hash{}, errorf(ErrUnsupported, "%s: index has schemaVersion %d; banger reads only schemaVersion 2", ref, im.SchemaVersion)
	}
	var available []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		if !d.MediaType.IsImage() {
			continue
		}
		if d.Platform.OS == "unknown" {
			continue // attestation manifests pushed alongside images
		}
		available = append(available, platformString(*d.Platform))
		if d.Platform.OS == want.OS && d.Platform.Architecture == want.Architecture &&
			(want.Variant == "" || d.Platform.Variant == want.Variant) {
			if err := checkDescriptor("manifest for "+platformString(want), d, maxManifestSize); err != nil {
				return nil, v1.Hash{}, fmt.Errorf("%s: %w", ref, err)
			}
			img, err := open(d)
			if err != nil {
				return nil, v1.Hash{}, fmt.Errorf("reading %s for %s: %w", ref, platformString(want), err)
			}
			return img, d.Digest, nil
		}
	}
	slices.Sort(available)
	return nil, v1.Hash{}, errorf(ErrInvalidPlatform, "%s has no image for platform %s; available: %s", ref, platformString(want), strings.Join(nonEmpty(slices.Compact(available)), ", "))
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
		return v1.Platform{}, errorf(ErrInvalidPlatform, "invalid platform %q: want os/arch[/variant], e.g. linux/amd64 or linux/arm/v7", s)
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return []string{"(none)"}
	}
	return out
}
