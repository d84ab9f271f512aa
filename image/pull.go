// Package image pulls container images through banger's blob cache, flattens
// their layers into one root filesystem tar, and keeps the results in an
// image store.
//
// Use Pull to import an image and Store to list, inspect and remove what was
// imported. A flattened image never depends on the blobs that sourced it:
// pruning the cache leaves every image intact.
package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/banger/banger/cache"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// DefaultJobs bounds parallel blob fetches, as go-containerregistry's
// remote.WithJobs does by default.
const DefaultJobs = 4

// PullOptions tune Pull. The zero value pulls for linux/GOARCH, names the
// image after its reference, and reports no progress.
type PullOptions struct {
	// Name overrides the image's name in the store.
	Name string
	// Platform is "os/arch[/variant]"; empty means linux/GOARCH. (ggcr's own
	// default is linux/amd64 whatever the host, so banger always passes one.)
	Platform string
	// Insecure allows plain HTTP to registries other than localhost, and
	// skips certificate verification (--insecure: both of plain HTTP and
	// --tls-verify=false, as before the two were split).
	Insecure bool
	// SkipTLSVerify is --tls-verify=false: HTTPS without checking the
	// registry's certificate. Plain HTTP still needs Insecure, an
	// insecure = true registries.conf table, or localhost.
	SkipTLSVerify bool
	// RegistriesConf is --registries-conf: read only this file instead of
	// registries.conf's usual places (see ResolveRegistries).
	RegistriesConf string
	// AuthFile is --authfile, the first credentials file (see AuthFiles).
	AuthFile string
	// CertDir is --cert-dir, the certificates for every registry of the
	// pull instead of the certs.d directories (see ResolveCerts).
	CertDir string
	// Getenv reads the environment for registries.conf, credentials and
	// certificates; nil means os.Getenv.
	Getenv func(string) string
	// Notice, if set, is called with one line when a mirror fails and
	// the pull moves on to the next endpoint.
	Notice func(msg string)
	// Jobs bounds parallel blob fetches; 0 means DefaultJobs.
	Jobs int
	// Transport replaces the HTTP transport for registry requests.
	Transport http.RoundTripper
	// Progress, if set, is called with the layer bytes done and the total
	// (0 when the source does not say) as they change. It is called from
	// one goroutine at a time.
	Progress func(done, total int64)
	// Now is the clock for pulled_at; nil means time.Now.
	Now func() time.Time
}

// Pull imports ref into store s, passing every layer blob through cache c,
// and returns the published image. Pulling a name that exists replaces it
// atomically: readers see the old image or the new one, never a mix.
//
// Every blob is verified against its digest whatever the source, and every
// layer's uncompressed content against the config's diff_ids.
func Pull(ctx context.Context, c *cache.Cache, s *Store, ref string, opts PullOptions) (Image, error) {
	if opts.Jobs <= 0 {
		opts.Jobs = DefaultJobs
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	platform := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if opts.Platform != "" {
		var err error
		if platform, err = ParsePlatform(opts.Platform); err != nil {
			return Image{}, err
		}
	}
	// ggcr's v1.Layer reads carry the context given to resolve, not the one
	// handed to Blob.Open: cancelling this one is what stops the other
	// downloads when one layer fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src, err := resolve(ctx, ref, platform, opts)
	if err != nil {
		return Image{}, err
	}
	meta, err := readMetadata(src, ref)
	if err != nil {
		return Image{}, err
	}
	meta.image.Platform = platformString(platform)
	if meta.config.OS != "" {
		meta.image.Platform = platformString(v1.Platform{OS: meta.config.OS, Architecture: meta.config.Architecture, Variant: meta.config.Variant})
	}
	meta.image.Name = src.name
	if opts.Name != "" {
		meta.image.Name = opts.Name
	}
	meta.image.Reference = ref
	meta.image.PulledAt = opts.Now()

	// Flattening reads the layers top-down and starts as soon as the top
	// layer is in the cache, while the layers below are still fetched.
	fetches, err := fetchLayers(ctx, cancel, c, src, meta, opts)
	if err != nil {
		return Image{}, err
	}
	img, addErr := s.add(ctx, meta.image, func(dir string) error {
		return writeRootfs(ctx, dir, fetches.file, meta.diffIDs)
	})
	if addErr != nil {
		cancel() // flattening failed: stop the fetches still running
	}
	// A failed fetch also fails the flatten that waited for it; report
	// the fetch, which says what went wrong. But a fetch that failed only
	// after the pull was cancelled (by a failed flatten, or Ctrl-C) reports
	// whatever it was doing then, not the cause.
	if err := fetches.wait(); err != nil && (addErr == nil || fetches.cause != nil) {
		return Image{}, fmt.Errorf("pull %s: %w", meta.image.Reference, err)
	}
	return img, addErr
}

type metadata struct {
	image   Image
	config  *v1.ConfigFile
	layers  []v1.Descriptor // as the source's manifest lists them
	diffIDs []v1.Hash
}

// readMetadata reads and checks the manifest and config.
func readMetadata(src *source, ref string) (*metadata, error) {
	meta := &metadata{}
	rawConfig, err := src.img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("pull %s: reading image config: %w", ref, err)
	}
	if src.kind == "docker-archive" {
		// A docker save archive has no manifest of its own: ggcr would
		// synthesize one by gzipping every layer. The config's diff IDs are
		// what its layers are checked against.
		layers, err := src.img.Layers()
		if err != nil {
			return nil, fmt.Errorf("pull %s: listing layers: %w", ref, err)
		}
		meta.layers = make([]v1.Descriptor, len(layers))
		// Its config is named by its digest, which ggcr does not check.
		if src.configDigest != (v1.Hash{}) && sha256Hex(rawConfig) != src.configDigest.Hex {
			return nil, fmt.Errorf("pull %s: config content is sha256:%s, manifest.json says %s; the archive is corrupt", ref, sha256Hex(rawConfig), src.configDigest)
		}
	} else {
		rawManifest, err := src.img.RawManifest()
		if err != nil {
			return nil, fmt.Errorf("pull %s: reading manifest: %w", ref, err)
		}
		manifestDigest := v1.Hash{Algorithm: "sha256", Hex: sha256Hex(rawManifest)}
		if src.manifestDigest != (v1.Hash{}) && src.manifestDigest != manifestDigest {
			return nil, fmt.Errorf("pull %s: manifest content is %s, not the %s it was asked for; the source is corrupt or tampered with", ref, manifestDigest, src.manifestDigest)
		}
		meta.image.ManifestDigest = manifestDigest.String()
		m, err := src.img.Manifest()
		if err != nil {
			return nil, fmt.Errorf("pull %s: parsing manifest: %w", ref, err)
		}
		if m.MediaType != "" && !m.MediaType.IsImage() {
			return nil, fmt.Errorf("pull %s: unsupported manifest media type %s; banger pulls OCI and Docker v2 images", ref, m.MediaType)
		}
		if !m.Config.MediaType.IsConfig() {
			return nil, fmt.Errorf("pull %s: not a container image: config media type is %s (an OCI artifact?)", ref, m.Config.MediaType)
		}
		for i, l := range m.Layers {
			if !l.MediaType.IsLayer() {
				return nil, fmt.Errorf("pull %s: layer %d has unsupported media type %s", ref, i, l.MediaType)
			}
		}
		meta.layers = m.Layers
		// ggcr verifies neither layout nor archive configs; the config is
		// the root of trust for diff IDs, so check it everywhere.
		if got := sha256Hex(rawConfig); got != m.Config.Digest.Hex {
			return nil, fmt.Errorf("pull %s: config content is sha256:%s, manifest says %s; the source is corrupt", ref, got, m.Config.Digest)
		}
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("pull %s: parsing config: %w", ref, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(meta.layers) {
		return nil, fmt.Errorf("pull %s: image has %d layers but its config lists %d diff_ids; the image is malformed", ref, len(meta.layers), len(cfg.RootFS.DiffIDs))
	}
	meta.config = cfg
	meta.diffIDs = cfg.RootFS.DiffIDs
	meta.image.ConfigDigest = "sha256:" + sha256Hex(rawConfig)
	meta.image.Created = cfg.Created.Time.UTC()
	meta.image.Env = cfg.Config.Env
	meta.image.Entrypoint = cfg.Config.Entrypoint
	meta.image.Cmd = cfg.Config.Cmd
	meta.image.WorkingDir = cfg.Config.WorkingDir
	meta.image.User = cfg.Config.User
	return meta, nil
}

// fetches are the layer blobs being passed through the cache.
type fetches struct {
	files []*os.File
	errs  []error
	// cause is the first fetch failure that came while the pull was still
	// going: what failed after it failed because of it.
	causeOnce sync.Once
	cause     error
	done      []chan struct{} // done[i] is closed when layer i is fetched or failed
	wg        sync.WaitGroup
}

// file waits for layer i and returns its open, verified blob file,
// positioned at the start.
func (f *fetches) file(ctx context.Context, i int) (*os.File, error) {
	select {
	case <-f.done[i]:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.errs[i] != nil {
		return nil, f.errs[i]
	}
	if _, err := f.files[i].Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return f.files[i], nil
}

// wait waits for every fetch to end, closes the blob files and returns the
// failure that caused the others, if any.
func (f *fetches) wait() error {
	f.wg.Wait()
	for _, file := range f.files {
		if file != nil {
			file.Close()
		}
	}
	if f.cause != nil {
		return f.cause
	}
	return firstError(f.errs)
}

// fetchLayers starts passing every layer blob through the cache, opts.Jobs at
// a time, top layer first because flattening reads it first. On the first
// failure it calls cancel, which must end ctx and the context src was
// resolved with, so that the other downloads stop. The caller must call
// wait on the result.
func fetchLayers(ctx context.Context, cancel context.CancelFunc, c *cache.Cache, src *source, meta *metadata, opts PullOptions) (*fetches, error) {
	layers, err := src.img.Layers()
	if err != nil {
		return nil, fmt.Errorf("pull %s: listing layers: %w", meta.image.Reference, err)
	}
	var total int64
	if !src.uncompressedBlobs {
		for _, l := range meta.layers {
			total += l.Size
		}
	}
	var (
		mu   sync.Mutex
		done int64
	)
	progress := func(n int64) {
		if opts.Progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		done += n
		opts.Progress(done, total)
	}

	f := &fetches{
		files: make([]*os.File, len(layers)),
		errs:  make([]error, len(layers)),
		done:  make([]chan struct{}, len(layers)),
	}
	queue := make(chan int, len(layers))
	for i := len(layers) - 1; i >= 0; i-- {
		f.done[i] = make(chan struct{})
		queue <- i
	}
	close(queue)
	fetch := func(i int) {
		defer close(f.done[i])
		if err := ctx.Err(); err != nil {
			f.errs[i] = err
			return
		}
		layer := layers[i]
		b := cache.Blob{
			Digest:   meta.layers[i].Digest.String(),
			Size:     meta.layers[i].Size,
			Source:   meta.image.Reference,
			Open:     func(context.Context) (io.ReadCloser, error) { return layer.Compressed() },
			Progress: progress,
		}
		if src.openBlob != nil {
			// A registry blob comes from the endpoint that served the
			// manifest, or the next one if that mirror lacks it.
			d := meta.layers[i].Digest
			b.Open = func(ctx context.Context) (io.ReadCloser, error) { return src.openBlob(ctx, d) }
		}
		if src.kind != "registry" {
			// A local file that fails to verify will fail again.
			b.Retryable = func(error) bool { return false }
		} else {
			b.Retryable = retryable
		}
		if src.uncompressedBlobs {
			// docker save keeps layers as plain tars named by diff ID:
			// cache exactly those bytes, verified against the config.
			b.Digest, b.Size = meta.diffIDs[i].String(), -1
			b.Open = func(context.Context) (io.ReadCloser, error) { return layer.Uncompressed() }
		}
		file, err := c.Fetch(ctx, b)
		if err != nil {
			f.errs[i] = fmt.Errorf("layer %d: %w", i, err)
			if ctx.Err() == nil {
				f.causeOnce.Do(func() { f.cause = f.errs[i] })
			}
			cancel() // one failed layer fails the pull: stop the others
			return
		}
		f.files[i] = file
	}
	for range min(opts.Jobs, len(layers)) {
		f.wg.Go(func() {
			for i := range queue {
				fetch(i)
			}
		})
	}
	return f, nil
}

// firstError prefers a real failure over the cancellations it caused.
func firstError(errs []error) error {
	var cancelled error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
		cancelled = err
	}
	return cancelled
}

// retryable says whether a registry failure may go away on its own: a
// client error such as 401 or 404 will not.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode >= 400 && terr.StatusCode < 500 &&
		terr.StatusCode != http.StatusRequestTimeout && terr.StatusCode != http.StatusTooManyRequests {
		return false
	}
	return true
}

// writeRootfs flattens the layers into dir/rootfs.tar; layer(ctx, i) waits
// for layer i's blob.
func writeRootfs(ctx context.Context, dir string, layer func(context.Context, int) (*os.File, error), diffIDs []v1.Hash) error {
	out, err := os.OpenFile(filepath.Join(dir, rootfsName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	w := bufio.NewWriterSize(&earlyWriteback{f: out}, 1<<20)
	layers := make([]flattenLayer, len(diffIDs))
	for i := range layers {
		layers[i] = flattenLayer{open: func() (io.ReadCloser, error) {
			f, err := layer(ctx, i)
			if err != nil {
				return nil, err
			}
			return uncompress(f, i, diffIDs[i])
		}}
	}
	if err := flatten(ctx, w, layers, dir); err != nil {
		return fmt.Errorf("flattening: %w", err)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// uncompress returns layer i's tar stream, whatever its compression,
// checking at its end that it hashes to the config's diff ID. The format is
// told by magic bytes rather than by media type, which registries and
// archives do not always get right.
func uncompress(r io.Reader, i int, diffID v1.Hash) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(4)
	var stream io.Reader = br
	closer := func() {}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("layer %d: reading gzip: %w", i, err)
		}
		stream, closer = zr, func() { zr.Close() }
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("layer %d: reading zstd: %w", i, err)
		}
		stream, closer = zr, zr.Close
	}
	h := sha256.New()
	ra := newReadAhead(stream, h)
	return &diffIDReader{r: ra, h: h, want: diffID, layer: i, close: func() { ra.Close(); closer() }}, nil
}

// diffIDReader fails the read that reaches EOF if the layer's uncompressed
// content does not hash to its diff ID.
type diffIDReader struct {
	r     io.Reader // writes what it reads to h
	h     hash.Hash
	want  v1.Hash
	layer int
	close func()
}

func (d *diffIDReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err == io.EOF {
		if got := hex.EncodeToString(d.h.Sum(nil)); got != d.want.Hex {
			return n, fmt.Errorf("layer %d: uncompressed content is sha256:%s but the config's diff_id is %s; the image is corrupt", d.layer, got, d.want)
		}
	} else if err != nil {
		err = fmt.Errorf("layer %d: %w", d.layer, err)
	}
	return n, err
}

func (d *diffIDReader) Close() error { d.close(); return nil }

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
