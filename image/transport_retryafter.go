package image

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// maxRetryAfter is the longest Retry-After banger waits out. Docker
	// Hub's rate limit answers ask for minutes to hours: past a minute,
	// failing says more than hanging a CI job.
	maxRetryAfter = 60 * time.Second
	// retryAfterAttempts bounds the waits for one request.
	retryAfterAttempts = 3
)

// retryAfterTransport waits out a 429, 502, 503 or 504 that carries a
// Retry-After header (seconds or an HTTP date) and sends the request again,
// at most retryAfterAttempts times, each wait at most maxRetryAfter and
// within the request's deadline. An answer without the header, or asking
// for longer, is returned as it is, for the usual retries (of manifests by
// go-containerregistry's transport, of blobs by the cache). It sits beneath
// the authenticating transport, so a retried request keeps its credentials,
// and above guardTransport, so each attempt has its own stall timer.
type retryAfterTransport struct {
	base  http.RoundTripper
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func newRetryAfterTransport(base http.RoundTripper) *retryAfterTransport {
	return &retryAfterTransport{base: base, now: time.Now, sleep: sleepContext}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *retryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := t.base.RoundTrip(req)
		if err != nil || attempt >= retryAfterAttempts || !retryAfterStatus(resp.StatusCode) {
			return resp, err
		}
		d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), t.now())
		if !ok || d > maxRetryAfter || (req.Body != nil && req.GetBody == nil) {
			return resp, nil
		}
		if deadline, ok := req.Context().Deadline(); ok && t.now().Add(d).After(deadline) {
			resp.Body.Close()
			return nil, fmt.Errorf("%s answered %q and asks to retry after %s, past the pull's deadline: %w", req.URL.Host, resp.Status, d, context.DeadlineExceeded)
		}
		// Drain a little so that the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err := t.sleep(req.Context(), d); err != nil {
			return nil, err
		}
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req = req.Clone(req.Context())
			req.Body = body
		}
	}
}

func retryAfterStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// parseRetryAfter reads a Retry-After value: delay-seconds or an HTTP
// date (RFC 9110 §10.2.3). A date in the past is no wait.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(min(n, int64(24*time.Hour/time.Second))) * time.Second, true
	}
	when, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(when.Sub(now), 0), true
}
