package image

import (
	"errors"
	"io/fs"
	"path"
	"slices"
	"strings"
	"testing"
)

// fakeFS serves files from a map, for the Resolve* table tests.
type fakeFS map[string]string

func (f fakeFS) ReadFile(name string) ([]byte, error) {
	s, ok := f[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

func (f fakeFS) Glob(pattern string) ([]string, error) {
	var out []string
	for name := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

func env(kv ...string) func(string) string {
	return func(k string) string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1]
			}
		}
		return ""
	}
}

const mirrorConf = `
unqualified-search-registries = ["docker.io", "quay.io"]
short-name-mode = "enforcing"
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror.example:5000"
insecure = true
[[registry.mirror]]
location = "mirror2.example/hub"
`

func TestResolveRegistriesFiles(t *testing.T) {
	tests := []struct {
		name    string
		flag    string
		env     []string
		files   fakeFS
		want    []string // files read
		wantErr string
	}{
		{name: "no file", env: []string{"HOME", "/home/u"}, files: fakeFS{}, want: nil},
		{name: "system", env: []string{"HOME", "/home/u"},
			files: fakeFS{"/etc/containers/registries.conf": mirrorConf},
			want:  []string{"/etc/containers/registries.conf"}},
		{name: "user wins over system", env: []string{"HOME", "/home/u"},
			files: fakeFS{"/etc/containers/registries.conf": mirrorConf, "/home/u/.config/containers/registries.conf": ""},
			want:  []string{"/home/u/.config/containers/registries.conf"}},
		{name: "env wins over user", env: []string{"HOME", "/home/u", "CONTAINERS_REGISTRIES_CONF", "/srv/r.conf"},
			files: fakeFS{"/srv/r.conf": "", "/home/u/.config/containers/registries.conf": ""},
			want:  []string{"/srv/r.conf"}},
		{name: "flag wins over env, without drop-ins", flag: "/f.conf", env: []string{"CONTAINERS_REGISTRIES_CONF", "/srv/r.conf"},
			files: fakeFS{"/f.conf": "", "/srv/r.conf": "", "/registries.conf.d/a.conf": ""},
			want:  []string{"/f.conf"}},
		{name: "system drop-ins in lexical order, without the main file", env: []string{"HOME", "/home/u"},
			files: fakeFS{"/etc/containers/registries.conf.d/20-b.conf": "", "/etc/containers/registries.conf.d/10-a.conf": "", "/etc/containers/registries.conf.d/x.txt": ""},
			want:  []string{"/etc/containers/registries.conf.d/10-a.conf", "/etc/containers/registries.conf.d/20-b.conf"}},
		{name: "env drop-ins beside it", env: []string{"CONTAINERS_REGISTRIES_CONF", "/srv/r.conf"},
			files: fakeFS{"/srv/r.conf": "", "/srv/registries.conf.d/m.conf": ""},
			want:  []string{"/srv/r.conf", "/srv/registries.conf.d/m.conf"}},
		{name: "missing flag file", flag: "/nope.conf", files: fakeFS{},
			wantErr: "reading registries configuration /nope.conf named by --registries-conf"},
		{name: "missing env file", env: []string{"CONTAINERS_REGISTRIES_CONF", "/nope.conf"}, files: fakeFS{},
			wantErr: "named by $CONTAINERS_REGISTRIES_CONF"},
		{name: "malformed: file and line", flag: "/bad.conf", files: fakeFS{"/bad.conf": "[[registry]]\nprefix = \"a\"\nlocation = b\n"},
			wantErr: "parsing /bad.conf: line 3:"},
		{name: "wrong type: file and line", flag: "/bad.conf", files: fakeFS{"/bad.conf": "[[registry]]\nprefix = \"a\"\ninsecure = \"yes\"\n"},
			wantErr: "parsing /bad.conf: line 3 "},
		{name: "scheme refused", flag: "/bad.conf", files: fakeFS{"/bad.conf": "[[registry]]\nlocation = \"http://a\"\n"},
			wantErr: "URI schemes are not supported"},
		{name: "bad pull-from-mirror", flag: "/bad.conf", files: fakeFS{"/bad.conf": "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n"},
			wantErr: `pull-from-mirror = "sometimes"; want all, digest-only or tag-only`},
		{name: "unknown keys ignored", flag: "/f.conf", files: fakeFS{"/f.conf": "[aliases]\nfoo = \"bar\"\n[registries.search]\nregistries = []\n" + mirrorConf + "whatever = 1\n"},
			want: []string{"/f.conf"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveRegistries(RegistriesSource{File: tt.flag, Getenv: env(tt.env...), ReadFile: tt.files.ReadFile, Glob: tt.files.Glob})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveRegistries() error = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is more than one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Files, tt.want) {
				t.Errorf("ResolveRegistries().Files = %q, want %q", got.Files, tt.want)
			}
		})
	}
}

func TestRegistriesEndpoints(t *testing.T) {
	const digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	conf := mirrorConf + `
[[registry]]
prefix = "quay.io/blocked"
location = "quay.io/blocked"
blocked = true

[[registry]]
prefix = "quay.io"
location = "quay.io"
[[registry.mirror]]
location = "tags.example"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "digests.example"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "example.com/team"
location = "internal.example:5000/mirrored/team"
insecure = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "corp-mirror.example"

[[registry]]
prefix = "old.example"
location = "old.example"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.example"
`
	dropIn := "[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"ghcr-mirror.example\"\n"
	files := fakeFS{"/etc/containers/registries.conf": conf, "/etc/containers/registries.conf.d/50-ghcr.conf": dropIn}
	regs, err := ResolveRegistries(RegistriesSource{Getenv: env(), ReadFile: files.ReadFile, Glob: files.Glob})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref     string
		want    []string // Ref, with "!" for insecure and "~" for a mirror
		wantErr error
	}{
		{ref: "alpine:3.20", want: []string{"~!mirror.example:5000/library/alpine:3.20", "~mirror2.example/hub/library/alpine:3.20", "docker.io/library/alpine:3.20"}},
		{ref: "index.docker.io/library/alpine", want: []string{"~!mirror.example:5000/library/alpine:latest", "~mirror2.example/hub/library/alpine:latest", "docker.io/library/alpine:latest"}},
		{ref: "quay.io/x/y:1", want: []string{"~tags.example/x/y:1", "quay.io/x/y:1"}},
		{ref: "quay.io/x/y@" + digest, want: []string{"~digests.example/x/y@" + digest, "quay.io/x/y@" + digest}},
		{ref: "quay.io/blocked/y:1", wantErr: ErrBlocked},
		{ref: "quay.io/blockedness/y:1", want: []string{"~tags.example/blockedness/y:1", "quay.io/blockedness/y:1"}},
		{ref: "example.com/team/app:2", want: []string{"!internal.example:5000/mirrored/team/app:2"}},
		{ref: "example.com/teammate/app:2", want: []string{"example.com/teammate/app:2"}},
		{ref: "reg.corp.example/app:2", want: []string{"~corp-mirror.example/app:2", "reg.corp.example/app:2"}},
		{ref: "old.example/app:2", want: []string{"old.example/app:2"}},
		{ref: "old.example/app@" + digest, want: []string{"~m.example/app@" + digest, "old.example/app@" + digest}},
		{ref: "ghcr.io/o/r:1", want: []string{"ghcr-mirror.example/o/r:1"}},
		{ref: "127.0.0.1:5000/x:y", want: []string{"127.0.0.1:5000/x:y"}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			eps, err := regs.Endpoints(tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Endpoints(%q) error = %v, want %v", tt.ref, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ep := range eps {
				s := ep.Ref
				if ep.Insecure {
					s = "!" + s
				}
				if ep.Mirror {
					s = "~" + s
				}
				got = append(got, s)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Endpoints(%q) = %q, want %q", tt.ref, got, tt.want)
			}
		})
	}
}
