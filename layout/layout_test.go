package layout

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestResolve(t *testing.T) {
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		src           Source
		env           map[string]string
		wantCacheRoot string
		wantDataRoot  string
		wantErr       bool
	}{
		{
			name:          "flags win over everything",
			src:           Source{CacheDirFlag: "/flag/cache", DataDirFlag: "/flag/data", UID: 0},
			env:           map[string]string{"BANGER_CACHE_DIR": "/env/cache", "BANGER_DATA_DIR": "/env/data", "HOME": "/home/u"},
			wantCacheRoot: "/flag/cache",
			wantDataRoot:  "/flag/data",
		},
		{
			name:          "environment wins over system paths",
			src:           Source{UID: 0},
			env:           map[string]string{"BANGER_CACHE_DIR": "/env/cache", "BANGER_DATA_DIR": "/env/data"},
			wantCacheRoot: "/env/cache",
			wantDataRoot:  "/env/data",
		},
		{
			name:          "root uses system paths over XDG",
			src:           Source{UID: 0},
			env:           map[string]string{"XDG_CACHE_HOME": "/xdg/cache", "XDG_DATA_HOME": "/xdg/data", "HOME": "/root"},
			wantCacheRoot: "/var/cache/banger",
			wantDataRoot:  "/var/lib/banger",
		},
		{
			name:          "user uses XDG",
			src:           Source{UID: 1000},
			env:           map[string]string{"XDG_CACHE_HOME": "/xdg/cache", "XDG_DATA_HOME": "/xdg/data", "HOME": "/home/u"},
			wantCacheRoot: "/xdg/cache/banger",
			wantDataRoot:  "/xdg/data/banger",
		},
		{
			name:          "relative XDG is ignored",
			src:           Source{UID: 1000},
			env:           map[string]string{"XDG_CACHE_HOME": "rel", "HOME": "/home/u"},
			wantCacheRoot: "/home/u/.cache/banger",
			wantDataRoot:  "/home/u/.local/share/banger",
		},
		{
			name:          "user falls back to HOME",
			src:           Source{UID: 1000},
			env:           map[string]string{"HOME": "/home/u"},
			wantCacheRoot: "/home/u/.cache/banger",
			wantDataRoot:  "/home/u/.local/share/banger",
		},
		{
			name:          "relative flag is made absolute",
			src:           Source{CacheDirFlag: "c", DataDirFlag: "d", UID: 1000},
			wantCacheRoot: filepath.Join(wd, "c"),
			wantDataRoot:  filepath.Join(wd, "d"),
		},
		{
			name:    "no HOME and nothing else",
			src:     Source{UID: 1000},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src
			src.Getenv = func(k string) string { return tt.env[k] }
			got, err := Resolve(src)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Resolve() = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve() error: %v", err)
			}
			if got.CacheRoot != tt.wantCacheRoot || got.DataRoot != tt.wantDataRoot {
				t.Errorf("Resolve() roots = %q, %q; want %q, %q", got.CacheRoot, got.DataRoot, tt.wantCacheRoot, tt.wantDataRoot)
			}
			if want := filepath.Join(tt.wantCacheRoot, "oci"); got.CacheDir != want {
				t.Errorf("CacheDir = %q, want %q", got.CacheDir, want)
			}
			if want := filepath.Join(tt.wantCacheRoot, "oci.lock"); got.LockFile != want {
				t.Errorf("LockFile = %q, want %q (outside the cache dir)", got.LockFile, want)
			}
			if want := filepath.Join(tt.wantDataRoot, "images"); got.ImagesDir != want {
				t.Errorf("ImagesDir = %q, want %q", got.ImagesDir, want)
			}
		})
	}
}

// TestResolveOverlap: the cache and the image store never overlap, since a
// full prune empties the cache (issue 11 §2).
func TestResolveOverlap(t *testing.T) {
	tests := []struct {
		name, cache, data string
		wantErr           bool
	}{
		{"apart", "/x/cache", "/x/data", false},
		{"siblings with a common prefix", "/x/cache", "/x/cache-data", false},
		{"same", "/x/b", "/x/b", true},
		{"same after cleaning", "/x/b/", "/x/./b", true},
		{"data inside cache", "/x/cache", "/x/cache/data", true},
		{"data inside the oci dir", "/x/cache", "/x/cache/oci/data", true},
		{"cache inside data", "/x/data/cache", "/x/data", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Resolve(Source{CacheDirFlag: tt.cache, DataDirFlag: tt.data, UID: 1000})
			if got := errors.Is(err, ErrOverlap); got != tt.wantErr {
				t.Errorf("Resolve(cache %q, data %q) error = %v, want overlap %v", tt.cache, tt.data, err, tt.wantErr)
			}
		})
	}
}
