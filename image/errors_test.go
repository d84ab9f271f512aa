package image

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestEscape(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"alpine:3.20", "alpine:3.20"},
		{"héllo wörld ✓", "héllo wörld ✓"},
		{"\x1b]0;owned\x07\x1b[2J", `\x1b]0;owned\x07\x1b[2J`},
		{"a\nb\tc\rd", `a\nb\tc\rd`},
		{"\u009b31m", `\x9b31m`},           // C1 CSI
		{"\x7f", `\x7f`},                   // DEL
		{"abc\u202edcba", `abc\u202edcba`}, // bidi override
		{"bad \xff\xfe utf-8", `bad \xff\xfe utf-8`},
		{`already \x1b escaped`, `already \x1b escaped`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := Escape(tt.in); got != tt.want {
				t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := Escape(Escape(tt.in)); got != tt.want {
				t.Errorf("Escape(Escape(%q)) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestErrorKinds(t *testing.T) {
	base := errors.New("root cause")
	err := fmt.Errorf("pull x: %w", errorf(ErrTooLarge, "config: %w", base))
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, base) || errors.Is(err, ErrStalled) {
		t.Errorf("errors.Is on %v: want ErrTooLarge and the cause, not ErrStalled", err)
	}
	if err.Error() != "pull x: config: root cause" {
		t.Errorf("message = %q, want it as written", err)
	}
	esc := escapeError(errorf(ErrInvalidName, "name %s", "\x1b[2J"))
	if !errors.Is(esc, ErrInvalidName) || esc.Error() != `name \x1b[2J` {
		t.Errorf("escapeError = %q (Is ErrInvalidName %v), want the kind kept and the message escaped", esc, errors.Is(esc, ErrInvalidName))
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"x", true},
		{"alpine:3.20", true},
		{"127.0.0.1:5000/tools/x:1.2", true},
		{"repo@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", true},
		{"my_app-2+build", true},
		{"cafe", true},               // hex, but too short to be an ID
		{"0123456789abcdef:1", true}, // a tag makes it a name
		{"", false},
		{"0123456789abcdef", false}, // an image ID
		{"0123456789ab", false},     // a short ID
		{"a b", false},
		{"a\x1bb", false},
		{"x/../y", false},
		{"../x", false},
		{"x/..", false},
		{"/x", false},
		{"x//y", false},
		{"-x", false},
		{".x", false},
		{"é", false},
		{string(make([]byte, 256)), false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			err := ValidateName(tt.name)
			if (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrInvalidName) {
				t.Errorf("ValidateName(%q) = %v, want ok %v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestCheckDescriptor(t *testing.T) {
	const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		digest  string
		size    int64
		wantErr error
	}{
		{"ok", "sha256:" + hex64, 10, nil},
		{"at the cap", "sha256:" + hex64, 100, nil},
		{"over the cap", "sha256:" + hex64, 101, ErrTooLarge},
		{"negative", "sha256:" + hex64, -1, ErrTooLarge},
		{"sha512", "sha512:" + hex64 + hex64, 10, ErrUnsupported},
		{"upper case", "sha256:" + "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", 10, ErrUnsupported},
		{"short", "sha256:0123", 10, ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alg, hex, _ := strings.Cut(tt.digest, ":")
			desc := v1.Descriptor{Digest: v1.Hash{Algorithm: alg, Hex: hex}, Size: tt.size}
			err := checkDescriptor("config", desc, 100)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("checkDescriptor(%s, %d) = %v, want %v", tt.digest, tt.size, err, tt.wantErr)
			}
		})
	}
}
