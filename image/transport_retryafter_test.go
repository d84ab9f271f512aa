package image

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{" 0 ", 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{"999999999999", 24 * time.Hour, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRetryAfterTransport(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		failures   int32 // answers with status before a 200
		deadline   time.Duration
		wantStatus int
		wantWaits  []time.Duration
		wantErr    bool
	}{
		{name: "429 then 200", status: 429, retryAfter: "2", failures: 1, wantStatus: 200, wantWaits: []time.Duration{2 * time.Second}},
		{name: "503 twice", status: 503, retryAfter: "1", failures: 2, wantStatus: 200, wantWaits: []time.Duration{time.Second, time.Second}},
		{name: "502 and 504 too", status: 504, retryAfter: "1", failures: 1, wantStatus: 200, wantWaits: []time.Duration{time.Second}},
		{name: "bounded attempts", status: 429, retryAfter: "1", failures: 10, wantStatus: 429, wantWaits: []time.Duration{time.Second, time.Second, time.Second}},
		{name: "longer than banger waits", status: 429, retryAfter: "3600", failures: 1, wantStatus: 429},
		{name: "no header is left to the usual retries", status: 503, failures: 1, wantStatus: 503},
		{name: "500 is not waited for", status: 500, retryAfter: "1", failures: 1, wantStatus: 500},
		{name: "past the deadline", status: 429, retryAfter: "30", failures: 1, deadline: 10 * time.Second, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) <= tt.failures {
					if tt.retryAfter != "" {
						w.Header().Set("Retry-After", tt.retryAfter)
					}
					w.WriteHeader(tt.status)
					return
				}
				w.Write([]byte("ok"))
			}))
			defer srv.Close()
			var waits []time.Duration
			rt := newRetryAfterTransport(http.DefaultTransport)
			rt.sleep = func(ctx context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			ctx := t.Context()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			resp, err := rt.RoundTrip(req)
			if tt.wantErr {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("RoundTrip() error = %v, want a deadline error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || len(waits) != len(tt.wantWaits) {
				t.Fatalf("RoundTrip() = %d after waits %v; want %d after %v", resp.StatusCode, waits, tt.wantStatus, tt.wantWaits)
			}
			for i := range waits {
				if waits[i] != tt.wantWaits[i] {
					t.Errorf("wait %d = %v, want %v", i, waits[i], tt.wantWaits[i])
				}
			}
		})
	}
}
