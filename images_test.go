package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Test images are built here, deterministically, so that tests need no
// network and testdata/hello can be regenerated with -update-testdata.

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

type entry struct {
	name     string
	typ      byte
	body     string
	linkname string
	mode     int64
}

func file(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, linkname: target, mode: 0o777}
}
func hardlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeLink, linkname: target, mode: 0o644}
}

func tarBytes(entries []entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: e.mode, ModTime: epoch, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			panic(err)
		}
		if hdr.Size > 0 {
			io.WriteString(tw, e.body)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func layerOf(entries ...entry) v1.Layer {
	b := tarBytes(entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		panic(err)
	}
	return l
}

// sharedLayers are the layers of the test images: base is every image's
// first layer, so that pulls of different images share its blob. They are
// built on first use, not at package init: every banger child is this test
// binary, and gzipping them cost each child's start about a fifth of its
// time under -race.
var sharedLayers = sync.OnceValue(func() (l struct{ base, app, opaque v1.Layer }) {
	l.base = layerOf(
		dir("etc/"), file("etc/os-release", "ID=banger-test\n"),
		dir("bin/"), file("bin/tool", "#!/bin/sh\necho tool\n"), hardlink("bin/tool-link", "bin/tool"),
		dir("usr/"), dir("usr/share/"), dir("usr/share/doc/"),
		file("usr/share/doc/a.txt", "a\n"), file("usr/share/doc/b.txt", "b\n"),
		symlink("usr/share/up", "../../../../etc/os-release"),
	)
	l.app = layerOf(
		dir("app/"), file("app/run", "#!/bin/sh\necho app\n"),
		file("usr/share/doc/.wh.a.txt", ""),
		file("etc/os-release", "ID=banger-app\n"),
	)
	l.opaque = layerOf(
		dir("usr/share/doc/"), file("usr/share/doc/.wh..wh..opq", ""), file("usr/share/doc/c.txt", "c\n"),
		file("bin/.wh.tool", ""),
	)
	return l
})

func imageOf(cmd string, layers ...v1.Layer) v1.Image {
	img, err := mutate.AppendLayers(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1), layers...)
	if err != nil {
		panic(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		panic(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Cmd = []string{cmd}
	cfg.Config.Env = []string{"PATH=/bin"}
	cfg.Config.WorkingDir = "/app"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		panic(err)
	}
	return img
}

func withPlatform(img v1.Image, arch string) v1.Image {
	cfg, err := img.ConfigFile()
	if err != nil {
		panic(err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = arch
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		panic(err)
	}
	return img
}

// testImages are pushed to the test registries under these repository:tag names.
func testImages() map[string]v1.Image {
	l := sharedLayers()
	return map[string]v1.Image{
		"base:1": imageOf("/bin/tool", l.base),
		"app:1":  imageOf("/app/run", l.base, l.app),
		"app:2":  imageOf("/app/run", l.base, l.app, l.opaque),
	}
}

// multiPlatform is an index with linux/amd64 and linux/arm64 images.
func multiPlatform() v1.ImageIndex {
	l := sharedLayers()
	amd := imageOf("/app/run", l.base, l.app)
	arm := withPlatform(imageOf("/bin/tool", l.base), "arm64")
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
}

func mustDigest(img v1.Image) string {
	d, err := img.Digest()
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return d.String()
}

func mutateEmptyIndex() v1.ImageIndex { return mutate.IndexMediaType(empty.Index, types.OCIImageIndex) }

func newTarReader(r io.Reader) *tar.Reader { return tar.NewReader(r) }
