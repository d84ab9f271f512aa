package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

// mkfiles writes an OCI image layout holding one image of one gzip layer
// of N empty regular files, 1,000 to a directory: tar headers only (512
// bytes each), so that flattening it measures the cost of an entry and
// nothing else. docs/bench.sh measures peak RSS on 1,000,000 and 2,000,000.
func mkfiles(args []string) error {
	fs := flag.NewFlagSet("mkfiles", flag.ExitOnError)
	n := fs.Int("n", 1000000, "number of empty files")
	tag := fs.String("tag", "latest", "tag recorded in index.json, for oci:DIR:TAG")
	fs.Parse(args)
	if fs.NArg() != 1 || *n <= 0 {
		return fmt.Errorf("want -n N (more than 0) and one layout DIR")
	}
	dir := fs.Arg(0)
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	res, err := writeLayer(filepath.Join(dir, "blobs", "sha256"), func(lw *layerWriter) error {
		for i := range *n {
			if err := lw.file(fmt.Sprintf("files/d%04d/f%03d", i/1000, i%1000), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	res.kind = "files"
	return writeImage(dir, *tag, []layerResult{res})
}

// blobBytes prints the bytes a pull of the image tagged -tag in the layout
// DIR downloads: its manifest, config and layer blobs, as "blob_bytes=N".
func blobBytes(args []string) error {
	fs := flag.NewFlagSet("blobbytes", flag.ExitOnError)
	tag := fs.String("tag", "latest", "tag in the layout's index.json")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want DIR")
	}
	img, err := findImage(fs.Arg(0), *tag)
	if err != nil {
		return err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	total := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	fmt.Printf("blob_bytes=%d\n", total)
	return nil
}
