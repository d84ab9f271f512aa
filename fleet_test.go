package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Tests of issue 14: fleets pulling through a registry mirror, with the
// registry configuration, credentials and certificates skopeo reads.

// distribution is a CNCF Distribution registry started by a test.
type distribution struct {
	host    string
	dir     string // its storage is dir/data
	logFile string
	cmd     *exec.Cmd
}

type distributionConfig struct {
	proxyOf  string // upstream host: run as a pull-through cache
	certFile string // serve HTTPS with this certificate and key
	keyFile  string
	htpasswd string // require basic auth from this htpasswd file
}

// runDistribution starts docker-registry on 127.0.0.1 with cfg, logging at
// info level to a file, and waits until it answers.
func runDistribution(t *testing.T, cfg distributionConfig) *distribution {
	t.Helper()
	d := newDistribution(t)
	httpConf := fmt.Sprintf("{addr: %s}", d.host)
	if cfg.certFile != "" {
		httpConf = fmt.Sprintf("{addr: %s, tls: {certificate: %s, key: %s}}", d.host, cfg.certFile, cfg.keyFile)
	}
	conf := fmt.Sprintf("version: 0.1\nlog: {level: info, formatter: text}\nstorage: {filesystem: {rootdirectory: %s/data}, delete: {enabled: true}}\nhttp: %s\n", d.dir, httpConf)
	if cfg.proxyOf != "" {
		conf += fmt.Sprintf("proxy: {remoteurl: http://%s}\n", cfg.proxyOf)
	}
	if cfg.htpasswd != "" {
		conf += fmt.Sprintf("auth: {htpasswd: {realm: banger-test, path: %s}}\n", cfg.htpasswd)
	}
	scheme := "http"
	if cfg.certFile != "" {
		scheme = "https"
	}
	d.serve(t, conf, scheme)
	return d
}

// newDistribution prepares a registry on a free port, not yet started.
func newDistribution(t *testing.T) *distribution {
	t.Helper()
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Skip("docker-registry (CNCF Distribution) not installed; `apt-get install -y docker-registry` to run these cases")
	}
	d := &distribution{dir: t.TempDir()}
	d.host = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d.logFile = filepath.Join(d.dir, "registry.log")
	return d
}

// serve starts docker-registry with config conf and waits until it answers.
func (d *distribution) serve(t *testing.T, conf, scheme string) {
	t.Helper()
	config := filepath.Join(d.dir, "config.yml")
	if err := os.WriteFile(config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(d.logFile)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("docker-registry", "serve", config)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	t.Cleanup(func() { d.stop(); log.Close() })
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(scheme + "://" + d.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			logText, _ := os.ReadFile(d.logFile)
			t.Fatalf("docker-registry did not start on %s: %v\n%s", d.host, err, logText)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *distribution) stop() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}

// hasBlob says whether the registry's storage holds blob digest.
func (d *distribution) hasBlob(digest string) bool {
	hex := strings.TrimPrefix(digest, "sha256:")
	_, err := os.Stat(filepath.Join(d.dir, "data/docker/registry/v2/blobs/sha256", hex[:2], hex, "data"))
	return err == nil
}

func (d *distribution) log(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(d.logFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fleetEnv runs banger with its own cache, store and HOME, and none of the
// caller's registry configuration or credentials.
type fleetEnv struct {
	t    *testing.T
	dir  string
	home string
	env  []string
}

func newFleetEnv(t *testing.T) *fleetEnv {
	t.Helper()
	dir := t.TempDir()
	e := &fleetEnv{t: t, dir: dir, home: filepath.Join(dir, "home")}
	os.MkdirAll(e.home, 0o755)
	e.env = []string{"HOME=" + e.home, "PATH=" + os.Getenv("PATH"), "GORACE=" + os.Getenv("GORACE"),
		"BANGER_DATA_DIR=" + filepath.Join(dir, "data")}
	e.freshCache()
	return e
}

// freshCache points later runs at an empty blob cache.
func (e *fleetEnv) freshCache() {
	cache, err := os.MkdirTemp(e.dir, "cache-")
	if err != nil {
		e.t.Fatal(err)
	}
	e.setenv("BANGER_CACHE_DIR", cache)
}

func (e *fleetEnv) setenv(k, v string) {
	for i, kv := range e.env {
		if strings.HasPrefix(kv, k+"=") {
			e.env[i] = k + "=" + v
			return
		}
	}
	e.env = append(e.env, k+"="+v)
}

// write writes a file under the env's directory and returns its path.
func (e *fleetEnv) write(rel, content string) string {
	e.t.Helper()
	p := filepath.Join(e.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// banger runs banger and returns its stdout, stderr and exit code.
func (e *fleetEnv) banger(args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command("banger", args...)
	cmd.Env = e.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	e.t.Logf("$ banger %s\n%s%s(exit %d)", strings.Join(args, " "), stdout.String(), stderr.String(), code)
	return stdout.String(), stderr.String(), code
}

// mustPull pulls and fails the test unless banger exits 0.
func (e *fleetEnv) mustPull(args ...string) (string, string) {
	e.t.Helper()
	stdout, stderr, code := e.banger(append([]string{"image", "pull"}, args...)...)
	if code != 0 {
		e.t.Fatalf("banger image pull %s exited %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout, stderr
}

func oneLineStderr(t *testing.T, stderr string) {
	t.Helper()
	if n := strings.Count(stderr, "\n"); n != 1 {
		t.Errorf("stderr has %d lines, want 1: %q", n, stderr)
	}
}

func layerDigests(t *testing.T, ref string) []string {
	t.Helper()
	img := testImages()[ref]
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.String())
	}
	return out
}

// TestFleetMirror pulls through a Distribution pull-through cache named by
// a registries.conf drop-in, then with the mirror stopped (issue 14 §1).
func TestFleetMirror(t *testing.T) {
	t.Parallel()
	upstream := startDistribution(t)
	mirror := runDistribution(t, distributionConfig{proxyOf: upstream})
	e := newFleetEnv(t)
	// $CONTAINERS_REGISTRIES_CONF with a drop-in beside it, as a fleet's
	// configuration management would lay them.
	conf := e.write("containers/registries.conf", "unqualified-search-registries = [\"docker.io\"]\n")
	e.write("containers/registries.conf.d/50-mirror.conf", fmt.Sprintf(`
[[registry]]
prefix = %q
location = %q
[[registry.mirror]]
location = %q
`, upstream, upstream, mirror.host))
	e.setenv("CONTAINERS_REGISTRIES_CONF", conf)

	stdout, stderr := e.mustPull("-q", "--json", upstream+"/app:2")
	if stderr != "" {
		t.Errorf("a pull through a working mirror printed %q on stderr", stderr)
	}
	if !strings.Contains(stdout, `"reference":"`+upstream+`/app:2"`) {
		t.Errorf("the image's reference is not what was asked for: %s", stdout)
	}
	// inspect says which endpoint served it, so an operator can see the
	// mirror was used.
	if !strings.Contains(stdout, `"source":"`+mirror.host+`/app:2"`) {
		t.Errorf("the image's source is not the mirror %s: %s", mirror.host, stdout)
	}
	// The proxy fetched the blobs from upstream and keeps them.
	for _, d := range layerDigests(t, "app:2") {
		deadline := time.Now().Add(5 * time.Second)
		for !mirror.hasBlob(d) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !mirror.hasBlob(d) {
			t.Errorf("the mirror's storage does not hold layer %s", d)
		}
	}
	log := mirror.log(t)
	if !strings.Contains(log, "/v2/app/manifests/2") {
		t.Errorf("the mirror's log shows no manifest request:\n%s", log)
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "/v2/app/") && !strings.Contains(line, "level=") {
			t.Logf("mirror access log: %s", line) // what the operator sees
		}
	}

	// The mirror goes down: a pull with a fresh cache falls back to the
	// primary, with one notice.
	mirror.stop()
	e.freshCache()
	_, stderr = e.mustPull("-q", upstream+"/app:2")
	oneLineStderr(t, stderr)
	if want := "banger: mirror " + mirror.host + " failed for manifest: "; !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "; trying "+upstream) {
		t.Errorf("fallback notice = %q, want %q… trying %s", stderr, want, upstream)
	}
}

// TestFleetMirrorLacksImage passes over a mirror that does not have the
// image (404), and one that answers 503, to the primary (issue 14 §1).
func TestFleetMirrorLacksImage(t *testing.T) {
	t.Parallel()
	upstream := startDistribution(t)
	empty := startRegistry(t) // has the test images, but not under fleet/
	unavailable := newStatusServer(t, http.StatusServiceUnavailable)
	e := newFleetEnv(t)
	conf := e.write("r.conf", fmt.Sprintf(`
[[registry]]
location = %q
[[registry.mirror]]
location = "%s/fleet"
[[registry.mirror]]
location = %q
`, upstream, empty, unavailable))
	_, stderr := e.mustPull("-q", "--registries-conf", conf, upstream+"/app:2")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "mirror "+empty+" failed for manifest") || !strings.Contains(lines[1], "mirror "+unavailable+" failed for manifest") || !strings.Contains(lines[1], "503") {
		t.Errorf("stderr = %q, want one notice per failed mirror", stderr)
	}
}

func newStatusServer(t *testing.T, code int) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestFleetBlockedAndRewritten checks blocked = true and location rewrites
// (issue 14 §1).
func TestFleetBlockedAndRewritten(t *testing.T) {
	t.Parallel()
	upstream := startDistribution(t)
	e := newFleetEnv(t)
	conf := e.write("r.conf", fmt.Sprintf(`
[[registry]]
prefix = "fleet.invalid/team"
location = "%s"

[[registry]]
prefix = "%s/base"
location = "%s/base"
blocked = true

[[registry]]
prefix = "docker.io"
location = "docker.io"
blocked = true
`, upstream, upstream, upstream))

	stdout, _ := e.mustPull("--json", "--registries-conf", conf, "fleet.invalid/team/app:2")
	if !strings.Contains(stdout, `"name":"fleet.invalid/team/app:2"`) || !strings.Contains(stdout, `"reference":"fleet.invalid/team/app:2"`) {
		t.Errorf("a rewritten pull is not named as asked: %s", stdout)
	}

	for _, ref := range []string{upstream + "/base:1", "alpine:3.20"} {
		_, stderr, code := e.banger("image", "pull", "--registries-conf", conf, ref)
		if code != 1 || !strings.Contains(stderr, "blocked by the [[registry]] table with prefix") || !strings.Contains(stderr, conf) || !strings.Contains(stderr, "remove blocked = true") {
			t.Errorf("pull %s: exit %d, stderr %q; want 1 and the blocking table", ref, code, stderr)
		}
		oneLineStderr(t, stderr)
	}

	// A malformed file is one line naming the file and the line.
	bad := e.write("bad.conf", "[[registry]]\nlocation = \"x\"\ninsecure = yes\n")
	_, stderr, code := e.banger("image", "pull", "--registries-conf", bad, upstream+"/app:2")
	if code != 1 || !strings.HasPrefix(stderr, "banger: parsing "+bad+": line 3: ") {
		t.Errorf("malformed registries.conf: exit %d, stderr %q", code, stderr)
	}
	oneLineStderr(t, stderr)
}

// testCA is a certificate authority made by the test, and a server
// certificate it signed for 127.0.0.1.
type testCA struct {
	caFile, certFile, keyFile string
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "banger test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := testCA{caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key")}
	os.WriteFile(c.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	os.WriteFile(c.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return c
}

// pushOne pushes the test image app:2 to host with these options.
func pushOne(t *testing.T, host string, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(host + "/app:2")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, testImages()["app:2"], append(opts, remote.WithContext(t.Context()))...); err != nil {
		t.Fatalf("pushing %s: %v", r, err)
	}
}

// TestFleetPrivateCA pulls from a TLS Distribution whose CA the test made:
// refused without it, trusted through --cert-dir or a certs.d directory,
// or with verification off (issue 14 §2).
func TestFleetPrivateCA(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	reg := runDistribution(t, distributionConfig{certFile: ca.certFile, keyFile: ca.keyFile})
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca.caFile)
	pool.AppendCertsFromPEM(caPEM)
	pushOne(t, reg.host, remote.WithTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}))
	e := newFleetEnv(t)
	ref := reg.host + "/app:2"

	_, stderr, code := e.banger("image", "pull", "-q", ref)
	oneLineStderr(t, stderr)
	if code != 1 || !strings.Contains(stderr, "x509: certificate signed by unknown authority") ||
		!strings.Contains(stderr, "/etc/containers/certs.d/"+reg.host+"/ca.crt") || !strings.Contains(stderr, "--cert-dir") || strings.Contains(stderr, "use --insecure") {
		t.Errorf("untrusted CA: exit %d, stderr %q; want 1 and a hint naming certs.d and --cert-dir", code, stderr)
	}

	certDir := filepath.Join(e.dir, "certs")
	os.MkdirAll(certDir, 0o755)
	os.WriteFile(filepath.Join(certDir, "ca.crt"), caPEM, 0o644)
	e.mustPull("-q", "--cert-dir", certDir, ref)

	// $HOME/.config/containers/certs.d/HOST:PORT/, with a fresh cache.
	e.freshCache()
	e.write("home/.config/containers/certs.d/"+reg.host+"/ca.crt", string(caPEM))
	e.mustPull("-q", ref)

	// --tls-verify=false, after the operand, without any CA; and
	// --insecure, which still does both.
	os.RemoveAll(filepath.Join(e.home, ".config"))
	e.freshCache()
	e.mustPull("-q", ref, "--tls-verify=false")
	e.freshCache()
	e.mustPull("-q", "--insecure", ref)
}

// TestFleetCredentials pulls from a Distribution that requires basic auth,
// with credentials from each file skopeo reads, in its order (issue 14 §2).
func TestFleetCredentials(t *testing.T) {
	t.Parallel()
	wd, _ := os.Getwd()
	reg := runDistribution(t, distributionConfig{htpasswd: filepath.Join(wd, "testdata/fleet/htpasswd")})
	pushOne(t, reg.host, remote.WithAuth(&authn.Basic{Username: "fleet", Password: "s3cret"}))
	ref := reg.host + "/app:2"
	good := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.host, base64.StdEncoding.EncodeToString([]byte("fleet:s3cret")))
	bad := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.host, base64.StdEncoding.EncodeToString([]byte("fleet:wrong")))

	// Each file, in skopeo's order; the one before it holds a wrong
	// password, which must win over it.
	files := []struct {
		name  string
		setup func(e *fleetEnv, content string) []string // extra pull args
	}{
		{"--authfile", func(e *fleetEnv, c string) []string { return []string{"--authfile", e.write("flag.json", c)} }},
		{"$REGISTRY_AUTH_FILE", func(e *fleetEnv, c string) []string {
			e.setenv("REGISTRY_AUTH_FILE", e.write("env.json", c))
			return nil
		}},
		{"$XDG_RUNTIME_DIR/containers/auth.json", func(e *fleetEnv, c string) []string {
			e.write("run/containers/auth.json", c)
			e.setenv("XDG_RUNTIME_DIR", filepath.Join(e.dir, "run"))
			return nil
		}},
		{"$HOME/.config/containers/auth.json", func(e *fleetEnv, c string) []string { e.write("home/.config/containers/auth.json", c); return nil }},
		{"$DOCKER_CONFIG/config.json", func(e *fleetEnv, c string) []string {
			e.write("docker/config.json", c)
			e.setenv("DOCKER_CONFIG", filepath.Join(e.dir, "docker"))
			return nil
		}},
	}
	for i, f := range files {
		t.Run(f.name, func(t *testing.T) {
			e := newFleetEnv(t)
			args := append([]string{"-q", ref}, f.setup(e, good)...)
			e.mustPull(args...)
			if i > 0 && i < 3 {
				// --authfile, $REGISTRY_AUTH_FILE and the XDG file are one
				// slot: the first that is given is the one read there.
				return
			}
			if i == 0 {
				return
			}
			// A wrong password in an earlier file wins.
			e.freshCache()
			args = append(args, files[i-1].setup(e, bad)...)
			_, stderr, code := e.banger(append([]string{"image", "pull"}, args...)...)
			if code != 1 || !strings.Contains(stderr, "UNAUTHORIZED") {
				t.Errorf("with a wrong password in %s: exit %d, stderr %q; want 401", files[i-1].name, code, stderr)
			}
		})
	}
	t.Run("credential helper", func(t *testing.T) {
		e := newFleetEnv(t)
		// docker-credential-fleet answers `get` as the helper protocol says.
		e.write("bin/docker-credential-fleet", "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = "+reg.host+" ] && echo '{\"ServerURL\":\"'$server'\",\"Username\":\"fleet\",\"Secret\":\"s3cret\"}'\n")
		os.Chmod(filepath.Join(e.dir, "bin/docker-credential-fleet"), 0o755)
		e.setenv("PATH", filepath.Join(e.dir, "bin")+":"+os.Getenv("PATH"))
		e.write("home/.docker/config.json", fmt.Sprintf(`{"credHelpers":{%q:"fleet"}}`, reg.host))
		e.mustPull("-q", ref)
	})
	t.Run("~/.docker/config.json", func(t *testing.T) {
		e := newFleetEnv(t)
		e.write("home/.docker/config.json", good)
		e.mustPull("-q", ref)
	})
	t.Run("none", func(t *testing.T) {
		e := newFleetEnv(t)
		_, stderr, code := e.banger("image", "pull", "-q", ref)
		oneLineStderr(t, stderr)
		if code != 1 || !strings.Contains(stderr, "podman login "+reg.host) {
			t.Errorf("no credentials: exit %d, stderr %q", code, stderr)
		}
	})
}

// TestFleetDocs runs docs/fleet.md as written, offline: its mirror
// configuration serves a Distribution pull-through cache of a local
// upstream instead of Docker Hub, its drop-in points banger at that mirror,
// and its runner commands run against both; then the mirror is stopped and
// the pull falls back as the page says (issue 14 §5).
func TestFleetDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("docs", "fleet.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := func(info string) string {
		t.Helper()
		m := regexp.MustCompile("(?s)```" + regexp.QuoteMeta(info) + "\n(.*?)```").FindSubmatch(doc)
		if m == nil {
			t.Fatalf("docs/fleet.md has no ```%s block", info)
		}
		return string(m[1])
	}
	var runner []string
	for _, m := range regexp.MustCompile("(?s)```sh runner\n(.*?)```").FindAllSubmatch(doc, -1) {
		runner = append(runner, strings.Split(strings.TrimSpace(string(m[1])), "\n")...)
	}
	if len(runner) < 3 || !strings.Contains(string(doc), "docker-registry serve /etc/docker/registry/mirror.yml") {
		t.Fatalf("docs/fleet.md: runner commands %q, or no docker-registry serve line", runner)
	}

	// Docker Hub stands in: a local upstream holding library/alpine:3.20.
	upstream := startDistribution(t)
	r, err := name.ParseReference(upstream + "/library/alpine:3.20")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, testImages()["app:2"], remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	mirror := newDistribution(t)
	conf := strings.NewReplacer(
		"/var/lib/registry-mirror", filepath.Join(mirror.dir, "data"),
		"0.0.0.0:5000", mirror.host,
		"https://registry-1.docker.io", "http://"+upstream,
	).Replace(block("yaml mirror.yml"))
	mirror.serve(t, conf, "http")

	e := newFleetEnv(t)
	e.write("containers/registries.conf", "")
	e.write("containers/registries.conf.d/50-mirror.conf", strings.NewReplacer(
		`location = "docker.io"`, fmt.Sprintf("location = %q", upstream),
		"mirror.internal:5000", mirror.host,
	).Replace(block("toml 50-mirror.conf")))
	e.setenv("CONTAINERS_REGISTRIES_CONF", filepath.Join(e.dir, "containers/registries.conf"))

	sh := func(line string) (string, string, error) {
		line = strings.ReplaceAll(line, "mirror.internal:5000", mirror.host)
		cmd := exec.Command("sh", "-c", line)
		cmd.Env = e.env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("$ %s\n%s%s", line, stdout.String(), stderr.String())
		return stdout.String(), stderr.String(), err
	}
	want := map[string]string{
		"banger image pull":    "alpine:3.20\n",
		"banger image inspect": "alpine:3.20\n",
		"curl":                 `{"repositories":["library/alpine"]}`,
	}
	for _, line := range runner {
		stdout, stderr, err := sh(line)
		if err != nil || stderr != "" {
			t.Errorf("%s: %v, stderr %q", line, err, stderr)
		}
		for prefix, w := range want {
			if strings.HasPrefix(line, prefix) && !strings.Contains(stdout, w) {
				t.Errorf("%s printed %q, want %q", line, stdout, w)
			}
		}
	}
	log := mirror.log(t)
	for _, w := range []string{`http.request.method=GET`, `msg="response completed"`, `http.request.uri=/v2/library/alpine/manifests/3.20 http.request.useragent="banger `, `http.response.status=200`, `http.request.remoteaddr=`, `"GET /v2/library/alpine/manifests/3.20 HTTP/1.1" 200 `} {
		if !strings.Contains(log, w) {
			t.Errorf("the mirror's log lacks %s, which docs/fleet.md shows:\n%s", w, log)
		}
	}
	for _, d := range layerDigests(t, "app:2") {
		if !mirror.hasBlob(d) {
			t.Errorf("the mirror's storage does not hold layer %s", d)
		}
	}

	mirror.stop()
	e.freshCache()
	_, stderr, err := sh(runner[0])
	if err != nil {
		t.Fatalf("pull with the mirror down: %v", err)
	}
	oneLineStderr(t, stderr)
	if want := "banger: mirror " + mirror.host + " failed for manifest: "; !strings.HasPrefix(stderr, want) || !strings.HasSuffix(stderr, "; trying "+upstream+"\n") {
		t.Errorf("with the mirror down, stderr = %q, want %q… trying %s", stderr, want, upstream)
	}
}

// TestFleetMirrorLacksBlob passes over a mirror that serves the manifest
// but not the config or the layers, blob by blob (issue 14 §1).
func TestFleetMirrorLacksBlob(t *testing.T) {
	t.Parallel()
	upstream := startRegistry(t)
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var blobGets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`, http.StatusNotFound)
			return
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	mirror := strings.TrimPrefix(srv.URL, "http://")
	pushTestImages(t, mirror)
	blobGets.Store(0)

	e := newFleetEnv(t)
	conf := e.write("r.conf", fmt.Sprintf("[[registry]]\nlocation = %q\n[[registry.mirror]]\nlocation = %q\n", upstream, mirror))
	_, stderr := e.mustPull("-q", "--registries-conf", conf, "--jobs", "1", upstream+"/app:2")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	// The config, then each of the three layers.
	if len(lines) != 4 || blobGets.Load() != 4 {
		t.Fatalf("stderr = %q (%d blob GETs on the mirror), want 4 notices", stderr, blobGets.Load())
	}
	if !strings.HasPrefix(lines[0], "banger: mirror "+mirror+" failed for config sha256:") {
		t.Errorf("first notice = %q, want the config's", lines[0])
	}
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "banger: mirror "+mirror+" failed for blob sha256:") || !strings.Contains(l, "BLOB_UNKNOWN") || !strings.HasSuffix(l, "; trying "+upstream) {
			t.Errorf("notice = %q, want a blob's", l)
		}
	}
}

// fakeRegistry serves the test images from go-containerregistry's
// in-process registry through wrap, which plays a real registry's habits.
func fakeRegistry(t *testing.T, wrap func(inner http.Handler) http.Handler) string {
	t.Helper()
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	push := httptest.NewServer(inner)
	pushTestImages(t, strings.TrimPrefix(push.URL, "http://"))
	push.Close()
	srv := httptest.NewServer(wrap(inner))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestFleetRedirectWithoutCredentials pulls from a registry that answers
// blob GETs with a redirect to another host, as S3- and GCS-backed
// registries do: the pull works, and the credentials go to the registry
// only (issue 14 §3).
func TestFleetRedirectWithoutCredentials(t *testing.T) {
	t.Parallel()
	var leaked, served atomic.Int32
	var inner http.Handler
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		served.Add(1)
		r.URL.Path = strings.TrimPrefix(r.URL.Path, "/storage")
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(storage.Close)
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1) // another host
	host := fakeRegistry(t, func(h http.Handler) http.Handler {
		inner = h
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "fleet" || p != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="fleet"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			if strings.Contains(r.URL.Path, "/blobs/") {
				http.Redirect(w, r, storageURL+"/storage"+r.URL.Path, http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	e := newFleetEnv(t)
	auth := e.write("auth.json", fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte("fleet:s3cret"))))
	e.mustPull("-q", "--authfile", auth, host+"/app:2")
	if served.Load() < 4 || leaked.Load() != 0 {
		t.Errorf("the redirect target served %d blobs and saw credentials %d times; want 4 (config and 3 layers) and 0", served.Load(), leaked.Load())
	}
}

// TestFleetRetryAfter pulls from a registry that answers the manifest and
// each blob with 429 or 503 and Retry-After once (issue 14 §3).
func TestFleetRetryAfter(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{}
	var throttled atomic.Int32
	host := fakeRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			first := !seen[r.URL.Path]
			seen[r.URL.Path] = true
			mu.Unlock()
			if first && r.URL.Path != "/v2/" {
				throttled.Add(1)
				w.Header().Set("Retry-After", "1")
				code := http.StatusTooManyRequests
				if strings.Contains(r.URL.Path, "/blobs/") {
					code = http.StatusServiceUnavailable
				}
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, code)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	e := newFleetEnv(t)
	start := time.Now()
	e.mustPull("-q", "--jobs", "4", host+"/app:2")
	if throttled.Load() != 5 || time.Since(start) < time.Second {
		t.Errorf("%d requests throttled, pull took %v; want 5 (manifest, config, 3 layers) and at least the 1 s asked", throttled.Load(), time.Since(start))
	}

	// A wait longer than --timeout fails at once, saying so.
	clear(seen)
	host2 := fakeRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/" {
				w.Header().Set("Retry-After", "50")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	start = time.Now()
	_, stderr, code := e.banger("image", "pull", "-q", "--timeout", "5s", host2+"/app:2")
	oneLineStderr(t, stderr)
	if code != 1 || !strings.Contains(stderr, "asks to retry after 50s, past the pull's deadline") || time.Since(start) > 4*time.Second {
		t.Errorf("Retry-After past --timeout: exit %d after %v, stderr %q", code, time.Since(start), stderr)
	}
}

// TestFleetTokenRenewal pulls from a registry with Bearer token auth whose
// tokens expire after two requests: banger fetches a new one mid-pull
// (issue 14 §3).
func TestFleetTokenRenewal(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	uses := map[string]int{}
	var issued atomic.Int32
	// The token endpoint is on the registry's own host:port, the one
	// place go-containerregistry takes a plain-HTTP private realm from.
	issue := func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "fleet" || p != "s3cret" {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"token":"token-%d","expires_in":300}`, issued.Add(1))
	}
	var realm string
	host := fakeRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				issue(w, r)
				return
			}
			tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			mu.Lock()
			uses[tok]++
			valid := strings.HasPrefix(tok, "token-") && uses[tok] <= 2
			realm := realm
			mu.Unlock()
			if !valid {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s",service="fleet",scope="repository:app:pull"`, realm))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	mu.Lock()
	realm = "http://" + host + "/token"
	mu.Unlock()
	e := newFleetEnv(t)
	auth := e.write("auth.json", fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte("fleet:s3cret"))))
	e.mustPull("-q", "--jobs", "1", "--authfile", auth, host+"/app:2")
	if issued.Load() < 3 {
		t.Errorf("%d tokens issued; want a renewal at least every two requests", issued.Load())
	}
}

// bangerIn runs banger with stdin.
func (e *fleetEnv) bangerIn(stdin io.Reader, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command("banger", args...)
	cmd.Env, cmd.Stdin = e.env, stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	e.t.Logf("$ banger %s < …\n%s%s(exit %d)", strings.Join(args, " "), stdout.String(), stderr.String(), code)
	return stdout.String(), stderr.String(), code
}

func gzipFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	if err := os.WriteFile(dst, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tarDir writes dir's regular files and directories into a tar at dst.
func tarDir(t *testing.T, dir, dst string) {
	t.Helper()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(out)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, _ = filepath.Rel(dir, p)
		if err := tw.WriteHeader(hdr); err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err == nil {
			_, err = tw.Write(data)
		}
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestFleetTransports pulls oci-archive:, gzip-compressed docker archives,
// and docker-archive:- from standard input, and refuses the transports
// banger does not read with one line (issue 14 §4).
func TestFleetTransports(t *testing.T) {
	t.Parallel()
	e := newFleetEnv(t)
	tmp := filepath.Join(e.dir, "tmp")
	os.MkdirAll(tmp, 0o755)
	e.setenv("TMPDIR", tmp)
	tag, err := name.NewTag("hello:1.0")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(e.dir, "hello.tar")
	if err := tarball.WriteToFile(archive, tag, testImages()["app:2"]); err != nil {
		t.Fatal(err)
	}
	gzipFile(t, archive, filepath.Join(e.dir, "hello.tar.gz"))
	wd, _ := os.Getwd()
	ociArchive := filepath.Join(e.dir, "hello-oci.tar")
	tarDir(t, filepath.Join(wd, "testdata/hello"), ociArchive)
	gzipFile(t, ociArchive, filepath.Join(e.dir, "hello-oci.tar.gz"))

	rootfs := func(stdout string) string {
		t.Helper()
		var img struct{ Name, Rootfs string }
		if err := json.Unmarshal([]byte(stdout), &img); err != nil {
			t.Fatalf("pull --json printed %q: %v", stdout, err)
		}
		sum, err := fileSHA256(img.Rootfs)
		if err != nil {
			t.Fatal(err)
		}
		return img.Name + " " + sum
	}
	stdout, _ := e.mustPull("-q", "--json", "docker-archive:"+archive)
	want := rootfs(stdout)
	if !strings.HasPrefix(want, "hello:1.0 ") {
		t.Fatalf("plain archive pulled as %s", want)
	}
	for _, args := range [][]string{
		{"docker-archive:" + filepath.Join(e.dir, "hello.tar.gz")},
		{"docker-archive:" + filepath.Join(e.dir, "hello.tar.gz") + ":hello:1.0"},
		{"oci-archive:" + ociArchive + ":1.0"},
		{"oci-archive:" + filepath.Join(e.dir, "hello-oci.tar.gz")},
	} {
		e.freshCache()
		stdout, _ := e.mustPull(append([]string{"-q", "--json"}, args...)...)
		want := want
		if strings.HasPrefix(args[0], "oci-archive:") {
			want = strings.Replace(want, "hello:", "hello-oci:", 1) // named after the file
		}
		if got := rootfs(stdout); got != want {
			t.Errorf("pull %s = %s, want %s", args[0], got, want)
		}
	}
	for _, file := range []string{archive, filepath.Join(e.dir, "hello.tar.gz")} {
		e.freshCache()
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := e.bangerIn(f, "image", "pull", "-q", "--json", "docker-archive:-")
		f.Close()
		if code != 0 {
			t.Fatalf("docker-archive:- < %s: exit %d, %s", file, code, stderr)
		}
		if got := rootfs(stdout); got != want {
			t.Errorf("docker-archive:- < %s = %s, want %s", file, got, want)
		}
	}
	// Nothing is left of the spools and the unpacked layouts.
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("$TMPDIR holds %d entries after the pulls", len(left))
	}

	for _, ref := range []string{"docker-daemon:alpine:3.20", "containers-storage:alpine", "dir:" + e.dir, "docker://alpine:3.20", "ostree:x@/repo", "sif:x.sif", "tarball:x.tar"} {
		_, stderr, code := e.banger("image", "pull", ref)
		oneLineStderr(t, stderr)
		if code != 2 || !strings.Contains(stderr, "oci-archive:FILE[:TAG]") {
			t.Errorf("pull %s: exit %d, stderr %q; want 2 and banger's transports", ref, code, stderr)
		}
	}
	// A FIFO is refused before it is opened (which would block).
	fifo := filepath.Join(e.dir, "fifo.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"oci-archive:" + fifo, "docker-archive:" + fifo} {
		_, stderr, code := e.banger("image", "pull", ref)
		if code != 1 || !strings.Contains(stderr, "is a FIFO, not a regular file") {
			t.Errorf("pull %s: exit %d, stderr %q", ref, code, stderr)
		}
	}
	_, stderr, code := e.banger("image", "pull", "oci-archive:"+archive) // a docker archive
	oneLineStderr(t, stderr)
	if code != 2 || !strings.Contains(stderr, "is a docker save archive; pull it as docker-archive:"+archive) || strings.Contains(stderr, "banger-oci-archive-") {
		t.Errorf("a docker archive as oci-archive: exit %d, stderr %q; want a failure naming the file", code, stderr)
	}
}
