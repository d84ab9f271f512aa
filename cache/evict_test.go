package cache

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSortByUse checks the order du -v lists and eviction follows: most
// recently used first, ties broken by digest, including digests that share
// their first 16 hex digits (the integer key) and differ later.
func TestSortByUse(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := func(prefix string, last byte) string {
		return "sha256:" + prefix + strings.Repeat("0", 63-len(prefix)) + string(last)
	}
	tests := []struct {
		name string
		in   []BlobInfo
		want []string // digests in order
	}{
		{name: "empty"},
		{name: "by time", in: []BlobInfo{
			{Digest: d("a", '0'), LastUse: t0},
			{Digest: d("b", '0'), LastUse: t0.Add(time.Hour)},
			{Digest: d("c", '0'), LastUse: t0.Add(-time.Nanosecond)},
		}, want: []string{d("b", '0'), d("a", '0'), d("c", '0')}},
		{name: "ties by digest", in: []BlobInfo{
			{Digest: d("f", '0'), LastUse: t0},
			{Digest: d("0", '0'), LastUse: t0},
			{Digest: d("8", '0'), LastUse: t0},
		}, want: []string{d("0", '0'), d("8", '0'), d("f", '0')}},
		{name: "ties past the first 16 digits", in: []BlobInfo{
			{Digest: d("0123456789abcdef", 'e'), LastUse: t0},
			{Digest: d("0123456789abcdef", '1'), LastUse: t0},
			{Digest: d("0123456789abcdee", 'f'), LastUse: t0},
		}, want: []string{d("0123456789abcdee", 'f'), d("0123456789abcdef", '1'), d("0123456789abcdef", 'e')}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			var got []string
			for _, b := range sortByUse(in) {
				got = append(got, b.Digest)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("sortByUse order =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if !slices.Equal(in, tt.in) {
				t.Error("sortByUse changed its input")
			}
		})
	}
	// Many ties: the result is sorted whatever the input order.
	var many []BlobInfo
	for i := range 1000 {
		many = append(many, BlobInfo{Digest: fmt.Sprintf("sha256:%064x", (i*7919)%1000), LastUse: t0.Add(time.Duration(i%3) * time.Second)})
	}
	got := sortByUse(many)
	if !slices.IsSortedFunc(got, func(a, b BlobInfo) int {
		if c := b.LastUse.Compare(a.LastUse); c != 0 {
			return c
		}
		return strings.Compare(a.Digest, b.Digest)
	}) {
		t.Error("sortByUse of 1000 blobs with tied times is not sorted")
	}
}
