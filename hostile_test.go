package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// faultyRegistry serves the test images through a fault injector: the
// current fault decides how requests are mangled.
type faultyRegistry struct {
	host   string
	fault  atomic.Value // string
	layers map[string]bool
	served atomic.Int64 // layer blob GETs answered
}

func startFaultyRegistry(t *testing.T) *faultyRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	f := &faultyRegistry{layers: map[string]bool{}}
	f.fault.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isLayer := r.Method == http.MethodGet && f.layers[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]
		if isLayer {
			f.served.Add(1)
		}
		switch fault := f.fault.Load().(string); {
		case fault == "401":
			w.Header().Set("WWW-Authenticate", `Basic realm="banger-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		case fault == "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		case isLayer && fault == "404-blob":
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`, http.StatusNotFound)
			return
		case isLayer && (fault == "corrupt-blob" || fault == "truncate-blob"):
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if fault == "corrupt-blob" {
				body[len(body)/2] ^= 0xff
			} else {
				body = body[:len(body)/2]
			}
			w.Header().Set("Content-Length", rec.Header().Get("Content-Length"))
			w.WriteHeader(rec.Code)
			w.Write(body) // a body shorter than Content-Length: cut mid-transfer
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.host = strings.TrimPrefix(srv.URL, "http://")
	pushTestImages(t, f.host)
	for _, img := range testImages() {
		layers, _ := img.Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			f.layers[d.String()] = true
		}
	}
	pushHostileImages(t, f.host)
	return f
}

// pushHostileImages pushes images whose content is wrong on purpose.
func pushHostileImages(t *testing.T, host string) {
	t.Helper()
	junk := make([]byte, 4096)
	rand.Read(junk)
	images := map[string]v1.Image{
		"dotdot:1":       imageOf("/x", layerOf(file("../../etc/evil", "x"))),
		"hardlink-out:1": imageOf("/x", layerOf(file("a", "x"), hardlink("b", "../../../etc/passwd"))),
		"notar:1":        imageOf("/x", static.NewLayer(junk, types.OCILayer)),
		"absolute:1":     imageOf("/x", layerOf(file("/etc/abs", "abs\n"), symlink("etc/pw", "/etc/passwd"), symlink("etc/up", "../../../../etc/passwd"))),
	}
	artifact, err := mutate.AppendLayers(mutate.MediaType(mutate.ConfigMediaType(empty.Image, "application/vnd.example.thing.config.v1+json"), types.OCIManifestSchema1), static.NewLayer([]byte("hello"), "application/vnd.example.thing.v1"))
	if err != nil {
		t.Fatal(err)
	}
	images["artifact:1"] = artifact
	for ref, img := range images {
		r, err := name.ParseReference(host + "/" + ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
			t.Fatalf("pushing %s: %v", ref, err)
		}
	}
}

// TestHostileInput: each bad input gives one clear stderr line, a
// documented exit code, and loses nothing from the cache or image store.
func TestHostileInput(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	reg := startFaultyRegistry(t)
	e := newBangerEnv(t, reg.host)
	// Something to lose: an image and its blobs.
	e.run("image", "pull", "-q", reg.host+"/app:1")
	beforeImages, beforeBlobs := snapshot(t, e.data), snapshot(t, filepath.Join(e.cache, "oci", "blobs"))

	appDigest := mustDigest(testImages()["app:1"])
	tests := []struct {
		name     string
		fault    string
		args     []string
		wantCode int
		wantErr  string // regexp the single stderr line must match
	}{
		{"malformed reference", "", []string{"image", "pull", "Bad Ref!"}, 2, `parsing reference "Bad Ref!"`},
		{"unknown transport", "", []string{"image", "pull", "dir:/tmp/x"}, 2, `unknown transport "dir"`},
		{"missing OCI layout", "", []string{"image", "pull", "oci:/nonexistent/layout"}, 1, `opening OCI layout /nonexistent/layout`},
		{"docker-archive not a tar", "", []string{"image", "pull", "docker-archive:" + filepath.Join("testdata", "hello", "index.json")}, 1, `reading docker archive`},
		{"registry refused", "", []string{"image", "pull", "127.0.0.1:1/x:1"}, 1, `connection refused.*check the registry address`},
		{"registry slow", "slow", []string{"image", "pull", "--timeout", "500ms", reg.host + "/app:1"}, 1, `deadline exceeded.*--timeout`},
		{"401 without credentials", "401", []string{"image", "pull", reg.host + "/app:1"}, 1, `UNAUTHORIZED.*docker login ` + regexp.QuoteMeta(reg.host)},
		{"404 tag", "", []string{"image", "pull", reg.host + "/app:nosuch"}, 1, `MANIFEST_UNKNOWN.*check the repository and tag exist`},
		{"404 blob", "404-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `BLOB_UNKNOWN`},
		{"blob content mismatch", "corrupt-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `content does not match digest|error verifying sha256 checksum`},
		{"truncated blob", "truncate-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `unexpected EOF|content does not match digest`},
		{"manifest digest mismatch", "", []string{"image", "pull", reg.host + "/app@" + strings.Replace(appDigest, "sha256:", "sha256:0", 1)[:len(appDigest)]}, 1, `(?i)manifest`},
		{"layer with .. path", "", []string{"image", "pull", reg.host + "/dotdot:1"}, 1, `\.\.`},
		{"hardlink out of the root", "", []string{"image", "pull", reg.host + "/hardlink-out:1"}, 1, `\.\.`},
		{"layer not a tar", "", []string{"image", "pull", reg.host + "/notar:1"}, 1, `layer 0`},
		{"artifact, not an image", "", []string{"image", "pull", reg.host + "/artifact:1"}, 1, `not a container image: config media type is application/vnd.example.thing.config.v1\+json`},
		{"inspect unknown image", "", []string{"image", "inspect", "nosuch:1"}, 1, "run `banger image ls`"},
		{"rm unknown image", "", []string{"image", "rm", "nosuch:1"}, 1, "run `banger image ls`"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg.fault.Store(tt.fault)
			defer reg.fault.Store("")
			var stdout, stderr bytes.Buffer
			cmd := e.cmd(tt.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if err != nil {
				code = cmd.ProcessState.ExitCode()
			}
			if code != tt.wantCode {
				t.Errorf("banger %s exited %d, want %d; stderr: %s", strings.Join(tt.args, " "), code, tt.wantCode, stderr.String())
			}
			// A pull off a terminal logs one line per verified layer
			// first; the failure itself is one line.
			lines := slices.DeleteFunc(strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"), func(l string) bool {
				return strings.HasPrefix(l, "fetched sha256:") || strings.HasPrefix(l, "cached sha256:")
			})
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "banger: ") {
				t.Errorf("stderr = %q, want one line starting with \"banger: \"", stderr.String())
			}
			if !regexp.MustCompile(tt.wantErr).MatchString(stderr.String()) {
				t.Errorf("stderr = %q, want a match for %q", stderr.String(), tt.wantErr)
			}
			if after := snapshot(t, e.data); after != beforeImages {
				t.Errorf("image store changed:\nbefore: %s\nafter:  %s", beforeImages, after)
			}
			// The cache may gain verified blobs of a pull that failed
			// later, but loses none and holds nothing corrupt.
			after := snapshot(t, filepath.Join(e.cache, "oci", "blobs"))
			for _, b := range strings.Fields(beforeBlobs) {
				if !strings.Contains(after, b) {
					t.Errorf("cached blob %s lost", b)
				}
			}
			checkCacheInvariants(t, e.cache, false)
		})
	}

	t.Run("interrupted pull exits 130 and leaves nothing", func(t *testing.T) {
		reg.fault.Store("slow")
		defer reg.fault.Store("")
		var stderr bytes.Buffer
		cmd := e.cmd("image", "pull", "--name", "interrupted", reg.host+"/app:2")
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if got := cmd.ProcessState.ExitCode(); got != 130 {
			t.Errorf("interrupted pull exited %d, want 130; stderr: %s", got, stderr.String())
		}
		if stderr.String() != "banger: interrupted; nothing half-done was kept\n" {
			t.Errorf("stderr = %q", stderr.String())
		}
		if after := snapshot(t, e.data); after != beforeImages {
			t.Errorf("image store changed:\nbefore: %s\nafter:  %s", beforeImages, after)
		}
	})

	t.Run("absolute paths are stripped and symlinks kept", func(t *testing.T) {
		e2 := newBangerEnv(t, reg.host)
		e2.run("image", "pull", "-q", reg.host+"/absolute:1")
		out := e2.run("image", "inspect", reg.host+"/absolute:1")
		rootfs := regexp.MustCompile(`"rootfs": ?"([^"]+)"`).FindStringSubmatch(out)[1]
		listing := tarListing(t, rootfs)
		for _, want := range []string{"etc/abs", "etc/pw -> /etc/passwd", "etc/up -> ../../../../etc/passwd"} {
			if !strings.Contains(listing, want+"\n") {
				t.Errorf("rootfs listing lacks %q:\n%s", want, listing)
			}
		}
	})

	t.Run("corrupt cached blob is discarded and fetched again", func(t *testing.T) {
		var blobs []string
		layers, _ := testImages()["app:1"].Layers()
		for _, l := range layers {
			d, _ := l.Digest()
			blobs = append(blobs, filepath.Join(e.cache, "oci", "blobs", "sha256", d.Hex))
		}
		for i, b := range blobs {
			data, _ := os.ReadFile(b)
			if i%2 == 0 {
				data[len(data)/2] ^= 0xff // flipped byte
			} else {
				data = data[:len(data)/2] // truncated
			}
			os.WriteFile(b, data, 0o644)
		}
		servedBefore := reg.served.Load()
		var stderr bytes.Buffer
		cmd := e.cmd("image", "pull", "-q", "--name", "refetched", reg.host+"/app:1")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("pull over a corrupt cache: %v; %s", err, stderr.String())
		}
		if got := strings.Count(stderr.String(), "discarded corrupt cached blob"); got != len(blobs) {
			t.Errorf("stderr warned %d times, want %d: %s", got, len(blobs), stderr.String())
		}
		if got := reg.served.Load() - servedBefore; got != int64(len(blobs)) {
			t.Errorf("registry served %d layer blobs, want %d re-fetched", got, len(blobs))
		}
		checkCacheInvariants(t, e.cache, false)
	})
}

// snapshot describes the files under root and their content, to show
// what changed.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			sum, _ := fileSHA256(path)
			b.WriteString(strings.TrimPrefix(path, root) + ":" + sum[:12] + " ")
		}
		return nil
	})
	return b.String()
}

func tarListing(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	tr := newTarReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(hdr.Name)
		if hdr.Linkname != "" {
			b.WriteString(" -> " + hdr.Linkname)
		}
		b.WriteString("\n")
	}
	return b.String()
}
