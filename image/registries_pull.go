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

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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
	msg := strings.TrimRight(e.Err.Error(), "; ")
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
	ref  name.Reference
	opts []remote.Option
	dir  string // certs.d directory used
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
		ec := endpointClient{Endpoint: ep, ref: r}
		ec.opts = []remote.Option{
			remote.WithContext(ctx),
			remote.WithAuth(cred.Authenticator()),
			remote.WithUserAgent("banger"),
		}
		if opts.Transport != nil {
			ec.opts = append(ec.opts, remote.WithTransport(opts.Transport))
		} else {
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
			ec.opts = append(ec.opts, remote.WithTransport(t))
			ec.dir = certs.Dir
		}
		if opts.Jobs > 0 {
			// ggcr bounds concurrent blob GETs itself (remote.WithJobs, 4 by
			// default), beneath banger's own bound: without this, --jobs above
			// 4 would silently fetch 4 layers at a time.
			ec.opts = append(ec.opts, remote.WithJobs(opts.Jobs))
		}
		if ep.Mirror {
			// A failing mirror is passed over for the next endpoint at
			// once, rather than after ggcr's 13 s of retries.
			ec.opts = append(ec.opts, remote.WithRetryBackoff(remote.Backoff{Steps: 1}))
		}
		out = append(out, ec)
	}
	return out, nil
}

// getManifest asks each endpoint in turn for the manifest, passing over a
// mirror that fails with one notice, and returns the descriptor and the
// index of the endpoint that served it. The last endpoint, the primary,
// fails the pull.
func getManifest(ctx context.Context, eps []endpointClient, notice func(string)) (*remote.Descriptor, int, error) {
	for i, ep := range eps {
		desc, err := remote.Get(ep.ref, ep.opts...)
		if err == nil {
			return desc, i, nil
		}
		err = certificateError(ep, err)
		if !ep.Mirror || ctx.Err() != nil {
			return nil, i, err
		}
		mirrorNotice(notice, ep, eps[i+1], "manifest", err)
	}
	panic("unreachable: the last endpoint is never a mirror")
}

// openBlob opens blob d, starting at endpoint first (the one that served
// the manifest) and passing over mirrors that fail.
func openBlob(ctx context.Context, eps []endpointClient, first int, d v1.Hash, notice func(string)) (io.ReadCloser, error) {
	for i := first; i < len(eps); i++ {
		ep := eps[i]
		rc, err := func() (io.ReadCloser, error) {
			l, err := remote.Layer(ep.ref.Context().Digest(d.String()), ep.opts...)
			if err != nil {
				return nil, err
			}
			return l.Compressed()
		}()
		if err == nil {
			return rc, nil
		}
		err = certificateError(ep, err)
		if !ep.Mirror || ctx.Err() != nil {
			return nil, err
		}
		mirrorNotice(notice, ep, eps[i+1], "blob "+d.String(), err)
	}
	return nil, fmt.Errorf("no endpoint left for blob %s", d)
}

func mirrorNotice(notice func(string), ep, next endpointClient, what string, err error) {
	if notice == nil {
		return
	}
	notice(fmt.Sprintf("mirror %s failed for %s: %s; trying %s", ep.ref.Context().RegistryStr(), what, oneLineMsg(err.Error()), next.ref.Context().RegistryStr()))
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
