package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// newTestCache returns a cache laid out as banger lays it out, <root>/oci
// with the lock <root>/oci.lock, under a root that does not exist yet. Its
// retry backoff is shortened so that retries cost no noticeable time.
func newTestCache(t *testing.T, opts Options) *Cache {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	c := New(filepath.Join(root, "oci"), filepath.Join(root, "oci.lock"), opts)
	c.backoff = time.Millisecond
	return c
}

// initCache creates c's directory the way a first pull does.
func initCache(t *testing.T, c *Cache) {
	t.Helper()
	if err := c.withDir(t.Context(), shared, func(*os.Root) error { return nil }); err != nil {
		t.Fatalf("creating cache: %v", err)
	}
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func hexOf(data []byte) string { return strings.TrimPrefix(digestOf(data), "sha256:") }

// blobOf describes data as served by an in-memory source; opens, if not nil,
// counts the calls to Open.
func blobOf(data []byte, opens *atomic.Int32) Blob {
	return Blob{
		Digest: digestOf(data),
		Size:   int64(len(data)),
		Source: "test-source",
		Open: func(context.Context) (io.ReadCloser, error) {
			if opens != nil {
				opens.Add(1)
			}
			return io.NopCloser(bytes.NewReader(data)), nil
		},
	}
}

// content returns n deterministic bytes that differ by seed.
func content(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// readFetched checks that f is at offset 0 and returns its content,
// closing it.
func readFetched(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	if off, err := f.Seek(0, io.SeekCurrent); err != nil || off != 0 {
		t.Errorf("Fetch returned a file at offset %d (err %v), want 0", off, err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading fetched blob: %v", err)
	}
	return data
}

// mustFetch fetches data through c and checks what it gets.
func mustFetch(t *testing.T, c *Cache, data []byte) {
	t.Helper()
	f, err := c.Fetch(t.Context(), blobOf(data, nil))
	if err != nil {
		t.Fatalf("Fetch(%s) error: %v", digestOf(data), err)
	}
	if got := readFetched(t, f); !bytes.Equal(got, data) {
		t.Fatalf("Fetch(%s) = %d bytes, want the %d bytes served", digestOf(data), len(got), len(data))
	}
}

func blobPath(c *Cache, data []byte) string {
	return filepath.Join(c.dir, blobsSubdir, hexOf(data))
}

// names lists dir, sorted; nil if dir does not exist.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// node is what snapshot records of one directory entry.
type node struct {
	Mode  fs.FileMode
	MTime time.Time
	Data  string // a file's content or a symlink's target
}

// snapshot records every entry under dir without following symlinks; an
// absent dir records as empty. Entries named in skip (relative paths) are
// left out.
func snapshot(t *testing.T, dir string, skip ...string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return filepath.SkipAll
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if slices.Contains(skip, rel) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n := node{Mode: info.Mode(), MTime: info.ModTime()}
		switch {
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Data = string(b)
		case info.Mode()&fs.ModeSymlink != 0:
			n.Data, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case info.IsDir():
			n.MTime = time.Time{} // listing a directory is no change
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", dir, err)
	}
	return out
}

func checkSame(t *testing.T, what string, before, after map[string]node) {
	t.Helper()
	if reflect.DeepEqual(before, after) {
		return
	}
	for k, v := range before {
		if w, ok := after[k]; !ok {
			t.Errorf("%s: %s disappeared", what, k)
		} else if v != w {
			t.Errorf("%s: %s changed from %+v to %+v", what, k, v, w)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s: %s appeared", what, k)
		}
	}
}

// checkEmptyCache checks that c's directory is a complete, empty cache.
func checkEmptyCache(t *testing.T, c *Cache) {
	t.Helper()
	if got, want := names(t, c.dir), []string{tagName, "blobs", tmpSubdir}; !slices.Equal(got, want) {
		t.Errorf("cache dir holds %q, want %q", got, want)
	}
	tag, err := os.ReadFile(filepath.Join(c.dir, tagName))
	if err != nil || !strings.HasPrefix(string(tag), tagSignature) {
		t.Errorf("CACHEDIR.TAG = %q (err %v), want it to start with %q", tag, err, tagSignature)
	}
	if got := names(t, filepath.Join(c.dir, "blobs")); !slices.Equal(got, []string{"sha256"}) {
		t.Errorf("blobs/ holds %q, want [sha256]", got)
	}
	for _, sub := range []string{blobsSubdir, tmpSubdir} {
		info, err := os.Lstat(filepath.Join(c.dir, sub))
		if err != nil || !info.IsDir() {
			t.Errorf("%s: %v, want a directory", sub, err)
		} else if got := names(t, filepath.Join(c.dir, sub)); len(got) != 0 {
			t.Errorf("%s holds %q, want it empty", sub, got)
		}
	}
}

// checkNoLeftovers checks that no aside or staging directory is left beside
// the cache.
func checkNoLeftovers(t *testing.T, c *Cache) {
	t.Helper()
	for _, name := range names(t, c.parent()) {
		if leftoverName(name) {
			t.Errorf("%s left in %s", name, c.parent())
		}
	}
}

// TestNewRetryBackoff: Options.RetryBackoff replaces the first pause
// between attempts, and 0 keeps the default.
func TestNewRetryBackoff(t *testing.T) {
	tests := []struct {
		name      string
		opt, want time.Duration
	}{
		{"zero: the default", 0, DefaultRetryBackoff},
		{"set", time.Millisecond, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := New("oci", "oci.lock", Options{RetryBackoff: tt.opt}).backoff; got != tt.want {
				t.Errorf("New(Options{RetryBackoff: %v}).backoff = %v, want %v", tt.opt, got, tt.want)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	good := strings.Repeat("0123456789abcdef", 4)
	tests := []struct {
		name    string
		digest  string
		want    string
		wantErr string
	}{
		{name: "valid", digest: "sha256:" + good, want: good},
		{name: "empty", digest: "", wantErr: "unsupported"},
		{name: "no algorithm", digest: good, wantErr: "unsupported"},
		{name: "sha512", digest: "sha512:" + good + good, wantErr: "only sha256"},
		{name: "upper-case algorithm", digest: "SHA256:" + good, wantErr: "unsupported"},
		{name: "empty hex", digest: "sha256:", wantErr: "malformed"},
		{name: "short", digest: "sha256:" + good[1:], wantErr: "malformed"},
		{name: "long", digest: "sha256:" + good + "0", wantErr: "malformed"},
		{name: "upper-case hex", digest: "sha256:" + strings.ToUpper(good), wantErr: "malformed"},
		{name: "path traversal", digest: "sha256:../../../../etc/passwd" + good[28:], wantErr: "malformed"},
		{name: "slash", digest: "sha256:" + good[:63] + "/", wantErr: "malformed"},
		{name: "trailing newline", digest: "sha256:" + good + "\n", wantErr: "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDigest(tt.digest)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("parseDigest(%q) = %q, %v, want error containing %q", tt.digest, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseDigest(%q) = %q, %v, want %q", tt.digest, got, err, tt.want)
			}
		})
	}
}

func TestLeftoverName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{asidePrefix + randomSuffix(), true},
		{creatingPrefix + randomSuffix(), true},
		{asidePrefix + "0123456789abcdef", true},
		{asidePrefix, false},
		{asidePrefix + "0123456789abcde", false},
		{asidePrefix + "0123456789abcdef0", false},
		{asidePrefix + "0123456789ABCDEF", false},
		{asidePrefix + "notbangers-files", false},
		{creatingPrefix + "0123456789abcdeg", false},
		{"oci", false},
		{"pruning-0123456789abcdef", false},
		{".pruning0123456789abcdef", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := leftoverName(tt.name); got != tt.want {
				t.Errorf("leftoverName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

// TestCreateConcurrent starts many pulls on a cache that does not exist:
// each may build a staging copy, one wins the rename, and the losers must
// not leave theirs behind.
func TestCreateConcurrent(t *testing.T) {
	tests := []struct {
		name  string
		pulls int
	}{
		{"one", 1},
		{"two", 2},
		{"sixteen", 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range tt.pulls {
				wg.Go(func() {
					<-start
					data := content(byte(i), 100+i)
					f, err := c.Fetch(t.Context(), blobOf(data, nil))
					if err != nil {
						t.Errorf("Fetch #%d error: %v", i, err)
						return
					}
					f.Close()
				})
			}
			close(start)
			wg.Wait()
			if got, want := names(t, c.parent()), []string{"oci", "oci.lock", "oci.lock.gate"}; !slices.Equal(got, want) {
				t.Errorf("cache root holds %q, want %q", got, want)
			}
			if got := len(names(t, filepath.Join(c.dir, blobsSubdir))); got != tt.pulls {
				t.Errorf("%d blobs published, want %d", got, tt.pulls)
			}
		})
	}
}

// TestPermissions checks the modes banger gives what it creates under the
// usual umask (issue 11 §1): private to the owner, unless the admin made the
// cache root group-owned and setgid, when everything takes the root's group
// and mode, never more. It changes the umask, a process-wide setting: safe
// because no test in this package runs in parallel.
func TestPermissions(t *testing.T) {
	// The umask is the process's: safe only because no test in this
	// package calls t.Parallel.
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })
	group := os.Getgid()
	if os.Geteuid() == 0 {
		group = 65534 // a group root is not in: what setgid gives is visible
	}

	ops := []struct {
		name string
		run  func(t *testing.T, c *Cache)
	}{
		{"after fetch", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 1000))
		}},
		{"after prune", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 1000))
			if _, err := pruneAll(t.Context(), c, false); err != nil {
				t.Fatal(err)
			}
			mustFetch(t, c, content(2, 1000))
		}},
		{"after eviction", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 1000))
			if _, err := c.Prune(t.Context(), Policy{HasMaxSize: true, MaxSize: 0}, false); err != nil {
				t.Fatal(err)
			}
		}},
		{"after inventory", func(t *testing.T, c *Cache) {
			mustFetch(t, c, content(1, 1000))
			os.Remove(c.lockPath)
			os.Remove(c.gatePath())
			if _, err := c.Inventory(t.Context()); err != nil {
				t.Fatal(err)
			}
		}},
	}
	roots := []struct {
		name string
		// mode, if set, is given to the cache root before the first use.
		mode           fs.FileMode
		wantDir        fs.FileMode
		wantFile       fs.FileMode
		wantGroupOfAll bool
	}{
		{name: "private", wantDir: fs.ModeDir | 0o700, wantFile: 0o600},
		{name: "group-shared setgid root", mode: fs.ModeSetgid | 0o770, wantDir: fs.ModeDir | fs.ModeSetgid | 0o770, wantFile: 0o660, wantGroupOfAll: true},
		{name: "group-readable setgid root", mode: fs.ModeSetgid | 0o750, wantDir: fs.ModeDir | fs.ModeSetgid | 0o750, wantFile: 0o640, wantGroupOfAll: true},
	}
	for _, root := range roots {
		for _, op := range ops {
			t.Run(root.name+"/"+op.name, func(t *testing.T) {
				c := newTestCache(t, Options{})
				if root.mode != 0 {
					if err := os.Mkdir(c.parent(), 0o700); err != nil {
						t.Fatal(err)
					}
					if err := os.Chown(c.parent(), -1, group); err != nil {
						t.Fatal(err)
					}
					if err := os.Chmod(c.parent(), root.mode); err != nil {
						t.Fatal(err)
					}
				}
				op.run(t, c)
				n := 0
				err := filepath.WalkDir(c.parent(), func(p string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					info, err := d.Info()
					if err != nil {
						return err
					}
					want := root.wantFile
					if d.IsDir() {
						want = root.wantDir
					}
					if info.Mode() != want {
						t.Errorf("%s has mode %v, want %v", p, info.Mode(), want)
					}
					if gid := int(info.Sys().(*syscall.Stat_t).Gid); root.wantGroupOfAll && gid != group {
						t.Errorf("%s has group %d, want the root's group %d", p, gid, group)
					}
					n++
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if n < 8 { // root, lock, gate, oci, tag, blobs, sha256, tmp
					t.Errorf("walked %d entries, want at least 8", n)
				}
			})
		}
	}
}

// TestPruneKeepsCacheDirMode checks B4 of issue 9: a full prune recreates
// the cache directory with the mode, owner and group the old one had.
func TestPruneKeepsCacheDirMode(t *testing.T) {
	tests := []struct {
		name  string
		mode  fs.FileMode
		owner int // -1: leave it
	}{
		{"hand-set 0750", 0o750, -1},
		{"setgid 02770", fs.ModeSetgid | 0o770, -1},
		{"old world-readable 0755", 0o755, -1},
		{"owned by another user (root only)", 0o700, 65534},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.owner >= 0 && os.Geteuid() != 0 {
				t.Skip("only root can give a directory away")
			}
			c := newTestCache(t, Options{})
			mustFetch(t, c, content(1, 100))
			if tt.owner >= 0 {
				if err := os.Chown(c.dir, tt.owner, tt.owner); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(c.dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			before, err := os.Stat(c.dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pruneAll(t.Context(), c, false); err != nil {
				t.Fatal(err)
			}
			after, err := os.Stat(c.dir)
			if err != nil {
				t.Fatal(err)
			}
			if os.SameFile(before, after) {
				t.Fatal("prune did not replace the cache directory")
			}
			if after.Mode() != before.Mode() {
				t.Errorf("cache dir mode after prune = %v, want %v", after.Mode(), before.Mode())
			}
			bst, ast := before.Sys().(*syscall.Stat_t), after.Sys().(*syscall.Stat_t)
			if ast.Uid != bst.Uid || ast.Gid != bst.Gid {
				t.Errorf("cache dir owner after prune = %d:%d, want %d:%d", ast.Uid, ast.Gid, bst.Uid, bst.Gid)
			}
		})
	}
}

// TestRepairsMissingSubdirs checks that a tagged cache whose blobs or tmp
// directory was removed by hand still works.
func TestRepairsMissingSubdirs(t *testing.T) {
	tests := []struct {
		name   string
		remove string
	}{
		{"no blobs", "blobs"},
		{"no blobs/sha256", blobsSubdir},
		{"no tmp", tmpSubdir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{})
			initCache(t, c)
			if err := os.RemoveAll(filepath.Join(c.dir, tt.remove)); err != nil {
				t.Fatal(err)
			}
			data := content(3, 500)
			mustFetch(t, c, data)
			if _, err := os.Stat(blobPath(c, data)); err != nil {
				t.Errorf("blob not published: %v", err)
			}
		})
	}
}

// pruneAll empties c through Prune's zero Policy and returns what it freed.
func pruneAll(ctx context.Context, c *Cache, dryRun bool) (Tally, error) {
	rep, err := c.Prune(ctx, Policy{}, dryRun)
	return rep.Freed, err
}

// usageOf measures c as a full dry run does.
func usageOf(ctx context.Context, c *Cache) (Tally, error) {
	t, errs := c.usage(ctx)
	return t, errors.Join(errs...)
}
