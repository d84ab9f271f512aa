// Command benchtool builds the fixtures that docs/bench.sh measures banger
// against: cache trees of many small blobs, deterministic OCI images, a
// registry on 127.0.0.1 that counts the blob bytes it serves, and a proxy
// that puts an emulated network link (shared bandwidth, a round trip per
// connection) in front of a loopback registry. It is not part
// of banger; it lives under testdata/ so that `go test ./...` and
// `go vet ./...` leave it alone, and runs with `go run ./testdata/benchtool`.
//
// Usage:
//
//	benchtool mktree -n N [-seed S] ROOT...
//	benchtool mkimage -size SIZE [-layers 5] [-seed S] [-tag T] DIR
//	benchtool mkfiles -n N [-tag T] DIR
//	benchtool blobbytes -tag T DIR
//	benchtool push -tag T DIR REF
//	benchtool layers -tag T DIR
//	benchtool serve [-addr 127.0.0.1:0] [-addr-file F] -dir DIR
//	benchtool stats [-reset] -tag T URL DIR
//	benchtool link [-rate 400Mbit] [-rtt 5ms] [-addr-file F] -upstream HOST:PORT
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func(args []string) error{
		"mktree":    mktree,
		"mkimage":   mkimage,
		"mkfiles":   mkfiles,
		"blobbytes": blobBytes,
		"push":      push,
		"layers":    layers,
		"serve":     serve,
		"stats":     stats,
		"link":      link,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchtool mktree|mkimage|mkfiles|blobbytes|push|layers|serve|stats|link ...; see the package doc in testdata/benchtool/main.go")
	os.Exit(2)
}

// parseSize reads 300m, 1g, 64k or a plain byte count (binary units).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q: want e.g. 300m, 1g or a byte count", s)
	}
	return n * mult, nil
}
