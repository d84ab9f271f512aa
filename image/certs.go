package image

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// CertsSource is what ResolveCerts reads: --cert-dir and the certs.d
// directories of containers-certs.d(5) and Docker, with the file system
// injected.
type CertsSource struct {
	// CertDir is --cert-dir: this directory itself holds the *.crt, *.cert
	// and *.key files for every registry of this pull.
	CertDir string
	// Getenv reads HOME.
	Getenv func(string) string
	// ReadDir lists a directory; a missing one must be an fs.ErrNotExist.
	ReadDir  func(string) ([]fs.DirEntry, error)
	ReadFile func(string) ([]byte, error)
}

// HostCerts are the certificates found for one registry host.
type HostCerts struct {
	// Dir is the directory they came from; empty when none applies.
	Dir string
	// CAs are PEM certificates to trust besides the system pool (*.crt).
	CAs [][]byte
	// CAFiles name the CAs, one for one.
	CAFiles []string
	// Client is the client certificate (*.cert with its *.key), if any.
	Client *tls.Certificate
}

// ResolveCerts finds the certificates for host ("HOST" or "HOST:PORT"): all
// of --cert-dir if given, else the first of
// /etc/containers/certs.d/HOST, $HOME/.config/containers/certs.d/HOST and
// /etc/docker/certs.d/HOST that exists, as containers/image looks for them.
// A *.key without its *.cert, or the reverse, is an error.
func ResolveCerts(src CertsSource, host string) (HostCerts, error) {
	dirs := []string{src.CertDir}
	if src.CertDir == "" {
		dirs = []string{filepath.Join("/etc/containers/certs.d", host)}
		if home := src.Getenv("HOME"); home != "" {
			dirs = append(dirs, filepath.Join(home, ".config/containers/certs.d", host))
		}
		dirs = append(dirs, filepath.Join("/etc/docker/certs.d", host))
	}
	for _, dir := range dirs {
		entries, err := src.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) && src.CertDir == "" {
			continue
		}
		if err != nil {
			return HostCerts{}, fmt.Errorf("reading certificates for %s: %w", host, err)
		}
		return readCertDir(src, dir, entries)
	}
	return HostCerts{}, nil
}

func readCertDir(src CertsSource, dir string, entries []fs.DirEntry) (HostCerts, error) {
	hc := HostCerts{Dir: dir}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	for _, n := range names {
		path := filepath.Join(dir, n)
		switch {
		case strings.HasSuffix(n, ".crt"):
			pem, err := src.ReadFile(path)
			if err != nil {
				return HostCerts{}, fmt.Errorf("reading CA certificate: %w", err)
			}
			hc.CAs = append(hc.CAs, pem)
			hc.CAFiles = append(hc.CAFiles, path)
		case strings.HasSuffix(n, ".cert"):
			key := strings.TrimSuffix(n, ".cert") + ".key"
			if !slices.Contains(names, key) {
				return HostCerts{}, fmt.Errorf("client certificate %s has no key %s beside it", path, key)
			}
			certPEM, err := src.ReadFile(path)
			if err != nil {
				return HostCerts{}, fmt.Errorf("reading client certificate: %w", err)
			}
			keyPEM, err := src.ReadFile(filepath.Join(dir, key))
			if err != nil {
				return HostCerts{}, fmt.Errorf("reading client key: %w", err)
			}
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return HostCerts{}, fmt.Errorf("loading client certificate %s: %w", path, err)
			}
			if hc.Client != nil {
				return HostCerts{}, fmt.Errorf("%s holds more than one client certificate; keep one *.cert/*.key pair", dir)
			}
			hc.Client = &cert
		case strings.HasSuffix(n, ".key"):
			if !slices.Contains(names, strings.TrimSuffix(n, ".key")+".cert") {
				return HostCerts{}, fmt.Errorf("client key %s has no certificate %s beside it", path, strings.TrimSuffix(n, ".key")+".cert")
			}
		}
	}
	return hc, nil
}

// TLSConfig is the client TLS configuration for these certificates: the
// system pool plus the CAs, the client certificate, and verification
// skipped only if skipVerify.
func (hc HostCerts) TLSConfig(skipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: skipVerify, MinVersion: tls.VersionTLS12}
	if len(hc.CAs) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for i, pem := range hc.CAs {
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s holds no PEM certificate", hc.CAFiles[i])
			}
		}
		cfg.RootCAs = pool
	}
	if hc.Client != nil {
		cfg.Certificates = []tls.Certificate{*hc.Client}
	}
	return cfg, nil
}
