package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger/banger/cache"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testEnv is a cache and a store in a fresh temp dir.
type testEnv struct {
	cacheDir string // the blob cache: <cacheDir>/blobs/sha256/<hex>
	cache    *cache.Cache
	storeDir string
	store    *Store
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{
		cacheDir: filepath.Join(root, "cache", "oci"),
		storeDir: filepath.Join(root, "data", "images"),
	}
	e.cache = cache.New(e.cacheDir, filepath.Join(root, "cache", "oci.lock"), cache.Options{
		Warn: func(msg string) { t.Errorf("cache warning: %s", msg) },
	})
	e.store = NewStore(e.storeDir)
	return e
}

// cachedBlob returns the cached blob with digest h, or fails the test.
func (e *testEnv) cachedBlob(t *testing.T, h v1.Hash) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.cacheDir, "blobs", "sha256", h.Hex))
	if err != nil {
		t.Fatalf("cached blob %s: %v", h, err)
	}
	return b
}

// checkNothingPublished checks that a failed pull left the store without
// images and without temp directories, and the cache without temp files.
func (e *testEnv) checkNothingPublished(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(e.storeDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, ent := range entries {
		switch ent.Name() {
		case versionName, namesName, lockName: // the store's own files
			continue
		}
		t.Errorf("store after a failed pull: found %q, want no entries", ent.Name())
	}
	tmps, err := os.ReadDir(filepath.Join(e.cacheDir, "tmp"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, ent := range tmps {
		t.Errorf("cache tmp/ after a failed pull: found %q, want no entries", ent.Name())
	}
}

// rootfsFiles reads an image's rootfs.tar into name -> body for regular
// files, and name -> "" for other entries.
func rootfsFiles(t *testing.T, img Image) map[string]string {
	t.Helper()
	b, err := os.ReadFile(img.Rootfs)
	if err != nil {
		t.Fatalf("reading rootfs: %v", err)
	}
	files := map[string]string{}
	for _, e := range readOutput(t, b) {
		if e.hdr.Typeflag == tar.TypeReg {
			files[strings.TrimSuffix(e.hdr.Name, "/")] = e.body
		}
	}
	return files
}

func sha256Of(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// Layers of the standard test image: the second one deletes a file of the
// first and adds its own.
func baseLayerEnts() []ent {
	return []ent{tDir("etc"), tReg("etc/os-release", "ID=banger-test\n"), tDir("bin"), tReg("bin/tool", "tool\n")}
}

func topLayerEnts() []ent {
	return []ent{tWh("bin/tool"), tDir("app"), tReg("app/run", "run\n")}
}

var wantFiles = map[string]string{"etc/os-release": "ID=banger-test\n", "app/run": "run\n"}

func zstdLayer(t *testing.T, ents ...ent) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func uncompressedLayer(t *testing.T, ents ...ent) v1.Layer {
	t.Helper()
	return static.NewLayer(tarBytes(t, ents), types.OCIUncompressedLayer)
}

// publish makes img available as a reference of the given kind.
func publish(t *testing.T, kind string, img v1.Image) string {
	t.Helper()
	switch kind {
	case "registry":
		ref := startRegistry(t, nil) + "/test/app:1"
		pushImage(t, ref, img)
		return ref
	case "oci":
		dir := filepath.Join(t.TempDir(), "app")
		writeLayout(t, dir, layoutEntry{tag: "1", img: img})
		return "oci:" + dir + ":1"
	case "docker-archive":
		file := filepath.Join(t.TempDir(), "app.tar")
		tag, err := name.NewTag("app:1")
		if err != nil {
			t.Fatal(err)
		}
		if err := tarball.WriteToFile(file, tag, img); err != nil {
			t.Fatal(err)
		}
		return "docker-archive:" + file
	}
	t.Fatalf("unknown kind %q", kind)
	return ""
}

func TestPull(t *testing.T) {
	pulledAt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	stdImage := func(t *testing.T) v1.Image {
		return testImage(t, linuxAMD64, gzipLayer(t, baseLayerEnts()...), gzipLayer(t, topLayerEnts()...))
	}
	tests := []struct {
		name     string
		ref      func(t *testing.T) (ref string, img v1.Image)
		opts     PullOptions
		wantName string // "" for the test's own check
		wantPlat string
		want     map[string]string
		archive  bool // blobs cached under diff IDs, uncompressed
	}{
		{
			name: "registry",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				return publish(t, "registry", img), img
			},
			wantPlat: "linux/amd64", want: wantFiles,
		},
		{
			name: "registry index, platform",
			ref: func(t *testing.T) (string, v1.Image) {
				host := startRegistry(t, nil)
				pushIndex(t, host+"/multi:1", multiIndex(t, linuxAMD64, linuxARM64))
				return host + "/multi:1", nil
			},
			opts:     PullOptions{Platform: "linux/arm64"},
			wantPlat: "linux/arm64", want: map[string]string{"platform": "linux/arm64"},
		},
		{
			name: "registry index by digest",
			ref: func(t *testing.T) (string, v1.Image) {
				host := startRegistry(t, nil)
				idx := multiIndex(t, linuxAMD64, linuxARMv7)
				pushIndex(t, host+"/multi:1", idx)
				return host + "/multi@" + digestOf(t, idx).String(), nil
			},
			opts:     PullOptions{Platform: "linux/arm/v7"},
			wantPlat: "linux/arm/v7", want: map[string]string{"platform": "linux/arm/v7"},
		},
		{
			name: "registry image by digest",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				ref := publish(t, "registry", img)
				return strings.TrimSuffix(ref, ":1") + "@" + digestOf(t, img).String(), img
			},
			wantPlat: "linux/amd64", want: wantFiles,
		},
		{
			name: "oci layout",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				return publish(t, "oci", img), img
			},
			wantName: "app:1", wantPlat: "linux/amd64", want: wantFiles,
		},
		{
			name: "oci layout index entry",
			ref: func(t *testing.T) (string, v1.Image) {
				dir := filepath.Join(t.TempDir(), "multi")
				writeLayout(t, dir, layoutEntry{tag: "2", idx: multiIndex(t, linuxAMD64, linuxARM64)})
				return "oci:" + dir + ":2", nil
			},
			opts:     PullOptions{Platform: "linux/arm64"},
			wantName: "multi:2", wantPlat: "linux/arm64", want: map[string]string{"platform": "linux/arm64"},
		},
		{
			name: "docker archive",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				return publish(t, "docker-archive", img), img
			},
			wantName: "app:1", wantPlat: "linux/amd64", want: wantFiles, archive: true,
		},
		{
			name: "docker archive of several, by ref",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				file := filepath.Join(t.TempDir(), "several.tar")
				writeArchive(t, file, map[string]v1.Image{"app:1": img, "other:2": platformImage(t, linuxARM64)})
				return "docker-archive:" + file + ":app:1", img
			},
			wantName: "app:1", wantPlat: "linux/amd64", want: wantFiles, archive: true,
		},
		{
			name: "zstd layers",
			ref: func(t *testing.T) (string, v1.Image) {
				img := testImage(t, linuxAMD64, zstdLayer(t, baseLayerEnts()...), zstdLayer(t, topLayerEnts()...))
				return publish(t, "registry", img), img
			},
			wantPlat: "linux/amd64", want: wantFiles,
		},
		{
			name: "uncompressed layers",
			ref: func(t *testing.T) (string, v1.Image) {
				img := testImage(t, linuxAMD64, uncompressedLayer(t, baseLayerEnts()...), uncompressedLayer(t, topLayerEnts()...))
				return publish(t, "oci", img), img
			},
			wantName: "app:1", wantPlat: "linux/amd64", want: wantFiles,
		},
		{
			name: "gzip, zstd and uncompressed together",
			ref: func(t *testing.T) (string, v1.Image) {
				img := testImage(t, linuxAMD64, gzipLayer(t, baseLayerEnts()...), zstdLayer(t, topLayerEnts()...),
					uncompressedLayer(t, tReg("app/more", "more\n")))
				return publish(t, "registry", img), img
			},
			wantPlat: "linux/amd64",
			want:     map[string]string{"etc/os-release": "ID=banger-test\n", "app/run": "run\n", "app/more": "more\n"},
		},
		{
			name: "name override",
			ref: func(t *testing.T) (string, v1.Image) {
				img := stdImage(t)
				return publish(t, "oci", img), img
			},
			opts:     PullOptions{Name: "mine"},
			wantName: "mine", wantPlat: "linux/amd64", want: wantFiles,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			ref, src := tt.ref(t)
			opts := tt.opts
			opts.Now = func() time.Time { return pulledAt }
			got, err := Pull(t.Context(), e.cache, e.store, ref, opts)
			if err != nil {
				t.Fatalf("Pull(%s) error = %v, want none", ref, err)
			}
			wantName := tt.wantName
			if wantName == "" {
				wantName = NormalizeName(ref)
			}
			if got.Name != wantName || got.Reference != ref || got.Platform != tt.wantPlat || !got.PulledAt.Equal(pulledAt) {
				t.Errorf("Pull(%s) = name %q ref %q platform %q pulled %v, want %q %q %q %v",
					ref, got.Name, got.Reference, got.Platform, got.PulledAt, wantName, ref, tt.wantPlat, pulledAt)
			}
			if got.WorkingDir != "/app" || len(got.Env) != 1 || got.Env[0] != "PATH=/bin" {
				t.Errorf("Pull(%s) = workdir %q env %q, want /app [PATH=/bin]", ref, got.WorkingDir, got.Env)
			}
			if !filepath.IsAbs(got.Rootfs) || filepath.Dir(filepath.Dir(got.Rootfs)) != e.storeDir {
				t.Errorf("Pull(%s).Rootfs = %q, want an absolute path under %s", ref, got.Rootfs, e.storeDir)
			}
			info, err := os.Stat(got.Rootfs)
			if err != nil || info.Size() != got.Size {
				t.Errorf("Pull(%s): rootfs %v, %v, want a file of Size %d", ref, info, err, got.Size)
			}
			files := rootfsFiles(t, got)
			if len(files) != len(tt.want) {
				t.Errorf("Pull(%s) rootfs files = %q, want %q", ref, files, tt.want)
			}
			for n, body := range tt.want {
				if files[n] != body {
					t.Errorf("Pull(%s) rootfs %s = %q, want %q", ref, n, files[n], body)
				}
			}
			stored, err := e.store.Get(t.Context(), got.ID)
			if err != nil || stored.Name != got.Name || stored.Rootfs != got.Rootfs || stored.ConfigDigest != got.ConfigDigest || stored.ManifestDigest != got.ManifestDigest {
				t.Errorf("Get(%s) = %+v, %v, want %+v", got.ID, stored, err, got)
			}
			if src == nil {
				return
			}
			cfgDigest, err := src.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			if got.ConfigDigest != cfgDigest.String() {
				t.Errorf("Pull(%s).ConfigDigest = %s, want %s", ref, got.ConfigDigest, cfgDigest)
			}
			if want := digestOf(t, src).String(); !tt.archive && got.ManifestDigest != want {
				t.Errorf("Pull(%s).ManifestDigest = %s, want %s", ref, got.ManifestDigest, want)
			}
			layers, err := src.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range layers {
				if !tt.archive {
					e.cachedBlob(t, digestOf(t, l))
					continue
				}
				// docker save layers: cached as plain tars under diff IDs.
				diffID, err := l.DiffID()
				if err != nil {
					t.Fatal(err)
				}
				b := e.cachedBlob(t, diffID)
				if sha256Of(b) != diffID {
					t.Errorf("cached layer %d = content %s, want diff ID %s", i, sha256Of(b), diffID)
				}
				if _, err := tar.NewReader(bytes.NewReader(b)).Next(); err != nil {
					t.Errorf("cached layer %d is not a plain tar: %v", i, err)
				}
				if _, err := os.Stat(filepath.Join(e.cacheDir, "blobs", "sha256", digestOf(t, l).Hex)); err == nil {
					t.Errorf("cached layer %d: found its compressed digest in the cache, want only the diff ID", i)
				}
			}
		})
	}
}

// TestPullAgain pulls one image twice through one cache (issue 13): the
// second pull finds it up to date (by manifest; a docker archive, which has
// none, by config) and flattens nothing; pulled again after rm, it reads
// the cached blobs and gets the same ID, since the ID is the config's.
func TestPullAgain(t *testing.T) {
	for _, kind := range []string{"registry", "oci", "docker-archive"} {
		t.Run(kind, func(t *testing.T) {
			e := newTestEnv(t)
			ref := publish(t, kind, testImage(t, linuxAMD64, gzipLayer(t, baseLayerEnts()...), gzipLayer(t, topLayerEnts()...)))
			first, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{})
			if err != nil {
				t.Fatalf("Pull(%s) error = %v", ref, err)
			}
			before, err := os.Stat(first.Rootfs)
			if err != nil {
				t.Fatal(err)
			}
			var progress []int64
			second, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Progress: func(done, total int64) { progress = append(progress, done) }})
			if err != nil {
				t.Fatalf("Pull(%s) again: error = %v", ref, err)
			}
			if first.ID != second.ID || first.Name != second.Name || first.Rootfs != second.Rootfs {
				t.Errorf("Pull(%s) twice = IDs %s, %s names %q, %q, want one ID, one name, one rootfs", ref, first.ID, second.ID, first.Name, second.Name)
			}
			if wantUpToDate := kind != "docker-archive"; second.UpToDate != wantUpToDate {
				t.Errorf("Pull(%s) again: UpToDate = %v, want %v", ref, second.UpToDate, wantUpToDate)
			}
			if after, err := os.Stat(second.Rootfs); err != nil || !os.SameFile(before, after) {
				t.Errorf("Pull(%s) again replaced the rootfs (%v), want the one flattened first", ref, err)
			}
			if len(progress) != 0 {
				t.Errorf("Pull(%s) again: Progress called %d times, want no blob read", ref, len(progress))
			}
			if _, err := e.store.Remove(t.Context(), false, second.Name); err != nil {
				t.Fatal(err)
			}
			third, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Progress: func(done, total int64) { progress = append(progress, done) }})
			if err != nil {
				t.Fatalf("Pull(%s) after rm: error = %v", ref, err)
			}
			if len(progress) == 0 {
				t.Errorf("Pull(%s) after rm: Progress never called for cache hits", ref)
			}
			all, err := e.store.List(t.Context())
			if err != nil || len(all) != 1 || all[0].ID != first.ID || third.ID != first.ID || third.UpToDate {
				t.Errorf("List() = %+v, %v, want only %s", all, err, first.ID)
			}
			if files := rootfsFiles(t, third); files["app/run"] != "run\n" {
				t.Errorf("Pull(%s) after rm: rootfs = %q, want app/run", ref, files)
			}
		})
	}
}

// rewriteLayout loads the single image of the OCI layout at dir, lets edit
// change its manifest and config, and writes them back as new blobs with
// index.json pointing at them, so the layout stays consistent by digest.
func rewriteLayout(t *testing.T, dir string, edit func(m map[string]any, cfg map[string]any)) {
	t.Helper()
	idxPath := filepath.Join(dir, "index.json")
	var idx map[string]any
	readJSON(t, idxPath, &idx)
	desc := idx["manifests"].([]any)[0].(map[string]any)
	var m map[string]any
	readJSON(t, blobPath(dir, desc["digest"].(string)), &m)
	cfgDesc := m["config"].(map[string]any)
	var cfg map[string]any
	readJSON(t, blobPath(dir, cfgDesc["digest"].(string)), &cfg)

	edit(m, cfg)
	d, n := writeBlob(t, dir, cfg)
	cfgDesc["digest"], cfgDesc["size"] = d, n
	desc["digest"], desc["size"] = writeBlob(t, dir, m)
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(idxPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rewriteTar replaces each regular file's body in the tar at path with
// what edit returns for it.
func rewriteTar(t *testing.T, path string, edit func(name string, body []byte) []byte) {
	t.Helper()
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(in)), tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			body = edit(h.Name, body)
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func blobPath(dir, digest string) string {
	return filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
}

func writeBlob(t *testing.T, dir string, v any) (digest string, size int) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	digest = sha256Of(b).String()
	if err := os.WriteFile(blobPath(dir, digest), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return digest, len(b)
}

// TestPullRejects covers images that must not be imported: nothing may be
// published, and the error says what is wrong.
func TestPullRejects(t *testing.T) {
	// layoutWith writes the standard two-layer image (gzip, or uncompressed)
	// to a layout and applies tamper to the layout's directory.
	layoutWith := func(layers func(t *testing.T) []v1.Layer, tamper func(t *testing.T, dir string)) func(t *testing.T) string {
		return func(t *testing.T) string {
			dir := filepath.Join(t.TempDir(), "bad")
			writeLayout(t, dir, layoutEntry{tag: "1", img: testImage(t, linuxAMD64, layers(t)...)})
			tamper(t, dir)
			return "oci:" + dir + ":1"
		}
	}
	gzipped := func(t *testing.T) []v1.Layer {
		return []v1.Layer{gzipLayer(t, baseLayerEnts()...), gzipLayer(t, topLayerEnts()...)}
	}
	uncompressed := func(t *testing.T) []v1.Layer {
		return []v1.Layer{uncompressedLayer(t, baseLayerEnts()...), uncompressedLayer(t, topLayerEnts()...)}
	}
	wrongDiffID := func(t *testing.T, dir string) {
		rewriteLayout(t, dir, func(_, cfg map[string]any) {
			cfg["rootfs"].(map[string]any)["diff_ids"].([]any)[1] = sha256Of([]byte("something else")).String()
		})
	}
	// pushLayout pushes the (tampered) layout image to a registry.
	pushLayout := func(layoutRef func(t *testing.T) string) func(t *testing.T) string {
		return func(t *testing.T) string {
			dir, _ := splitPathRef(strings.TrimPrefix(layoutRef(t), "oci:"))
			p, err := layout.FromPath(dir)
			if err != nil {
				t.Fatal(err)
			}
			ii, err := p.ImageIndex()
			if err != nil {
				t.Fatal(err)
			}
			im, err := ii.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			img, err := ii.Image(im.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			ref := startRegistry(t, nil) + "/bad:1"
			pushImage(t, ref, img)
			return ref
		}
	}

	tests := []struct {
		name    string
		ref     func(t *testing.T) string
		opts    PullOptions
		wantErr []string
		usage   bool
	}{
		{
			name:    "diff_id mismatch, gzip layer",
			ref:     layoutWith(gzipped, wrongDiffID),
			wantErr: []string{"layer 1", "diff_id"},
		},
		{
			name:    "diff_id mismatch, uncompressed layer",
			ref:     layoutWith(uncompressed, wrongDiffID),
			wantErr: []string{"layer 1", "diff_id"},
		},
		{
			name:    "diff_id mismatch from a registry",
			ref:     pushLayout(layoutWith(gzipped, wrongDiffID)),
			wantErr: []string{"layer 1", "diff_id"},
		},
		{
			name: "diff_id mismatch in a docker archive",
			ref: func(t *testing.T) string {
				// A docker save archive of the tampered image: its layers
				// are named by content, its config lies about layer 1.
				dir, _ := splitPathRef(strings.TrimPrefix(layoutWith(gzipped, wrongDiffID)(t), "oci:"))
				p, err := layout.FromPath(dir)
				if err != nil {
					t.Fatal(err)
				}
				ii, _ := p.ImageIndex()
				im, _ := ii.IndexManifest()
				img, err := ii.Image(im.Manifests[0].Digest)
				if err != nil {
					t.Fatal(err)
				}
				file := filepath.Join(t.TempDir(), "bad.tar")
				tag, _ := name.NewTag("bad:1")
				if err := tarball.WriteToFile(file, tag, img); err != nil {
					t.Fatal(err)
				}
				return "docker-archive:" + file
			},
			wantErr: []string{"layer 1", "content does not match digest"},
		},
		{
			name: "config does not match a docker archive's manifest.json",
			ref: func(t *testing.T) string {
				file := strings.TrimPrefix(publish(t, "docker-archive", testImage(t, linuxAMD64, gzipped(t)...)), "docker-archive:")
				edited := 0
				rewriteTar(t, file, func(name string, body []byte) []byte {
					if !strings.HasPrefix(name, "sha256:") {
						return body
					}
					edited++
					var cfg map[string]any
					if err := json.Unmarshal(body, &cfg); err != nil {
						t.Fatal(err)
					}
					cfg["config"] = map[string]any{"User": "root"}
					b, _ := json.Marshal(cfg)
					return b
				})
				if edited != 1 {
					t.Fatalf("archive: edited %d configs, want 1", edited)
				}
				return "docker-archive:" + file
			},
			wantErr: []string{"config content is", "manifest.json says sha256:"},
		},
		{
			name: "config does not match the manifest",
			ref: layoutWith(gzipped, func(t *testing.T, dir string) {
				var idx map[string]any
				readJSON(t, filepath.Join(dir, "index.json"), &idx)
				var m map[string]any
				readJSON(t, blobPath(dir, idx["manifests"].([]any)[0].(map[string]any)["digest"].(string)), &m)
				cfgPath := blobPath(dir, m["config"].(map[string]any)["digest"].(string))
				var cfg map[string]any
				readJSON(t, cfgPath, &cfg)
				cfg["config"] = map[string]any{"User": "root"}
				b, _ := json.Marshal(cfg)
				if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}),
			wantErr: []string{"config content is", "manifest says"},
		},
		{
			name: "manifest does not match index.json",
			ref: layoutWith(gzipped, func(t *testing.T, dir string) {
				var idx map[string]any
				readJSON(t, filepath.Join(dir, "index.json"), &idx)
				mPath := blobPath(dir, idx["manifests"].([]any)[0].(map[string]any)["digest"].(string))
				b, err := os.ReadFile(mPath)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(mPath, append(b, ' '), 0o644); err != nil {
					t.Fatal(err)
				}
			}),
			wantErr: []string{"manifest content is", "corrupt"},
		},
		{
			name: "non-layer media type",
			ref: layoutWith(gzipped, func(t *testing.T, dir string) {
				rewriteLayout(t, dir, func(m, _ map[string]any) {
					m["layers"].([]any)[1].(map[string]any)["mediaType"] = "application/vnd.oci.image.config.v1+json"
				})
			}),
			wantErr: []string{"layer 1 has unsupported media type application/vnd.oci.image.config.v1+json"},
		},
		{
			name: "artifact",
			ref: layoutWith(gzipped, func(t *testing.T, dir string) {
				rewriteLayout(t, dir, func(m, _ map[string]any) {
					m["config"].(map[string]any)["mediaType"] = "application/vnd.example.sbom.config.v1+json"
				})
			}),
			wantErr: []string{"not a container image", "application/vnd.example.sbom.config.v1+json"},
		},
		{
			name: "more diff_ids than layers",
			ref: layoutWith(gzipped, func(t *testing.T, dir string) {
				rewriteLayout(t, dir, func(_, cfg map[string]any) {
					rootfs := cfg["rootfs"].(map[string]any)
					rootfs["diff_ids"] = append(rootfs["diff_ids"].([]any), sha256Of(nil).String())
				})
			}),
			wantErr: []string{"2 layers but its config lists 3 diff_ids"},
		},
		{
			name:    "bad platform",
			ref:     layoutWith(gzipped, func(*testing.T, string) {}),
			opts:    PullOptions{Platform: "linux"},
			wantErr: []string{`invalid platform "linux"`},
			usage:   true,
		},
		{
			name:    "unknown transport",
			ref:     func(*testing.T) string { return "docker://alpine" },
			wantErr: []string{`unknown transport "docker"`},
			usage:   true,
		},
		{
			name:    "single-platform image, other platform asked",
			ref:     layoutWith(gzipped, func(*testing.T, string) {}),
			opts:    PullOptions{Platform: "linux/arm64"},
			wantErr: []string{"is a single-platform image for linux/amd64, not linux/arm64"},
			usage:   true,
		},
		{
			name:    "name that looks like an ID",
			ref:     layoutWith(gzipped, func(*testing.T, string) {}),
			opts:    PullOptions{Name: "0123456789abcdef"},
			wantErr: []string{`image name "0123456789abcdef" looks like an image ID`},
			usage:   true,
		},
		{
			name: "blob never answered",
			ref: func(t *testing.T) string {
				ref := startRegistry(t, hangBlobs) + "/stall:1"
				pushImage(t, ref, testImage(t, linuxAMD64, gzipped(t)...))
				return ref
			},
			// Short, so the test is quick: how long is not what it checks.
			opts:    PullOptions{StallTimeout: 500 * time.Millisecond},
			wantErr: []string{"sent nothing for 500ms (a stalled connection is not retried)"},
		},
		{
			name: "manifest never answered",
			ref: func(t *testing.T) string {
				ref := startRegistry(t, hangManifests) + "/stall:1"
				pushImage(t, ref, testImage(t, linuxAMD64, gzipped(t)...))
				return ref
			},
			opts:    PullOptions{StallTimeout: 500 * time.Millisecond},
			wantErr: []string{"sent nothing for 500ms (a stalled connection is not retried)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			ref := tt.ref(t)
			img, err := Pull(t.Context(), e.cache, e.store, ref, tt.opts)
			if err == nil {
				t.Fatalf("Pull(%s) = image %s, want an error", ref, img.ID)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Pull(%s) error = %q, want it to contain %q", ref, err, w)
				}
			}
			if isUsage(err) != tt.usage {
				t.Errorf("Pull(%s): isUsage(err) = %v, want %v", ref, !tt.usage, tt.usage)
			}
			e.checkNothingPublished(t)
		})
	}
}

func TestPullProgress(t *testing.T) {
	tests := []struct {
		name string
		kind string
	}{
		{"registry", "registry"},
		{"oci layout", "oci"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			var layers []v1.Layer
			for i := range 3 {
				layers = append(layers, gzipLayer(t, tReg(fmt.Sprintf("f%d", i), strings.Repeat("x", 100_000*(i+1)))))
			}
			img := testImage(t, linuxAMD64, layers...)
			var wantTotal int64
			for _, l := range layers {
				n, err := l.Size()
				if err != nil {
					t.Fatal(err)
				}
				wantTotal += n
			}
			ref := publish(t, tt.kind, img)
			type call struct{ done, total int64 }
			var (
				calls  []call
				active atomic.Int32
			)
			_, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Progress: func(done, total int64) {
				if active.Add(1) != 1 {
					t.Errorf("Progress called from two goroutines at once")
				}
				calls = append(calls, call{done, total})
				active.Add(-1)
			}})
			if err != nil {
				t.Fatalf("Pull(%s) error = %v", ref, err)
			}
			if len(calls) == 0 {
				t.Fatalf("Pull(%s): Progress never called", ref)
			}
			for _, c := range calls {
				if c.total != wantTotal || c.done < 0 || c.done > c.total {
					t.Errorf("Progress(%d, %d): want total %d and 0 <= done <= total", c.done, c.total, wantTotal)
				}
			}
			if last := calls[len(calls)-1]; last.done != wantTotal {
				t.Errorf("last Progress(%d, %d), want done = total = %d", last.done, last.total, wantTotal)
			}
		})
	}
}

// layerGate counts the layer GETs a registry is serving at once. It holds
// every request until jobs of them are waiting together (or every layer has
// been asked for), so a pull that respects Jobs always reaches exactly jobs,
// and one that does not is seen above it. A request stops counting when it
// is released, before its body is sent: the client holds its job slot until
// the body is read, so the count can never run ahead of the client's.
type layerGate struct {
	jobs, layers int
	digests      map[string]bool

	mu               sync.Mutex
	waiting, arrived int
	max              int
	stalled          bool
	open             chan struct{}
}

func (g *layerGate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, digest, ok := strings.Cut(r.URL.Path, "/blobs/")
		if r.Method != http.MethodGet || !ok || !g.digests[digest] {
			next.ServeHTTP(w, r)
			return
		}
		g.mu.Lock()
		g.arrived++
		g.waiting++
		g.max = max(g.max, g.waiting)
		ch := g.open
		if g.waiting >= g.jobs || g.arrived == g.layers {
			close(g.open)
			g.open = make(chan struct{})
		}
		g.mu.Unlock()
		select {
		case <-ch:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
			// A failsafe, not a wait: the client never reached jobs
			// requests at once; let it finish so the test can say so.
			g.mu.Lock()
			g.stalled = true
			g.mu.Unlock()
		}
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// countingTransport counts layer GETs on the client side, from the request
// until its body is closed: the window in which a pull holds a job slot. It
// sees every request a pull has started, however the server schedules them.
type countingTransport struct {
	digests map[string]bool

	mu        sync.Mutex
	open, max int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	_, digest, ok := strings.Cut(r.URL.Path, "/blobs/")
	if r.Method != http.MethodGet || !ok || !c.digests[digest] {
		return http.DefaultTransport.RoundTrip(r)
	}
	c.mu.Lock()
	c.open++
	c.max = max(c.max, c.open)
	c.mu.Unlock()
	done := sync.OnceFunc(func() {
		c.mu.Lock()
		c.open--
		c.mu.Unlock()
	})
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		done()
		return nil, err
	}
	resp.Body = &closeNotifier{ReadCloser: resp.Body, done: done}
	return resp, nil
}

type closeNotifier struct {
	io.ReadCloser
	done func()
}

func (c *closeNotifier) Close() error {
	err := c.ReadCloser.Close()
	c.done()
	return err
}

func TestPullJobs(t *testing.T) {
	tests := []struct {
		name     string
		jobs     int
		wantJobs int
	}{
		{"one", 1, 1},
		{"two", 2, 2},
		{"default", 0, DefaultJobs},
		{"more than layers", 10, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const nLayers = 6
			var layers []v1.Layer
			g := &layerGate{jobs: tt.wantJobs, layers: nLayers, digests: map[string]bool{}, open: make(chan struct{})}
			for i := range nLayers {
				l := gzipLayer(t, tReg(fmt.Sprintf("f%d", i), tt.name))
				layers = append(layers, l)
				g.digests[digestOf(t, l).String()] = true
			}
			host := startRegistry(t, g.wrap)
			ref := host + "/jobs:1"
			pushImage(t, ref, testImage(t, linuxAMD64, layers...))
			e := newTestEnv(t)
			ct := &countingTransport{digests: g.digests}
			if _, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Jobs: tt.jobs, Transport: ct}); err != nil {
				t.Fatalf("Pull(%s, Jobs %d) error = %v", ref, tt.jobs, err)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.max != tt.wantJobs || g.arrived != nLayers || g.stalled {
				t.Errorf("Pull(%s, Jobs %d): registry served %d layer GETs, at most %d at once, want %d, exactly %d at once", ref, tt.jobs, g.arrived, g.max, nLayers, tt.wantJobs)
			}
			ct.mu.Lock()
			defer ct.mu.Unlock()
			if ct.max != tt.wantJobs || ct.open != 0 {
				t.Errorf("Pull(%s, Jobs %d): client had at most %d layer GETs open at once, %d left open, want %d and 0", ref, tt.jobs, ct.max, ct.open, tt.wantJobs)
			}
		})
	}
}

// TestPullLayerFailureCancels fails one layer while the others are being
// served: the pull must fail at once with that layer's error, cancel the
// other downloads, and leave nothing behind.
func TestPullLayerFailureCancels(t *testing.T) {
	const nLayers = 4
	var layers []v1.Layer
	digests := map[string]int{}
	for i := range nLayers {
		l := gzipLayer(t, tReg(fmt.Sprintf("f%d", i), "data"))
		layers = append(layers, l)
		digests[digestOf(t, l).String()] = i
	}
	const failing = 2
	var (
		othersIn     = make(chan struct{}, nLayers)
		notCancelled atomic.Bool
	)
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, digest, ok := strings.Cut(r.URL.Path, "/blobs/")
			i, layer := digests[digest]
			if r.Method != http.MethodGet || !ok || !layer {
				next.ServeHTTP(w, r)
				return
			}
			if i != failing {
				// Hold the others until the pull gives them up.
				othersIn <- struct{}{}
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second): // a failsafe, not a wait: the pull should cancel us
					notCancelled.Store(true)
					next.ServeHTTP(w, r)
				}
				return
			}
			for range nLayers - 1 {
				<-othersIn
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
		})
	}
	host := startRegistry(t, wrap)
	ref := host + "/fail:1"
	pushImage(t, ref, testImage(t, linuxAMD64, layers...))
	e := newTestEnv(t)
	start := time.Now()
	_, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Jobs: nLayers})
	if err == nil {
		t.Fatalf("Pull(%s) succeeded, want the failing layer's error", ref)
	}
	for _, w := range []string{fmt.Sprintf("layer %d", failing), digestOf(t, layers[failing]).String(), "BLOB_UNKNOWN"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Pull(%s) error = %q, want it to contain %q", ref, err, w)
		}
	}
	if errors.Is(err, cache.ErrLockBusy) || strings.Contains(err.Error(), "context canceled") {
		t.Errorf("Pull(%s) error = %q, want the real failure, not the cancellation it caused", ref, err)
	}
	if notCancelled.Load() {
		t.Errorf("Pull(%s) took %v: the other layer downloads were not cancelled", ref, time.Since(start))
	}
	e.checkNothingPublished(t)
}

// TestPullPipelined checks that flattening starts with the top layer while
// the lower ones are still being fetched: with one job the registry sees the
// layers requested top first, and when the top layer cannot be flattened the
// pull fails with the flatten's error without waiting for a lower layer
// that the registry holds back.
func TestPullPipelined(t *testing.T) {
	tests := []struct {
		name string
		// top is the top layer; a bad one fails the flatten.
		top        v1.Layer
		jobs       int
		wantErr    string
		holdBottom bool // the registry holds the bottom layer until the client gives up
		// failBottom: the registry answers 503 for the bottom layer, and
		// serves the top one only after that, so that the flatten fails
		// while the bottom fetch waits to retry.
		failBottom bool
	}{
		{name: "fetched top first", top: gzipLayer(t, topLayerEnts()...), jobs: 1},
		{name: "flatten failure stops fetches", top: static.NewLayer([]byte("not a tar archive, just text that goes on for a while"), types.OCIUncompressedLayer),
			jobs: 2, holdBottom: true, wantErr: "layer 2: reading tar"},
		{name: "flatten failure, not the retry it interrupted", top: static.NewLayer([]byte("not a tar archive either, and long enough to say so"), types.OCIUncompressedLayer),
			jobs: 3, failBottom: true, wantErr: "layer 2: reading tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layers := []v1.Layer{gzipLayer(t, baseLayerEnts()...), gzipLayer(t, tReg("mid", "mid\n")), tt.top}
			index := map[string]int{}
			for i, l := range layers {
				index[digestOf(t, l).String()] = i
			}
			var (
				mu        sync.Mutex
				order     []int
				heldUntil = make(chan time.Duration, 8) // room for retries: a failing test must not hang the server
				held      atomic.Bool                   // the bottom layer's GET arrived and is held
				refused   = make(chan struct{})
				refuseOne sync.Once
			)
			wrap := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, digest, _ := strings.Cut(r.URL.Path, "/blobs/")
					i, isLayer := index[digest]
					if r.Method == http.MethodGet && isLayer {
						mu.Lock()
						order = append(order, i)
						mu.Unlock()
						if i == 0 && tt.failBottom {
							w.WriteHeader(http.StatusServiceUnavailable)
							refuseOne.Do(func() { close(refused) })
							return
						}
						if i == 2 && tt.failBottom {
							<-refused
						}
						if i == 0 && tt.holdBottom {
							held.Store(true)
							start := time.Now()
							select {
							case <-r.Context().Done():
							case <-time.After(10 * time.Second): // failsafe: the pull should give up first
							}
							heldUntil <- time.Since(start)
							return
						}
					}
					next.ServeHTTP(w, r)
				})
			}
			host := startRegistry(t, wrap)
			ref := host + "/pipe:1"
			pushImage(t, ref, testImage(t, linuxAMD64, layers...))
			e := newTestEnv(t)
			_, err := Pull(t.Context(), e.cache, e.store, ref, PullOptions{Jobs: tt.jobs})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Pull(%s) error = %v", ref, err)
				}
				mu.Lock()
				defer mu.Unlock()
				if !slices.Equal(order, []int{2, 1, 0}) {
					t.Errorf("Pull(%s, Jobs 1) fetched layers in order %v, want top first: [2 1 0]", ref, order)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Pull(%s) error = %v, want one containing %q", ref, err, tt.wantErr)
			}
			// The failure may come before the bottom layer's turn; if its
			// GET did start, the pull must have given it up.
			if held.Load() {
				if d := <-heldUntil; d >= 10*time.Second {
					t.Errorf("Pull(%s) failed to flatten but kept fetching the bottom layer for %v", ref, d)
				}
			}
			e.checkNothingPublished(t)
		})
	}
}

// hangBlobs makes a registry's blob GETs never answer (pushes still work).
func hangBlobs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			<-r.Context().Done()
			return
		}
		h.ServeHTTP(w, r)
	})
}

// hangManifests makes a registry's manifest GETs never answer.
func hangManifests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			<-r.Context().Done()
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TestPullResolvesThroughManyLayers pulls a merged-/usr image whose top
// layer adds bin/hello without declaring bin, so the flattener reads the
// layers below once more, bottom first, while fetches go top first. With
// more layers than the blobs kept open (2×Jobs) and from every source, the
// pull must neither hang nor find a blob already closed, and /bin stays a
// symlink (issue 12).
func TestPullResolvesThroughManyLayers(t *testing.T) {
	for _, kind := range []string{"registry", "oci", "docker-archive"} {
		t.Run(kind, func(t *testing.T) {
			layers := []v1.Layer{gzipLayer(t, tDir("usr"), tDir("usr/bin"), tReg("usr/bin/sh", "sh\n"), tSym("bin", "usr/bin"))}
			for i := range 8 {
				layers = append(layers, gzipLayer(t, tReg(fmt.Sprintf("f%d", i), "x\n")))
			}
			layers = append(layers, gzipLayer(t, tReg("bin/hello", "hello\n")))
			ref := publish(t, kind, testImage(t, linuxAMD64, layers...))
			e := newTestEnv(t)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			img, err := Pull(ctx, e.cache, e.store, ref, PullOptions{Jobs: 1})
			if err != nil {
				t.Fatalf("Pull(%s, Jobs 1) error = %v", ref, err)
			}
			files := rootfsFiles(t, img)
			for name, want := range map[string]string{"usr/bin/sh": "sh\n", "usr/bin/hello": "hello\n"} {
				if files[name] != want {
					t.Errorf("rootfs %s = %q, want %q; files: %v", name, files[name], want, files)
				}
			}
			if _, ok := files["bin/hello"]; ok {
				t.Errorf("rootfs has bin/hello as a file under a directory bin, want bin -> usr/bin")
			}
		})
	}
}
