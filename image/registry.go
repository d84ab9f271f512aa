package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// acceptManifests are the manifest types banger reads (no Docker schema 1).
var acceptManifests = strings.Join([]string{
	string(types.OCIManifestSchema1), string(types.OCIImageIndex),
	string(types.DockerManifestSchema2), string(types.DockerManifestList),
}, ",")

func resolveRegistry(ctx context.Context, ref string, platform v1.Platform, opts PullOptions) (*source, error) {
	var nameOpts []name.Option
	if opts.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, errorf(ErrInvalidReference, "parsing reference %q: %v; expected e.g. alpine:3.20, 127.0.0.1:5000/x:y, oci:DIR[:TAG] or docker-archive:FILE[:REF]", ref, err)
	}
	// registries.conf may send the pull to mirrors first, or elsewhere;
	// the image keeps the name the user asked for.
	eps, err := registryEndpoints(ctx, ref, opts)
	if err != nil {
		return nil, err
	}
	blobs, raw, mediaType, err := fetchManifest(ctx, eps, opts.Notice)
	if err != nil {
		return nil, registryError(eps[blobs.served].ref, err, ref)
	}
	reg := blobs.repos[blobs.served]
	src := &source{
		kind:       fromRegistry,
		name:       normalizeName(r),
		readConfig: blobs.readConfig,
		openBlob:   blobs.open,
		close:      func() {},
		served:     eps[blobs.served].ref.String(),
	}
	var asked v1.Hash
	if d, ok := r.(name.Digest); ok {
		asked, _ = v1.NewHash(d.DigestStr())
	}
	switch {
	case mediaType.IsIndex():
		// The image is checked against the digest the index lists, so
		// the index is checked against the digest asked for, if any.
		if asked != (v1.Hash{}) && sha256Hex(raw) != asked.Hex {
			return nil, fmt.Errorf("pull %s: index content is sha256:%s, not the %s it was asked for; the registry is corrupt or tampered with", ref, sha256Hex(raw), asked)
		}
		im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("pull %s: parsing index: %w", ref, err)
		}
		src.img, src.manifestDigest, err = pickPlatform(im, platform, ref, func(d v1.Descriptor) (v1.Image, error) {
			raw, mt, err := reg.manifest(ctx, d.Digest.String())
			if err != nil {
				return nil, registryError(r, err, ref)
			}
			return reg.image(raw, mt)
		})
		if err != nil {
			return nil, err
		}
		src.picked = true
	case mediaType.IsImage():
		src.manifestDigest = asked
		if src.img, err = reg.image(raw, mediaType); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
	default:
		return nil, errorf(ErrUnsupported, "pull %s: unsupported media type %s: not a container image or image index", ref, mediaType)
	}
	return src, nil
}

// registryRepo reads a repository with banger's own requests, through
// go-containerregistry's authenticating transport: nothing but banger
// checks what it reads (so its own errors say what failed), no foreign URL
// is ever tried, manifests are capped by guardTransport, and redirects keep
// go-containerregistry's SSRF policy with guardTransport's hop limit.
type registryRepo struct {
	repo   name.Repository
	client *http.Client
	// manifests retries what go-containerregistry's remote retries
	// (temporary network errors, 408, 429, 5xx); blob fetches are retried
	// whole by the cache instead.
	manifests *http.Client
}

func newRegistryRepo(ctx context.Context, repo name.Repository, guarded http.RoundTripper, auth authn.Authenticator) (*registryRepo, error) {
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, transport.NewUserAgent(guarded, "banger"), []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	retrying := transport.NewRetry(tr, transport.WithRetryStatusCodes(
		http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout))
	return &registryRepo{
		repo:      repo,
		client:    &http.Client{Transport: tr, CheckRedirect: checkRedirectSSRF},
		manifests: &http.Client{Transport: retrying, CheckRedirect: checkRedirectSSRF},
	}, nil
}

func (g *registryRepo) url(kind, id string) string {
	u := url.URL{Scheme: g.repo.Scheme(), Host: g.repo.RegistryStr(), Path: "/v2/" + g.repo.RepositoryStr() + "/" + kind + "/" + id}
	return u.String()
}

// manifest fetches a manifest or index by tag or digest. The body is
// capped at maxManifestSize by guardTransport; its digest is the caller's
// to check.
func (g *registryRepo) manifest(ctx context.Context, id string) ([]byte, types.MediaType, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.url("manifests", id), nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", acceptManifests)
	resp, err := g.manifests.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", err
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	// The body's own mediaType wins over the header, which registries and
	// proxies get wrong more often.
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	mt := types.MediaType(strings.TrimSpace(strings.Split(resp.Header.Get("Content-Type"), ";")[0]))
	if json.Unmarshal(raw, &probe) == nil && probe.MediaType != "" {
		mt = probe.MediaType
	}
	return raw, mt, nil
}

func (g *registryRepo) open(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.url("blobs", d.Digest.String()), nil)
	if err != nil {
		return nil, err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp.Body, nil
}

func (g *registryRepo) readConfig(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	if err := checkDescriptor("config", d, maxConfigSize); err != nil {
		return nil, err
	}
	rc, err := g.open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readConfigBlob(rc, d)
}

// image is the manifest raw as a v1.Image whose config and layers g reads.
func (g *registryRepo) image(raw []byte, mt types.MediaType) (v1.Image, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest: %w", err)
	}
	return partial.CompressedToImage(&manifestImage{raw: raw, mediaType: mt, manifest: m,
		readConfig: func(d v1.Descriptor) ([]byte, error) { return g.readConfig(context.Background(), d) },
		openBlob:   func(d v1.Descriptor) (io.ReadCloser, error) { return g.open(context.Background(), d) },
	})
}

// manifestImage is the partial.CompressedImageCore of a manifest whose
// blobs are read by the given functions.
type manifestImage struct {
	raw        []byte
	mediaType  types.MediaType
	manifest   *v1.Manifest
	readConfig func(v1.Descriptor) ([]byte, error)
	openBlob   func(v1.Descriptor) (io.ReadCloser, error)
}

func (mi *manifestImage) RawManifest() ([]byte, error)        { return mi.raw, nil }
func (mi *manifestImage) MediaType() (types.MediaType, error) { return mi.mediaType, nil }
func (mi *manifestImage) RawConfigFile() ([]byte, error)      { return mi.readConfig(mi.manifest.Config) }

func (mi *manifestImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range mi.manifest.Layers {
		if d.Digest == h {
			return &blobLayer{desc: d, open: mi.openBlob}, nil
		}
	}
	return nil, fmt.Errorf("no layer %s in the manifest", h)
}

type blobLayer struct {
	desc v1.Descriptor
	open func(v1.Descriptor) (io.ReadCloser, error)
}

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *blobLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error)  { return l.open(l.desc) }

// registryError rewrites the registry failures a user can act on into one
// line that says what to do.
func registryError(r name.Reference, err error, asked string) error {
	var label fmt.Stringer = r
	if NormalizeName(asked) != normalizeName(r) {
		// registries.conf sent the pull elsewhere: say where.
		label = endpointRef{asked: asked, at: r.String()}
	}
	if errors.Is(err, ErrCertificate) {
		return fmt.Errorf("pull %s: %w", label, err)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("pull %s: %w; if the repository is private, log in with `podman login %s` or `docker login %s` (banger reads containers auth.json and Docker's credentials)", label, err, r.Context().RegistryStr(), r.Context().RegistryStr())
		case http.StatusNotFound:
			if isShortName(asked) {
				return fmt.Errorf("pull %s: %w; short names are Docker Hub's (banger does not search unqualified-search-registries): check the name, or write the registry, as in quay.io/%s", label, err, asked)
			}
			return fmt.Errorf("pull %s: %w; check the repository and tag exist", label, err)
		}
		return fmt.Errorf("pull %s: %w", label, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrStalled) || errors.Is(err, ErrRedirect) || errors.Is(err, ErrTooLarge) {
		return fmt.Errorf("pull %s: %w", label, err)
	}
	return errorf(ErrUnreachable, "pull %s: %w; check the registry address and your network", label, err)
}

// endpointRef names a reference as asked and where it was pulled from.
type endpointRef struct{ asked, at string }

func (e endpointRef) String() string { return e.asked + " (from " + e.at + ")" }

// isShortName says whether ref names no registry, so that Docker Hub was
// assumed: its first component has no dot or colon and is not localhost.
func isShortName(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return !ok || (!strings.ContainsAny(first, ".:") && first != "localhost")
}
