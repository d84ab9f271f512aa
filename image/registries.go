package image

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"
)

// ErrBlocked is matched (errors.Is) by the error for a reference that a
// registries.conf [[registry]] table marks blocked.
var ErrBlocked = errors.New("blocked by registries.conf")

// BlockedError says which file and table blocked a reference.
type BlockedError struct {
	Ref, Prefix, File string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("pull %s: blocked by the [[registry]] table with prefix %q in %s", e.Ref, e.Prefix, e.File)
}

func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// RegistriesSource is what ResolveRegistries reads: the --registries-conf
// flag and the environment, with the file system injected so that a table
// test can lay out any set of files.
type RegistriesSource struct {
	// File is --registries-conf: only this file is read, without drop-ins,
	// and it must exist.
	File string
	// Getenv reads CONTAINERS_REGISTRIES_CONF and HOME.
	Getenv func(string) string
	// ReadFile reads a file; a missing file must be an fs.ErrNotExist.
	ReadFile func(string) ([]byte, error)
	// Glob lists drop-ins, as filepath.Glob does (sorted).
	Glob func(string) ([]string, error)
}

const systemRegistriesConf = "/etc/containers/registries.conf"

// Registries is the [[registry]] configuration in force: the tables of
// every file read, a drop-in's table replacing an earlier one of the same
// prefix, as containers-registries.conf(5) says.
type Registries struct {
	// Files are the files read, in order.
	Files   []string
	entries []registryEntry
}

type registryEntry struct {
	Prefix             string
	Location           string
	Insecure           bool
	Blocked            bool
	MirrorByDigestOnly bool          `toml:"mirror-by-digest-only"`
	Mirrors            []mirrorEntry `toml:"mirror"`
	file               string
}

type mirrorEntry struct {
	Location       string
	Insecure       bool
	PullFromMirror string `toml:"pull-from-mirror"`
}

// registriesFile is the part of registries.conf v2 banger reads; every
// other key (unqualified-search-registries, aliases, v1 tables) is ignored.
type registriesFile struct {
	Registry []registryEntry
}

// ResolveRegistries finds and parses registries.conf, in skopeo's order:
// src.File (--registries-conf) alone; else $CONTAINERS_REGISTRIES_CONF, else
// $HOME/.config/containers/registries.conf if it exists, else
// /etc/containers/registries.conf; each of these with the
// registries.conf.d/*.conf drop-ins beside it, in lexical order. No file at
// all is the empty configuration: every reference is pulled from where it
// names. A file named by the flag or the variable must exist.
func ResolveRegistries(src RegistriesSource) (Registries, error) {
	var main string
	explicit, dropIns := false, true
	switch {
	case src.File != "":
		main, explicit, dropIns = src.File, true, false
	case src.Getenv("CONTAINERS_REGISTRIES_CONF") != "":
		main, explicit = src.Getenv("CONTAINERS_REGISTRIES_CONF"), true
	default:
		main = systemRegistriesConf
		if home := src.Getenv("HOME"); home != "" {
			user := filepath.Join(home, ".config/containers/registries.conf")
			if _, err := src.ReadFile(user); err == nil || !errors.Is(err, fs.ErrNotExist) {
				main = user
			}
		}
	}
	files := []string{main}
	if dropIns {
		d, err := src.Glob(filepath.Join(filepath.Dir(main), "registries.conf.d", "*.conf"))
		if err != nil {
			return Registries{}, fmt.Errorf("listing registries.conf drop-ins: %w", err)
		}
		slices.Sort(d)
		files = append(files, d...)
	}
	var regs Registries
	for i, file := range files {
		data, err := src.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) && (i > 0 || !explicit) {
			continue
		}
		if err != nil {
			what := "$CONTAINERS_REGISTRIES_CONF"
			if src.File != "" {
				what = "--registries-conf"
			}
			if i > 0 || !explicit {
				return Registries{}, fmt.Errorf("reading registries configuration: %w", err)
			}
			return Registries{}, fmt.Errorf("reading registries configuration %s named by %s: %w", file, what, err)
		}
		var f registriesFile
		if _, err := toml.Decode(string(data), &f); err != nil {
			var perr toml.ParseError
			if errors.As(err, &perr) {
				return Registries{}, fmt.Errorf("parsing %s: line %d: %s", file, perr.Position.Line, oneLineMsg(perr.Message))
			}
			// Type mismatches say "toml: line N (last key …): …".
			return Registries{}, fmt.Errorf("parsing %s: %s", file, strings.TrimPrefix(oneLineMsg(err.Error()), "toml: "))
		}
		regs.Files = append(regs.Files, file)
		for _, e := range f.Registry {
			e.file = file
			if err := e.check(); err != nil {
				return Registries{}, fmt.Errorf("parsing %s: %w", file, err)
			}
			if j := slices.IndexFunc(regs.entries, func(o registryEntry) bool { return o.prefix() == e.prefix() }); j >= 0 {
				regs.entries[j] = e
			} else {
				regs.entries = append(regs.entries, e)
			}
		}
	}
	return regs, nil
}

func oneLineMsg(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// prefix is the table's prefix, which defaults to its location.
func (e registryEntry) prefix() string {
	if e.Prefix != "" {
		return e.Prefix
	}
	return e.Location
}

func (e registryEntry) check() error {
	where := fmt.Sprintf("[[registry]] with prefix %q", e.prefix())
	if e.prefix() == "" {
		return fmt.Errorf("a [[registry]] table has neither prefix nor location")
	}
	for _, loc := range append([]string{e.Prefix, e.Location}, mirrorLocations(e.Mirrors)...) {
		if strings.Contains(loc, "://") {
			return fmt.Errorf("%s: %q: URI schemes are not supported; write host[:port][/path] (insecure = true for plain HTTP)", where, loc)
		}
	}
	if strings.HasPrefix(e.prefix(), "*.") && e.Location != "" {
		return fmt.Errorf("%s: a wildcard prefix cannot have a location", where)
	}
	for _, m := range e.Mirrors {
		if m.Location == "" {
			return fmt.Errorf("%s: a [[registry.mirror]] has no location", where)
		}
		switch m.PullFromMirror {
		case "", "all", "digest-only", "tag-only":
		default:
			return fmt.Errorf("%s: mirror %q: pull-from-mirror = %q; want all, digest-only or tag-only", where, m.Location, m.PullFromMirror)
		}
	}
	return nil
}

func mirrorLocations(ms []mirrorEntry) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Location)
	}
	return out
}

// Endpoint is one place to pull a reference from.
type Endpoint struct {
	// Ref is the reference to ask this endpoint for, its location
	// substituted for the matched prefix: "mirror.example:5000/library/alpine:3.20".
	Ref string
	// Insecure allows plain HTTP and unverified TLS (insecure = true).
	Insecure bool
	// Mirror is set for a [[registry.mirror]], which a failure moves past.
	Mirror bool
}

// Endpoints returns where to pull ref from, in order: the mirrors of the
// [[registry]] table with the longest prefix that matches ref, those that
// its pull-from-mirror allows, then the (possibly rewritten) primary
// location. A short name is Docker Hub's (docker.io/library/…): banger does
// not search unqualified-search-registries. A blocked table is an error
// matching ErrBlocked.
func (r Registries) Endpoints(ref string) ([]Endpoint, error) {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return nil, errorf(ErrInvalidReference, "parsing reference %q: %v; expected e.g. alpine:3.20, 127.0.0.1:5000/x:y, oci:DIR[:TAG] or docker-archive:FILE[:REF]", ref, err)
	}
	full, byDigest := canonicalRef(parsed)
	best, bestLen := -1, -1
	for i, e := range r.entries {
		if n := refMatchingPrefix(full, e.prefix()); n > bestLen {
			best, bestLen = i, n
		}
	}
	if best < 0 {
		return []Endpoint{{Ref: full}}, nil
	}
	e := r.entries[best]
	if e.Blocked {
		return nil, &BlockedError{Ref: ref, Prefix: e.prefix(), File: e.file}
	}
	// A location replaces what the prefix matched: for "*.example.com",
	// the whole host.
	matched := bestLen
	if strings.HasPrefix(e.prefix(), "*.") {
		matched = strings.Index(full, "/")
	}
	rewrite := func(location string) string {
		if location == "" {
			return full
		}
		return location + full[matched:]
	}
	var eps []Endpoint
	for _, m := range e.Mirrors {
		mode := m.PullFromMirror
		if e.MirrorByDigestOnly {
			mode = "digest-only"
		}
		if (mode == "digest-only" && !byDigest) || (mode == "tag-only" && byDigest) {
			continue
		}
		eps = append(eps, Endpoint{Ref: rewrite(m.Location), Insecure: m.Insecure, Mirror: true})
	}
	return append(eps, Endpoint{Ref: rewrite(e.Location), Insecure: e.Insecure}), nil
}

// canonicalRef is ref as registries.conf prefixes are written:
// docker.io/library/alpine:3.20, not index.docker.io/….
func canonicalRef(r name.Reference) (string, bool) {
	reg := r.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	s := reg + "/" + r.Context().RepositoryStr()
	if d, ok := r.(name.Digest); ok {
		return s + "@" + d.DigestStr(), true
	}
	return s + ":" + r.Identifier(), false
}

// refMatchingPrefix returns the length of prefix if it matches ref at a
// component boundary, else -1. "*.example.com" matches any subdomain's host.
// Unlike containers/image, "example.com" does not match "example.com:5000/x":
// a colon ends the prefix only after a repository path, where it starts a tag.
func refMatchingPrefix(ref, prefix string) int {
	if strings.HasPrefix(prefix, "*.") {
		host, _, _ := strings.Cut(ref, "/")
		if strings.HasSuffix(host, prefix[1:]) {
			return len(prefix)
		}
		return -1
	}
	if !strings.HasPrefix(ref, prefix) {
		return -1
	}
	if len(ref) == len(prefix) {
		return len(prefix)
	}
	switch ref[len(prefix)] {
	case '/', '@':
		return len(prefix)
	case ':':
		if strings.Contains(prefix, "/") {
			return len(prefix)
		}
	}
	return -1
}
