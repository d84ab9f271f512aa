package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// serve runs go-containerregistry's registry on a loopback address, with
// blobs on disk under -dir, and counts every blob GET: GET /_stats returns
// {"requests":N,"blob_gets":{digest:N},"blob_bytes":{digest:N}} and
// GET /_stats?reset=1 returns the counts and zeroes them.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "loopback address to listen on")
	addrFile := fs.String("addr-file", "", "write the address listened on (host:port) to this file once serving")
	dir := fs.String("dir", "", "directory for blobs (required)")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("-dir is required")
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if ip := l.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		return fmt.Errorf("refusing to listen on %s: benchtool serves on loopback only", l.Addr())
	}
	st := &counts{}
	st.reset()
	reg := registry.New(
		registry.Logger(log.New(io.Discard, "", 0)),
		registry.WithBlobHandler(&diskBlobs{dir: *dir}),
	)
	srv := &http.Server{Handler: st.handler(reg)}
	if *addrFile != "" {
		if err := writeAddrFile(*addrFile, l.Addr().String()); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type counts struct {
	mu        sync.Mutex
	Requests  int              `json:"requests"`
	BlobGets  map[string]int   `json:"blob_gets"`
	BlobBytes map[string]int64 `json:"blob_bytes"`
}

func (s *counts) reset() {
	s.Requests, s.BlobGets, s.BlobBytes = 0, map[string]int{}, map[string]int64{}
}

func (s *counts) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_stats" {
			s.mu.Lock()
			b, err := json.Marshal(s)
			if r.URL.Query().Has("reset") {
				s.reset()
			}
			s.mu.Unlock()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(b)
			return
		}
		s.mu.Lock()
		s.Requests++
		s.mu.Unlock()
		_, digest, isBlob := strings.Cut(r.URL.Path, "/blobs/")
		if r.Method != http.MethodGet || !isBlob || !strings.HasPrefix(digest, "sha256:") {
			next.ServeHTTP(w, r)
			return
		}
		cw := &countingResponse{ResponseWriter: w}
		next.ServeHTTP(cw, r)
		s.mu.Lock()
		s.BlobGets[digest]++
		s.BlobBytes[digest] += cw.n
		s.mu.Unlock()
	})
}

type countingResponse struct {
	http.ResponseWriter
	n int64
}

func (c *countingResponse) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// diskBlobs keeps blobs in files named by digest. Unlike
// registry.NewDiskBlobHandler it does not hash a blob on every HEAD and GET:
// the registry verifies uploads, and this one serves only the benchmark.
type diskBlobs struct{ dir string }

func (d *diskBlobs) path(h v1.Hash) string { return filepath.Join(d.dir, h.Algorithm, h.Hex) }

func (d *diskBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	info, err := os.Stat(d.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, registry.ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

func (d *diskBlobs) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	f, err := os.Open(d.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, registry.ErrNotFound
	}
	return f, err
}

func (d *diskBlobs) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	if err := os.MkdirAll(filepath.Join(d.dir, h.Algorithm), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Join(d.dir, h.Algorithm), ".upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	// The registry's reader fails at EOF if the content does not match h.
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), d.path(h))
}

// stats prints, for the image tagged -tag in the layout DIR, how many GETs
// of its layer blobs the registry at URL served and how many bytes they
// carried, as "layer_gets=N layer_bytes=N requests=N"; -reset zeroes the
// counts afterwards. Without DIR it only prints the request count.
func stats(args []string) error {
	fs := flag.NewFlagSet("stats", flag.ExitOnError)
	tag := fs.String("tag", "latest", "tag in the layout's index.json")
	reset := fs.Bool("reset", false, "zero the counts after reading them")
	fs.Parse(args)
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return fmt.Errorf("want URL [DIR]")
	}
	u := strings.TrimSuffix(fs.Arg(0), "/") + "/_stats"
	if *reset {
		u += "?reset=1"
	}
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st counts
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("reading %s: %w", u, err)
	}
	var gets int
	var bytes int64
	if fs.NArg() == 2 {
		digests, err := layerDigests(fs.Arg(1), *tag)
		if err != nil {
			return err
		}
		for _, d := range digests {
			gets += st.BlobGets[d.String()]
			bytes += st.BlobBytes[d.String()]
		}
	}
	fmt.Printf("layer_gets=%d layer_bytes=%d requests=%d\n", gets, bytes, st.Requests)
	return nil
}
