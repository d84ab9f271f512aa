package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// tagContent is what banger writes to CACHEDIR.TAG; prune refuses a cache
// whose tag does not start with the signature line.
const tagContent = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by banger.\n# For information about cache directory tags see https://bford.info/cachedir/\n"

// mktree builds identical banger cache trees, ROOT/oci/{CACHEDIR.TAG,
// blobs/sha256/<hex>, tmp/}, one per ROOT, holding n blobs of 1 to 8 KiB
// each whose names are the sha256 of their content. The trees are written
// blob by blob in turn, so that none is laid out on disk much better than
// the others.
func mktree(args []string) error {
	fs := flag.NewFlagSet("mktree", flag.ExitOnError)
	n := fs.Int("n", 1000, "number of blobs")
	seed := fs.Uint64("seed", 1, "PRNG seed; the same seed gives the same tree")
	fs.Parse(args)
	roots := fs.Args()
	if len(roots) == 0 {
		return fmt.Errorf("no ROOT given")
	}
	for _, root := range roots {
		dir := filepath.Join(root, "oci")
		for _, sub := range []string{"blobs/sha256", "tmp"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "CACHEDIR.TAG"), []byte(tagContent), 0o644); err != nil {
			return err
		}
	}
	rng := rand.New(rand.NewPCG(*seed, 0x62616e676572))
	buf := make([]byte, 8<<10)
	for range *n {
		b := buf[:1024+rng.IntN(7<<10)]
		fillRandom(rng, b)
		sum := sha256.Sum256(b)
		name := hex.EncodeToString(sum[:])
		for _, root := range roots {
			if err := os.WriteFile(filepath.Join(root, "oci", "blobs", "sha256", name), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// fillRandom fills b from rng, eight bytes per draw.
func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := i; j < len(b) && j < i+8; j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}
