package image

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// TestRegistryEndpointsTLS checks the split of --insecure (issue 14 §2):
// --tls-verify=false skips verification but keeps HTTPS; plain HTTP is for
// insecure = true tables, localhost, and --insecure, which does both.
func TestRegistryEndpointsTLS(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "registries.conf")
	os.WriteFile(conf, []byte(`
[[registry]]
location = "reg.example"
insecure = true
[[registry.mirror]]
location = "mirror.example"
`), 0o644)
	tests := []struct {
		name       string
		ref        string
		opts       PullOptions
		wantScheme []string // per endpoint
		wantSkip   []bool
	}{
		{name: "insecure table, secure mirror", ref: "reg.example/app:1", wantScheme: []string{"https", "http"}, wantSkip: []bool{false, true}},
		{name: "--tls-verify=false", ref: "reg.example/app:1", opts: PullOptions{SkipTLSVerify: true}, wantScheme: []string{"https", "http"}, wantSkip: []bool{true, true}},
		{name: "other registry", ref: "other.example/app:1", wantScheme: []string{"https"}, wantSkip: []bool{false}},
		{name: "other registry, --tls-verify=false", ref: "other.example/app:1", opts: PullOptions{SkipTLSVerify: true}, wantScheme: []string{"https"}, wantSkip: []bool{true}},
		{name: "other registry, --insecure", ref: "other.example/app:1", opts: PullOptions{Insecure: true}, wantScheme: []string{"http"}, wantSkip: []bool{true}},
		{name: "localhost", ref: "localhost:5000/app:1", wantScheme: []string{"http"}, wantSkip: []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.RegistriesConf = conf
			tt.opts.Getenv = func(string) string { return "" }
			eps, err := registryEndpoints(t.Context(), tt.ref, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != len(tt.wantScheme) {
				t.Fatalf("%d endpoints, want %d", len(eps), len(tt.wantScheme))
			}
			for i, ep := range eps {
				scheme := ep.ref.Context().Scheme()
				tr := ep.transport.(*retryAfterTransport).base.(*guardTransport).base.(*http.Transport)
				skip := tr.TLSClientConfig.InsecureSkipVerify
				if scheme != tt.wantScheme[i] || skip != tt.wantSkip[i] {
					t.Errorf("endpoint %s: scheme %s, skip verify %v; want %s, %v", ep.Ref, scheme, skip, tt.wantScheme[i], tt.wantSkip[i])
				}
			}
		})
	}
}
