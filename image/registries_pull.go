package image

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrCertificate is matched (errors.Is) by a failure to verify a registry's
// TLS certificate.
var ErrCertificate = errors.New("certificate not trusted")

// CertificateError is a TLS verification failure talking to Host.
type CertificateError struct {
	Host string
	// Dir is the certs.d directory that was used, if any.
	Dir string
	Err error
}

func (e *CertificateError) Error() string {
	msg := strings.TrimRight(e.Err.Error(), "; \n")
	if e.Dir != "" {
		return fmt.Sprintf("%s (with the CAs in %s)", msg, e.Dir)
	}
	return msg
}
func (e *CertificateError) Unwrap() error        { return e.Err }
func (e *CertificateError) Is(target error) bool { return target == ErrCertificate }

// endpointClient is one endpoint with what it takes to talk to it.
type endpointClient struct {
	Endpoint
	ref       name.Reference
	transport http.RoundTripper // guarded, Retry-After honoured, with the endpoint's TLS
	auth      authn.Authenticator
	dir       string // certs.d directory used
}

// registryEndpoints resolves registries.conf, certificates and credentials
// for ref, and returns its endpoints in the order to try them.
func registryEndpoints(ctx context.Context, ref string, opts PullOptions) ([]endpointClient, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	regs, err := ResolveRegistries(RegistriesSource{File: opts.RegistriesConf, Getenv: getenv, ReadFile: os.ReadFile, Glob: filepath.Glob})
	if err != nil {
		return nil, err
	}
	eps, err := regs.Endpoints(ref)
	if err != nil {
		return nil, err
	}
	var out []endpointClient
	for _, ep := range eps {
		var nameOpts []name.Option
		if opts.Insecure || ep.Insecure {
			nameOpts = append(nameOpts, name.Insecure)
		}
		r, err := name.ParseReference(ep.Ref, nameOpts...)
		if err != nil {
			return nil, fmt.Errorf("registries.conf rewrites %s to %q, which is not a reference: %v", ref, ep.Ref, err)
		}
		host := r.Context().RegistryStr()
		cred, err := ResolveAuth(AuthSource{AuthFile: opts.AuthFile, Getenv: getenv, ReadFile: os.ReadFile}, host+"/"+r.Context().RepositoryStr())
		if err != nil {
			return nil, err
		}
		ec := endpointClient{Endpoint: ep, ref: r, auth: cred.Authenticator()}
		base := opts.Transport
		if base == nil {
			certs, err := ResolveCerts(CertsSource{CertDir: opts.CertDir, Getenv: getenv, ReadDir: os.ReadDir, ReadFile: os.ReadFile}, host)
			if err != nil {
				return nil, err
			}
			tlsConfig, err := certs.TLSConfig(opts.SkipTLSVerify || opts.Insecure || ep.Insecure)
			if err != nil {
				return nil, err
			}
			t := remote.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = tlsConfig
			base, ec.dir = t, certs.Dir
		}
		ec.transport = newRetryAfterTransport(newGuardTransport(base, opts.StallTimeout))
		out = append(out, ec)
	}
	return out, nil
}

// endpointBlobs reads from the endpoint that served the manifest, and from
// the endpoints after it when that one is a mirror that fails.
type endpointBlobs struct {
	ctx    context.Context
	eps    []endpointClient
	served int
	notice func(string)

	mu    sync.Mutex
	repos []*registryRepo // by endpoint, made when first needed
}

// fetchManifest asks each endpoint in turn for the manifest, passing over
// a mirror that fails with one notice. The last endpoint, the primary,
// fails the pull; its index is then blobs.served.
func fetchManifest(ctx context.Context, eps []endpointClient, notice func(string)) (*endpointBlobs, []byte, types.MediaType, error) {
	b := &endpointBlobs{ctx: ctx, eps: eps, notice: notice, repos: make([]*registryRepo, len(eps))}
	for i, ep := range eps {
		b.served = i
		reg, err := b.repo(i)
		if err == nil {
			var raw []byte
			var mt types.MediaType
			if raw, mt, err = reg.manifest(ctx, ep.ref.Identifier()); err == nil {
				return b, raw, mt, nil
			}
		}
		err = certificateError(ep, err)
		if !ep.Mirror || ctx.Err() != nil {
			return b, nil, "", err
		}
		b.mirrorNotice(ep, eps[i+1], "manifest", err)
	}
	panic("unreachable: the last endpoint is never a mirror")
}

func (b *endpointBlobs) repo(i int) (*registryRepo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.repos[i] == nil {
		ep := b.eps[i]
		reg, err := newRegistryRepo(b.ctx, ep.ref.Context(), ep.transport, ep.auth)
		if err != nil {
			return nil, certificateError(ep, err)
		}
		if ep.Mirror {
			// A mirror that answers 5xx is passed over for the next
			// endpoint at once, not after the manifest retries.
			reg.manifests = reg.client
		}
		b.repos[i] = reg
	}
	return b.repos[i], nil
}

// try calls f with each endpoint's repository from the served one on,
// passing over mirrors that fail.
func (b *endpointBlobs) try(ctx context.Context, what string, f func(*registryRepo) error) error {
	for i := b.served; i < len(b.eps); i++ {
		ep := b.eps[i]
		reg, err := b.repo(i)
		if err == nil {
			err = f(reg)
		}
		if err == nil {
			return nil
		}
		err = certificateError(ep, err)
		if !ep.Mirror || ctx.Err() != nil {
			return err
		}
		b.mirrorNotice(ep, b.eps[i+1], what, err)
	}
	return fmt.Errorf("no endpoint left for %s", what)
}

func (b *endpointBlobs) open(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := b.try(ctx, "blob "+d.Digest.String(), func(reg *registryRepo) (err error) {
		rc, err = reg.open(ctx, d)
		return err
	})
	return rc, err
}

func (b *endpointBlobs) readConfig(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	var data []byte
	err := b.try(ctx, "config "+d.Digest.String(), func(reg *registryRepo) (err error) {
		data, err = reg.readConfig(ctx, d)
		return err
	})
	return data, err
}

func (b *endpointBlobs) mirrorNotice(ep, next endpointClient, what string, err error) {
	if b.notice == nil {
		return
	}
	b.notice(fmt.Sprintf("mirror %s failed for %s: %s; trying %s", ep.ref.Context().RegistryStr(), what, oneLineMsg(Escape(err.Error())), next.ref.Context().RegistryStr()))
}

// certificateError marks a TLS verification failure so that the CLI can
// say which option will help.
func certificateError(ep endpointClient, err error) error {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	if errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return &CertificateError{Host: ep.ref.Context().RegistryStr(), Dir: ep.dir, Err: err}
	}
	return err
}
