package image

// Resolving entry names through symlinks.
//
// umoci (securejoin), containerd (fs.RootPath) and Docker resolve an entry's
// parent directories against the tree unpacked so far, following symlinks
// and staying inside the root, and do not follow the last component. So in a
// merged-/usr image, where the base has bin -> usr/bin, a later layer's
// bin/hello lands in usr/bin/hello and /bin stays a symlink.
//
// flatten reads layers top-down, so when it reads layer k it has not yet
// seen the layers below k, whose symlinks decide where k's entries land.
// Most layers need none of that: when every parent of an entry is a
// directory entry read earlier in the same layer, that directory replaced
// whatever lower layers had at its name, and the entry lands at its own
// name. Layers that docker build writes always look like that. The first
// entry of a layer that does not (a parent the layer never declared, a
// symlink of its own layer, ...) makes flatten scan the lower layers'
// headers once, bottom-up, replaying their names on a simTree exactly as
// umoci would unpack them. That scan records the names that move (few: only
// entries under symlinks) for the top-down pass to apply when it reaches
// each lower layer, and leaves the tree as it stands below the current
// layer, on which the rest of that layer is then resolved. The scan costs
// one more read of the lower layers, and only for images that need it;
// memory is the names of the tree, as for flatten's own index.

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// maxSymlinkFollows is how many symlinks one resolution may follow before it
// is taken for a loop; securejoin, and so umoci, use the same limit.
const maxSymlinkFollows = 255

// errSymlinkLoop is wrapped by flatten's error for a name whose resolution
// does not end.
var errSymlinkLoop = errors.New("too many levels of symbolic links")

type simKind uint8

const (
	simDir simKind = iota + 1
	simSym
	simOther
)

// simNode is one name of the simulated tree.
type simNode struct {
	kind simKind
	// layer is the layer whose entry made the node, -1 for a directory
	// that only exists as a parent: whiteouts never remove what their own
	// layer added.
	layer  int
	target string // of a symlink, verbatim
	kids   map[string]*simNode
	// pruned is 1 + the layer whose whiteout or opaque marker last pruned
	// the subtree: nothing lower can appear under it again in that layer,
	// so another one there need not walk it.
	pruned int
}

// simTree is the tree of names that unpacking the layers bottom-up makes,
// without content: enough to resolve names as umoci does.
type simTree struct {
	root  *simNode
	layer int // the layer being applied
	// walked counts the nodes keep has visited, the work that pruning
	// could make quadratic: tests bound it by the entries applied.
	walked int
}

func newSimTree() *simTree {
	return &simTree{root: &simNode{kind: simDir, layer: -1}}
}

// rewrite is where an entry of a lower layer lands once resolved: its name,
// and for a hardlink its target.
type rewrite struct{ name, link string }

// resolve follows every component of p (a clean relative name or ".")
// through the tree's symlinks, the way securejoin does: ".." and absolute
// targets never leave the root, and missing components are taken
// literally.
func (s *simTree) resolve(p string) (string, error) {
	if p == "." {
		return ".", nil
	}
	var names []string
	var nodes []*simNode // nodes[i] is names[i]'s node, nil if missing
	rest, follows := p, 0
	for rest != "" {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		switch c {
		case "", ".":
			continue
		case "..":
			if len(names) > 0 {
				names, nodes = names[:len(names)-1], nodes[:len(nodes)-1]
			}
			continue
		}
		parent := s.root
		if len(nodes) > 0 {
			parent = nodes[len(nodes)-1]
		}
		var n *simNode
		if parent != nil {
			n = parent.kids[c]
		}
		if n != nil && n.kind == simSym {
			if follows++; follows > maxSymlinkFollows {
				return "", fmt.Errorf("resolving %q: %w: the image's symlinks form a loop, and it cannot be unpacked", p, errSymlinkLoop)
			}
			t := n.target
			if strings.HasPrefix(t, "/") {
				names, nodes = names[:0], nodes[:0]
				t = strings.TrimLeft(t, "/")
			}
			switch {
			case rest == "":
				rest = t
			case t != "":
				rest = t + "/" + rest
			}
			if len(rest) >= maxPathLen {
				// Symlinks that keep adding components would otherwise
				// cost a copy of the growing path per link followed.
				return "", fmt.Errorf("resolving %q: symlinks expand it past Linux's limit of %d bytes (PATH_MAX)", p, maxPathLen-1)
			}
			continue
		}
		names, nodes = append(names, c), append(nodes, n)
	}
	if len(names) == 0 {
		return ".", nil
	}
	return strings.Join(names, "/"), nil
}

// lookup returns the node at resolved name p, or nil.
func (s *simTree) lookup(p string) *simNode {
	n := s.root
	if p == "." {
		return n
	}
	for c := range strings.SplitSeq(p, "/") {
		if n = n.kids[c]; n == nil {
			return nil
		}
	}
	return n
}

// mkdirAll returns the directory at resolved name p, creating missing
// directories. A non-directory on the way is an error, as umoci's
// MkdirAll fails on it.
func (s *simTree) mkdirAll(p string) (*simNode, error) {
	n := s.root
	if p == "." {
		return n, nil
	}
	for i := 0; i <= len(p); {
		j := strings.IndexByte(p[i:], '/')
		if j < 0 {
			j = len(p) - i
		}
		c := p[i : i+j]
		kid := n.kids[c]
		switch {
		case kid == nil:
			kid = &simNode{kind: simDir, layer: -1}
			if n.kids == nil {
				n.kids = make(map[string]*simNode)
			}
			n.kids[c] = kid
		case kid.kind != simDir:
			return nil, fmt.Errorf("parent %q is not a directory, so the image cannot be unpacked", p[:i+j])
		}
		n, i = kid, i+j+1
	}
	return n, nil
}

// keep removes from n's subtree what lower layers made, keeping what the
// layer being applied added, and says whether n itself stays.
func (s *simTree) keep(n *simNode) bool {
	s.walked++
	if n.pruned != s.layer+1 {
		for c, kid := range n.kids {
			if !s.keep(kid) {
				delete(n.kids, c)
			}
		}
		n.pruned = s.layer + 1
	}
	return n.layer == s.layer || len(n.kids) > 0
}

// apply unpacks one entry, named name (clean, not "."), onto the tree and
// returns where it landed; for a hardlink, link is its clean target and the
// second result is where that resolved.
func (s *simTree) apply(name string, typ byte, symTarget, link string) (string, string, error) {
	dir, base := splitName(name)
	rdir, err := s.resolve(dir)
	if err != nil {
		return "", "", err
	}
	full := joinName(rdir, base)
	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == opaqueMarker:
			if d := s.lookup(rdir); d != nil && d.kind == simDir {
				s.keep(d)
			}
		case strings.HasPrefix(base, whiteoutMeta):
		default:
			if d := s.lookup(rdir); d != nil {
				n := strings.TrimPrefix(base, whiteoutPrefix)
				if kid := d.kids[n]; kid != nil && !s.keep(kid) {
					delete(d.kids, n)
				}
			}
		}
		return full, "", nil
	}
	node := &simNode{kind: simOther, layer: s.layer}
	var rlink string
	switch typ {
	case tar.TypeDir:
		node.kind = simDir
	case tar.TypeSymlink:
		node.kind, node.target = simSym, symTarget
	case tar.TypeLink:
		ldir, lbase := splitName(link)
		rl, err := s.resolve(ldir)
		if err != nil {
			return "", "", fmt.Errorf("hardlink target: %w", err)
		}
		rlink = joinName(rl, lbase)
		// A hardlink to a symlink is a symlink: later entries resolve
		// through it. A missing target is reported by flatten itself.
		if t := s.lookup(rlink); t != nil && t.kind == simSym {
			node.kind, node.target = simSym, t.target
		}
	}
	parent, err := s.mkdirAll(rdir)
	if err != nil {
		return "", "", err
	}
	if old := parent.kids[base]; old != nil && old.kind == simDir && node.kind == simDir {
		old.layer = s.layer // a directory over a directory merges
		return full, rlink, nil
	}
	if parent.kids == nil {
		parent.kids = make(map[string]*simNode)
	}
	parent.kids[base] = node // anything else replaces what was there, subtree and all
	return full, rlink, nil
}

// splitName splits a clean relative name into its parent ("." at the top)
// and last component.
func splitName(name string) (string, string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ".", name
	}
	return name[:i], name[i+1:]
}

func joinName(dir, base string) string {
	if dir == "." {
		return base
	}
	return dir + "/" + base
}

// scanLayer replays layer idx's headers onto s and returns the entries that
// land somewhere other than their own names, by position in the layer. It
// reads no content and does not check the diff ID: the top-down pass reads
// the same stream again and does.
func (s *simTree) scanLayer(ctx context.Context, idx int, l flattenLayer) (rw map[int]rewrite, err error) {
	rc, err := l.open()
	if err != nil {
		return nil, fmt.Errorf("layer %d: opening to resolve symlinks: %w", idx, err)
	}
	defer func() {
		if cerr := rc.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("layer %d: closing: %w", idx, cerr)
		}
	}()
	s.layer = idx
	tr := tar.NewReader(rc)
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("layer %d: %w", idx, err)
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return rw, nil
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d: reading tar to resolve symlinks: %w", idx, err)
		}
		name, link, err := s.scanEntry(hdr)
		if err != nil {
			return nil, fmt.Errorf("layer %d: entry %q: %w", idx, hdr.Name, err)
		}
		if name != "" {
			if rw == nil {
				rw = make(map[int]rewrite)
			}
			rw[i] = rewrite{name, link}
		}
	}
}

// scanEntry applies one header of a lower layer and returns its resolved
// name and hardlink target if either moved, or "" if neither did. Headers
// that flatten skips or refuses change nothing here; flatten reports them
// when it reads them.
func (s *simTree) scanEntry(hdr *tar.Header) (string, string, error) {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return "", "", nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil || name == "." {
		return "", "", nil
	}
	if err := checkSymlink(hdr); err != nil {
		return "", "", err
	}
	var link string
	if hdr.Typeflag == tar.TypeLink {
		if link, err = cleanName(hdr.Linkname); err != nil || link == "." {
			return "", "", nil
		}
	}
	rname, rlink, err := s.apply(name, hdr.Typeflag, hdr.Linkname, link)
	if err != nil {
		return "", "", err
	}
	if rname == name && rlink == link {
		return "", "", nil
	}
	return rname, rlink, nil
}

// replay applies what layer ls.idx did before the entry that needed
// resolving. Each of those entries had its parents declared as directories
// earlier in the layer, so it landed at its own name; and a layer's
// whiteouts never remove its own entries, so applying its whiteouts first
// and then its surviving entries, parents first, gives the same tree as
// applying them in order.
func (s *simTree) replay(ls *layerState) error {
	s.layer = ls.idx
	for _, w := range ls.whiteouts {
		if _, _, err := s.apply(w, tar.TypeReg, "", ""); err != nil {
			return err
		}
	}
	// Plain entries of the cold index count unless a later entry of the
	// same name is in memory; their types are all replay needs.
	var coldTypes map[string]byte
	if ls.cold != nil {
		coldTypes = make(map[string]byte)
		err := ls.cold.each(func(r coldRecord) error {
			if _, ok := ls.entries[string(r.name)]; !ok {
				coldTypes[string(r.name)] = r.typ
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	names := make([]string, 0, len(ls.entries)+len(coldTypes))
	for n := range ls.entries {
		names = append(names, n)
	}
	for n := range coldTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		e, hot := ls.entries[n]
		typ, symTarget, link := byte(tar.TypeDir), "", ""
		switch {
		case !hot:
			typ = coldTypes[n]
		case e.ino == nil:
		case e.ino.hdr == nil:
			typ, link = tar.TypeLink, e.ino.target
		default:
			typ, symTarget = e.ino.hdr.Typeflag, e.ino.hdr.Linkname
		}
		if _, _, err := s.apply(n, typ, symTarget, link); err != nil {
			return fmt.Errorf("entry %q: %w", n, err)
		}
	}
	return nil
}

// resolveEntry returns where entry idx of the layer being read lands, and
// where its hardlink target (link, if any) resolves. name and link are clean
// and not ".".
func (f *flattener) resolveEntry(ctx context.Context, ls *layerState, idx int, hdr *tar.Header, name, link string) (string, string, error) {
	switch {
	case f.sim != nil && ls.idx == f.simLayer:
		return f.sim.apply(name, hdr.Typeflag, hdr.Linkname, link)
	case f.rewrites != nil && ls.idx < f.simLayer:
		if rw, ok := f.rewrites[ls.idx][idx]; ok {
			return rw.name, rw.link, nil
		}
		return name, link, nil
	case ls.declared(name) && (link == "" || ls.declared(link)):
		return name, link, nil
	}
	if err := f.startResolving(ctx, ls); err != nil {
		return "", "", err
	}
	return f.sim.apply(name, hdr.Typeflag, hdr.Linkname, link)
}

// startResolving builds the tree below layer ls.idx, plus what that layer
// did so far, and the rewrites of the lower layers.
func (f *flattener) startResolving(ctx context.Context, ls *layerState) error {
	s := newSimTree()
	rewrites := make([]map[int]rewrite, ls.idx)
	for j := range ls.idx {
		rw, err := s.scanLayer(ctx, j, f.layers[j])
		if err != nil {
			return fmt.Errorf("scanning the layers below to resolve its parents: %w", err)
		}
		rewrites[j] = rw
	}
	if err := s.replay(ls); err != nil {
		return fmt.Errorf("replaying the layer to resolve symlinks: %w", err)
	}
	f.sim, f.simLayer, f.rewrites = s, ls.idx, rewrites
	return nil
}

// declared reports whether name's parents are all directory entries read
// earlier in this layer (names of AUFS metadata are never resolved).
func (ls *layerState) declared(name string) bool {
	if strings.HasPrefix(name, whiteoutMeta) {
		return true
	}
	dir, _ := splitName(name)
	if dir == "." {
		return true
	}
	// Entries come grouped by directory: asking for the last answer's
	// directory again saves a lookup per entry. entry forgets the answer
	// when it records a new entry of that name.
	if dir == ls.declaredDir {
		return true
	}
	e, ok := ls.entries[dir]
	if ok && e.ino == nil && e.closed {
		ls.declaredDir = dir
		return true
	}
	return false
}

// checkName refuses a name that no Linux filesystem can hold, which tar -x
// would fail on half-way through the image.
func checkName(name string) error {
	if len(name) >= maxPathLen {
		return fmt.Errorf("name is %d bytes, over Linux's limit of %d (PATH_MAX); the image cannot be unpacked on Linux", len(name), maxPathLen-1)
	}
	if len(name) <= maxNameLen {
		return nil // nor can any component be longer
	}
	for start, i := 0, 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			continue
		}
		if c := name[start:i]; len(c) > maxNameLen {
			return fmt.Errorf("component %q is %d bytes, over Linux's limit of %d (NAME_MAX); the image cannot be unpacked on Linux", shorten(c), len(c), maxNameLen)
		}
		start = i + 1
	}
	return nil
}

// checkSymlink refuses a symlink target that symlink(2) would refuse; it
// also bounds the work of resolving through it.
func checkSymlink(hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeSymlink && len(hdr.Linkname) >= maxPathLen {
		return fmt.Errorf("symlink target is %d bytes, over Linux's limit of %d (PATH_MAX); the image cannot be unpacked on Linux", len(hdr.Linkname), maxPathLen-1)
	}
	return nil
}

const (
	maxNameLen = 255  // NAME_MAX: bytes in one path component
	maxPathLen = 4096 // PATH_MAX, counting the terminating NUL
)

// shorten cuts a long untrusted name for an error message.
func shorten(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
}
