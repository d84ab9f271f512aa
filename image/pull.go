// Package image pulls container images through banger's blob cache, flattens
// their layers into one root filesystem tar, and keeps the results in an
// image store.
//
// Use Pull to import an image and Store to list, inspect and remove what was
// imported. A flattened image never depends on the blobs that sourced it:
// pruning the cache leaves every image intact.
//
// Errors wrap the sentinels in errors.go (ErrInvalidReference,
// ErrInvalidPlatform, ErrInvalidName for mistakes in what was asked;
// ErrNotFound, ErrUnreachable, ErrStalled, ErrRedirect, ErrTooLarge,
// ErrUnsupported for what went wrong), so that a caller can choose exit
// codes and advice. Print strings from images with Escape.
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
	"slices"
	"sync"
	"sync/atomic"
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
	// Stdin is what docker-archive:- reads; nil means os.Stdin.
	Stdin io.Reader
	// spoolDir is where archives read from Stdin or gzip are spooled:
	// the cache's tmp dir.
	spoolDir string
	// Jobs bounds parallel blob fetches; 0 means DefaultJobs.
	Jobs int
	// Transport replaces the HTTP transport for registry requests.
	Transport http.RoundTripper
	// StallTimeout fails a registry request that makes no progress (no
	// connection, no response headers, no body bytes) for this long, even
	// when ctx has no deadline; 0 means DefaultStallTimeout. A stalled
	// request is not retried.
	StallTimeout time.Duration
	// Progress, if set, is called with the layer bytes done and the total
	// (0 when the source does not say) as they change. It is called from
	// one goroutine at a time.
	Progress func(done, total int64)
	// LayerDone, if set, is called once for each layer blob as soon as it is
	// verified in the cache, from the goroutine that fetched it, so that a
	// log without a terminal can show progress one line per layer.
	LayerDone func(LayerDone)
	// Now is the clock for pulled_at; nil means time.Now.
	Now func() time.Time
}

// LayerDone describes a layer blob that is verified in the cache.
type LayerDone struct {
	Index  int    // 0 is the bottom layer
	Digest string // "sha256:<hex>"
	Size   int64  // bytes of the blob
	Cached bool   // true when the cache had it: no byte was downloaded
}

// Pull imports ref into store s, passing every layer blob through cache c,
// and returns the published image. Pulling a name that exists replaces it
// atomically: readers see the old image or the new one, never a mix.
//
// Every blob is verified against its digest whatever the source, and every
// layer's uncompressed content against the config's diff_ids.
//
// Errors read with control characters escaped (see Escape), since they
// carry what sources say; errors.Is still finds the sentinels they wrap.
func Pull(ctx context.Context, c *cache.Cache, s *Store, ref string, opts PullOptions) (Image, error) {
	img, err := pull(ctx, c, s, ref, opts)
	return img, escapeError(err)
}

func pull(ctx context.Context, c *cache.Cache, s *Store, ref string, opts PullOptions) (Image, error) {
	if opts.Name != "" {
		if err := ValidateName(opts.Name); err != nil {
			return Image{}, err
		}
	}
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
	opts.spoolDir = c.Paths().Tmp
	src, err := resolve(ctx, ref, platform, opts)
	if err != nil {
		return Image{}, err
	}
	defer src.close()
	name := src.name
	if opts.Name != "" {
		name = opts.Name
	} else if err := checkDerivedName(src.name); err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	// A name already holding this manifest is up to date: no blob is
	// requested (not even the config) and nothing is flattened.
	if img, ok, err := upToDate(ctx, s, src, name, opts, platform); err != nil || ok {
		return img, err
	}
	meta, err := readMetadata(ctx, src, ref)
	if err != nil {
		return Image{}, err
	}
	meta.image.Platform = platformString(platform)
	if meta.config.OS != "" {
		has := v1.Platform{OS: meta.config.OS, Architecture: meta.config.Architecture, Variant: meta.config.Variant}
		meta.image.Platform = platformString(has)
		// Like docker, a platform asked of a single-platform image is a
		// requirement, not a preference (an index was already matched).
		if opts.Platform != "" && !src.picked && (has.OS != platform.OS || has.Architecture != platform.Architecture ||
			platform.Variant != "" && has.Variant != platform.Variant) {
			return Image{}, errorf(ErrInvalidPlatform, "%s is a single-platform image for %s, not %s", ref, platformString(has), platformString(platform))
		}
	}
	meta.image.Name = name
	meta.image.Reference = ref
	meta.image.Source = ref
	if src.served != "" {
		meta.image.Source = src.served
	}
	meta.image.PulledAt = opts.Now()
	// The image may be in the store under another name: name it too.
	if img, ok, err := s.Link(ctx, meta.image); err != nil || ok {
		return img, err
	}

	// Flattening reads the layers top-down and starts as soon as the top
	// layer is in the cache, while the layers below are still fetched.
	fetches, err := fetchLayers(ctx, cancel, c, src, meta, opts)
	if err != nil {
		return Image{}, err
	}
	img, addErr := flattenInto(ctx, s, meta, fetches)
	if addErr != nil && ctx.Err() == nil && fetches.settle(ctx) {
		// The flattener read bytes of a download attempt that failed,
		// and a later one succeeded: the bytes may have been what the
		// attempt got wrong. Flatten once more from the verified blobs.
		img, addErr = flattenInto(ctx, s, meta, fetches)
	}
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

// flattenInto writes the image's rootfs into a store stage and commits it.
func flattenInto(ctx context.Context, s *Store, meta *metadata, f *fetches) (Image, error) {
	stage, err := s.Begin(ctx)
	if err != nil {
		return Image{}, err
	}
	defer stage.Abort()
	if err := writeRootfs(ctx, stage.Dir(), f, meta.diffIDs); err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", meta.image.Reference, err)
	}
	return stage.Commit(ctx, meta.image)
}

// upToDate reports whether name already holds the manifest src resolved
// to. A platform asked of a single-platform image must still match what is
// stored (a pull of it would check the config).
func upToDate(ctx context.Context, s *Store, src *source, name string, opts PullOptions, platform v1.Platform) (Image, bool, error) {
	if !src.kind.hasManifest() {
		return Image{}, false, nil
	}
	raw, err := src.img.RawManifest()
	if err != nil {
		return Image{}, false, nil // readMetadata reports it
	}
	digest := v1.Hash{Algorithm: "sha256", Hex: sha256Hex(raw)}
	if src.manifestDigest != (v1.Hash{}) && src.manifestDigest != digest {
		return Image{}, false, nil // readMetadata reports it
	}
	img, ok, err := s.UpToDate(ctx, name, digest.String())
	if err != nil || !ok {
		return Image{}, false, err
	}
	if opts.Platform != "" && !src.picked {
		if has, err := ParsePlatform(img.Platform); err != nil || has.OS != platform.OS || has.Architecture != platform.Architecture ||
			platform.Variant != "" && has.Variant != platform.Variant {
			return Image{}, false, nil
		}
	}
	return img, true, nil
}

type metadata struct {
	image   Image
	config  *v1.ConfigFile
	layers  []v1.Descriptor // as the source's manifest lists them
	diffIDs []v1.Hash
}

// readMetadata reads and checks the manifest and config. Every descriptor
// is checked (digest, size, foreign URLs) before anything it names is read.
func readMetadata(ctx context.Context, src *source, ref string) (*metadata, error) {
	meta := &metadata{}
	var rawConfig []byte
	if !src.kind.hasManifest() {
		var err error
		if rawConfig, err = src.readConfig(ctx, v1.Descriptor{}); err != nil {
			return nil, fmt.Errorf("pull %s: reading image config: %w", ref, err)
		}
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
		if m.SchemaVersion != 2 {
			return nil, errorf(ErrUnsupported, "pull %s: manifest has schemaVersion %d; banger reads only schemaVersion 2", ref, m.SchemaVersion)
		}
		if m.MediaType != "" && !m.MediaType.IsImage() {
			return nil, errorf(ErrUnsupported, "pull %s: unsupported manifest media type %s; banger pulls OCI and Docker v2 images", ref, m.MediaType)
		}
		if !m.Config.MediaType.IsConfig() {
			return nil, errorf(ErrUnsupported, "pull %s: not a container image: config media type is %s (an OCI artifact?)", ref, m.Config.MediaType)
		}
		if err := checkDescriptor("config", m.Config, maxConfigSize); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
		for i, l := range m.Layers {
			if !l.MediaType.IsLayer() {
				return nil, errorf(ErrUnsupported, "pull %s: layer %d has unsupported media type %s", ref, i, l.MediaType)
			}
			if err := checkDescriptor(fmt.Sprintf("layer %d", i), l, maxLayerSize); err != nil {
				return nil, fmt.Errorf("pull %s: %w", ref, err)
			}
			// A foreign (non-distributable) layer names hosts to fetch it
			// from: requests to addresses the manifest chooses. banger
			// fetches only from the source the user named.
			if len(l.URLs) > 0 {
				return nil, errorf(ErrUnsupported, "pull %s: layer %d (%s) is a foreign layer to be fetched from %q; banger fetches layers only from the image's own source", ref, i, l.Digest, l.URLs[0])
			}
		}
		meta.layers = m.Layers
		if rawConfig, err = src.readConfig(ctx, m.Config); err != nil {
			return nil, fmt.Errorf("pull %s: reading image config: %w", ref, err)
		}
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
	if !src.kind.hasManifest() {
		// docker save keeps layers as plain tars named by diff ID: the
		// cache stores exactly those bytes, verified against the config.
		layers, err := src.img.Layers()
		if err != nil {
			return nil, fmt.Errorf("pull %s: listing layers: %w", ref, err)
		}
		meta.layers = make([]v1.Descriptor, len(layers))
		for i := range min(len(layers), len(cfg.RootFS.DiffIDs)) {
			meta.layers[i] = v1.Descriptor{Digest: cfg.RootFS.DiffIDs[i], Size: -1}
		}
	}
	if len(cfg.RootFS.DiffIDs) != len(meta.layers) {
		return nil, fmt.Errorf("pull %s: image has %d layers but its config lists %d diff_ids; the image is malformed", ref, len(meta.layers), len(cfg.RootFS.DiffIDs))
	}
	for i, d := range cfg.RootFS.DiffIDs {
		if d.Algorithm != "sha256" || !isHex64(d.Hex) {
			return nil, errorf(ErrUnsupported, "pull %s: layer %d has diff_id %q: banger reads only sha256 digests", ref, i, d.String())
		}
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
	fillInspect(&meta.image, cfg, meta.layers)
	return meta, nil
}

// fetches are the layer blobs being passed through the cache.
type fetches struct {
	cache *cache.Cache
	blobs []cache.Blob // blobs[i] fetches layer i again, from the cache
	// arrivals[i] lets the flattener read layer i while it downloads.
	arrivals []*cache.Arrivals
	mu       sync.Mutex // guards files and open
	// files[i] is layer i's verified blob, kept open from its fetch until
	// the flattener reads it, so that a prune renaming the cache meanwhile
	// costs nothing. At most maxOpen are kept: an image of 2,000 layers
	// must not hold 2,000 descriptors. Past that, a fetched blob is closed
	// and opened again from the cache when the flattener needs it.
	files   []*os.File
	open    int
	maxOpen int
	errs    []error
	// cause is the first fetch failure that came while the pull was still
	// going: what failed after it failed because of it.
	causeOnce sync.Once
	cause     error
	done      []chan struct{} // done[i] is closed when layer i is fetched or failed
	wg        sync.WaitGroup
	// read[i] is set once the flattener came for layer i (see reading);
	// guarded by mu.
	read []bool
}

// settle waits for the fetches of the layers the flattener read, after a
// failed flatten, and reports whether flattening again could succeed: they
// were all fetched, and one took more than one attempt, so the flattener
// may have read a failed attempt's bytes while following its download. A
// flatten error caused by a download that failed is then reported as that
// download's failure (the pull's caller prefers the fetch error), as it
// would be had flattening waited for verified blobs. Layers only read
// ahead (inflate_ahead.go) do not count: their bytes reached no output.
func (f *fetches) settle(ctx context.Context) bool {
	f.mu.Lock()
	read := slices.Clone(f.read)
	f.mu.Unlock()
	again := false
	for i, ok := range read {
		if !ok {
			continue
		}
		select {
		case <-f.done[i]:
		case <-ctx.Done():
			return false
		}
		if f.errs[i] != nil {
			return false
		}
		again = again || f.arrivals[i].Attempts() > 1
	}
	return again
}

// layer returns a reader of layer i's blob from its first byte, and the
// function that closes it. While the blob downloads, the reader follows
// the download: it returns bytes as they arrive, before they are
// verified, and io.EOF only once the whole blob is (see cache.Arrivals);
// the flattener's output is published only after every layer reached
// io.EOF and matched its diff ID. Otherwise it is the verified blob file.
//
// It may be called again for a layer after the reader was closed (the
// flattener reads the layers below a layer once more to resolve symlinked
// parents): a fetched blob is then opened from the cache again, verified
// again, and fetched again if a prune removed it.
func (f *fetches) layer(ctx context.Context, i int) (io.Reader, func(), error) {
	select {
	case <-f.arrivals[i].Started():
	case <-f.done[i]:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if r, ok := f.arrivals[i].Follow(ctx); ok {
		return r, func() { r.Close() }, nil
	}
	select {
	case <-f.done[i]:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if f.errs[i] != nil {
		return nil, nil, f.errs[i]
	}
	f.mu.Lock()
	file := f.files[i]
	f.files[i] = nil
	f.mu.Unlock()
	release := func() { f.release(file) }
	if file == nil {
		var err error
		if file, err = f.cache.Fetch(ctx, f.blobs[i]); err != nil {
			return nil, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		release = func() { file.Close() }
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		release()
		return nil, nil, err
	}
	return file, release, nil
}

// reading records that the flattener reads layer i, for settle.
func (f *fetches) reading(i int) {
	f.mu.Lock()
	f.read[i] = true
	f.mu.Unlock()
}

// keep holds layer i's freshly fetched blob open for the flattener, or
// closes it when maxOpen are held already.
func (f *fetches) keep(i int, file *os.File) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open >= f.maxOpen {
		file.Close()
		return
	}
	f.files[i] = file
	f.open++
}

// release closes a kept blob file and frees its place.
func (f *fetches) release(file *os.File) {
	file.Close()
	f.mu.Lock()
	f.open--
	f.mu.Unlock()
}

// wait waits for every fetch to end, closes the blob files still kept and
// returns the failure that caused the others, if any.
func (f *fetches) wait() error {
	f.wg.Wait()
	f.mu.Lock()
	for i, file := range f.files {
		if file != nil {
			file.Close()
			f.files[i] = nil
			f.open--
		}
	}
	f.mu.Unlock()
	for _, a := range f.arrivals {
		a.Close()
	}
	if f.cause != nil {
		return f.cause
	}
	return firstError(f.errs)
}

// prefetchWindow is how close to their end the running downloads must be
// before the next layer's starts. Flattening reads one layer after
// another, top-down, as they arrive, so the link is best spent on one
// layer at a time, in that order: downloads that split the link would all
// end late together, and the flattener would meet the layers below only
// then. Starting the next request a little before the current download
// ends hides its round trips; small layers, each under the window, still
// download opts.Jobs at a time.
const prefetchWindow = 4 << 20

// fetchLayers starts passing every layer blob through the cache, top layer
// first because flattening reads it first, and at most opts.Jobs at a time,
// each starting once the running ones are within prefetchWindow of their
// end. At most 2×opts.Jobs verified blobs are kept open for the flattener,
// plus the downloads in flight; the others are opened again from the cache
// when it needs them (see fetches.layer). On the first failure it calls
// cancel, which must end ctx and the context src was resolved with, so
// that the other downloads stop. The caller must call wait on the result.
func fetchLayers(ctx context.Context, cancel context.CancelFunc, c *cache.Cache, src *source, meta *metadata, opts PullOptions) (*fetches, error) {
	n := len(meta.layers)
	var total int64
	for _, l := range meta.layers {
		if l.Size < 0 {
			total = 0 // the source does not say
			break
		}
		total += l.Size
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
		cache:    c,
		blobs:    make([]cache.Blob, n),
		arrivals: make([]*cache.Arrivals, n),
		files:    make([]*os.File, n),
		maxOpen:  2 * opts.Jobs,
		errs:     make([]error, n),
		done:     make([]chan struct{}, n),
		read:     make([]bool, n),
	}
	for i := range n {
		f.done[i] = make(chan struct{})
		f.arrivals[i] = cache.NewArrivals()
	}
	fetch := func(i int, left func(int64)) {
		defer close(f.done[i])
		if err := ctx.Err(); err != nil {
			f.errs[i] = err
			return
		}
		d := meta.layers[i]
		// Fetch calls Open only on a miss: that tells a cached layer
		// from a downloaded one.
		var downloaded atomic.Bool
		b := cache.Blob{
			Digest: d.Digest.String(),
			Size:   d.Size,
			Source: Escape(meta.image.Reference),
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				downloaded.Store(true)
				return src.openBlob(ctx, d)
			},
			Retryable: src.kind.retryable,
		}
		again := b // opening it again reports no progress: the bytes were counted
		f.blobs[i] = again
		b.Progress = func(n int64) {
			progress(n)
			left(n)
		}
		b.Arrivals = f.arrivals[i]
		file, err := c.Fetch(ctx, b)
		if err == nil && opts.LayerDone != nil {
			size := d.Size
			if fi, serr := file.Stat(); serr == nil {
				size = fi.Size()
			}
			opts.LayerDone(LayerDone{Index: i, Digest: b.Digest, Size: size, Cached: !downloaded.Load()})
		}
		if err != nil {
			f.errs[i] = fmt.Errorf("layer %d: %w", i, err)
			if ctx.Err() == nil {
				f.causeOnce.Do(func() { f.cause = f.errs[i] })
			}
			cancel() // one failed layer fails the pull: stop the others
			return
		}
		f.keep(i, file)
	}

	// Fetching never waits for the flattener: a download-bound pull keeps
	// the link busy, and the flattener can always get any layer it asks
	// for, in any order, without a deadlock.
	var (
		smu     sync.Mutex
		changed = sync.NewCond(&smu)
		running int
		ahead   int64 // bytes the running downloads still expect
	)
	f.wg.Go(func() {
		for i := n - 1; i >= 0; i-- {
			expect := meta.layers[i].Size
			if expect < 0 {
				expect = prefetchWindow + 1 // unknown: as if large
			}
			smu.Lock()
			for running >= opts.Jobs || running > 0 && ahead > prefetchWindow {
				changed.Wait()
			}
			running++
			ahead += expect
			smu.Unlock()
			f.wg.Go(func() {
				var got, counted int64 // counted: got, within [0, expect]
				fetch(i, func(n int64) {
					smu.Lock()
					got += n
					now := min(max(got, 0), expect)
					ahead -= now - counted
					counted = now
					changed.Broadcast()
					smu.Unlock()
				})
				smu.Lock()
				running--
				ahead -= expect - counted
				changed.Broadcast()
				smu.Unlock()
			})
		}
	})
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
// client error such as 401 or 404 will not, nor a refusal of banger's own
// (a stall, a redirect loop, a cap): a server that stalled once is not
// waited on again.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrStalled) || errors.Is(err, ErrRedirect) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnsupported) {
		return false
	}
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode >= 400 && terr.StatusCode < 500 &&
		terr.StatusCode != http.StatusRequestTimeout && terr.StatusCode != http.StatusTooManyRequests {
		return false
	}
	return true
}

// layerBlobs is where writeRootfs gets the layers' blobs.
type layerBlobs interface {
	// layer waits for layer i's blob and returns a reader of it from its
	// first byte, with the function that closes it.
	layer(ctx context.Context, i int) (io.Reader, func(), error)
	// reading is told that the flattener comes for layer i: what it reads
	// of a blob opened ahead of it counts from then on.
	reading(i int)
}

// writeRootfs flattens the layers into dir/rootfs.tar.
func writeRootfs(ctx context.Context, dir string, blobs layerBlobs, diffIDs []v1.Hash) error {
	out, err := os.OpenFile(filepath.Join(dir, rootfsName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return err
	}
	defer out.Close()
	w := newFileOutput(out)
	ahead := newInflateAhead(ctx, dir, blobs, diffIDs)
	defer ahead.close()
	layers := make([]flattenLayer, len(diffIDs))
	for i := range layers {
		layers[i] = flattenLayer{open: func() (io.ReadCloser, error) { return ahead.open(i) }}
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
// archives do not always get right. With spill set, the stream is read
// into it until its reader comes (see newSpill).
func uncompress(r io.Reader, i int, diffID v1.Hash, spill *spill) (io.ReadCloser, error) {
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
	ra := newReadAhead(stream, h, spill)
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

// releasingReader closes the layer's blob file when the flattener is done
// with it, so that the next fetch can open one.
type releasingReader struct {
	io.ReadCloser
	release func()
}

func (r *releasingReader) Close() error {
	err := r.ReadCloser.Close()
	r.release()
	return err
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
