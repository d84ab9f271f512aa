// Command banger imports OCI container images into flattened root
// filesystems and keeps their download cache in check. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(runMain())
}

// runMain runs banger as a process: Ctrl-C and SIGTERM cancel the work in
// progress, which cleans up and exits 130.
func runMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args, os.Stdout, os.Stderr)
}
