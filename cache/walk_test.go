package cache

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestInventoryPassesOver checks that listing blobs counts regular files
// with blob names in blobs/sha256 and passes over the rest, without failing:
// a directory or a symlink under a blob's name, a stray name, and anything
// below blobs/sha256 or beside it.
func TestInventoryPassesOver(t *testing.T) {
	c := newTestCache(t, Options{})
	blobA, blobB := content(1, 10), content(2, 300)
	mustFetch(t, c, blobA)
	mustFetch(t, c, blobB)
	blobs := filepath.Join(c.dir, blobsSubdir)
	strays := map[string]func(string) error{
		// A directory at a blob's name, with a file in it: not a blob, not walked.
		hexOf(content(3, 1)): func(p string) error {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(p, hexOf(content(4, 1))), []byte("x"), 0o644)
		},
		// A symlink at a blob's name, pointing at a real blob.
		hexOf(content(5, 1)): func(p string) error { return os.Symlink(hexOf(blobA), p) },
		"README":             func(p string) error { return os.WriteFile(p, []byte("not a blob"), 0o644) },
	}
	for name, create := range strays {
		if err := create(filepath.Join(blobs, name)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(c.dir, "blobs", "sha512", strings.Repeat("a", 128)), []byte("other algorithm"))

	inv, err := c.Inventory(t.Context())
	if err != nil {
		t.Fatalf("Inventory() error = %v", err)
	}
	var got []string
	var size int64
	for _, b := range inv.Blobs {
		got = append(got, b.Digest)
		size += b.Size
	}
	slices.Sort(got)
	want := []string{digestOf(blobA), digestOf(blobB)}
	slices.Sort(want)
	if !slices.Equal(got, want) || size != int64(len(blobA)+len(blobB)) {
		t.Errorf("Inventory() blobs = %v (%d bytes), want %v (%d bytes)", got, size, want, len(blobA)+len(blobB))
	}
}

// TestPruneReportsWhatFailed makes one file of the cache impossible to
// delete (the immutable attribute; root on a filesystem that has it): prune
// must fail naming that file and its error, not the "directory not empty"
// that removing its directory then meets, and must not loop.
func TestPruneReportsWhatFailed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chattr +i")
	}
	c := newTestCache(t, Options{})
	data := content(7, 100)
	mustFetch(t, c, data)
	stuck := filepath.Join(c.dir, blobsSubdir, hexOf(data))
	if out, err := exec.Command("chattr", "+i", stuck).CombinedOutput(); err != nil {
		t.Skipf("chattr +i not available here: %v: %s", err, out)
	}
	var aside string
	t.Cleanup(func() {
		// Let the test's temp dir go, wherever prune left the file.
		for _, p := range []string{stuck, filepath.Join(aside, blobsSubdir, hexOf(data))} {
			exec.Command("chattr", "-i", p).Run()
		}
	})
	rep, err := c.Prune(t.Context(), Policy{}, false)
	if err == nil {
		t.Fatal("Prune() of a cache holding an undeletable file succeeded")
	}
	// One error per item, and the report says the run changed things
	// (the cache was renamed aside) before it failed.
	if len(rep.Errors) != 1 || !rep.Partial {
		t.Errorf("Prune() report = %+v, want one error and Partial", rep)
	}
	if msg := err.Error(); !strings.Contains(msg, hexOf(data)) || !strings.Contains(msg, "operation not permitted") || strings.Contains(msg, "not empty") {
		t.Errorf("Prune() error = %q, want one naming %s and \"operation not permitted\", not \"directory not empty\"", msg, hexOf(data))
	}
	names, _ := c.leftovers()
	if len(names) == 1 {
		aside = filepath.Join(c.parent(), names[0])
	}
}
