package image

// A non-directory that replaces a directory of its own layer.
//
// A layer may hold a directory D with entries under it and, later, a file
// (or symlink, device, hardlink) named D: unpacked in order, as umoci and
// tar -x do, the later entry wins, and what was under D is gone, except
// through hardlinks made to it outside D in the meantime. flatten writes
// each entry as it reads it, so by the time the replacement comes the
// entries under D are in the output, and tar -x cannot replace a non-empty
// directory by a file. Such layers are rare, so instead of paying for every
// layer with a look-ahead, a pass that meets one records the replacement
// (layer, D, the replacing entry's position), goes on reading without
// writing to find the others, and flatten rewinds the output and runs again.
// In the next pass the entries of that layer under D that come before the
// replacing entry are read as if some upper layer hid them: not written, no
// marks, no implicit parents, but their content is kept (spooled) for the
// hardlinks of the layer that name them.
//
// Whether the replacing entry is visible does not matter: umoci removes
// what was under D when it unpacks the layer, even if an upper layer then
// puts its own D there.
//
// It terminates: a recorded replacement is never found again, as the
// entries under D before it, which made it one, are hidden in later passes;
// so each further pass records at least one replacement the earlier ones did
// not, and there are only so many entries. Two passes find them all, so the
// third writes the image. Finding one needs only the layer's own entries
// before it (their resolved names, and whether an upper layer buries them,
// in which case nothing under D was written), and the entries a pass keeps
// that it should not change neither: they only add marks under each D and
// on D itself. They can make the pass fail where resolving starts later in
// the layer (the replayed layer has entries under a D that is no longer a
// directory); the pass then goes on with the next layer, and the next pass,
// which replays the layer right, finds the rest of it. The cap
// (maxFlattenAttempts) holds that.

import "strings"

// maxFlattenAttempts bounds the passes of flatten over the layers.
const maxFlattenAttempts = 3

// dirReplacement is a non-directory, entry number entry of layer layer, that
// replaces the directory dir (a resolved name) with entries of the same layer
// under it.
type dirReplacement struct {
	layer int
	dir   string
	entry int
}

// goneDirs are, by layer, the directories replaced in their layer, each
// with the number of the last entry that replaces it: every entry of that
// layer under the directory before that one is gone.
type goneDirs map[int]map[string]int

// add returns g with the replacements rs added.
func (g goneDirs) add(rs []dirReplacement) goneDirs {
	if g == nil {
		g = make(goneDirs)
	}
	for _, r := range rs {
		dirs := g[r.layer]
		if dirs == nil {
			dirs = make(map[string]int)
			g[r.layer] = dirs
		}
		if last, ok := dirs[r.dir]; !ok || r.entry > last {
			dirs[r.dir] = r.entry
		}
	}
	return g
}

// hideGone reports whether entry idx, named name, lies under a directory that
// a later entry of its layer replaces, and records it under each such
// directory so that the replacement can forget it.
func (ls *layerState) hideGone(name string, idx int) bool {
	hidden := false
	for i := strings.LastIndexByte(name, '/'); i > 0; i = strings.LastIndexByte(name[:i], '/') {
		d := name[:i]
		if last, ok := ls.gone[d]; ok && idx < last {
			if ls.goneUnder == nil {
				ls.goneUnder = make(map[string][]string)
			}
			ls.goneUnder[d] = append(ls.goneUnder[d], name)
			hidden = true
		}
	}
	return hidden
}

// dropGone forgets, at the entry that last replaces directory name, the
// entries hidden under it: later entries cannot link to them or find their
// parents declared through them, as umoci removed them.
func (ls *layerState) dropGone(name string, idx int) {
	if last, ok := ls.gone[name]; !ok || idx != last {
		return
	}
	for _, n := range ls.goneUnder[name] {
		delete(ls.entries, n)
	}
	delete(ls.goneUnder, name)
	if d := ls.declaredDir; d == name || strings.HasPrefix(d, name+"/") {
		ls.declaredDir = ""
	}
}
