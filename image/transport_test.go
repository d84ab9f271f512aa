package image

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestGuardTransport(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		switch r.URL.Path {
		case "/hang":
			<-r.Context().Done()
		case "/hang-body":
			w.Header().Set("Content-Length", "10")
			w.Write([]byte("12345"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/v2/x/manifests/big":
			w.Header().Set("Content-Length", strconv.Itoa(maxManifestSize+1))
			w.Write(make([]byte, maxManifestSize+1))
		case "/v2/x/manifests/endless", "/v2/x/blobs/endless":
			buf := make([]byte, 1<<16)
			for written := 0; written < 2*maxManifestSize && r.Context().Err() == nil; written += len(buf) {
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		case "/v2/x/manifests/ok":
			w.Write([]byte(`{"schemaVersion":2}`))
		}
	}))
	t.Cleanup(srv.Close)

	tests := []struct {
		name     string
		path     string
		wantErr  error // nil: the whole body reads
		wantText string
		wantReqs int64
	}{
		{"no response headers", "/hang", ErrStalled, "sent nothing for 100ms", 1},
		{"body stops", "/hang-body", ErrStalled, "sent nothing for 100ms", 1},
		{"redirect loop", "/loop", ErrRedirect, "stopped after 10 redirects", 10},
		{"manifest declared over the cap", "/v2/x/manifests/big", ErrTooLarge, `manifest "/v2/x/manifests/big": declared size 4194305 bytes is over the 4.0 MiB cap`, 1},
		{"endless manifest", "/v2/x/manifests/endless", ErrTooLarge, `manifest "/v2/x/manifests/endless": no declared size, and more than the 4.0 MiB cap served`, 1},
		{"a blob is not capped here", "/v2/x/blobs/endless", nil, "", 1},
		{"small manifest", "/v2/x/manifests/ok", nil, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requests.Store(0)
			// The stall is short for the cases that stall, so the test is
			// quick, and generous for the others, so that a loaded machine
			// does not fail them; the test asserts what fails, never how
			// long it took.
			stall := time.Minute
			if errors.Is(tt.wantErr, ErrStalled) {
				stall = 100 * time.Millisecond
			}
			client := &http.Client{Transport: newGuardTransport(http.DefaultTransport, stall), CheckRedirect: checkRedirectSSRF}
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+tt.path, nil)
			resp, err := client.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			switch {
			case tt.wantErr == nil && err != nil:
				t.Errorf("GET %s: %v, want no error", tt.path, err)
			case tt.wantErr != nil && (!errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantText)):
				t.Errorf("GET %s: error %v, want %v containing %q", tt.path, err, tt.wantErr, tt.wantText)
			}
			if tt.wantErr != nil && retryable(err) {
				t.Errorf("retryable(%v) = true, want false", err)
			}
			if got := requests.Load(); got != tt.wantReqs {
				t.Errorf("GET %s made %d requests, want %d", tt.path, got, tt.wantReqs)
			}
		})
	}
}

func TestCheckRedirectSSRF(t *testing.T) {
	tests := []struct {
		from, to string
		refused  bool
	}{
		{"http://registry.example/v2/", "http://registry.example/other", false},
		{"http://registry.example/v2/", "https://cdn.example/blob", false},
		{"http://registry.example/v2/", "http://169.254.169.254/latest", true},
		{"http://registry.example/v2/", "http://10.0.0.1/x", true},
		{"http://registry.example/v2/", "http://127.0.0.1:5000/x", true},
		{"http://registry.example/v2/", "http://[::1]/x", true},
		{"http://registry.example/v2/", "http://[::ffff:169.254.169.254]/x", true},
		{"http://registry.example/v2/", "http://0x7f.1/x", true},
		{"http://registry.example/v2/", "http://2130706433/x", true},
		{"http://127.0.0.1:5000/v2/", "http://127.0.0.1:6000/x", false}, // same host
		{"http://127.0.0.1:5000/v2/", "http://8.8.8.8/x", false},
	}
	for _, tt := range tests {
		t.Run(tt.to, func(t *testing.T) {
			from, _ := http.NewRequest(http.MethodGet, tt.from, nil)
			to, _ := http.NewRequest(http.MethodGet, tt.to, nil)
			err := checkRedirectSSRF(to, []*http.Request{from})
			if (err != nil) != tt.refused || err != nil && !errors.Is(err, ErrRedirect) {
				t.Errorf("checkRedirectSSRF(%s -> %s) = %v, want refused %v", tt.from, tt.to, err, tt.refused)
			}
		})
	}
}
