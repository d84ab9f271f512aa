package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ErrUsage marks an error in what the user asked for (a malformed reference,
// an unknown transport, a bad platform), as opposed to a failure to do it.
var ErrUsage = errors.New("usage")

// usageError wraps err so that errors.Is(err, ErrUsage) holds while its
// message stays as written.
type usageError struct{ error }

func (usageError) Is(target error) bool { return target == ErrUsage }
func (e usageError) Unwrap() error      { return e.error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// source is an image resolved from a reference, before any layer is read.
type source struct {
	img  v1.Image
	name string // default image name, normalized
	// kind is "registry", "oci" or "docker-archive".
	kind string
	// uncompressedBlobs means the source holds layers as plain tars keyed by
	// their diff IDs (docker save), so the cache stores those.
	uncompressedBlobs bool
	// manifestDigest is the digest the source claims for the manifest,
	// checked against the manifest's own hash; empty when it claims none.
	manifestDigest v1.Hash
	// configDigest is the digest a docker archive's manifest.json gives the
	// config by its file name; empty when the name is not a digest.
	configDigest v1.Hash
	// served is the reference at the endpoint that served a registry
	// image (a mirror's, or the primary's as registries.conf rewrote it).
	served string
	// openBlob, for registries, opens a blob from the endpoint that served
	// the manifest, passing over failing mirrors to the next endpoint.
	openBlob func(ctx context.Context, d v1.Hash) (io.ReadCloser, error)
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
		return resolveLayout(rest, platform)
	case hasPrefix && transportName == "docker-archive":
		return resolveArchive(rest)
	case hasPrefix && isTransportLike(transportName, rest):
		return nil, usagef("unknown transport %q in %q; use a registry reference, oci:DIR[:TAG] or docker-archive:FILE[:REF]", transportName, ref)
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

func resolveRegistry(ctx context.Context, ref string, platform v1.Platform, opts PullOptions) (*source, error) {
	var nameOpts []name.Option
	if opts.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, usagef("parsing reference %q: %v; expected e.g. alpine:3.20, 127.0.0.1:5000/x:y, oci:DIR[:TAG] or docker-archive:FILE[:REF]", ref, err)
	}
	// registries.conf may send the pull to mirrors first, or elsewhere;
	// the image keeps the name the user asked for.
	eps, err := registryEndpoints(ctx, ref, opts)
	if err != nil {
		return nil, err
	}
	desc, served, err := getManifest(ctx, eps, opts.Notice)
	if err != nil {
		return nil, registryError(eps[served].ref, err, ref)
	}
	src := &source{name: normalizeName(r), kind: "registry", served: eps[served].ref.String()}
	src.openBlob = func(ctx context.Context, d v1.Hash) (io.ReadCloser, error) {
		return openBlob(ctx, eps, served, d, opts.Notice)
	}
	r = eps[served].ref
	switch {
	case desc.MediaType.IsIndex():
		// A digest in ref names the index (remote.Get checked it); the
		// image is then checked against the digest the index lists.
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, registryError(r, err, ref)
		}
		src.img, src.manifestDigest, err = pickPlatform(idx, platform, ref)
		if err != nil {
			return nil, err
		}
	case desc.MediaType.IsImage():
		if d, ok := r.(name.Digest); ok {
			src.manifestDigest, _ = v1.NewHash(d.DigestStr())
		}
		src.img, err = desc.Image()
		if err != nil {
			return nil, registryError(r, err, ref)
		}
	default:
		return nil, fmt.Errorf("pull %s: unsupported media type %s: not a container image or image index", ref, desc.MediaType)
	}
	return src, nil
}

// registryError rewrites the registry failures a user can act on into one
// line that says what to do. asked is the reference as the user wrote it.
func registryError(r name.Reference, err error, asked string) error {
	if errors.Is(err, ErrCertificate) {
		return fmt.Errorf("pull %s: %w", r, err)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("pull %s: %w; if the repository is private, log in with `podman login %s` or `docker login %s` (banger reads containers auth.json and Docker's credentials)", r, err, r.Context().RegistryStr(), r.Context().RegistryStr())
		case http.StatusNotFound:
			if isShortName(asked) {
				return fmt.Errorf("pull %s: %w; short names are Docker Hub's (banger does not search unqualified-search-registries): check the name, or write the registry, as in quay.io/%s", r, err, asked)
			}
			return fmt.Errorf("pull %s: %w; check the repository and tag exist", r, err)
		}
	}
	return fmt.Errorf("pull %s: %w; check the registry address and your network (use --insecure for a plain-HTTP registry other than localhost)", r, err)
}

// isShortName says whether ref names no registry, so that Docker Hub was
// assumed: its first component has no dot or colon and is not localhost.
func isShortName(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return !ok || (!strings.ContainsAny(first, ".:") && first != "localhost")
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

func resolveLayout(arg string, platform v1.Platform) (*source, error) {
	dir, tag := splitPathRef(arg)
	if dir == "" {
		return nil, usagef("oci: needs a directory, as in oci:DIR[:TAG]")
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout %s: %w; expected a directory with index.json and oci-layout", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading %s/index.json: %w", dir, err)
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
	if len(match) != 1 {
		what := fmt.Sprintf("no image tagged %q", tag)
		if tag == "" {
			what = fmt.Sprintf("%d images and no tag given", len(match))
		}
		return nil, usagef("OCI layout %s has %s; pick one with oci:%s:TAG, available tags: %s", dir, what, dir, strings.Join(nonEmpty(tags), ", "))
	}
	d := match[0]
	src := &source{kind: "oci", manifestDigest: d.Digest}
	src.name = layoutName(dir, tag, d.Annotations[refNameAnnotation])
	switch {
	case d.MediaType.IsIndex():
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
		}
		// ggcr reads a layout's blobs unverified, and the image is then
		// checked against the digest this index lists: check the index.
		raw, err := child.RawManifest()
		if err != nil {
			return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
		}
		if got := sha256Hex(raw); d.Digest.Algorithm != "sha256" || got != d.Digest.Hex {
			return nil, fmt.Errorf("OCI layout %s: index content is sha256:%s, index.json says %s; the layout is corrupt", dir, got, d.Digest)
		}
		src.img, src.manifestDigest, err = pickPlatform(child, platform, "oci:"+arg)
		if err != nil {
			return nil, err
		}
	case d.MediaType.IsImage():
		src.img, err = idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
		}
	default:
		return nil, fmt.Errorf("OCI layout %s: unsupported media type %s: not a container image or image index", dir, d.MediaType)
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
		return nil, usagef("docker-archive: needs a file, as in docker-archive:FILE[:REF]")
	}
	if _, err := os.Stat(file); err != nil {
		return nil, fmt.Errorf("opening docker archive: %w; expected a file written by `docker save`", err)
	}
	var tag *name.Tag
	if ref != "" {
		t, err := name.NewTag(ref)
		if err != nil {
			return nil, usagef("parsing tag %q in docker-archive:%s: %v", ref, arg, err)
		}
		tag = &t
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
		return nil, usagef("docker archive %s holds %d images; pick one with docker-archive:%s:REF, available: %s", file, len(m), file, strings.Join(nonEmpty(all), ", "))
	case tag == nil:
		desc = &m[0]
	case desc == nil:
		return nil, usagef("docker archive %s has no image tagged %s; available: %s", file, ref, strings.Join(nonEmpty(all), ", "))
	}
	img, err := tarball.ImageFromPath(file, tag)
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w", file, err)
	}
	src := &source{img: img, kind: "docker-archive", uncompressedBlobs: true, configDigest: archiveConfigDigest(desc.Config)}
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
// platforms there are. It returns the image's digest as the index lists it,
// which the image's manifest must hash to.
func pickPlatform(idx v1.ImageIndex, want v1.Platform, ref string) (v1.Image, v1.Hash, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("reading index of %s: %w", ref, err)
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
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, v1.Hash{}, fmt.Errorf("reading %s for %s: %w", ref, platformString(want), err)
			}
			return img, d.Digest, nil
		}
	}
	slices.Sort(available)
	return nil, v1.Hash{}, usagef("%s has no image for platform %s; available: %s (choose with --platform)", ref, platformString(want), strings.Join(nonEmpty(slices.Compact(available)), ", "))
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
		return v1.Platform{}, usagef("invalid platform %q: want os/arch[/variant], e.g. linux/amd64 or linux/arm/v7", s)
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
