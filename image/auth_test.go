package image

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func authJSON(key, user, pass string) string {
	return fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, key, base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
}

func TestAuthFiles(t *testing.T) {
	tests := []struct {
		name string
		flag string
		env  []string
		want []string
	}{
		{name: "defaults", env: []string{"HOME", "/h", "XDG_RUNTIME_DIR", "/run/user/1"},
			want: []string{"/run/user/1/containers/auth.json", "/h/.config/containers/auth.json", "/h/.docker/config.json"}},
		{name: "REGISTRY_AUTH_FILE replaces the XDG file", env: []string{"HOME", "/h", "XDG_RUNTIME_DIR", "/run/user/1", "REGISTRY_AUTH_FILE", "/r.json"},
			want: []string{"/r.json", "/h/.config/containers/auth.json", "/h/.docker/config.json"}},
		{name: "--authfile replaces both", flag: "/f.json", env: []string{"HOME", "/h", "XDG_RUNTIME_DIR", "/run/user/1", "REGISTRY_AUTH_FILE", "/r.json"},
			want: []string{"/f.json", "/h/.config/containers/auth.json", "/h/.docker/config.json"}},
		{name: "DOCKER_CONFIG", env: []string{"HOME", "/h", "DOCKER_CONFIG", "/d"},
			want: []string{"/h/.config/containers/auth.json", "/d/config.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := AuthFiles(AuthSource{AuthFile: tt.flag, Getenv: env(tt.env...)}); !slices.Equal(got, tt.want) {
				t.Errorf("AuthFiles() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResolveAuth(t *testing.T) {
	allEnv := []string{"HOME", "/h", "XDG_RUNTIME_DIR", "/run", "REGISTRY_AUTH_FILE", "/r.json"}
	helper := func(name, server string) (string, string, error) {
		if name == "pass" && (server == "reg.example" || server == "https://index.docker.io/v1/") {
			return "helper-user", "helper-secret", nil
		}
		if name == "tok" {
			return "<token>", "id-token", nil
		}
		return "", "", nil
	}
	tests := []struct {
		name     string
		flag     string
		env      []string
		files    fakeFS
		repo     string
		wantUser string
		wantPass string
		wantFrom string
		wantErr  string
	}{
		{name: "none is anonymous", env: allEnv, files: fakeFS{}, repo: "reg.example/a"},
		{name: "--authfile first", flag: "/f.json", env: allEnv, repo: "reg.example/a",
			files:    fakeFS{"/f.json": authJSON("reg.example", "flag", "p1"), "/r.json": authJSON("reg.example", "env", "p2")},
			wantUser: "flag", wantPass: "p1", wantFrom: "/f.json"},
		{name: "REGISTRY_AUTH_FILE", env: allEnv, repo: "reg.example/a",
			files:    fakeFS{"/r.json": authJSON("reg.example", "env", "p2"), "/h/.config/containers/auth.json": authJSON("reg.example", "home", "p3")},
			wantUser: "env", wantPass: "p2", wantFrom: "/r.json"},
		{name: "XDG_RUNTIME_DIR", env: []string{"HOME", "/h", "XDG_RUNTIME_DIR", "/run"}, repo: "reg.example/a",
			files:    fakeFS{"/run/containers/auth.json": authJSON("reg.example", "xdg", "p"), "/h/.config/containers/auth.json": authJSON("reg.example", "home", "p3")},
			wantUser: "xdg", wantPass: "p", wantFrom: "/run/containers/auth.json"},
		{name: "a file without the host passes to the next", env: allEnv, repo: "reg.example/a",
			files:    fakeFS{"/r.json": authJSON("other.example", "env", "p2"), "/h/.config/containers/auth.json": authJSON("reg.example", "home", "p3")},
			wantUser: "home", wantPass: "p3", wantFrom: "/h/.config/containers/auth.json"},
		{name: "docker config, legacy Docker Hub key", env: allEnv, repo: "index.docker.io/library/alpine",
			files:    fakeFS{"/h/.docker/config.json": authJSON("https://index.docker.io/v1/", "hub", "p4")},
			wantUser: "hub", wantPass: "p4", wantFrom: "/h/.docker/config.json"},
		{name: "longest namespace wins", env: allEnv, repo: "reg.example/team/app",
			files:    fakeFS{"/r.json": `{"auths":{"reg.example":{"username":"all","password":"x"},"reg.example/team":{"username":"team","password":"y"},"reg.example/teammate":{"username":"no","password":"z"}}}`},
			wantUser: "team", wantPass: "y", wantFrom: "/r.json"},
		{name: "port is part of the host", env: allEnv, repo: "reg.example:5000/a",
			files: fakeFS{"/r.json": authJSON("reg.example", "noport", "p")}},
		{name: "credHelpers", env: allEnv, repo: "reg.example/a",
			files:    fakeFS{"/h/.docker/config.json": `{"credHelpers":{"reg.example":"pass"}}`},
			wantUser: "helper-user", wantPass: "helper-secret", wantFrom: "/h/.docker/config.json (docker-credential-pass)"},
		{name: "credsStore behind an empty auths marker", env: allEnv, repo: "docker.io/library/alpine",
			files:    fakeFS{"/h/.docker/config.json": `{"auths":{"https://index.docker.io/v1/":{}},"credsStore":"pass"}`},
			wantUser: "helper-user", wantPass: "helper-secret", wantFrom: "/h/.docker/config.json (docker-credential-pass)"},
		{name: "malformed file", env: allEnv, repo: "reg.example/a", files: fakeFS{"/r.json": "{"},
			wantErr: "parsing credentials file /r.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveAuth(AuthSource{AuthFile: tt.flag, Getenv: env(tt.env...), ReadFile: tt.files.ReadFile, Helper: helper}, tt.repo)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveAuth() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Username != tt.wantUser || got.Password != tt.wantPass || got.From != tt.wantFrom {
				t.Errorf("ResolveAuth(%q) = %q:%q from %q, want %q:%q from %q", tt.repo, got.Username, got.Password, got.From, tt.wantUser, tt.wantPass, tt.wantFrom)
			}
		})
	}
}
