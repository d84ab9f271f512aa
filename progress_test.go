package main

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestRenderProgress: the progress line never takes the terminal's last
// column, shortens the reference before it drops figures, and says the
// phase (issue 9 §3).
func TestRenderProgress(t *testing.T) {
	const ref = "registry.example.com:5000/team/some-rather-long-repository/name:v1.2.3"
	tests := []struct {
		name        string
		label       string
		done, total int64
		elapsed     time.Duration
		width       int
		want        string // a substring
		wantNot     string
	}{
		{"wide", "alpine:3.20", 1 << 20, 4 << 20, 2 * time.Second, 120, "pulling alpine:3.20: fetching 1.0 MiB / 4.0 MiB, 512 KiB/s", ""},
		{"first second has no rate", "alpine:3.20", 1 << 20, 4 << 20, 500 * time.Millisecond, 120, "fetching 1.0 MiB / 4.0 MiB", "/s"},
		{"unknown total", "alpine:3.20", 1 << 20, 0, 0, 120, "fetching 1.0 MiB", "/ "},
		{"all bytes in", "alpine:3.20", 4 << 20, 4 << 20, 3 * time.Second, 120, "flattening 4.0 MiB / 4.0 MiB", "/s"},
		{"long reference shortened in the middle", ref, 1 << 20, 4 << 20, 2 * time.Second, 80, "…", ""},
		{"narrow drops the rate", ref, 1 << 20, 4 << 20, 2 * time.Second, 50, "fetching 1.0 MiB / 4.0 MiB", "/s"},
		{"very narrow", ref, 1 << 20, 4 << 20, 2 * time.Second, 20, "pulling", ""},
		{"negative done", "a", -5, 10, 0, 80, "fetching 0 B / 10 B", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := renderProgress(tt.label, tt.done, tt.total, tt.elapsed, tt.width)
			if n := utf8.RuneCountInString(got); n > tt.width-1 {
				t.Errorf("renderProgress(width %d) = %q, %d columns, want at most %d", tt.width, got, n, tt.width-1)
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("renderProgress() = %q, want it to contain %q", got, tt.want)
			}
			if tt.wantNot != "" && strings.Contains(got, tt.wantNot) {
				t.Errorf("renderProgress() = %q, want no %q", got, tt.wantNot)
			}
		})
	}
}
