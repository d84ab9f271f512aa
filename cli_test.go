package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestResolvePullWaits: the variables that shorten a pull's waits take Go
// durations; anything else is a usage error naming the variable.
func TestResolvePullWaits(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    pullWaits
		wantErr string
	}{
		{name: "unset: the defaults", want: pullWaits{}},
		{name: "empty: the defaults", env: map[string]string{envStallTimeout: "", envRetryBackoff: ""}, want: pullWaits{}},
		{name: "both set", env: map[string]string{envStallTimeout: "2s", envRetryBackoff: "1ms"}, want: pullWaits{stall: 2 * time.Second, backoff: time.Millisecond}},
		{name: "stall alone", env: map[string]string{envStallTimeout: "1m30s"}, want: pullWaits{stall: 90 * time.Second}},
		{name: "no unit", env: map[string]string{envStallTimeout: "30"}, wantErr: `$BANGER_STALL_TIMEOUT is "30", not a positive duration such as 5s or 500ms; unset it for the default (30s)`},
		{name: "zero", env: map[string]string{envRetryBackoff: "0s"}, wantErr: `$BANGER_RETRY_BACKOFF is "0s", not a positive duration such as 5s or 500ms; unset it for the default (250ms)`},
		{name: "negative", env: map[string]string{envRetryBackoff: "-1s"}, wantErr: `$BANGER_RETRY_BACKOFF is "-1s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolvePullWaits(func(name string) string { return tt.env[name] })
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || !errors.Is(err, errUsage) {
					t.Fatalf("resolvePullWaits(%v) = %v, %v; want a usage error starting %q", tt.env, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("resolvePullWaits(%v) = %+v, %v; want %+v", tt.env, got, err, tt.want)
			}
		})
	}
}
