package main

import (
	"context"
	"errors"
	"io/fs"

	"github.com/banger/banger/image"
)

// hint returns what the user can do about err, naming banger's flags and
// commands. The packages return errors that say what failed and why; the
// advice that names the CLI is written here, once, so that cache and image
// can be used without it.
func hint(err error) string {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "it belongs to another user: run banger as its owner (root for /var/cache/banger and /var/lib/banger), or choose your own with --cache-dir/--data-dir"
	// image: keep these cases together, at the bottom.
	case errors.Is(err, image.ErrNotFound):
		return "run `banger image ls` to see the images there are"
	case errors.Is(err, image.ErrInvalidPlatform):
		return "choose one with --platform OS/ARCH[/VARIANT]"
	case errors.Is(err, image.ErrInvalidName):
		return "choose another with --name"
	case errors.Is(err, image.ErrUnreachable) && !errors.Is(err, context.DeadlineExceeded):
		// A deadline has the --timeout hint already, and plain HTTP is
		// not what a slow registry needs.
		return "use --insecure for a plain-HTTP registry other than localhost"
	}
	return ""
}
