package image

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate and key.
func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestResolveCerts(t *testing.T) {
	ca, _ := selfSigned(t, "ca")
	cert, key := selfSigned(t, "client")
	const host = "reg.example:5000"
	tests := []struct {
		name    string
		certDir string
		files   map[string][]byte // under a fake root
		wantDir string
		wantCAs int
		client  bool
		wantErr string
	}{
		{name: "none", files: map[string][]byte{}},
		{name: "containers system dir first", files: map[string][]byte{
			"/etc/containers/certs.d/" + host + "/ca.crt":      ca,
			"/h/.config/containers/certs.d/" + host + "/a.crt": ca,
			"/etc/docker/certs.d/" + host + "/ca.crt":          ca,
		}, wantDir: "/etc/containers/certs.d/" + host, wantCAs: 1},
		{name: "home dir next", files: map[string][]byte{
			"/h/.config/containers/certs.d/" + host + "/a.crt": ca,
			"/h/.config/containers/certs.d/" + host + "/b.crt": ca,
			"/etc/docker/certs.d/" + host + "/ca.crt":          ca,
		}, wantDir: "/h/.config/containers/certs.d/" + host, wantCAs: 2},
		{name: "docker dir last, with a client certificate", files: map[string][]byte{
			"/etc/docker/certs.d/" + host + "/ca.crt":      ca,
			"/etc/docker/certs.d/" + host + "/client.cert": cert,
			"/etc/docker/certs.d/" + host + "/client.key":  key,
		}, wantDir: "/etc/docker/certs.d/" + host, wantCAs: 1, client: true},
		{name: "other host's dir is not used", files: map[string][]byte{
			"/etc/containers/certs.d/reg.example/ca.crt": ca,
		}},
		{name: "--cert-dir replaces them", certDir: "/mine", files: map[string][]byte{
			"/mine/x.crt": ca,
			"/etc/containers/certs.d/" + host + "/ca.crt": ca,
		}, wantDir: "/mine", wantCAs: 1},
		{name: "missing --cert-dir", certDir: "/nope", files: map[string][]byte{}, wantErr: "no such file"},
		{name: "key without cert", certDir: "/mine", files: map[string][]byte{"/mine/client.key": key}, wantErr: "client key /mine/client.key has no certificate client.cert beside it"},
		{name: "cert without key", certDir: "/mine", files: map[string][]byte{"/mine/client.cert": cert}, wantErr: "has no key client.key beside it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for name, data := range tt.files {
				p := filepath.Join(root, name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, data, 0o644)
			}
			src := CertsSource{CertDir: tt.certDir, Getenv: env("HOME", "/h"),
				ReadDir:  func(p string) ([]os.DirEntry, error) { return os.ReadDir(filepath.Join(root, p)) },
				ReadFile: func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(root, p)) }}
			got, err := ResolveCerts(src, host)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveCerts() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Dir != tt.wantDir || len(got.CAs) != tt.wantCAs || (got.Client != nil) != tt.client {
				t.Errorf("ResolveCerts() = dir %q, %d CAs, client %v; want %q, %d, %v", got.Dir, len(got.CAs), got.Client != nil, tt.wantDir, tt.wantCAs, tt.client)
			}
			cfg, err := got.TLSConfig(false)
			if err != nil {
				t.Fatal(err)
			}
			if (cfg.RootCAs != nil) != (tt.wantCAs > 0) || cfg.InsecureSkipVerify {
				t.Errorf("TLSConfig(false): RootCAs set %v, skip %v", cfg.RootCAs != nil, cfg.InsecureSkipVerify)
			}
		})
	}
}
