package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rogpeppe/go-internal/testscript"
)

var updateTestdata = flag.Bool("update-testdata", false, "rewrite testdata/hello from the test images")

func TestMain(m *testing.M) {
	// A binary built with -race sleeps a second at every exit by default
	// (GORACE atexit_sleep_ms=1000), and these tests start banger hundreds
	// of times: the children skip the sleep. Children inherit the variable,
	// and testscript passes GORACE through to its scripts.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	testscript.Main(m, map[string]func(){
		"banger": func() { os.Exit(runMain()) },
	})
}

// startRegistry serves go-containerregistry's in-process registry on
// 127.0.0.1 with the test images pushed.
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	pushTestImages(t, host)
	return host
}

func pushTestImages(t *testing.T, host string) {
	t.Helper()
	for ref, img := range testImages() {
		r, err := name.ParseReference(host + "/" + ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
			t.Fatalf("pushing %s: %v", r, err)
		}
	}
	r, err := name.ParseReference(host + "/multi:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, multiPlatform(), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing %s: %v", r, err)
	}
}

// startDistribution runs the CNCF Distribution registry (Debian package
// docker-registry) on 127.0.0.1 if it is installed.
func startDistribution(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skip("docker-registry (CNCF Distribution) not installed; `apt-get install -y docker-registry` to run these cases")
	}
	port := freePort(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: %s/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:%d}
`, dir, port)), 0o644)
	cmd := exec.Command(bin, "serve", config)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	host := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not start on %s: %v", host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pushTestImages(t, host)
	return host
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func scriptParams(t *testing.T, dir, registryHost string) testscript.Params {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return testscript.Params{
		Dir: dir,
		Setup: func(env *testscript.Env) error {
			env.Setenv("REGISTRY", registryHost)
			env.Setenv("TESTDATA", filepath.Join(wd, "testdata"))
			// Each script gets its own cache and store, never the user's.
			env.Setenv("BANGER_CACHE_DIR", filepath.Join(env.WorkDir, "cache"))
			env.Setenv("BANGER_DATA_DIR", filepath.Join(env.WorkDir, "data"))
			env.Setenv("XDG_CACHE_HOME", filepath.Join(env.WorkDir, "xdg-cache"))
			env.Setenv("XDG_DATA_HOME", filepath.Join(env.WorkDir, "xdg-data"))
			env.Values[counterKey] = &regCounter{}
			return nil
		},
		Cmds: map[string]func(*testscript.TestScript, bool, []string){
			"exitcode":  cmdExitCode,
			"jsonok":    cmdJSONOK,
			"jsonlines": cmdJSONLines,
			// issue 13
			"countingregistry": cmdCountingRegistry,
			"requests":         cmdRequests,
		},
		Condition: func(cond string) (bool, error) {
			if cond == "root" {
				return os.Getuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		RequireExplicitExec: true,
	}
}

// cmdExitCode runs `exitcode N PROG ARGS...` and fails unless PROG exits
// with N; its stdout and stderr are kept for the next stdout/stderr checks.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: %v", err)
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	if err != nil {
		var code int
		if _, scanErr := fmt.Sscanf(err.Error(), "exit status %d", &code); scanErr != nil {
			ts.Fatalf("exitcode: %v", err)
		}
		got = code
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", strings.Join(args[1:], " "), got, want)
	}
}

// TestScript runs the end-to-end scripts in testdata/script against the
// in-process registry.
func TestScript(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/script", startRegistry(t)))
}

// TestScriptDistribution runs the registry scripts against the CNCF
// Distribution registry, the one most private registries run.
func TestScriptDistribution(t *testing.T) {
	host := startDistribution(t)
	testscript.Run(t, scriptParams(t, "testdata/script/registry", host))
}

// TestTestdataUpToDate keeps testdata/hello in step with the test images.
func TestTestdataUpToDate(t *testing.T) {
	dir := filepath.Join("testdata", "hello")
	if *updateTestdata {
		os.RemoveAll(dir)
		p, err := layout.Write(dir, mutateEmptyIndex())
		if err != nil {
			t.Fatal(err)
		}
		img := testImages()["app:2"]
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1.0"})); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("reading %s: %v (regenerate with go test -run TestTestdataUpToDate -update-testdata)", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := im.Manifests[0].Digest.String(), mustDigest(testImages()["app:2"]); got != want {
		t.Errorf("testdata/hello holds %s, want %s; regenerate with go test -run TestTestdataUpToDate -update-testdata", got, want)
	}
}

// cmdJSONOK checks that the last command's stdout is exactly one JSON
// document.
func cmdJSONOK(ts *testscript.TestScript, neg bool, args []string) {
	dec := json.NewDecoder(strings.NewReader(ts.ReadFile("stdout")))
	var v any
	if err := dec.Decode(&v); err != nil {
		ts.Fatalf("stdout is not JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		ts.Fatalf("stdout holds more than one JSON document")
	}
}

// cmdJSONLines runs `jsonlines FILE N`: FILE holds exactly N lines, each one
// JSON document, as a log of --json runs appended by cron would.
func cmdJSONLines(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: jsonlines FILE N")
	}
	want, err := strconv.Atoi(args[1])
	if err != nil {
		ts.Fatalf("jsonlines: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(ts.ReadFile(args[0]), "\n"), "\n")
	if len(lines) != want {
		ts.Fatalf("%s has %d lines, want %d", args[0], len(lines), want)
	}
	for i, line := range lines {
		var v any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			ts.Fatalf("%s line %d is not one JSON document: %v", args[0], i+1, err)
		}
	}
}
