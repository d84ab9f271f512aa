package image

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Sentinels callers can branch on with errors.Is, in the style of
// containerd's errdefs. The first three are mistakes in what was asked for;
// the others are refusals of what a source serves. The messages of the
// errors that wrap them say what failed and why; what to type next is left
// to the caller (banger's CLI adds its flags there).
var (
	// ErrInvalidReference: a malformed reference, an unknown transport, a
	// tag or image a source does not hold.
	ErrInvalidReference = errors.New("invalid reference")
	// ErrInvalidPlatform: a platform that is malformed, or that the image
	// does not provide.
	ErrInvalidPlatform = errors.New("invalid platform")
	// ErrInvalidName: an image name (PullOptions.Name, or one a source
	// suggests) that is not reference-like or could be taken for an ID.
	ErrInvalidName = errors.New("invalid image name")

	// ErrUnreachable: the registry could not be spoken to at all (refused
	// connection, unknown host, TLS to a plain-HTTP registry).
	ErrUnreachable = errors.New("registry unreachable")
	// ErrStalled: a registry connection made no progress within
	// PullOptions.StallTimeout. It is not retried.
	ErrStalled = errors.New("no progress")
	// ErrRedirect: a redirect chain longer than maxRedirects, or a redirect
	// to a private address from a public host. It is not retried.
	ErrRedirect = errors.New("redirect refused")
	// ErrTooLarge: a manifest, index, config or layout file larger than its
	// cap, or a descriptor whose size is negative or absurd.
	ErrTooLarge = errors.New("over the size cap")
	// ErrUnsupported: something banger refuses to read (a schemaVersion
	// other than 2, a non-sha256 digest, a layer with foreign URLs, a
	// layout file that is not a regular file).
	ErrUnsupported = errors.New("unsupported")
)

// kindError is an error whose message stays as written while errors.Is
// matches its kind as well as what it wraps.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.err.Error() }
func (e *kindError) Unwrap() error        { return e.err }
func (e *kindError) Is(target error) bool { return target == e.kind }

// errorf formats an error of the given kind.
func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// escapedError reads as the error it wraps with control characters
// escaped: registries and layouts put arbitrary bytes in the messages,
// names and paths that end up in an error.
type escapedError struct{ err error }

func (e *escapedError) Error() string {
	// Multi-line messages (go-containerregistry joins its attempts with
	// newlines) read as one line, as banger prints every failure.
	return Escape(strings.ReplaceAll(e.err.Error(), "\n", "; "))
}
func (e *escapedError) Unwrap() error { return e.err }

func escapeError(err error) error {
	if err == nil {
		return nil
	}
	var e *escapedError
	if errors.As(err, &e) && e == err {
		return err
	}
	return &escapedError{err}
}

// Escape returns s with everything a terminal could act on written as a Go
// escape: control characters (C0, DEL, C1: ESC, BEL, CSI, newlines), bidi
// controls, and bytes that are not UTF-8. Printable text, non-ASCII
// included, is unchanged, and escaping twice changes nothing more. Use it
// on any string from an image, a registry or a layout before printing it.
func Escape(s string) string {
	clean := true
	for _, r := range s {
		if needsEscape(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x100 && needsEscape(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case needsEscape(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(r rune) bool {
	return r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) ||
		r == '\u2028' || r == '\u2029'
}
