package main

import (
	"errors"
	"io/fs"
)

// hint returns what the user can do about err, naming banger's flags and
// commands. The packages return errors that say what failed and why; the
// advice that names the CLI is written here, once, so that cache and image
// can be used without it.
func hint(err error) string {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "it belongs to another user: run banger as its owner (root for /var/cache/banger and /var/lib/banger), or choose your own with --cache-dir/--data-dir"
	}
	return ""
}
