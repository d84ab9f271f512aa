package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/image"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
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
	// slowed gets a value, if it has none, each time the "slow" fault
	// holds a request.
	slowed chan struct{}
}

func startFaultyRegistry(t *testing.T) *faultyRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	f := &faultyRegistry{layers: map[string]bool{}, slowed: make(chan struct{}, 1)}
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
			case f.slowed <- struct{}{}:
			default:
			}
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		case fault == "alter-manifest" && strings.Contains(r.URL.Path, "/manifests/sha256:"):
			// The bytes served under the digest asked for are not the
			// ones that hash to it: banger's own check must refuse them.
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			body := append(bytes.TrimRight(rec.Body.Bytes(), "\n"), ' ')
			w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
			w.Header().Set("Docker-Content-Digest", rec.Header().Get("Docker-Content-Digest"))
			w.WriteHeader(rec.Code)
			w.Write(body)
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
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	reg := startFaultyRegistry(t)
	e := newBangerEnv(t, reg.host)
	// The retried cases give up after the same 4 attempts, without
	// waiting through the real backoff between them.
	e.env = []string{"BANGER_RETRY_BACKOFF=1ms"}
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
		{"unknown transport", "", []string{"image", "pull", "frob:/tmp/x"}, 2, `unknown transport "frob"`},
		{"skopeo transport banger does not read", "", []string{"image", "pull", "dir:/tmp/x"}, 2, "unknown transport \"dir\" in \"dir:/tmp/x\" \\(one of skopeo's that banger does not read\\): convert it with `skopeo copy"},
		{"missing OCI layout", "", []string{"image", "pull", "oci:/nonexistent/layout"}, 1, `opening OCI layout /nonexistent/layout`},
		{"docker-archive not a tar", "", []string{"image", "pull", "docker-archive:" + filepath.Join("testdata", "hello", "index.json")}, 1, `reading docker archive`},
		{"registry refused", "", []string{"image", "pull", "127.0.0.1:1/x:1"}, 1, `connection refused.*check the registry address`},
		{"registry slow", "slow", []string{"image", "pull", "--timeout", "500ms", reg.host + "/app:1"}, 1, `deadline exceeded.*--timeout`},
		{"401 without credentials", "401", []string{"image", "pull", reg.host + "/app:1"}, 1, `UNAUTHORIZED.*docker login ` + regexp.QuoteMeta(reg.host)},
		{"404 tag", "", []string{"image", "pull", reg.host + "/app:nosuch"}, 1, `MANIFEST_UNKNOWN.*check the repository and tag exist`},
		{"404 blob", "404-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `BLOB_UNKNOWN`},
		{"blob content mismatch", "corrupt-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `layer \d: fetching blob sha256:[0-9a-f]{64} from [^ ]+: content does not match digest \(content is sha256:[0-9a-f]{64}\); nothing was cached \(gave up after 4 attempts\)`},
		{"truncated blob", "truncate-blob", []string{"image", "pull", "--name", "x", reg.host + "/app:2"}, 1, `unexpected EOF|content does not match digest`},
		{"manifest digest mismatch", "alter-manifest", []string{"image", "pull", reg.host + "/app@" + appDigest}, 1, `manifest content is sha256:[0-9a-f]{64}, not the ` + appDigest + ` it was asked for; the source is corrupt or tampered with`},
		{"layer with .. path", "", []string{"image", "pull", reg.host + "/dotdot:1"}, 1, `layer 0: entry "\.\./\.\./etc/evil": path "\.\./\.\./etc/evil" escapes the root`},
		{"hardlink out of the root", "", []string{"image", "pull", reg.host + "/hardlink-out:1"}, 1, `flattening: layer 0: entry "b": hardlink target: path "\.\./\.\./\.\./etc/passwd" escapes the root`},
		{"layer not a tar", "", []string{"image", "pull", reg.host + "/notar:1"}, 1, `layer 0`},
		{"artifact, not an image", "", []string{"image", "pull", reg.host + "/artifact:1"}, 1, `not a container image: config media type is application/vnd.example.thing.config.v1\+json`},
		{"--name that looks like an ID", "", []string{"image", "pull", "--name", "0123456789abcdef", "oci:" + filepath.Join("testdata", "hello") + ":1.0"}, 2, `image name "0123456789abcdef" looks like an image ID; a name must not be mistaken for one; choose another with --name\n$`},
		{"--name with a space", "", []string{"image", "pull", "--name", "a b", "oci:" + filepath.Join("testdata", "hello") + ":1.0"}, 2, `image name "a b" has ' ' at byte 1; a name starts with a letter or digit, then letters, digits and \. _ - / : @ \+; choose another with --name\n$`},
		{"--name with /..", "", []string{"image", "pull", "--name", "x/../y", "oci:" + filepath.Join("testdata", "hello") + ":1.0"}, 2, `image name "x/\.\./y" has an empty, \. or \.\. path component; choose another with --name\n$`},
		{"--platform not the image's", "", []string{"image", "pull", "--platform", "linux/s390x", "oci:" + filepath.Join("testdata", "hello") + ":1.0"}, 2, `oci:testdata/hello:1\.0 is a single-platform image for linux/amd64, not linux/s390x; choose one with --platform OS/ARCH\[/VARIANT\]\n$`},
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
			t.Logf("exit %d, stderr: %s", code, stderr.String())
			if code != tt.wantCode {
				t.Errorf("banger %s exited %d, want %d; stderr: %s", strings.Join(tt.args, " "), code, tt.wantCode, stderr.String())
			}
			if lines := failureLines(stderr.String()); len(lines) != 1 || !strings.HasPrefix(lines[0], "banger: ") {
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
		select {
		case <-reg.slowed: // left by an earlier case
		default:
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Interrupted while it waits on the registry, not after a guess
		// at how long it takes to get there.
		select {
		case <-reg.slowed:
		case <-time.After(10 * time.Second):
			t.Fatal("the pull sent the registry nothing within 10 s")
		}
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
		// A stored image would be found up to date, or named again,
		// without reading a blob (issue 13): remove it so the pull reads
		// the cache.
		e.run("image", "prune", "--all")
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

// craftedImage is a one-layer image served by craftedRegistry, as parts a
// case can tamper with before serving.
type craftedImage struct {
	manifest map[string]any // the OCI manifest, as JSON
	config   []byte
	layer    []byte
	// digests of the untampered config and layer
	configDigest, layerDigest string
}

func newCraftedImage(t *testing.T) *craftedImage {
	t.Helper()
	img := imageOf("/x", layerOf(file("hello", "hi\n")))
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	c := &craftedImage{}
	if err := json.Unmarshal(raw, &c.manifest); err != nil {
		t.Fatal(err)
	}
	if c.config, err = img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if c.layer, err = io.ReadAll(rc); err != nil {
		t.Fatal(err)
	}
	c.configDigest = c.configDesc()["digest"].(string)
	c.layerDigest = c.layerDesc()["digest"].(string)
	return c
}

func (c *craftedImage) configDesc() map[string]any { return c.manifest["config"].(map[string]any) }
func (c *craftedImage) layerDesc() map[string]any {
	return c.manifest["layers"].([]any)[0].(map[string]any)
}

func (c *craftedImage) rawManifest(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(c.manifest)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// endless writes zeros until the client goes away.
func endless(w http.ResponseWriter, r *http.Request) {
	buf := make([]byte, 64<<10)
	for r.Context().Err() == nil {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

// hang answers nothing until the client goes away (or the test ends).
func hang(w http.ResponseWriter, r *http.Request) {
	<-r.Context().Done()
}

// craftedRegistry serves img as 127.0.0.1:PORT/x:1 (and by its digest);
// override, if set, answers the requests it returns true for. It counts
// the requests for each path.
type craftedRegistry struct {
	host string
	hits sync.Map // path -> *atomic.Int64
}

func (cr *craftedRegistry) count(path string) int64 {
	if n, ok := cr.hits.Load(path); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

func startCraftedRegistry(t *testing.T, manifest []byte, mediaType string, blobs map[string][]byte, override func(w http.ResponseWriter, r *http.Request) bool) *craftedRegistry {
	t.Helper()
	cr := &craftedRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := cr.hits.LoadOrStore(r.URL.Path, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		if override != nil && override(w, r) {
			return
		}
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(r.URL.Path, "/v2/x/manifests/"):
			w.Header().Set("Content-Type", mediaType)
			w.Write(manifest)
		case strings.HasPrefix(r.URL.Path, "/v2/x/blobs/"):
			b, ok := blobs[strings.TrimPrefix(r.URL.Path, "/v2/x/blobs/")]
			if !ok {
				http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`, http.StatusNotFound)
				return
			}
			w.Write(b)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	cr.host = strings.TrimPrefix(srv.URL, "http://")
	return cr
}

// hostileRun is one banger run against hostile input and what it left.
type hostileRun struct {
	code   int
	stderr string
	maxRSS int64 // KiB
}

// runHostile runs banger in a fresh cache and store and checks what every
// hostile case must hold: one stderr line starting "banger: ", no Go
// runtime trace, nothing left in the cache or the image store, and a
// bounded peak memory.
// failureLines is stderr without the per-layer lines a pull logs off a
// terminal ("fetched sha256:…", "cached sha256:…"): what is left must be
// the one line of the failure.
func failureLines(stderr string) []string {
	return slices.DeleteFunc(strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"), func(l string) bool {
		return strings.HasPrefix(l, "fetched sha256:") || strings.HasPrefix(l, "cached sha256:")
	})
}

func runHostile(t *testing.T, e *bangerEnv, prefix []string, args ...string) hostileRun {
	t.Helper()
	return checkHostile(t, e, prefix, false, args...)
}

// runHostileKeepBlobs is runHostile for a pull that fails after verifying
// some blobs, which the cache may keep.
func runHostileKeepBlobs(t *testing.T, e *bangerEnv, prefix []string, args ...string) hostileRun {
	t.Helper()
	return checkHostile(t, e, prefix, true, args...)
}

func checkHostile(t *testing.T, e *bangerEnv, prefix []string, keepBlobs bool, args ...string) hostileRun {
	t.Helper()
	var stderr bytes.Buffer
	argv := append(append(prefix, e.bin), args...)
	// The child's own rusage is no measure: Go starts it with vfork, and
	// Linux counts the parent's peak RSS in a vforked child's. GNU time
	// forks, so it reports banger's own.
	rssFile := filepath.Join(t.TempDir(), "maxrss")
	gnuTime, timeErr := exec.LookPath("time")
	if timeErr == nil {
		argv = append([]string{gnuTime, "-f", "banger-maxrss %M", "-o", rssFile, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = e.cmd().Env
	cmd.Stderr = &stderr
	cmd.Run()
	run := hostileRun{code: cmd.ProcessState.ExitCode(), stderr: stderr.String()}
	if timeErr == nil {
		b, _ := os.ReadFile(rssFile)
		if m := regexp.MustCompile(`banger-maxrss (\d+)`).FindSubmatch(b); m != nil {
			run.maxRSS, _ = strconv.ParseInt(string(m[1]), 10, 64)
		} else {
			t.Errorf("no peak RSS from %s: %q", gnuTime, b)
		}
	}
	if lines := failureLines(run.stderr); len(lines) != 1 || !strings.HasPrefix(lines[0], "banger: ") {
		t.Errorf("stderr = %q, want one line starting with \"banger: \"", run.stderr)
	}
	for _, trace := range []string{"goroutine ", "fatal error", "panic:"} {
		if strings.Contains(run.stderr, trace) {
			t.Errorf("stderr holds a Go runtime trace (%q): %s", trace, run.stderr)
		}
	}
	for _, line := range strings.Split(strings.TrimSuffix(run.stderr, "\n"), "\n") {
		if image.Escape(line) == line {
			continue
		}
		t.Errorf("stderr holds raw control characters: %q", run.stderr)
		break
	}
	// Generous: banger's own peak is a few tens of MiB (more under -race);
	// an unbounded read of a hostile blob is gigabytes or the OOM killer.
	const maxRSS = 256 << 10
	switch {
	case timeErr != nil:
		t.Logf("GNU time not installed (apt-get install time): peak RSS not checked")
	case run.maxRSS > maxRSS:
		t.Errorf("peak RSS %d KiB, want at most %d KiB", run.maxRSS, maxRSS)
	}
	dirs := []string{filepath.Join(e.cache, "oci", "tmp"), filepath.Join(e.data, "images")}
	if !keepBlobs {
		dirs = append(dirs, filepath.Join(e.cache, "oci", "blobs", "sha256"))
	}
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, entry := range entries {
			t.Errorf("%s holds %s after a failed pull", dir, entry.Name())
		}
	}
	return run
}

// TestHostileRegistry: crafted registries on 127.0.0.1 that lie about
// sizes, never answer, loop, point elsewhere or send terminal escapes. Each
// fails the pull with one line and leaves nothing behind, within bounded
// memory. Every case runs with a 2 s stall timeout, which the stall cases
// must report, so that they wait 2 s, not the default 30, and with a 1 ms
// retry backoff, so that a retried blob costs no waiting.
func TestHostileRegistry(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	const oci = "application/vnd.oci.image.manifest.v1+json"
	hex64 := `sha256:[0-9a-f]{64}`
	foreign := startCraftedRegistry(t, nil, "", nil, nil) // must get no request
	tests := []struct {
		name string
		// craft tampers with the image and may answer requests itself.
		craft    func(c *craftedImage) func(w http.ResponseWriter, r *http.Request) bool
		wantCode int
		wantErr  string // regexp the single stderr line must match
		// after checks the registry's request counts.
		after func(t *testing.T, cr *craftedRegistry, c *craftedImage)
	}{
		{
			name: "config of 8 GiB, endless body",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.configDesc()["size"] = 8 << 30
				return serveEndless(c.configDigest)
			},
			wantCode: 1,
			wantErr:  `config ` + hex64 + `: declared size 8589934592 bytes is over the 32 MiB cap`,
			after:    notFetched(func(c *craftedImage) string { return c.configDigest }),
		},
		{
			name: "config of size -1, endless body",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.configDesc()["size"] = -1
				return serveEndless(c.configDigest)
			},
			wantCode: 1,
			wantErr:  `config ` + hex64 + `: declared size -1 is negative; the manifest is malformed`,
			after:    notFetched(func(c *craftedImage) string { return c.configDigest }),
		},
		{
			name: "config longer than declared",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return serveEndless(c.configDigest)
			},
			wantCode: 1,
			wantErr:  `reading image config: config ` + hex64 + `: more than its declared size of \d+ bytes; the source is corrupt`,
		},
		{
			name: "layer of size -1, endless body",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.layerDesc()["size"] = -1
				return serveEndless(c.layerDigest)
			},
			wantCode: 1,
			wantErr:  `layer 0 ` + hex64 + `: declared size -1 is negative; the manifest is malformed`,
			after:    notFetched(func(c *craftedImage) string { return c.layerDigest }),
		},
		{
			name: "layer of 2 TiB",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.layerDesc()["size"] = 2 << 40
				return serveEndless(c.layerDigest)
			},
			wantCode: 1,
			wantErr:  `layer 0 ` + hex64 + `: declared size 2199023255552 bytes is over the 1.0 TiB cap`,
			after:    notFetched(func(c *craftedImage) string { return c.layerDigest }),
		},
		{
			name: "layer longer than declared, endless body",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return serveEndless(c.layerDigest)
			},
			wantCode: 1,
			wantErr:  `layer 0: fetching blob ` + hex64 + ` from [^ ]+: got more than \d+ bytes, want \d+: content does not match digest`,
		},
		{
			name: "manifest declaring 5 MiB",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					w.Header().Set("Content-Length", strconv.Itoa(5<<20))
					w.Write(make([]byte, 5<<20))
					return true
				}
			},
			wantCode: 1,
			wantErr:  `manifest "/v2/x/manifests/1": declared size 5242880 bytes is over the 4.0 MiB cap`,
		},
		{
			name: "endless manifest",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					endless(w, r)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `manifest "/v2/x/manifests/1": no declared size, and more than the 4.0 MiB cap served`,
		},
		{
			name: "sha512 layer digest",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.layerDesc()["digest"] = "sha512:" + strings.Repeat("ab", 64)
				return nil
			},
			wantCode: 1,
			wantErr:  `layer 0 has digest "sha512:(ab){64}": banger reads only sha256 digests`,
		},
		{
			name: "malformed layer digest",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.layerDesc()["digest"] = "sha256:../../../../etc/passwd"
				return nil
			},
			wantCode: 1,
			wantErr:  `parsing manifest: found non-hex character in hash: \.`,
		},
		{
			name: "schemaVersion 1 under the OCI media type",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.manifest["schemaVersion"] = 1
				return nil
			},
			wantCode: 1,
			wantErr:  `manifest has schemaVersion 1; banger reads only schemaVersion 2`,
		},
		{
			name: "foreign layer URLs",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				c.layerDesc()["urls"] = []string{"http://" + foreign.host + "/layer"}
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.HasSuffix(r.URL.Path, c.layerDigest) {
						return false
					}
					http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`, http.StatusNotFound)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `layer 0 \(` + hex64 + `\) is a foreign layer to be fetched from "http://127\.0\.0\.1:\d+/layer"; banger fetches layers only from the image's own source`,
			after: func(t *testing.T, cr *craftedRegistry, c *craftedImage) {
				if n := foreign.count("/layer"); n != 0 {
					t.Errorf("the foreign host got %d requests, want none", n)
				}
			},
		},
		{
			name: "blob redirect loop",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.HasSuffix(r.URL.Path, c.layerDigest) {
						return false
					}
					http.Redirect(w, r, r.URL.Path, http.StatusFound)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `stopped after 10 redirects \(a redirect loop\?\)`,
			after: func(t *testing.T, cr *craftedRegistry, c *craftedImage) {
				if n := cr.count("/v2/x/blobs/" + c.layerDigest); n != 10 {
					t.Errorf("the looping blob was requested %d times, want 10 (one chain, not retried)", n)
				}
			},
		},
		{
			name: "redirect to a link-local address",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.HasSuffix(r.URL.Path, c.layerDigest) {
						return false
					}
					http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `redirect refused: redirect from "127\.0\.0\.1" to private or link-local host "169\.254\.169\.254"`,
		},
		{
			name: "terminal escapes in the registry's message",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"\u001b]0;owned\u0007\u001b[2Jgone"}]}`, http.StatusNotFound)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `MANIFEST_UNKNOWN: \\x1b\]0;owned\\x07\\x1b\[2Jgone; check the repository and tag exist`,
		},
		{
			name: "manifest never answered",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					hang(w, r)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `127\.0\.0\.1:\d+ sent nothing for 2s \(a stalled connection is not retried\)`,
			after: func(t *testing.T, cr *craftedRegistry, c *craftedImage) {
				if n := cr.count("/v2/x/manifests/1"); n != 1 {
					t.Errorf("the stalled manifest was requested %d times, want 1", n)
				}
			},
		},
		{
			name: "blob stalls mid-body",
			craft: func(c *craftedImage) func(http.ResponseWriter, *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.HasSuffix(r.URL.Path, c.layerDigest) {
						return false
					}
					w.Header().Set("Content-Length", strconv.Itoa(len(c.layer)))
					w.Write(c.layer[:len(c.layer)/2])
					w.(http.Flusher).Flush()
					hang(w, r)
					return true
				}
			},
			wantCode: 1,
			wantErr:  `layer 0: fetching blob ` + hex64 + ` from [^ ]+: 127\.0\.0\.1:\d+ sent nothing for 2s \(a stalled connection is not retried\)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCraftedImage(t)
			override := tt.craft(c)
			blobs := map[string][]byte{c.configDigest: c.config, c.layerDigest: c.layer}
			cr := startCraftedRegistry(t, c.rawManifest(t), oci, blobs, override)
			e := newBangerEnv(t, cr.host)
			e.env = []string{"BANGER_STALL_TIMEOUT=2s", "BANGER_RETRY_BACKOFF=1ms"}
			run := runHostile(t, e, nil, "image", "pull", cr.host+"/x:1")
			t.Logf("stderr: %speak RSS: %d KiB", run.stderr, run.maxRSS)
			if run.code != tt.wantCode {
				t.Errorf("exit code %d, want %d", run.code, tt.wantCode)
			}
			if !regexp.MustCompile(tt.wantErr).MatchString(run.stderr) {
				t.Errorf("stderr = %q, want a match for %q", run.stderr, tt.wantErr)
			}
			if tt.after != nil {
				tt.after(t, cr, c)
			}
		})
	}
}

// serveEndless answers the GET of blob digest with an endless body.
func serveEndless(digest string) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+digest) {
			return false
		}
		endless(w, r)
		return true
	}
}

// notFetched checks that the blob was refused before any request for it.
func notFetched(digest func(c *craftedImage) string) func(t *testing.T, cr *craftedRegistry, c *craftedImage) {
	return func(t *testing.T, cr *craftedRegistry, c *craftedImage) {
		if n := cr.count("/v2/x/blobs/" + digest(c)); n != 0 {
			t.Errorf("the refused blob was requested %d times, want none", n)
		}
	}
}

// hostileLayout is an OCI layout of one image tagged "1.0", for a case to
// tamper with.
type hostileLayout struct {
	dir                                       string
	manifestDigest, configDigest, layerDigest string // hex
}

func newHostileLayout(t *testing.T, layers ...v1.Layer) *hostileLayout {
	t.Helper()
	if len(layers) == 0 {
		layers = []v1.Layer{layerOf(file("hello", "hi\n"))}
	}
	img := imageOf("/x", layers...)
	dir := filepath.Join(t.TempDir(), "l")
	p, err := layout.Write(dir, mutateEmptyIndex())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1.0"})); err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	hl := &hostileLayout{dir: dir, configDigest: m.Config.Digest.Hex, layerDigest: m.Layers[0].Digest.Hex}
	d, _ := img.Digest()
	hl.manifestDigest = d.Hex
	return hl
}

func (hl *hostileLayout) blob(hex string) string {
	return filepath.Join(hl.dir, "blobs", "sha256", hex)
}

// replace puts a FIFO, a symlink or a file at path instead of what is there.
func replaceWith(t *testing.T, path, what string) {
	t.Helper()
	os.Remove(path)
	var err error
	switch what {
	case "fifo":
		err = syscall.Mkfifo(path, 0o644)
	case "/dev/zero":
		err = os.Symlink("/dev/zero", path)
	default:
		err = os.WriteFile(path, []byte(what), 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// rewriteManifest edits the image's manifest and points index.json at the
// result, so that the layout stays consistent but for the edit.
func (hl *hostileLayout) rewriteManifest(t *testing.T, edit func(m map[string]any)) {
	t.Helper()
	h, size := hl.rewriteBlob(t, hl.manifestDigest, edit)
	hl.rewriteIndex(t, func(idx map[string]any) {
		d := idx["manifests"].([]any)[0].(map[string]any)
		d["digest"], d["size"] = h.String(), size
	})
	hl.manifestDigest = h.Hex
}

// rewriteBlob edits the JSON blob hex and stores the result as a blob of
// its own, returning its digest and size.
func (hl *hostileLayout) rewriteBlob(t *testing.T, hex string, edit func(map[string]any)) (v1.Hash, int) {
	t.Helper()
	var v map[string]any
	b, err := os.ReadFile(hl.blob(hex))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &v)
	edit(v)
	b, _ = json.Marshal(v)
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	if err := os.WriteFile(hl.blob(h.Hex), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return h, len(b)
}

func (hl *hostileLayout) rewriteIndex(t *testing.T, edit func(idx map[string]any)) {
	t.Helper()
	var idx map[string]any
	b, err := os.ReadFile(filepath.Join(hl.dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &idx)
	edit(idx)
	b, _ = json.Marshal(idx)
	if err := os.WriteFile(filepath.Join(hl.dir, "index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHostileLayout: OCI layouts whose files are FIFOs, devices, symlinks
// out of the layout, or larger than their caps. Each fails with one line,
// at once (a FIFO is never opened for a blocking read), and leaves nothing
// behind, within bounded memory.
func TestHostileLayout(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	hex64 := `[0-9a-f]{64}`
	tests := []struct {
		name     string
		tamper   func(t *testing.T, hl *hostileLayout)
		args     []string // before the oci: reference; default pull
		tag      string   // default ":1.0"
		wantCode int
		wantErr  string
	}{
		{"index.json a symlink to /dev/zero", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, filepath.Join(hl.dir, "index.json"), "/dev/zero")
		}, nil, "", 1, `OCI layout \S+: opening index\.json: .*path escapes from parent; a layout's files must be inside it`},
		{"index.json a FIFO", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, filepath.Join(hl.dir, "index.json"), "fifo")
		}, nil, "", 1, `OCI layout \S+: index\.json is a FIFO, not a regular file`},
		{"oci-layout a FIFO", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, filepath.Join(hl.dir, "oci-layout"), "fifo")
		}, nil, "", 1, `OCI layout \S+: oci-layout is a FIFO, not a regular file`},
		{"index.json of 5 MiB", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, filepath.Join(hl.dir, "index.json"), `{"schemaVersion":2,"manifests":[]}`+strings.Repeat(" ", 5<<20))
		}, nil, "", 1, `OCI layout \S+: index\.json: size 52429\d\d bytes is over the 4\.0 MiB cap`},
		{"index.json schemaVersion 1", func(t *testing.T, hl *hostileLayout) {
			hl.rewriteIndex(t, func(idx map[string]any) { idx["schemaVersion"] = 1 })
		}, nil, "", 1, `OCI layout \S+: index\.json has schemaVersion 1; banger reads only schemaVersion 2`},
		{"manifest a symlink to /dev/zero", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, hl.blob(hl.manifestDigest), "/dev/zero")
		}, nil, "", 1, `OCI layout \S+: opening blobs/sha256/` + hex64 + `: .*path escapes from parent; a layout's files must be inside it`},
		{"manifest a FIFO", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, hl.blob(hl.manifestDigest), "fifo")
		}, nil, "", 1, `OCI layout \S+: blobs/sha256/` + hex64 + ` is a FIFO, not a regular file`},
		{"manifest declared 5 MiB", func(t *testing.T, hl *hostileLayout) {
			hl.rewriteIndex(t, func(idx map[string]any) { idx["manifests"].([]any)[0].(map[string]any)["size"] = 5 << 20 })
		}, nil, "", 1, `OCI layout \S+: manifest sha256:` + hex64 + `: declared size 5242880 bytes is over the 4\.0 MiB cap`},
		{"config a symlink to /dev/zero, declared 8 GiB", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, hl.blob(hl.configDigest), "/dev/zero")
			hl.rewriteManifest(t, func(m map[string]any) { m["config"].(map[string]any)["size"] = 8 << 30 })
		}, nil, "", 1, `pull oci:\S+: config sha256:` + hex64 + `: declared size 8589934592 bytes is over the 32 MiB cap`},
		{"config a symlink to /dev/zero", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, hl.blob(hl.configDigest), "/dev/zero")
		}, nil, "", 1, `reading image config: OCI layout \S+: opening blobs/sha256/` + hex64 + `: .*path escapes from parent`},
		{"index.json a device inside the layout", func(t *testing.T, hl *hostileLayout) {
			path := filepath.Join(hl.dir, "index.json")
			os.Remove(path)
			if err := syscall.Mknod(path, syscall.S_IFCHR|0o644, 1<<8|5); err != nil { // /dev/zero's 1:5
				t.Skipf("cannot create a device node (needs root): %v", err)
			}
		}, nil, "", 1, `OCI layout \S+: index\.json is a character device, not a regular file`},
		{"layer a FIFO", func(t *testing.T, hl *hostileLayout) {
			replaceWith(t, hl.blob(hl.layerDigest), "fifo")
		}, nil, "", 1, `layer 0: fetching blob sha256:` + hex64 + ` from oci:\S+: OCI layout \S+: blobs/sha256/` + hex64 + ` is a FIFO, not a regular file`},
		{"layer missing", func(t *testing.T, hl *hostileLayout) {
			os.Remove(hl.blob(hl.layerDigest))
		}, nil, "", 1, `layer 0: fetching blob sha256:` + hex64 + ` from oci:\S+: OCI layout \S+: blobs/sha256/` + hex64 + ` is missing; the layout is incomplete`},
		{"ref.name with terminal escapes", func(t *testing.T, hl *hostileLayout) {
			hl.rewriteIndex(t, func(idx map[string]any) {
				idx["manifests"].([]any)[0].(map[string]any)["annotations"] = map[string]string{"org.opencontainers.image.ref.name": "\x1b]0;owned\x07\x1b[2J"}
			})
		}, nil, "-", 2, `the name the source gives the image, "l:\\x1b\]0;owned\\a\\x1b\[2J", holds control characters; choose another with --name`},
		{"tags with terminal escapes listed", func(t *testing.T, hl *hostileLayout) {
			hl.rewriteIndex(t, func(idx map[string]any) {
				idx["manifests"].([]any)[0].(map[string]any)["annotations"] = map[string]string{"org.opencontainers.image.ref.name": "\x1b[2J"}
			})
		}, nil, ":9", 2, `OCI layout \S+ has no image tagged "9"; pick one with oci:\S+:TAG, available tags: "\\x1b\[2J"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hl := newHostileLayout(t)
			tt.tamper(t, hl)
			e := newBangerEnv(t, "")
			ref := "oci:" + hl.dir
			switch tt.tag {
			case "":
				ref += ":1.0"
			case "-":
			default:
				ref += tt.tag
			}
			args := append(append([]string{"image", "pull"}, tt.args...), ref)
			run := runHostile(t, e, nil, args...)
			t.Logf("stderr: %speak RSS: %d KiB", run.stderr, run.maxRSS)
			if run.code != tt.wantCode {
				t.Errorf("exit code %d, want %d", run.code, tt.wantCode)
			}
			if !regexp.MustCompile(tt.wantErr).MatchString(run.stderr) {
				t.Errorf("stderr = %q, want a match for %q", run.stderr, tt.wantErr)
			}
		})
	}
}

// TestHostileArchive: a docker-archive that is a FIFO or a device is
// refused at once, not opened for a read that blocks or never ends.
func TestHostileArchive(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "image.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// Entries over the caps (ggcr reads both whole into memory).
	bigConfig := filepath.Join(t.TempDir(), "big-config.tar")
	writeTarEntries(t, bigConfig, []tarEntry{
		{"manifest.json", `[{"Config":"config.json","RepoTags":["x:1"],"Layers":[]}]`},
		{"config.json", `{"rootfs":{"type":"layers","diff_ids":[]}}` + strings.Repeat(" ", 32<<20)},
	})
	bigManifest := filepath.Join(t.TempDir(), "big-manifest.tar")
	writeTarEntries(t, bigManifest, []tarEntry{
		{"manifest.json", `[{"Config":"config.json","RepoTags":["x:1"],"Layers":[]}]` + strings.Repeat(" ", 5<<20)},
	})
	tests := []struct {
		name, file, wantErr string
	}{
		{"FIFO", fifo, `docker archive \S+ is a FIFO, not a regular file`},
		{"device", "/dev/zero", `docker archive /dev/zero is a character device, not a regular file`},
		{"config over 32 MiB", bigConfig, `docker archive \S+: config config\.json: size 335544\d\d bytes is over the 32 MiB cap`},
		{"manifest.json of 5 MiB", bigManifest, `docker archive \S+: manifest\.json: size 52429\d\d bytes is over the 4\.0 MiB cap`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newBangerEnv(t, "")
			run := runHostile(t, e, nil, "image", "pull", "docker-archive:"+tt.file)
			t.Logf("stderr: %speak RSS: %d KiB", run.stderr, run.maxRSS)
			if run.code != 1 || !regexp.MustCompile(tt.wantErr).MatchString(run.stderr) {
				t.Errorf("exit code %d, stderr %q; want 1 and a match for %q", run.code, run.stderr, tt.wantErr)
			}
		})
	}
}

// TestManyLayers: an image of 2,000 layers pulls under a limit of 1,024
// open files, and a failed pull of one leaves no images/.tmp-* behind.
// Each pull of it waits on thousands of fsyncs and lock polls, so it runs
// beside the other parallel tests.
func TestManyLayers(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed; the open-file limit cannot be set for the child")
	}
	const n = 2000
	hl := writeManyLayers(t, n)
	// Go raises its soft limit to the hard one at start: set both.
	limit := []string{prlimit, "--nofile=1024:1024", "--"}

	t.Run("pulls", func(t *testing.T) {
		e := newBangerEnv(t, "")
		var stderr bytes.Buffer
		cmd := exec.Command(prlimit, append(limit[1:], e.bin, "image", "pull", "-q", "--json", "oci:"+hl.dir+":1.0")...)
		cmd.Env = e.cmd().Env
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("pull of %d layers under 1024 open files: %v; stderr: %s", n, err, stderr.String())
		}
		var img struct{ Rootfs string }
		if err := json.Unmarshal(out, &img); err != nil {
			t.Fatalf("bad --json output %q: %v", out, err)
		}
		if got := len(regexp.MustCompile(`(?m)^f/\d{4}$`).FindAllString(tarListing(t, img.Rootfs), -1)); got != n {
			t.Errorf("rootfs holds %d of the layers' files, want %d", got, n)
		}
	})
	t.Run("fails cleanly", func(t *testing.T) {
		// The base layer is fetched last: its blob goes missing after the
		// others are flattened.
		os.Remove(hl.blob(hl.layerDigest))
		e := newBangerEnv(t, "")
		run := runHostileKeepBlobs(t, e, limit, "image", "pull", "oci:"+hl.dir+":1.0")
		if run.code != 1 || !strings.Contains(run.stderr, "layer 0: fetching blob sha256:"+hl.layerDigest) || !strings.Contains(run.stderr, "is missing; the layout is incomplete") {
			t.Errorf("exit code %d, stderr %q; want 1 and layer 0's blob missing", run.code, run.stderr)
		}
	})
}

// writeManyLayers writes, by hand (ggcr's mutate is quadratic in the
// layers), a layout of one image with n uncompressed one-file layers.
func writeManyLayers(t *testing.T, n int) *hostileLayout {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "many")
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) v1.Hash {
		h, _, _ := v1.SHA256(bytes.NewReader(b))
		if err := os.WriteFile(filepath.Join(blobs, h.Hex), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return h
	}
	hl := &hostileLayout{dir: dir}
	var layers []map[string]any
	var diffIDs []string
	for i := range n {
		b := tarBytes([]entry{file(fmt.Sprintf("f/%04d", i), strconv.Itoa(i))})
		h := put(b)
		if i == 0 {
			hl.layerDigest = h.Hex
		}
		layers = append(layers, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": h.String(), "size": len(b)})
		diffIDs = append(diffIDs, h.String())
	}
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	ch := put(config)
	hl.configDigest = ch.Hex
	manifest, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": ch.String(), "size": len(config)},
		"layers": layers})
	mh := put(manifest)
	hl.manifestDigest = mh.Hex
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{
		map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mh.String(), "size": len(manifest),
			"annotations": map[string]string{"org.opencontainers.image.ref.name": "1.0"}}}})
	os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return hl
}

// TestImageHints: the image package's sentinels get the CLI's advice, and
// a deadline gets only the --timeout one (pullCommand adds it), not the
// network advice on top.
func TestImageHints(t *testing.T) {
	unreachable := fmt.Errorf("pull x: %w", image.ErrUnreachable)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"not found", fmt.Errorf("image \"x\": %w", image.ErrNotFound), "run `banger image ls`"},
		{"platform", fmt.Errorf("x: %w", image.ErrInvalidPlatform), "--platform"},
		{"name", fmt.Errorf("x: %w", image.ErrInvalidName), "--name"},
		{"unreachable", unreachable, "--insecure"},
		{"unreachable past the deadline", fmt.Errorf("%w: %w", unreachable, context.DeadlineExceeded), ""},
		{"stalled", fmt.Errorf("x: %w", image.ErrStalled), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := hint(tt.err)
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Errorf("hint(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

type tarEntry struct{ name, body string }

func writeTarEntries(t *testing.T, path string, entries []tarEntry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body))}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rewriteConfig edits the image's config and points the manifest at the
// result.
func (hl *hostileLayout) rewriteConfig(t *testing.T, edit func(cfg map[string]any)) {
	t.Helper()
	h, size := hl.rewriteBlob(t, hl.configDigest, edit)
	hl.rewriteManifest(t, func(m map[string]any) {
		c := m["config"].(map[string]any)
		c["digest"], c["size"] = h.String(), size
	})
	hl.configDigest = h.Hex
}

// TestHostileConfigTextInTables pulls an image whose config's architecture
// carries terminal escapes, as a source may write it: `image ls` prints it
// escaped, like every untrusted text, and its columns still line up, since
// each cell is escaped before the table is aligned (docker's table writer
// pads the text it prints, too).
func TestHostileConfigTextInTables(t *testing.T) {
	t.Parallel()
	hl := newHostileLayout(t)
	hl.rewriteConfig(t, func(cfg map[string]any) { cfg["architecture"] = "amd64\x1b[2J\x07" })
	e := newBangerEnv(t, "")
	e.run("image", "pull", "oci:"+hl.dir+":1.0", "--name", "x")
	out := e.run("image", "ls")
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("image ls printed raw control characters: %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], `linux/amd64\x1b[2J\x07`) {
		t.Fatalf("image ls = %q, want a header and a row whose platform is escaped", out)
	}
	// The SIZE cell starts under its header.
	col := strings.Index(lines[0], "SIZE")
	if m := regexp.MustCompile(`\d+(\.\d+)? [KMG]?i?B`).FindStringIndex(lines[1]); m == nil || m[0] != col {
		t.Errorf("image ls:\n%s\nthe size is not under SIZE (column %d): the row was aligned before it was escaped", out, col)
	}
}
