package image

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

const (
	// DefaultStallTimeout is how long a registry connection may make no
	// progress (no connection, no response headers, no body bytes) before
	// the request fails, when PullOptions.StallTimeout is 0. It applies even
	// without an overall deadline, so that a registry that accepts
	// connections and never answers cannot hang a CI job for hours.
	DefaultStallTimeout = 30 * time.Second

	// maxRedirects is Go's default redirect limit, which go-containerregistry
	// loses by installing a CheckRedirect of its own.
	maxRedirects = 10

	// Caps on what banger holds in memory, checked before reading. OCI's
	// distribution spec lets registries refuse manifests over 4 MiB, and
	// containerd reads no more; configs are JSON of a few KiB, but images
	// with long histories reach a few MiB.
	maxManifestSize = 4 << 20
	maxConfigSize   = 32 << 20
	maxLayoutFile   = 4 << 20
	// maxLayerSize is an absurd layer size: a descriptor claiming more is
	// refused before the cache writes a byte, since the cache streams up to
	// the declared size.
	maxLayerSize = 1 << 40
)

// guardTransport bounds what a registry can make banger wait for and hold:
// every request must get its response headers, and every body read its
// next bytes, within stall; redirect chains end after maxRedirects; a
// manifest response is cut at maxManifestSize. It sits beneath
// go-containerregistry's transports (auth, retry), so its errors are
// returned as they are and, not being temporary, are not retried there.
type guardTransport struct {
	base  http.RoundTripper
	stall time.Duration
}

func newGuardTransport(base http.RoundTripper, stall time.Duration) *guardTransport {
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	return &guardTransport{base: base, stall: stall}
}

func (g *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// http.Client links each redirected request to the response that caused
	// it, whatever CheckRedirect it was given.
	hops := 0
	for r := req; r.Response != nil && r.Response.Request != nil; r = r.Response.Request {
		hops++
	}
	if hops >= maxRedirects {
		return nil, errorf(ErrRedirect, "%w: stopped after %d redirects (a redirect loop?)", ErrRedirect, hops)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	stalled := &stallError{host: req.URL.Host, after: g.stall}
	// One timer covers the dial, the TLS handshake, the request and the
	// wait for response headers, then each body read in turn.
	timer := time.AfterFunc(g.stall, func() { cancel(stalled) })
	resp, err := g.base.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if err != nil {
		if context.Cause(ctx) == stalled {
			err = stalled
		}
		cancel(nil)
		return nil, err
	}
	body := &guardBody{rc: resp.Body, ctx: ctx, cancel: cancel, timer: timer, stall: g.stall, stalled: stalled}
	if isManifestPath(req.URL.Path) {
		if resp.ContentLength > maxManifestSize {
			body.Close()
			return nil, errorf(ErrTooLarge, "manifest %s: declared size %d bytes is over the %s cap", strconv.Quote(req.URL.Path), resp.ContentLength, capString(maxManifestSize))
		}
		body.limit, body.path = maxManifestSize, req.URL.Path
	}
	resp.Body = body
	return resp, nil
}

func isManifestPath(p string) bool {
	return strings.HasPrefix(p, "/v2/") && strings.Contains(p, "/manifests/")
}

// stallError reads "127.0.0.1:5000 sent nothing for 30s".
type stallError struct {
	host  string
	after time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("%s sent nothing for %s (a stalled connection is not retried)", e.host, e.after)
}
func (e *stallError) Is(target error) bool { return target == ErrStalled }

// guardBody fails a Read that waits longer than stall, and a manifest body
// that runs past limit.
type guardBody struct {
	rc      io.ReadCloser
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	stall   time.Duration
	stalled *stallError
	limit   int64 // 0: none
	path    string
	read    int64
}

func (b *guardBody) Read(p []byte) (int, error) {
	if b.limit > 0 && int64(len(p)) > b.limit+1-b.read {
		p = p[:b.limit+1-b.read]
	}
	// Only the wait for the server counts: time the caller spends between
	// reads (writing to a slow disk) is not the registry's.
	b.timer.Reset(b.stall)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if err != nil && context.Cause(b.ctx) == b.stalled {
		return n, b.stalled
	}
	b.read += int64(n)
	if b.limit > 0 && b.read > b.limit {
		return n, errorf(ErrTooLarge, "manifest %s: no declared size, and more than the %s cap served", strconv.Quote(b.path), capString(b.limit))
	}
	return n, err
}

func (b *guardBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

func capString(n int64) string { return humanize.IBytes(uint64(n)) }

// checkRedirectSSRF is go-containerregistry's redirect policy (remote's
// unexported checkRedirectSSRF), for the requests banger makes itself: a
// redirect from a host to a private, loopback or link-local IP literal on
// another host is refused. The hop limit is guardTransport's.
func checkRedirectSSRF(req *http.Request, via []*http.Request) error {
	if len(via) == 0 {
		return nil
	}
	orig, dest := via[0].URL.Hostname(), req.URL.Hostname()
	if dest == orig {
		return nil
	}
	if isPrivateOrLinkLocal(dest) {
		return errorf(ErrRedirect, "%w: redirect from %q to private or link-local host %q", ErrRedirect, orig, dest)
	}
	return nil
}

// isPrivateOrLinkLocal follows go-containerregistry's internal/ipaddr: IP
// literals, IPv4-mapped IPv6 and the legacy IPv4 forms the dialer accepts
// (0x7f.1, 2130706433).
func isPrivateOrLinkLocal(host string) bool {
	host, _, _ = strings.Cut(host, "%")
	addr, err := netip.ParseAddr(host)
	if err != nil {
		var ok bool
		if addr, ok = parseLegacyIPv4(host); !ok {
			return false
		}
	}
	addr = addr.WithZone("").Unmap()
	return addr.IsLoopback() || addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || addr.IsPrivate() || addr.IsUnspecified()
}

func parseLegacyIPv4(host string) (netip.Addr, bool) {
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, part := range parts[:len(parts)-1] {
		v, err := strconv.ParseUint(part, 0, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(v)
	}
	rest := 4 - (len(parts) - 1)
	v, err := strconv.ParseUint(parts[len(parts)-1], 0, 8*rest)
	if err != nil {
		return netip.Addr{}, false
	}
	for i := 3; i >= len(parts)-1; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return netip.AddrFrom4(b), true
}
