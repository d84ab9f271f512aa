package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/banger/banger/cache"
	"github.com/banger/banger/image"
)

// hint returns what the user can do about err, naming banger's flags and
// commands. The packages return errors that say what failed and why; the
// advice that names the CLI is written here, once, so that cache and image
// can be used without it.
func hint(err error) string {
	switch {
	// cache
	case errors.As(err, new(*cache.LockBusyError)):
		var busy *cache.LockBusyError
		errors.As(err, &busy)
		if busy.NoWait {
			return "drop --no-wait to wait for it"
		}
		return "raise --wait to wait longer"
	case errors.Is(err, cache.ErrNestedCache):
		return "point --cache-dir (or $BANGER_CACHE_DIR) at the cache root, the directory that holds oci/"
	case errors.Is(err, cache.ErrNotCache), errors.Is(err, cache.ErrNotDir):
		return "move it away or choose another --cache-dir"
	case errors.Is(err, cache.ErrSymlink):
		return "point --cache-dir at the real location instead"
	case errors.Is(err, cache.ErrForeignLock):
		return "remove that file (banger recreates it) or use your own --cache-dir"
	case errors.Is(err, cache.ErrDamaged):
		return "run `banger image cache prune` to start afresh"
	// end of cache
	// registries (issue 14)
	case errors.As(err, new(*image.CertificateError)):
		var cerr *image.CertificateError
		errors.As(err, &cerr)
		return fmt.Sprintf("trust the registry's CA: put it in /etc/containers/certs.d/%s/ca.crt (or ~/.config/containers/certs.d/%s/), or pass --cert-dir DIR with DIR/ca.crt; --tls-verify=false skips verification altogether", cerr.Host, cerr.Host)
	case errors.Is(err, image.ErrBlocked):
		return "remove blocked = true from that table, or pull from a registry it does not cover"
	// end of registries
	case errors.Is(err, fs.ErrPermission):
		return "it belongs to another user: run banger as its owner (root for /var/cache/banger and /var/lib/banger), or choose your own with --cache-dir/--data-dir"
	// image: keep these cases together, at the bottom.
	case errors.Is(err, image.ErrNoPruneFilter):
		return "pick --older-than, --max-size or --all (try --dry-run first)"
	case errors.Is(err, image.ErrHasNames):
		return "remove the names one by one, or add --force to remove the image with all of them"
	case errors.Is(err, image.ErrAmbiguous):
		return "run `banger image ls` to see the IDs"
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
