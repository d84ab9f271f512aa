package image

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
)

// AuthSource is what ResolveAuth reads: --authfile, the environment, and
// the files, with the file system and credential helpers injected.
type AuthSource struct {
	// AuthFile is --authfile.
	AuthFile string
	// Getenv reads REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, HOME, DOCKER_CONFIG.
	Getenv func(string) string
	// ReadFile reads a file; a missing file must be an fs.ErrNotExist.
	ReadFile func(string) ([]byte, error)
	// Helper asks credential helper docker-credential-NAME for serverURL's
	// credentials; nil runs the program. It returns empty strings when the
	// helper has none.
	Helper func(name, serverURL string) (user, secret string, err error)
}

// Credential is what ResolveAuth found for an endpoint.
type Credential struct {
	Username, Password, IdentityToken string
	// From is the file (and helper) it came from; empty for anonymous.
	From string
}

// Authenticator is c as go-containerregistry takes it.
func (c Credential) Authenticator() authn.Authenticator {
	if c == (Credential{}) || (c.Username == "" && c.Password == "" && c.IdentityToken == "") {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken})
}

// AuthFiles returns the credential files in the order skopeo reads them:
// the first of --authfile, $REGISTRY_AUTH_FILE and
// $XDG_RUNTIME_DIR/containers/auth.json (the "primary" file), then
// $HOME/.config/containers/auth.json, then Docker's config.json in
// $DOCKER_CONFIG or ~/.docker.
func AuthFiles(src AuthSource) []string {
	var files []string
	switch {
	case src.AuthFile != "":
		files = append(files, src.AuthFile)
	case src.Getenv("REGISTRY_AUTH_FILE") != "":
		files = append(files, src.Getenv("REGISTRY_AUTH_FILE"))
	case src.Getenv("XDG_RUNTIME_DIR") != "":
		files = append(files, filepath.Join(src.Getenv("XDG_RUNTIME_DIR"), "containers/auth.json"))
	}
	home := src.Getenv("HOME")
	if home != "" {
		files = append(files, filepath.Join(home, ".config/containers/auth.json"))
	}
	if d := src.Getenv("DOCKER_CONFIG"); d != "" {
		files = append(files, filepath.Join(d, "config.json"))
	} else if home != "" {
		files = append(files, filepath.Join(home, ".docker/config.json"))
	}
	return files
}

type authFile struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

// ResolveAuth returns the credentials for repository repo ("host[:port]/path")
// from the first of AuthFiles that has an entry for it: in each file, a
// credHelpers entry for the host, then the auths entry with the longest
// matching key (host/ns/repo, host/ns, host), then the file's credsStore.
// Keys written as URLs (https://index.docker.io/v1/) match their host, and
// index.docker.io is docker.io. No entry anywhere is anonymous access. A
// file that is not JSON is an error naming it.
func ResolveAuth(src AuthSource, repo string) (Credential, error) {
	host, _, _ := strings.Cut(repo, "/")
	host = canonicalHost(host)
	repo = host + repo[strings.Index(repo+"/", "/"):]
	helper := src.Helper
	if helper == nil {
		helper = runCredentialHelper
	}
	for _, file := range AuthFiles(src) {
		data, err := src.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Credential{}, fmt.Errorf("reading credentials: %w", err)
		}
		var f authFile
		if err := json.Unmarshal(data, &f); err != nil {
			return Credential{}, fmt.Errorf("parsing credentials file %s: %v", file, err)
		}
		for key, name := range f.CredHelpers {
			if canonicalHost(authKeyHost(key)) == host {
				return fromHelper(helper, name, file, host)
			}
		}
		bestLen := -1
		var best Credential
		for key, a := range f.Auths {
			k := normalizeAuthKey(key)
			if k != repo && !strings.HasPrefix(repo, k+"/") || len(k) <= bestLen {
				continue
			}
			c := Credential{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, From: file}
			if a.Auth != "" {
				raw, err := base64.StdEncoding.DecodeString(a.Auth)
				if err != nil {
					return Credential{}, fmt.Errorf("parsing credentials file %s: the auth of %q is not base64", file, key)
				}
				u, p, ok := strings.Cut(string(raw), ":")
				if !ok {
					return Credential{}, fmt.Errorf("parsing credentials file %s: the auth of %q is not user:password", file, key)
				}
				c.Username, c.Password = u, p
			}
			if c.Username == "" && c.Password == "" && c.IdentityToken == "" {
				continue // a marker for credsStore, as docker login writes
			}
			best, bestLen = c, len(k)
		}
		if bestLen >= 0 {
			return best, nil
		}
		if f.CredsStore != "" {
			c, err := fromHelper(helper, f.CredsStore, file, host)
			if err != nil || c.Username != "" || c.IdentityToken != "" {
				return c, err
			}
		}
	}
	return Credential{}, nil
}

func fromHelper(helper func(string, string) (string, string, error), name, file, host string) (Credential, error) {
	server := host
	if host == "docker.io" {
		server = "https://index.docker.io/v1/"
	}
	user, secret, err := helper(name, server)
	if err != nil {
		return Credential{}, fmt.Errorf("credential helper docker-credential-%s (named in %s) for %s: %w", name, file, host, err)
	}
	c := Credential{Username: user, Password: secret, From: file + " (docker-credential-" + name + ")"}
	if user == "<token>" {
		c = Credential{IdentityToken: secret, From: c.From}
	}
	return c, nil
}

func runCredentialHelper(name, serverURL string) (string, string, error) {
	creds, err := client.Get(client.NewShellProgramFunc("docker-credential-"+name), serverURL)
	if credentials.IsErrCredentialsNotFound(err) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	return creds.Username, creds.Secret, nil
}

// normalizeAuthKey turns an auths key into host[/path]: "https://host/v1/"
// (Docker's legacy form) is host, and Docker Hub's names are docker.io.
func normalizeAuthKey(key string) string {
	if strings.Contains(key, "://") {
		return canonicalHost(authKeyHost(key))
	}
	host, path, _ := strings.Cut(strings.TrimSuffix(key, "/"), "/")
	if path != "" {
		return canonicalHost(host) + "/" + path
	}
	return canonicalHost(host)
}

func authKeyHost(key string) string {
	_, rest, ok := strings.Cut(key, "://")
	if !ok {
		rest = key
	}
	host, _, _ := strings.Cut(rest, "/")
	return host
}

func canonicalHost(host string) string {
	switch host {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return host
}
