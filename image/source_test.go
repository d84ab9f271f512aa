package image

import (
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Fixtures shared by source_test.go and pull_test.go.

var (
	linuxAMD64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	linuxARM64 = v1.Platform{OS: "linux", Architecture: "arm64"}
	linuxARMv7 = v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}
)

// gzipLayer is an OCI gzip layer holding the given entries.
func gzipLayer(t *testing.T, ents ...ent) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(b))), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatalf("tarball.LayerFromOpener: %v", err)
	}
	return l
}

// testImage is an OCI image of the given layers for platform p, with a
// marker file naming p in its own last layer so tests can tell images apart.
func testImage(t *testing.T, p v1.Platform, layers ...v1.Layer) v1.Image {
	t.Helper()
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cf, err := base.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.WorkingDir = "/app"
	img, err := mutate.ConfigFile(base, cf)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatalf("mutate.AppendLayers: %v", err)
	}
	return img
}

// platformImage is a one-layer image whose /platform file names p.
func platformImage(t *testing.T, p v1.Platform) v1.Image {
	t.Helper()
	return testImage(t, p, gzipLayer(t, tReg("platform", platformString(p))))
}

// multiIndex is an OCI index of one image per platform.
func multiIndex(t *testing.T, platforms ...v1.Platform) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		p := p
		adds = append(adds, mutate.IndexAddendum{
			Add:        platformImage(t, p),
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}

func digestOf(t *testing.T, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// startRegistry serves go-containerregistry's in-memory registry on
// 127.0.0.1, through wrap if it is not nil, and returns its host:port.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushImage(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("remote.Write(%s): %v", ref, err)
	}
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("remote.WriteIndex(%s): %v", ref, err)
	}
}

// layoutEntry is one manifest of index.json: an image or an index, tagged
// with the ref.name annotation unless tag is empty.
type layoutEntry struct {
	tag string
	img v1.Image
	idx v1.ImageIndex
}

func writeLayout(t *testing.T, dir string, entries ...layoutEntry) layout.Path {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatalf("layout.Write: %v", err)
	}
	for _, e := range entries {
		var opts []layout.Option
		if e.tag != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{refNameAnnotation: e.tag}))
		}
		if e.img != nil {
			err = p.AppendImage(e.img, opts...)
		} else {
			err = p.AppendIndex(e.idx, opts...)
		}
		if err != nil {
			t.Fatalf("appending to layout: %v", err)
		}
	}
	return p
}

// readPlatformFile returns the /platform file of a resolved image.
func readPlatformFile(t *testing.T, img v1.Image) string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("image layers: %v, %v", len(layers), err)
	}
	rc, err := layers[len(layers)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return findEntry(t, readOutput(t, b), "platform").body
}

func TestNormalizeName(t *testing.T) {
	const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in, want string
	}{
		{"docker hub library", "docker.io/library/alpine:3.20", "alpine:3.20"},
		{"short", "alpine:3.20", "alpine:3.20"},
		{"default tag", "alpine", "alpine:latest"},
		{"index.docker.io user repo", "index.docker.io/foo/bar", "foo/bar:latest"},
		{"docker.io user repo", "docker.io/foo/bar:1", "foo/bar:1"},
		{"library prefix alone", "library/alpine:3.20", "alpine:3.20"},
		{"other registry keeps library", "ghcr.io/library/x:1", "ghcr.io/library/x:1"},
		{"loopback registry", "127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"},
		{"localhost registry default tag", "localhost:5000/x", "localhost:5000/x:latest"},
		{"digest", "docker.io/library/alpine@sha256:" + hex64, "alpine@sha256:" + hex64},
		{"tag and digest keeps digest", "alpine:3.20@sha256:" + hex64, "alpine@sha256:" + hex64},
		{"registry digest", "127.0.0.1:5000/x@sha256:" + hex64, "127.0.0.1:5000/x@sha256:" + hex64},
		{"not a reference", "oci:dir/x:1", "oci:dir/x:1"},
		{"upper case", "Alpine:3.20", "Alpine:3.20"},
		{"store ID", "0123456789abcdef", "0123456789abcdef:latest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NormalizeName(tt.in); got != tt.want {
				t.Errorf("NormalizeName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParsePlatform(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    v1.Platform
		wantErr bool
	}{
		{"os arch", "linux/amd64", linuxAMD64, false},
		{"variant", "linux/arm/v7", linuxARMv7, false},
		{"empty", "", v1.Platform{}, true},
		{"os only", "linux", v1.Platform{}, true},
		{"trailing slash", "linux/amd64/", v1.Platform{}, true},
		{"empty os", "/amd64", v1.Platform{}, true},
		{"double slash", "linux//amd64", v1.Platform{}, true},
		{"too many parts", "linux/arm/v7/x", v1.Platform{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePlatform(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidPlatform) {
					t.Errorf("ParsePlatform(%q) = %v, %v, want an error wrapping ErrInvalidPlatform", tt.in, got, err)
				}
				if err != nil && !strings.Contains(err.Error(), "os/arch[/variant]") {
					t.Errorf("ParsePlatform(%q) error = %q, want it to show the expected form", tt.in, err)
				}
				return
			}
			if err != nil || got.OS != tt.want.OS || got.Architecture != tt.want.Architecture || got.Variant != tt.want.Variant {
				t.Errorf("ParsePlatform(%q) = %+v, %v, want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSplitPathRef(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"plain", "a:b", "c", "c:d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	j := func(s string) string { return filepath.Join(root, s) }
	tests := []struct {
		name, in, path, ref string
	}{
		{"path only", j("plain"), j("plain"), ""},
		{"tag", j("plain") + ":1.0", j("plain"), "1.0"},
		{"reference with colons", j("plain") + ":127.0.0.1:5000/x:y", j("plain"), "127.0.0.1:5000/x:y"},
		{"colon in path", j("a:b"), j("a:b"), ""},
		{"colon in path and tag", j("a:b") + ":1.0", j("a:b"), "1.0"},
		{"colon in path and reference", j("a:b") + ":docker.io/library/alpine:3.20", j("a:b"), "docker.io/library/alpine:3.20"},
		{"both prefixes exist: longest path wins", j("c:d") + ":1.0", j("c:d"), "1.0"},
		{"missing path", j("nope") + ":1.0", j("nope") + ":1.0", ""},
		{"empty", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, ref := splitPathRef(tt.in)
			if path != tt.path || ref != tt.ref {
				t.Errorf("splitPathRef(%q) = %q, %q, want %q, %q", tt.in, path, ref, tt.path, tt.ref)
			}
		})
	}
}

func TestIsTransportLike(t *testing.T) {
	const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		ref  string
		want bool
	}{
		{"docker://alpine", true},
		{"dir:/x", true},
		{"dir:./x", true},
		{"oci-archive:./x.tar", true},
		{"containers-storage:alpine:3.20", true},
		{"docker-daemon:alpine:3.20", true},
		{"localhost:5000/x", false},
		{"localhost:5000/x:y", false},
		{"alpine:3.20", false},
		{"127.0.0.1:5000/x:y", false},
		{"registry.example.com:5000/x", false},
		{"alpine:3.20@sha256:" + hex64, false},
		{"library/alpine:3.20@sha256:" + hex64, false},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			prefix, rest, _ := strings.Cut(tt.ref, ":")
			if got := isTransportLike(prefix, rest); got != tt.want {
				t.Errorf("isTransportLike(%q, %q) = %v, want %v", prefix, rest, got, tt.want)
			}
		})
	}
}

func TestResolveUnknownTransport(t *testing.T) {
	tests := []struct {
		name, ref, want string
	}{
		{"docker scheme", "docker://alpine", `unknown transport "docker"`},
		{"unknown", "frob:/tmp/x", `unknown transport "frob"`},
		{"dir", "dir:/tmp/x", `unknown transport "dir" in "dir:/tmp/x" (one of skopeo's that banger does not read): convert it with`},
		{"containers-storage", "containers-storage:alpine:3.20", `export the image with ` + "`podman save"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := resolve(t.Context(), tt.ref, linuxAMD64, PullOptions{})
			if !errors.Is(err, ErrInvalidReference) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("resolve(%q) error = %v, want a usage error containing %q", tt.ref, err, tt.want)
			}
		})
	}
}

func TestLayoutName(t *testing.T) {
	tests := []struct {
		name, dir, tag, refName, want string
	}{
		{"tag from argument", "/x/hello", "1.0", "1.0", "hello:1.0"},
		{"tag from annotation", "/x/hello", "", "2.0", "hello:2.0"},
		{"no tag at all", "/x/hello", "", "", "hello:latest"},
		{"trailing slash", "/x/hello/", "1.0", "1.0", "hello:1.0"},
		{"full reference annotation", "/x/hello", "3.20", "docker.io/library/alpine:3.20", "alpine:3.20"},
		{"registry reference annotation", "/x/hello", "", "127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := layoutName(tt.dir, tt.tag, tt.refName); got != tt.want {
				t.Errorf("layoutName(%q, %q, %q) = %q, want %q", tt.dir, tt.tag, tt.refName, got, tt.want)
			}
		})
	}
	t.Run("relative dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "relname")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Chdir(dir)
		if got := layoutName(".", "1.0", ""); got != "relname:1.0" {
			t.Errorf("layoutName(%q, %q, %q) = %q, want %q", ".", "1.0", "", got, "relname:1.0")
		}
	})
}

func TestResolveLayout(t *testing.T) {
	dir := t.TempDir()
	one := filepath.Join(dir, "one")
	writeLayout(t, one, layoutEntry{tag: "1.0", img: platformImage(t, linuxAMD64)})
	untagged := filepath.Join(dir, "untagged")
	writeLayout(t, untagged, layoutEntry{img: platformImage(t, linuxAMD64)})
	several := filepath.Join(dir, "several")
	writeLayout(t, several,
		layoutEntry{tag: "1.0", img: platformImage(t, linuxAMD64)},
		layoutEntry{tag: "2.0", img: platformImage(t, linuxARM64)},
		layoutEntry{tag: "docker.io/library/alpine:3.20", img: platformImage(t, linuxARMv7)},
		layoutEntry{tag: "x:2.0", img: platformImage(t, linuxAMD64)},
	)
	multi := filepath.Join(dir, "multi:colon")
	writeLayout(t, multi, layoutEntry{tag: "1.0", idx: multiIndex(t, linuxAMD64, linuxARM64, linuxARMv7)})
	// A nested index whose blob no longer matches index.json: ggcr reads it
	// unverified, and it is what the image's digest is checked against.
	corrupt := filepath.Join(dir, "corrupt")
	corruptIdx := multiIndex(t, linuxAMD64)
	writeLayout(t, corrupt, layoutEntry{tag: "1.0", idx: corruptIdx})
	idxBlob := filepath.Join(corrupt, "blobs", "sha256", digestOf(t, corruptIdx).Hex)
	if b, err := os.ReadFile(idxBlob); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(idxBlob, append(b, ' '), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		arg      string
		platform v1.Platform
		wantName string
		wantFile string // the image's /platform file
		wantErr  []string
		usage    bool
	}{
		{"one image with tag", one + ":1.0", linuxAMD64, "one:1.0", "linux/amd64", nil, false},
		{"one image without tag", one, linuxAMD64, "one:1.0", "linux/amd64", nil, false},
		{"untagged image", untagged, linuxAMD64, "untagged:latest", "linux/amd64", nil, false},
		{"one image, missing tag", one + ":9", linuxAMD64, "", "", []string{`no image tagged "9"`, "available tags: 1.0"}, true},
		{"several, tag", several + ":1.0", linuxAMD64, "several:1.0", "linux/amd64", nil, false},
		{"several, exact tag wins over a suffix", several + ":2.0", linuxAMD64, "several:2.0", "linux/arm64", nil, false},
		{"several, reference suffix", several + ":3.20", linuxAMD64, "alpine:3.20", "linux/arm/v7", nil, false},
		{"several, full reference", several + ":docker.io/library/alpine:3.20", linuxAMD64, "alpine:3.20", "linux/arm/v7", nil, false},
		{"several, no tag", several, linuxAMD64, "", "", []string{"4 images and no tag given", "oci:" + several + ":TAG", "1.0, 2.0, docker.io/library/alpine:3.20, x:2.0"}, true},
		{"several, missing tag", several + ":9", linuxAMD64, "", "", []string{`no image tagged "9"`, "1.0, 2.0"}, true},
		{"index entry, platform", multi + ":1.0", linuxARM64, "multi:colon:1.0", "linux/arm64", nil, false},
		{"index entry, variant", multi + ":1.0", linuxARMv7, "multi:colon:1.0", "linux/arm/v7", nil, false},
		{"index entry, arm without variant", multi, v1.Platform{OS: "linux", Architecture: "arm"}, "multi:colon:1.0", "linux/arm/v7", nil, false},
		{"index entry, missing platform", multi + ":1.0", v1.Platform{OS: "linux", Architecture: "s390x"}, "", "", []string{"no image for platform linux/s390x", "available: linux/amd64, linux/arm/v7, linux/arm64"}, true},
		{"index entry, corrupt index", corrupt + ":1.0", linuxAMD64, "", "", []string{"index content is", "index.json says " + digestOf(t, corruptIdx).String(), "corrupt"}, false},
		{"not a layout", dir, linuxAMD64, "", "", []string{"opening OCI layout"}, false},
		{"empty", "", linuxAMD64, "", "", []string{"oci:DIR[:TAG]"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := resolve(t.Context(), "oci:"+tt.arg, tt.platform, PullOptions{})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("resolve(oci:%s) = %s, want an error", tt.arg, src.name)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("resolve(oci:%s) error = %q, want it to contain %q", tt.arg, err, w)
					}
				}
				if isUsage(err) != tt.usage {
					t.Errorf("resolve(oci:%s): isUsage(err) = %v, want %v", tt.arg, !tt.usage, tt.usage)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve(oci:%s) error = %v, want none", tt.arg, err)
			}
			if src.name != tt.wantName || src.kind != fromLayout || !src.kind.hasManifest() {
				t.Errorf("resolve(oci:%s) = name %q kind %v, want %q oci with a manifest", tt.arg, src.name, src.kind, tt.wantName)
			}
			if got := readPlatformFile(t, src.img); got != tt.wantFile {
				t.Errorf("resolve(oci:%s) picked the image for %s, want %s", tt.arg, got, tt.wantFile)
			}
			// The digest the source claims must be the chosen manifest's.
			if got := digestOf(t, src.img); src.manifestDigest != got {
				t.Errorf("resolve(oci:%s).manifestDigest = %s, want the image's %s", tt.arg, src.manifestDigest, got)
			}
		})
	}
}

// writeArchive writes a docker save tarball of the given references.
func writeArchive(t *testing.T, path string, refs map[string]v1.Image) {
	t.Helper()
	m := map[name.Reference]v1.Image{}
	for r, img := range refs {
		tag, err := name.NewTag(r)
		if err != nil {
			t.Fatal(err)
		}
		m[tag] = img
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tarball.MultiRefWrite(m, f); err != nil {
		t.Fatalf("tarball.MultiRefWrite: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestResolveArchive(t *testing.T) {
	dir := t.TempDir()
	single := filepath.Join(dir, "single.tar")
	tag, err := name.NewTag("docker.io/library/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(single, tag, platformImage(t, linuxAMD64)); err != nil {
		t.Fatalf("tarball.WriteToFile: %v", err)
	}
	several := filepath.Join(dir, "several:colon.tar")
	writeArchive(t, several, map[string]v1.Image{
		"app:1":              platformImage(t, linuxAMD64),
		"127.0.0.1:5000/x:y": platformImage(t, linuxARM64),
	})
	notTar := filepath.Join(dir, "not.tar")
	if err := os.WriteFile(notTar, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		arg      string
		wantName string
		wantFile string
		wantErr  []string
		usage    bool
	}{
		{"single image", single, "app:1", "linux/amd64", nil, false},
		{"single image, ref", single + ":app:1", "app:1", "linux/amd64", nil, false},
		{"several, ref", several + ":app:1", "app:1", "linux/amd64", nil, false},
		{"several, full ref", several + ":docker.io/library/app:1", "app:1", "linux/amd64", nil, false},
		{"several, registry ref", several + ":127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y", "linux/arm64", nil, false},
		{"several, no ref", several, "", "", []string{"holds 2 images", "docker-archive:" + several + ":REF", "app:1", "127.0.0.1:5000/x:y"}, true},
		{"several, missing ref", several + ":other:1", "", "", []string{"other:1", "app:1", "127.0.0.1:5000/x:y"}, true},
		{"bad ref", single + ":UPPER:x", "", "", []string{"parsing tag"}, true},
		{"missing file", filepath.Join(dir, "nope.tar"), "", "", []string{"opening docker archive"}, false},
		{"not a tarball", notTar, "", "", []string{"reading docker archive"}, false},
		{"empty", "", "", "", []string{"docker-archive:FILE[:REF]"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := resolve(t.Context(), "docker-archive:"+tt.arg, linuxAMD64, PullOptions{})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("resolve(docker-archive:%s) = %s, want an error", tt.arg, src.name)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("resolve(docker-archive:%s) error = %q, want it to contain %q", tt.arg, err, w)
					}
				}
				if isUsage(err) != tt.usage {
					t.Errorf("resolve(docker-archive:%s): isUsage(err) = %v, want %v", tt.arg, !tt.usage, tt.usage)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve(docker-archive:%s) error = %v, want none", tt.arg, err)
			}
			if src.name != tt.wantName || src.kind != fromArchive || src.kind.hasManifest() {
				t.Errorf("resolve(docker-archive:%s) = name %q kind %v, want %q docker-archive without a manifest", tt.arg, src.name, src.kind, tt.wantName)
			}
			if got := readPlatformFile(t, src.img); got != tt.wantFile {
				t.Errorf("resolve(docker-archive:%s) picked the image for %s, want %s", tt.arg, got, tt.wantFile)
			}
		})
	}
}

func TestArchiveConfigDigest(t *testing.T) {
	const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in, want string
	}{
		{"docker save", hex64 + ".json", "sha256:" + hex64},
		{"docker save, OCI blobs", "blobs/sha256/" + hex64, "sha256:" + hex64},
		{"ggcr", "sha256:" + hex64, "sha256:" + hex64},
		{"other name", "config.json", ""},
		{"short", "0123.json", ""},
		{"upper case", strings.ToUpper(hex64) + ".json", ""},
		{"other algorithm", "blobs/sha512/" + hex64, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := archiveConfigDigest(tt.in)
			if got == (v1.Hash{}) && tt.want != "" || got != (v1.Hash{}) && got.String() != tt.want {
				t.Errorf("archiveConfigDigest(%q) = %v, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestResolveRegistry(t *testing.T) {
	host := startRegistry(t, nil)
	idx := multiIndex(t, linuxAMD64, linuxARM64, linuxARMv7)
	pushIndex(t, host+"/multi:1", idx)
	img := platformImage(t, linuxARM64)
	pushImage(t, host+"/single:1", img)
	// An attestation manifest, as BuildKit pushes them, is not a platform.
	unknown := v1.Platform{OS: "unknown", Architecture: "unknown"}
	withAttestation := mutate.AppendManifests(idx, mutate.IndexAddendum{Add: platformImage(t, unknown), Descriptor: v1.Descriptor{Platform: &unknown}})
	pushIndex(t, host+"/attested:1", withAttestation)
	idxDigest := digestOf(t, idx).String()

	tests := []struct {
		name     string
		ref      string
		platform v1.Platform
		wantName string
		wantFile string
		wantErr  []string
		usage    bool
	}{
		{"index, amd64", host + "/multi:1", linuxAMD64, host + "/multi:1", "linux/amd64", nil, false},
		{"index, arm64", host + "/multi:1", linuxARM64, host + "/multi:1", "linux/arm64", nil, false},
		{"index, variant", host + "/multi:1", linuxARMv7, host + "/multi:1", "linux/arm/v7", nil, false},
		{"index by digest", host + "/multi@" + idxDigest, linuxARM64, host + "/multi@" + idxDigest, "linux/arm64", nil, false},
		{"index, missing platform", host + "/multi:1", v1.Platform{OS: "windows", Architecture: "amd64"}, "", "", []string{"no image for platform windows/amd64", "available: linux/amd64, linux/arm/v7, linux/arm64"}, true},
		{"attestations are not listed", host + "/attested:1", v1.Platform{OS: "linux", Architecture: "s390x"}, "", "", []string{"available: linux/amd64, linux/arm/v7, linux/arm64"}, true},
		{"single image ignores platform", host + "/single:1", linuxAMD64, host + "/single:1", "linux/arm64", nil, false},
		{"default tag", host + "/single", linuxAMD64, "", "", []string{"check the repository and tag exist"}, false},
		{"missing repository", host + "/nope:1", linuxAMD64, "", "", []string{"check the repository and tag exist"}, false},
		{"malformed reference", host + "/UPPER:1", linuxAMD64, "", "", []string{"parsing reference"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := resolve(t.Context(), tt.ref, tt.platform, PullOptions{})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("resolve(%s) = %s, want an error", tt.ref, src.name)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("resolve(%s) error = %q, want it to contain %q", tt.ref, err, w)
					}
				}
				if isUsage(err) != tt.usage {
					t.Errorf("resolve(%s): isUsage(err) = %v, want %v", tt.ref, !tt.usage, tt.usage)
				}
				if strings.Contains(err.Error(), "unknown/unknown") {
					t.Errorf("resolve(%s) error = %q lists an attestation manifest as a platform", tt.ref, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve(%s) error = %v, want none", tt.ref, err)
			}
			if src.name != tt.wantName || src.kind != fromRegistry {
				t.Errorf("resolve(%s) = name %q kind %v, want %q registry", tt.ref, src.name, src.kind, tt.wantName)
			}
			if got := readPlatformFile(t, src.img); got != tt.wantFile {
				t.Errorf("resolve(%s) picked the image for %s, want %s", tt.ref, got, tt.wantFile)
			}
			if got := digestOf(t, src.img); src.manifestDigest != (v1.Hash{}) && src.manifestDigest != got {
				t.Errorf("resolve(%s).manifestDigest = %s, want the image's %s", tt.ref, src.manifestDigest, got)
			}
		})
	}
}

// isUsage reports whether err is a mistake in what was asked for, which
// banger's CLI exits 2 for.
func isUsage(err error) bool {
	return errors.Is(err, ErrInvalidReference) || errors.Is(err, ErrInvalidPlatform) || errors.Is(err, ErrInvalidName)
}
