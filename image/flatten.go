package image

// Flattening OCI layers into one root-filesystem tar.
//
// Layers are read top-down (last layer first), each exactly once. The first
// layer that mentions a path decides it: an entry of a lower layer is written
// only if no upper layer has replaced it, deleted it (.wh.NAME), hidden it
// behind an opaque directory (.wh..wh..opq) or put a non-directory at one of
// its ancestors. Reading top-down means shadowed data is skipped instead of
// written and overwritten, and memory holds only an index of paths (of a
// large layer, mostly on disk: flatten_index.go).
//
// The price of top-down order is hardlinks. A link entry in layer k names a
// target that may come from a lower layer that has not been read yet, and the
// target path may be whited out or replaced by a layer above k (ggcr issues
// 977 and 2002). A link therefore joins an "inode": a group of output names
// that share content. When the inode's content is read (in layer k, or in the
// lower layer that provides the target) its first visible name is written with
// the content and every other visible name as a hardlink to it, so a link
// always follows its target in the output and never dangles. Content of a
// shadowed file is spooled to spoolDir until the end of its layer, in case a
// later link in the same layer needs it.
//
// Whiteouts and entries of a layer only shadow lower layers: their effect is
// collected while the layer is read and merged into the index at its end.
//
// Names are those the entries land at once their parents are resolved
// through the symlinks of the tree below, as umoci and containerd resolve
// them; flatten_resolve.go says how that works top-down.
//
// Names are written once, except for duplicates inside one layer (see
// flatten). A non-directory that replaces a directory whose entries came
// earlier in its own layer makes flatten start again, as if those entries
// had never been there (flatten_replace.go). Symlinks, and hardlinks to them, are held back until the end of
// their layer: a duplicate can then drop them, which matters because GNU tar
// creates symlinks with ".." or absolute targets only at the end of
// extraction, so a later entry of the same name would not replace them.

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

const (
	whiteoutPrefix = ".wh."
	// whiteoutMeta prefixes AUFS bookkeeping names (.wh..wh.plnk, ...); they
	// are not part of the image's tree.
	whiteoutMeta = ".wh..wh."
	opaqueMarker = ".wh..wh..opq"
)

// flattenLayer is one layer of an image, bottom-most first in the slice passed to flatten.
type flattenLayer struct {
	// open returns the layer's uncompressed tar stream. The caller's reader verifies the
	// layer's diff ID and returns an error from Read at EOF on mismatch; flatten must read
	// each stream to io.EOF (drain the tail after the tar end marker: io.Copy(io.Discard, r)) and propagate errors.
	// open may be called a second time, to scan the layer's names before it
	// is read (see flatten_resolve.go); that scan closes its stream early,
	// and always before the layer is opened again.
	open func() (io.ReadCloser, error)
}

// flattenOutput is where flatten writes its tar stream. Rewind discards all
// that was written so far, for flatten to start again.
type flattenOutput interface {
	io.Writer
	Rewind() error
}

// flatten writes the union of layers (layers[0] is the base) to out as one tar stream.
// spoolDir is a writable directory for temporary files (same filesystem as the output); flatten removes what it creates there.
//
// The result, extracted with tar -x, is the tree that unpacking the layers in
// order produces (umoci unpack): an entry's parents are resolved through
// symlinks inside the root, so a layer adding bin/hello over a base where
// bin -> usr/bin writes usr/bin/hello. Every name is written once, except for
// duplicate names inside one layer: a replaced regular file, hardlink,
// directory or device stays in the output before its replacement, so the
// later entry wins on extraction, as with tar -x of that layer. That holds
// for a non-directory that replaces a directory whose entries came earlier
// in the same layer too: as with umoci, those entries are gone (their other
// hardlinked names keep the content), and so are the directory's contents
// from lower layers. Such entries are already written when the replacement
// comes, so flatten rewinds out and starts again without them: an image
// that has any is read once more. Names and hardlink targets that climb out
// of the root are errors, as are hardlinks whose target is missing or a
// directory, parents that resolve to a file or through a symlink loop, and
// names longer than Linux allows (umoci fails on those too). Sparse files
// are written expanded, at most maxSparseExpansion bytes of them per image.
//
// Memory does not grow with the plain entries (regular files, devices,
// fifos) of the layer being read past its first coldAfter entries: those go
// to an index file in spoolDir, behind at most coldBuckets*coldChunk (4 MiB)
// of buffers and 16 bytes per 1 KiB written, about 20 entries
// (flatten_index.go). What does grow with the entries: its directories,
// symlinks and hardlinks and the entries they link to (a few hundred bytes
// each), the index of the layers read so far, which lower layers consult
// (flatten_upper.go: the name and 10 to 20 bytes per name of every layer
// but the base), and the tree of names when parents must be resolved
// (flatten_resolve.go). One layer of 2,000,000 empty files flattens in
// about 37 MiB of peak RSS; over a small base layer, in about 115 MiB.
//
// Each layer is opened once, and once more, before, if some upper layer has
// an entry whose parents it does not declare as directories itself; a start
// again opens them all again. open is never called for a layer whose
// earlier stream is still open.
func flatten(ctx context.Context, out flattenOutput, layers []flattenLayer, spoolDir string) error {
	return flattenCold(ctx, out, layers, spoolDir, coldAfter)
}

// flattenCold is flatten with the entries a layer keeps in memory before
// plain ones go to its cold index (flatten_index.go): tests use 0, so that
// every plain entry does.
func flattenCold(ctx context.Context, out flattenOutput, layers []flattenLayer, spoolDir string, coldAfter int) error {
	var gone goneDirs
	for attempt := 1; ; attempt++ {
		f := &flattener{
			tw:        tar.NewWriter(out),
			spoolDir:  spoolDir,
			upper:     newUpperIndex(),
			waiting:   make(map[string]*inode),
			buf:       make([]byte, 32<<10),
			layers:    layers,
			simLayer:  -1,
			gone:      gone,
			coldAfter: coldAfter,
		}
		err := f.run(ctx)
		if len(f.found) == 0 {
			return err
		}
		// Whatever else this attempt met, an error included, may come of
		// the entries it should not have written: start again without them.
		if attempt == maxFlattenAttempts {
			r := f.found[0]
			return fmt.Errorf("layer %d: entry %q: non-directory replaces a directory that has entries earlier in the same layer, and %d passes did not settle which entries that removes", r.layer, shorten(r.dir), attempt)
		}
		gone = gone.add(f.found)
		if err := out.Rewind(); err != nil {
			return fmt.Errorf("rewinding the output to flatten again without the entries of replaced directories: %w", err)
		}
	}
}

// run is one pass of flatten over the layers.
func (f *flattener) run(ctx context.Context) error {
	layers := f.layers
	for i := len(layers) - 1; i >= 0; i-- {
		err := f.readLayer(ctx, i, layers[i])
		if err != nil && (len(f.found) == 0 || ctx.Err() != nil) {
			return err
		}
		// Once a pass has found a replacement it only looks for more, and
		// an error may come of the entries it keeps that it should not
		// (flatten_replace.go): the next layer goes on looking.
	}
	if len(f.found) > 0 {
		return nil // the output is rewound
	}
	if err := f.checkResolved(); err != nil {
		return err
	}
	if err := f.writeImplicit(); err != nil {
		return err
	}
	if err := f.tw.Close(); err != nil {
		return fmt.Errorf("finishing output: %w", err)
	}
	return nil
}

// shadow says how the layers read so far (the upper layers) hide a path from
// the layers still to be read.
type shadow uint8

const (
	hideSelf   shadow = 1 << iota // entries at exactly this path
	hideBelow                     // entries strictly under this path
	hideNonDir                    // non-directories at this path: upper layers have entries under it
)

// mark records what the layer being read does at a path.
type mark uint8

const (
	markDir      mark = 1 << iota // a directory entry
	markNonDir                    // any other entry
	markWhiteout                  // .wh.NAME
	markOpaque                    // DIR/.wh..wh..opq
	markParent                    // an ancestor of an entry of this layer
)

// shadow converts a layer's marks at a path into what they hide in lower layers.
func (m mark) shadow() shadow {
	var s shadow
	if m&(markDir|markNonDir|markWhiteout) != 0 {
		s |= hideSelf
	}
	if m&(markNonDir|markWhiteout|markOpaque) != 0 {
		s |= hideBelow
	}
	if m&markParent != 0 {
		s |= hideNonDir
	}
	return s
}

// inode is a group of names that share one file's content and metadata.
type inode struct {
	// hdr is the entry that carries the content. It is nil while the inode is
	// a placeholder: a hardlink whose target is in a lower layer not read yet.
	hdr *tar.Header
	// out is the output name that holds the content once written; links
	// point there.
	out string
	// names are, for an inode with content, the further names written for
	// it, kept so out can move if a duplicate entry later replaces it; for a
	// placeholder, the visible names waiting for it to resolve. An inode
	// never stops being a placeholder: the entry that resolves one starts an
	// inode of its own.
	names nameList
	// spoolOff locates the content in the layer's spool file when the
	// content entry was shadowed and nothing visible needed it yet.
	spoolOff int64
	spooled  bool
	// layer, name and target identify the first link of a placeholder, for
	// the error if its target never shows up.
	layer        int
	name, target string
}

// held reports whether the inode's names are written at the end of the layer.
func (ino *inode) held() bool { return ino.hdr.Typeflag == tar.TypeSymlink }

// layerEntry is an entry of the layer being read.
type layerEntry struct {
	ino *inode // nil for a directory
	// closed is set on a directory whose parents are all directory
	// entries of this layer read before it: entries under it land at
	// their own names (see declared).
	closed bool
	// attached are upper-layer hardlinks that resolved at this entry; a
	// duplicate of this name later in the layer takes them over.
	attached []string
}

// layerState is what flatten keeps while reading one layer.
type layerState struct {
	idx   int
	marks map[string]mark
	// entries are this layer's entries read so far, by name: targets for
	// hardlinks later in the layer.
	entries map[string]*layerEntry
	// placeholders are inodes of links to lower layers, by target path.
	placeholders map[string]*inode
	// held are headers written at the end of the layer; heldAt indexes them
	// by name, and a dropped one is nil.
	held     []*tar.Header
	heldAt   map[string]int
	spool    *os.File
	spoolEnd int64
	// whiteouts are the layer's whiteout names, for replay if a later
	// entry needs names resolved.
	whiteouts []string
	// parents are the paths markParents marked, in order; keepAfter are
	// the targets of whiteouts and opaque markers that came after entries
	// under them, each with len(parents) at the time (see addKeepDirs).
	parents   []string
	keepAfter map[string]int
	// declaredDir is the last directory that declared found declared.
	declaredDir string
	// keepGone are names that buried whiteouts and non-directories of this
	// layer remove, which its marks leave out: kept directories at or
	// under them go too.
	keepGone []string
	// gone are the directories that a later entry of this layer replaces,
	// from an earlier pass (flatten_replace.go), nil for most layers;
	// goneUnder are the names of the entries hidden under each so far.
	gone      map[string]int
	goneUnder map[string][]string
	// cold holds the layer's plain entries once it has coldAfter in
	// memory (flatten_index.go); nil until then.
	cold *coldIndex
}

func (ls *layerState) hold(h *tar.Header) {
	ls.heldAt[h.Name] = len(ls.held)
	ls.held = append(ls.held, h)
}

func (ls *layerState) unhold(name string) {
	if i, ok := ls.heldAt[name]; ok {
		ls.held[i] = nil
		delete(ls.heldAt, name)
	}
}

// release detaches names from ino after later entries of the same names in
// this layer replaced them. If the name holding the content goes, the next
// written name takes over.
func (ls *layerState) release(ino *inode, names []string) {
	if ino.hdr == nil {
		for _, n := range names {
			ino.names.remove(n)
		}
		return
	}
	for _, n := range names {
		ino.names.remove(n)
	}
	if ino.out == "" || !slices.Contains(names, ino.out) {
		return
	}
	ino.out = ino.names.popFirst()
	if !ino.held() || ino.out == "" {
		// A written file stays in the output until the replacing entry
		// follows it, and links written before then keep its content.
		return
	}
	// Held names are not written yet: turn the first link into the content
	// and point the others at it.
	ls.held[ls.heldAt[ino.out]] = outHeader(ino.hdr, ino.out)
	for _, e := range ino.names.names() {
		ls.held[ls.heldAt[e]].Linkname = ino.out
	}
}

// nameList is an ordered list of distinct names from which a name is
// removed in constant time, so that re-pointing n hard links in one layer
// stays linear (deleting from a slice made it quadratic: 62 s for 100k).
// A removed name leaves a hole, "", which is never a name; the index is
// built on the first removal, as most inodes never lose a name.
type nameList struct {
	list []string
	head int // list[:head] are holes
	at   map[string]int
}

func (l *nameList) add(names ...string) {
	for _, n := range names {
		if l.at != nil {
			l.at[n] = len(l.list)
		}
		l.list = append(l.list, n)
	}
}

func (l *nameList) remove(n string) {
	if l.at == nil {
		l.at = make(map[string]int, len(l.list)-l.head)
		for i := l.head; i < len(l.list); i++ {
			if m := l.list[i]; m != "" {
				l.at[m] = i
			}
		}
	}
	if i, ok := l.at[n]; ok {
		l.list[i] = ""
		delete(l.at, n)
	}
}

// popFirst removes and returns the first name, or "" if there is none.
func (l *nameList) popFirst() string {
	for ; l.head < len(l.list); l.head++ {
		if n := l.list[l.head]; n != "" {
			l.list[l.head] = ""
			if l.at != nil {
				delete(l.at, n)
			}
			l.head++
			return n
		}
	}
	return ""
}

// names returns the names in order, without holes.
func (l *nameList) names() []string {
	out := make([]string, 0, len(l.list)-l.head)
	for _, n := range l.list[l.head:] {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

func (l *nameList) empty() bool {
	if l.at != nil {
		return len(l.at) == 0
	}
	return len(l.list) == l.head
}

type flattener struct {
	tw       *tar.Writer
	spoolDir string
	// buf is for copying file data: io.Copy would allocate one per file,
	// as neither tar.Reader nor tar.Writer offers WriterTo or ReaderFrom.
	buf []byte
	// upper indexes the paths decided by the layers read so far.
	upper *upperIndex
	// waiting are placeholders of upper layers, by target path: the next
	// entry read at that path provides their content.
	waiting map[string]*inode
	// expanded counts the bytes of sparse files written or spooled.
	expanded int64
	// keepDirs are lower directories that upper whiteouts or opaque
	// markers hide the contents of but not the directory (addKeepDirs).
	keepDirs map[string]struct{}
	// keepUnder counts the kept directories at or under each path, so that
	// a buried entry tells in one lookup whether it removes one.
	keepUnder map[string]int
	// implicit are directories that exist only as parents of shadowed
	// entries, with the mtime to write them with (see needParents).
	implicit map[string]time.Time

	// Resolution through symlinks (flatten_resolve.go): layers is kept to
	// scan the lower layers once; sim is the tree below and in layer
	// simLayer while that layer is read; rewrites[j] are the entries of
	// layer j < simLayer that land elsewhere than their names.
	layers   []flattenLayer
	sim      *simTree
	simLayer int
	rewrites []map[int]rewrite

	// gone are the same-layer directory replacements that earlier passes
	// found, found those this pass finds (flatten_replace.go). Once found
	// is not empty nothing more is written: the output is rewound.
	gone  goneDirs
	found []dirReplacement

	// coldAfter is how many entries a layer keeps in memory before its
	// cold index starts.
	coldAfter int
}

func (f *flattener) readLayer(ctx context.Context, idx int, l flattenLayer) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("layer %d: %w", idx, err)
	}
	rc, err := l.open()
	if err != nil {
		return fmt.Errorf("layer %d: opening: %w", idx, err)
	}
	ls := &layerState{
		idx:          idx,
		marks:        make(map[string]mark),
		entries:      make(map[string]*layerEntry),
		placeholders: make(map[string]*inode),
		heldAt:       make(map[string]int),
		gone:         f.gone[idx],
	}
	defer func() {
		if cerr := rc.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("layer %d: closing: %w", idx, cerr)
		}
		if cerr := ls.removeSpool(); cerr != nil && err == nil {
			err = fmt.Errorf("layer %d: %w", idx, cerr)
		}
		if ls.cold != nil {
			if cerr := ls.cold.remove(); cerr != nil && err == nil {
				err = fmt.Errorf("layer %d: %w", idx, cerr)
			}
		}
	}()

	tr := tar.NewReader(rc)
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("layer %d: %w", idx, err)
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %d: reading tar: %w", idx, err)
		}
		if err := f.entry(ctx, ls, i, tr, hdr); err != nil {
			return fmt.Errorf("layer %d: entry %q: %w", idx, shorten(hdr.Name), err)
		}
	}
	if idx == f.simLayer {
		f.sim = nil // the layers below have their rewrites
	}
	if idx < len(f.rewrites) {
		f.rewrites[idx] = nil
	}
	// The caller's reader checks the diff ID only when it reaches EOF, and
	// the tar reader stops at the end marker, before any padding.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("layer %d: reading past end of archive: %w", idx, err)
	}
	return f.commit(ls)
}

// commit writes what the layer held back and makes it shadow the layers
// below it.
func (f *flattener) commit(ls *layerState) error {
	var dirTargets []string
	for name, e := range ls.entries {
		if e.ino == nil && len(e.attached) > 0 {
			dirTargets = append(dirTargets, name)
		}
	}
	if len(dirTargets) > 0 {
		slices.Sort(dirTargets)
		name := dirTargets[0]
		return fmt.Errorf("layer %d: entry %q: target of hardlink %q is a directory", ls.idx, name, ls.entries[name].attached[0])
	}
	for _, h := range ls.held {
		if h == nil {
			continue
		}
		if err := f.write(h, nil); err != nil {
			return fmt.Errorf("layer %d: %w", ls.idx, err)
		}
	}
	if err := f.pruneKeepDirs(ls); err != nil {
		return fmt.Errorf("layer %d: %w", ls.idx, err)
	}
	if ls.keepAfter != nil {
		if err := f.addKeepDirs(ls); err != nil {
			return fmt.Errorf("layer %d: %w", ls.idx, err)
		}
	}
	// Only the layers below read the index of upper layers, and no layer
	// is below the base.
	if ls.idx > 0 {
		for p, m := range ls.marks {
			f.upper.add(p, m.shadow())
		}
		if ls.cold != nil {
			err := ls.cold.each(func(r coldRecord) error {
				if r.flags&coldMarked != 0 {
					f.upper.add(string(r.name), markNonDir.shadow())
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("layer %d: %w", ls.idx, err)
			}
		}
	}
	for target, ph := range ls.placeholders {
		if ph.names.empty() {
			continue // only shadowed links: nobody needs the content
		}
		// An older placeholder for the same target resolves at the same
		// lower entry, since this layer had no entry at that path.
		if old, ok := f.waiting[target]; ok {
			old.names.add(ph.names.names()...)
		} else {
			f.waiting[target] = ph
		}
	}
	return nil
}

// checkResolved fails if a visible hardlink never found its target.
func (f *flattener) checkResolved() error {
	targets := make([]string, 0, len(f.waiting))
	for t := range f.waiting {
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil
	}
	slices.Sort(targets)
	ph := f.waiting[targets[0]]
	return fmt.Errorf("layer %d: entry %q: hardlink target %q not found in its layer or below", ph.layer, ph.name, ph.target)
}

func (f *flattener) entry(ctx context.Context, ls *layerState, idx int, tr *tar.Reader, hdr *tar.Header) error {
	sparse := hdr.Typeflag == tar.TypeGNUSparse
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		// Archive-wide PAX records: Go's reader (and so umoci) does not
		// apply them to the entries, so neither does flatten.
		return nil
	case tar.TypeGNUSparse:
		hdr.Typeflag = tar.TypeReg // the reader expands the holes
	case tar.TypeReg, tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	isDir := hdr.Typeflag == tar.TypeDir
	if name == "." {
		if !isDir {
			return errors.New("root entry is not a directory")
		}
		return nil // the root exists anyway; its metadata is the extractor's business
	}
	var linkTarget string
	if hdr.Typeflag == tar.TypeLink {
		if linkTarget, err = cleanName(hdr.Linkname); err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
		if linkTarget == "." {
			return errors.New("hardlink to the root directory")
		}
	}
	if err := checkSymlink(hdr); err != nil {
		return err
	}
	if name, linkTarget, err = f.resolveEntry(ctx, ls, idx, hdr, name, linkTarget); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	// Entries under a directory that a later entry of this layer replaces
	// leave no trace but their inodes, which other names may share.
	gone := ls.gone != nil && ls.hideGone(name, idx)
	if base := path.Base(name); strings.HasPrefix(base, whiteoutPrefix) {
		if gone {
			return nil
		}
		if f.simLayer < 0 {
			ls.whiteouts = append(ls.whiteouts, name)
		}
		return f.whiteout(ls, path.Dir(name), base)
	}
	if !sparse {
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				sparse = true
				break
			}
		}
	}

	// AUFS keeps hardlinked files' data under /.wh..wh.plnk. Such entries
	// are never written, but may be hardlink targets within their layer.
	aufsMeta := strings.HasPrefix(name, whiteoutMeta)
	if aufsMeta && isDir {
		return nil
	}
	buried := aufsMeta || f.buried(name)
	if buried && len(f.keepDirs) > 0 {
		if _, keep := f.keepDirs[name]; keep && isDir {
			buried = false
		} else if !isDir && f.keepUnder[name] > 0 {
			ls.keepGone = append(ls.keepGone, name)
		}
	}
	sh := f.upper.get(name)
	visible := !gone && !buried && sh&hideSelf == 0 && (isDir || sh&hideNonDir == 0)
	// A plain entry past the first coldAfter of its layer goes to the cold
	// index unless an upper link resolves at it (flatten_index.go); its
	// mark on its own name goes there with it.
	if ls.cold == nil && len(ls.entries) >= f.coldAfter {
		ls.cold = newColdIndex(f.spoolDir)
	}
	cold := ls.cold != nil && !gone && linkTarget == "" && !isDir && hdr.Typeflag != tar.TypeSymlink
	var m mark
	var markSelf bool
	if !buried && !gone {
		// Below a buried ancestor everything lower is hidden already, so
		// marks there would change nothing.
		m = ls.marks[name]
		if !isDir && m&markParent != 0 {
			// umoci deletes the entries unpacked under it, whether or not
			// an upper layer hides this one, but they may be written
			// already, and tar -x cannot replace a non-empty directory by
			// a file: the next pass leaves them out.
			f.found = append(f.found, dirReplacement{layer: ls.idx, dir: name, entry: idx})
		}
		switch {
		case isDir:
			ls.marks[name] = m | markDir
		case cold:
			markSelf = true
		default:
			ls.marks[name] = m | markNonDir
		}
		ls.markParents(name)
	}
	if !visible && !aufsMeta && !gone && !ls.declared(name) {
		f.needParents(ls, name, hdr.ModTime)
	}
	if ls.gone != nil && !isDir {
		ls.dropGone(name, idx)
	}

	// The inode this entry belongs to, looked up before a duplicate of this
	// name is dropped below so that a link to its own earlier name works.
	var ino *inode
	switch {
	case isDir:
	case linkTarget != "":
		t, ok := ls.entries[linkTarget]
		if !ok && ls.cold != nil {
			var err error
			if t, ok, err = ls.warm(linkTarget); err != nil {
				return err
			}
		}
		if ok {
			if t.ino == nil {
				return fmt.Errorf("hardlink to directory %q", linkTarget)
			}
			ino = t.ino
		} else if ino = ls.placeholders[linkTarget]; ino == nil {
			ino = &inode{layer: ls.idx, name: hdr.Name, target: linkTarget}
			ls.placeholders[linkTarget] = ino
		}
	default:
		ino = &inode{hdr: hdr}
	}

	// Hardlinks of upper layers waiting for this path resolve here, whether
	// or not this entry is visible: they link to whatever this path held.
	var attached []string
	if prev, ok := ls.entries[name]; ok && ino != nil && ino == prev.ino {
		return nil // a duplicate that links to its own inode again changes nothing
	} else if ok {
		// Duplicate name in one layer: the later entry wins, so it takes
		// over the upper links that resolved at the earlier one. The name
		// itself was written for the earlier entry only if visible, and
		// then no upper layer has an entry of that name: a hidden name can
		// collide with an upper-layer hardlink's.
		released := slices.Clone(prev.attached)
		if visible {
			released = append(released, name)
		}
		for _, r := range released {
			ls.unhold(r)
		}
		if prev.ino != nil {
			ls.release(prev.ino, released)
		}
		attached = prev.attached
	}
	if ph, ok := f.waiting[name]; ok {
		delete(f.waiting, name)
		attached = append(attached, ph.names.names()...)
	}
	if cold && len(attached) > 0 {
		cold = false
		if markSelf {
			ls.marks[name] = m | markNonDir
		}
	}
	if cold {
		// Nothing of an earlier entry of this name stays in memory to
		// shadow the record.
		delete(ls.entries, name)
	} else {
		le := &layerEntry{ino: ino, attached: attached}
		if isDir {
			le.closed = ls.declared(name)
		}
		ls.entries[name] = le
	}
	if name == ls.declaredDir {
		ls.declaredDir = ""
	}

	if isDir {
		// Hardlinks to a directory fail at the end of the layer unless a
		// later duplicate of this name takes them over.
		if !visible {
			return nil
		}
		return f.write(outHeader(hdr, name), nil)
	}

	members := attached
	if visible {
		// This name first, so a visible content entry is written as itself.
		members = append([]string{name}, attached...)
	}
	if ino.hdr == nil {
		ino.names.add(members...)
		return nil
	}
	var content io.Reader
	if ino.hdr == hdr {
		content = tr
	}
	spool := content != nil && len(members) == 0 && hdr.Typeflag == tar.TypeReg && hdr.Size > 0
	if sparse && content != nil && (len(members) > 0 || spool) {
		if err := f.expand(hdr.Size); err != nil {
			return err
		}
	}
	if err := f.emit(ls, ino, members, content); err != nil {
		return err
	}
	if spool {
		if err := ls.spoolContent(ino, tr, hdr.Size, f.spoolDir, f.buf); err != nil {
			return err
		}
	}
	if cold {
		return ls.cold.add(name, hdr, ino, markSelf)
	}
	return nil
}

// maxSparseExpansion bounds the bytes of sparse files that one image may
// expand to. A sparse entry stores only its data, and the output carries
// the file expanded (Go's tar writer cannot write sparse maps), so a few
// KiB of layer could otherwise declare a TiB file and fill the disk.
const maxSparseExpansion = 1 << 30

// expand counts size bytes of a sparse file about to be written or spooled,
// before any of it is.
func (f *flattener) expand(size int64) error {
	if size > maxSparseExpansion-f.expanded {
		return fmt.Errorf("sparse file of %d bytes would take the image's sparse files past banger's limit of %d bytes expanded (%d so far); the image may be hostile, or rebuild it without the sparse file", size, int64(maxSparseExpansion), f.expanded)
	}
	f.expanded += size
	return nil
}

// needParents records the parents of an entry that is not written and whose
// layer did not declare them. Unpacking creates them for the entry (umoci's
// MkdirAll, tar's implicit directories), and they stay unless a layer above
// removes them; but no output entry may create them. Those no other entry
// writes are written at the end, as tar and umoci create them: mode 0755,
// owned by root.
func (f *flattener) needParents(ls *layerState, name string, mtime time.Time) {
	if f.upper.get(".")&hideBelow != 0 {
		return
	}
	// From the top down: an upper whiteout or non-directory at d removes d
	// and what is under it, an upper opaque marker what is under it.
	for i := 0; ; {
		j := strings.IndexByte(name[i:], '/')
		if j < 0 {
			return
		}
		d := name[:i+j]
		i += j + 1
		sh := f.upper.get(d)
		if sh&hideSelf != 0 && sh&hideBelow != 0 {
			return
		}
		// An upper entry at or under d, or a directory entry of this layer
		// at d, writes d or makes tar create it.
		if sh&(hideSelf|hideNonDir) == 0 && ls.marks[d]&markDir == 0 {
			if f.implicit == nil {
				f.implicit = make(map[string]time.Time)
			}
			if _, ok := f.implicit[d]; !ok {
				f.implicit[d] = mtime
			}
		}
		if sh&hideBelow != 0 {
			return
		}
	}
}

func (f *flattener) writeImplicit() error {
	dirs := make([]string, 0, len(f.implicit))
	for d := range f.implicit {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs) // parents first, and the same output every time
	for _, d := range dirs {
		h := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: f.implicit[d]}
		keepNanos(h)
		if err := f.tw.WriteHeader(h); err != nil {
			return fmt.Errorf("writing %q: %w", h.Name, err)
		}
	}
	return nil
}

// whiteout records .wh.NAME and .wh..wh..opq entries found in dir.
func (f *flattener) whiteout(ls *layerState, dir, base string) error {
	var target string
	var m mark
	switch {
	case base == opaqueMarker:
		target, m = dir, markOpaque
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	default:
		n := strings.TrimPrefix(base, whiteoutPrefix)
		if n == "" || n == "." || n == ".." {
			return errors.New("invalid whiteout name")
		}
		target, m = path.Join(dir, n), markWhiteout
	}
	if f.buried(target) {
		if f.keepUnder[target] > 0 {
			ls.keepGone = append(ls.keepGone, target)
		}
		return nil
	}
	if m == markWhiteout && ls.marks[target]&markParent != 0 {
		// The layer already put entries under target, and whiteouts never
		// remove what their own layer adds: like umoci, keep the lower
		// directory itself and hide only its lower contents. A whiteout
		// that comes first removes the lower directory, and the layer's
		// entries then recreate it.
		m = markOpaque
	}
	if m == markOpaque && (ls.marks[target]&markParent != 0 || target == "." && len(ls.parents) > 0) {
		if ls.keepAfter == nil {
			ls.keepAfter = make(map[string]int)
		}
		ls.keepAfter[target] = len(ls.parents)
	}
	ls.marks[target] |= m
	return nil
}

// addKeepDirs records the lower directories that survive the layer's own
// whiteouts and opaque markers. umoci removes what they name except the
// layer's entries so far and their parents: a lower directory that was such
// a parent, and that the layer did not replace with its own entry, stays
// with its metadata, though the rest under it goes.
func (f *flattener) addKeepDirs(ls *layerState) error {
	kept := func(i int, a string) bool {
		n, ok := ls.keepAfter[a]
		return ok && i < n
	}
	for i, p := range ls.parents {
		m, err := ls.mark(p)
		if err != nil {
			return err
		}
		if m&(markDir|markNonDir) != 0 {
			continue
		}
		keep := kept(i, ".")
		for j := strings.LastIndexByte(p, '/'); !keep && j > 0; j = strings.LastIndexByte(p[:j], '/') {
			keep = kept(i, p[:j])
		}
		if keep {
			f.keep(p)
		}
	}
	return nil
}

// pruneKeepDirs forgets the kept directories that layer ls, below the layer
// that kept them, replaces or removes: below it, nothing of them was left
// to keep.
func (f *flattener) pruneKeepDirs(ls *layerState) error {
	const removes = markNonDir | markWhiteout | markOpaque
	for p := range f.keepDirs {
		mp, err := ls.mark(p)
		if err != nil {
			return err
		}
		gone := mp&(markDir|markNonDir|markWhiteout) != 0 || ls.marks["."]&removes != 0
		for j := strings.LastIndexByte(p, '/'); !gone && j > 0; j = strings.LastIndexByte(p[:j], '/') {
			ma, err := ls.mark(p[:j])
			if err != nil {
				return err
			}
			gone = ma&removes != 0
		}
		for _, g := range ls.keepGone {
			if gone {
				break
			}
			gone = p == g || strings.HasPrefix(p, g+"/")
		}
		if gone {
			f.unkeep(p)
		}
	}
	return nil
}

func (f *flattener) keep(p string) {
	if _, ok := f.keepDirs[p]; ok {
		return
	}
	if f.keepDirs == nil {
		f.keepDirs, f.keepUnder = make(map[string]struct{}), make(map[string]int)
	}
	f.keepDirs[p] = struct{}{}
	for a := p; a != "."; a = path.Dir(a) {
		f.keepUnder[a]++
	}
}

func (f *flattener) unkeep(p string) {
	delete(f.keepDirs, p)
	for a := p; a != "."; a = path.Dir(a) {
		if f.keepUnder[a]--; f.keepUnder[a] == 0 {
			delete(f.keepUnder, a)
		}
	}
}

// buried reports whether an upper layer hides everything under an ancestor
// of p.
func (f *flattener) buried(p string) bool {
	if f.upper.get(".")&hideBelow != 0 {
		return true
	}
	for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
		if f.upper.get(p[:i])&hideBelow != 0 {
			return true
		}
	}
	return false
}

// markParents marks the ancestors of p as used by this layer.
func (ls *layerState) markParents(p string) {
	for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
		a := p[:i]
		m := ls.marks[a]
		if m&markParent != 0 {
			return // and so are all of its ancestors
		}
		ls.marks[a] = m | markParent
		ls.parents = append(ls.parents, a)
	}
}

// emit writes names for an inode whose content entry is known: the first name
// without an output copy yet gets the content, the others link to it. content
// is the tar stream positioned at the content entry's data, or nil when that
// entry was read earlier in the layer.
func (f *flattener) emit(ls *layerState, ino *inode, names []string, content io.Reader) error {
	for _, n := range names {
		switch {
		case ino.out == "":
			h := outHeader(ino.hdr, n)
			var data io.Reader
			if h.Typeflag == tar.TypeReg && h.Size > 0 {
				switch {
				case content != nil:
					data = content
				case ino.spooled:
					data = io.NewSectionReader(ls.spool, ino.spoolOff, h.Size)
				default:
					// Only a duplicate name that replaced every written copy
					// of a hard-linked file gets here.
					return fmt.Errorf("content of hardlink target %q is no longer available", ino.hdr.Name)
				}
				content = nil
			}
			if ino.held() {
				ls.hold(h)
			} else if err := f.write(h, data); err != nil {
				return err
			}
			ino.out = n
		case n != ino.out:
			h := linkHeader(ino.hdr, n, ino.out)
			if ino.held() {
				ls.hold(h)
			} else if err := f.write(h, nil); err != nil {
				return err
			}
			ino.names.add(n)
		}
	}
	return nil
}

func (f *flattener) write(h *tar.Header, data io.Reader) error {
	if len(f.found) > 0 {
		return nil // the output is rewound for another pass
	}
	if f.implicit != nil && h.Typeflag == tar.TypeDir {
		delete(f.implicit, strings.TrimSuffix(h.Name, "/"))
	}
	if err := f.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("writing %q: %w", h.Name, err)
	}
	if data == nil {
		return nil
	}
	if err := copyN(f.tw, data, h.Size, f.buf); err != nil {
		return fmt.Errorf("writing %q: %w", h.Name, err)
	}
	return nil
}

// spoolContent copies a shadowed file's data to the layer's spool file, so a
// later hardlink in the same layer can still be written with it. One
// append-only file per layer keeps this to one create and one remove.
func (ls *layerState) spoolContent(ino *inode, r io.Reader, size int64, dir string, buf []byte) error {
	if ls.spool == nil {
		sf, err := os.CreateTemp(dir, ".flatten-spool-*")
		if err != nil {
			return fmt.Errorf("creating spool file: %w", err)
		}
		ls.spool = sf
	}
	// Writes append at the file offset; emit reads with ReadAt, which does
	// not move it.
	if err := copyN(ls.spool, r, size, buf); err != nil {
		return fmt.Errorf("spooling: %w", err)
	}
	ino.spoolOff, ino.spooled = ls.spoolEnd, true
	ls.spoolEnd += size
	return nil
}

func (ls *layerState) removeSpool() error {
	f := ls.spool
	ls.spool = nil
	return removeTemp(f, "spool file")
}

// removeTemp closes and removes f, a temp file of the spool directory
// called what in errors; nil is nothing to remove.
func removeTemp(f *os.File, what string) error {
	if f == nil {
		return nil
	}
	cerr := f.Close()
	if err := os.Remove(f.Name()); err != nil {
		return fmt.Errorf("removing %s: %w", what, err)
	}
	if cerr != nil {
		return fmt.Errorf("closing %s: %w", what, cerr)
	}
	return nil
}

// copyN copies exactly n bytes from src to dst through buf. Hiding dst's
// ReadFrom (an *os.File has one) keeps io.CopyBuffer on buf.
func copyN(dst io.Writer, src io.Reader, n int64, buf []byte) error {
	written, err := io.CopyBuffer(struct{ io.Writer }{dst}, io.LimitReader(src, n), buf)
	if err == nil && written < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// cleanName turns an archive name into a clean relative path, "." for the
// root. Names that climb out of the root are rejected rather than clamped:
// such a layer is broken or hostile.
func cleanName(name string) (string, error) {
	n := path.Clean(strings.TrimLeft(name, "/"))
	if n == ".." || strings.HasPrefix(n, "../") {
		return "", fmt.Errorf("path %q escapes the root", name)
	}
	return n, nil
}

// outHeader builds the output header for content entry h written as name.
// A fresh header leaves Format unknown, so the writer picks USTAR, PAX or GNU
// as the fields need; passing the input's GNU format through would make the
// writer refuse PAX records such as xattrs.
func outHeader(h *tar.Header, name string) *tar.Header {
	o := &tar.Header{
		Typeflag: h.Typeflag,
		Name:     name,
		Mode:     h.Mode,
		Uid:      h.Uid,
		Gid:      h.Gid,
		Uname:    h.Uname,
		Gname:    h.Gname,
		ModTime:  h.ModTime,
	}
	switch h.Typeflag {
	case tar.TypeReg:
		o.Size = h.Size
	case tar.TypeSymlink:
		o.Linkname = h.Linkname // verbatim: it resolves inside the root at run time
	case tar.TypeChar, tar.TypeBlock:
		o.Devmajor, o.Devminor = h.Devmajor, h.Devminor
	case tar.TypeDir:
		o.Name += "/"
	}
	for k, v := range h.PAXRecords {
		// Records the writer derives from the fields above, and sparse
		// maps of data that the reader has already expanded, are dropped;
		// xattrs (SCHILY.xattr.*) and the rest pass through.
		if paxDerived(k) {
			continue
		}
		if o.PAXRecords == nil {
			o.PAXRecords = make(map[string]string)
		}
		o.PAXRecords[k] = v
	}
	keepNanos(o)
	return o
}

// linkHeader is a hardlink from name to target, with the inode's metadata
// for listings (extractors take it from the target).
func linkHeader(h *tar.Header, name, target string) *tar.Header {
	o := &tar.Header{
		Typeflag: tar.TypeLink,
		Name:     name,
		Linkname: target,
		Mode:     h.Mode,
		Uid:      h.Uid,
		Gid:      h.Gid,
		Uname:    h.Uname,
		Gname:    h.Gname,
		ModTime:  h.ModTime,
	}
	keepNanos(o)
	return o
}

// keepNanos asks for PAX when the mtime has sub-second precision: with an
// unknown format the writer rounds mtimes to seconds.
func keepNanos(h *tar.Header) {
	if h.ModTime.Nanosecond() != 0 {
		h.Format = tar.FormatPAX
	}
}

func paxDerived(k string) bool {
	switch k {
	case "path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime":
		return true
	}
	return strings.HasPrefix(k, "GNU.sparse.")
}
