// Command banger imports OCI container images into flattened root
// filesystems and keeps their download cache in check. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// gcPercent is the GOGC banger runs with unless $GOGC says otherwise. What
// a pull allocates is mostly buffers and tar headers that die within a
// layer: collecting when the heap has grown by half, not doubled, lowers
// the peak memory of a pull (by 7% on the 300 MiB benchmark image, 16% on
// the 1 GiB one), for no CPU that the benchmarks can measure
// (docs/BENCHMARKS.md).
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(runMain())
}

// runMain runs banger as a process: Ctrl-C and SIGTERM cancel the work in
// progress, which cleans up and exits 130.
func runMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args, os.Stdout, os.Stderr)
}
