package image

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path"
)

// archiveEntries are the sizes of a docker archive's entries, by cleaned
// name, and the targets of its links. go-containerregistry's tarball reads
// manifest.json and the config whole into memory, whatever size their
// headers give: banger reads the headers first (tar skips the bodies of a
// file by seeking) and refuses what is over the caps.
type archiveEntries struct {
	size map[string]int64
	link map[string]string
}

func readArchiveEntries(file string) (*archiveEntries, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &archiveEntries{size: map[string]int64{}, link: map[string]string{}}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a, nil
		}
		if err != nil {
			return nil, err
		}
		name := path.Clean(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			// As ggcr follows them: relative to the link's directory.
			a.link[name] = path.Join(path.Dir(name), path.Clean(hdr.Linkname))
		default:
			a.size[name] = hdr.Size
		}
	}
}

// sizeOf returns the size of the entry name resolves to, following links
// as ggcr does; ok is false if there is none (ggcr then fails by itself).
func (a *archiveEntries) sizeOf(name string) (size int64, ok bool) {
	name = path.Clean(name)
	for range 64 {
		if target, isLink := a.link[name]; isLink {
			name = target
			continue
		}
		size, ok = a.size[name]
		return size, ok
	}
	return 0, false
}
