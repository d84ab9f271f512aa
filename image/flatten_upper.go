package image

import (
	"encoding/binary"
	"hash/maphash"
)

// upperIndex is what the layers read so far cast on each path they
// mention (a shadow), for the layers below: flatten asks it about every
// entry of a lower layer and each of its ancestors.
//
// It holds one entry per name of every layer but the base, so it is built
// for size: names are packed into 1 MiB chunks of bytes (shadow, length,
// name) and found through an open-addressing table of uint64 (32 bits of the
// name's hash, and where the name starts), with no pointers for the garbage
// collector to follow. That is about 8 to 16 bytes of table and the name
// plus two of chunk per entry, where a map[string]shadow took about 80.
// A map stays faster for the first upperCompactAfter names, which is all
// most images have, so the index starts as one.
type upperIndex struct {
	small map[string]shadow // until it holds upperCompactAfter names; then nil
	seed  maphash.Seed
	slots []uint64 // hash>>32<<32 | ref; 0 is empty
	used  int
	// chunks hold the entries; ref is chunk<<upperChunkBits | offset, plus
	// one so that no slot is 0.
	chunks [][]byte
}

const (
	upperChunkBits    = 20 // 1 MiB; a name is at most maxPathLen bytes
	upperCompactAfter = 1 << 16
)

func newUpperIndex() *upperIndex {
	return &upperIndex{small: make(map[string]shadow), seed: maphash.MakeSeed()}
}

// find returns the slot of name, or of the empty slot where it would go.
func (u *upperIndex) find(name string, h uint64) (int, bool) {
	mask := len(u.slots) - 1
	tag := h >> 32 << 32
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := u.slots[i]
		if s == 0 {
			return i, false
		}
		if s&^(1<<32-1) == tag && string(u.name(s)) == name {
			return i, true
		}
	}
}

// entry returns the chunk bytes of slot value s: the shadow byte, then the
// name's length and the name.
func (u *upperIndex) entry(s uint64) []byte {
	ref := uint32(s) - 1
	return u.chunks[ref>>upperChunkBits][ref&(1<<upperChunkBits-1):]
}

func (u *upperIndex) name(s uint64) []byte {
	e := u.entry(s)
	n, k := binary.Uvarint(e[1:])
	return e[1+k : 1+k+int(n)]
}

// get returns the shadow on name.
func (u *upperIndex) get(name string) shadow {
	if u.small != nil {
		return u.small[name]
	}
	if u.used == 0 {
		return 0
	}
	i, ok := u.find(name, maphash.String(u.seed, name))
	if !ok {
		return 0
	}
	return shadow(u.entry(u.slots[i])[0])
}

// add casts sh on name too.
func (u *upperIndex) add(name string, sh shadow) {
	if u.small != nil {
		if len(u.small) < upperCompactAfter {
			u.small[name] |= sh
			return
		}
		small := u.small
		u.small = nil
		for n, s := range small {
			u.add(n, s)
		}
	}
	if (u.used+1)*4 > len(u.slots)*3 {
		u.grow()
	}
	h := maphash.String(u.seed, name)
	i, ok := u.find(name, h)
	if ok {
		u.entry(u.slots[i])[0] |= byte(sh)
		return
	}
	size := 1 + binary.MaxVarintLen64 + len(name)
	last := len(u.chunks) - 1
	if last < 0 || len(u.chunks[last])+size > 1<<upperChunkBits {
		// The first chunk grows as needed (offsets into it stay valid),
		// so that a small image does not pay for a whole one.
		c := 4 << 10
		if last >= 0 {
			c = 1 << upperChunkBits
		}
		u.chunks = append(u.chunks, make([]byte, 0, c))
		last++
	}
	c := u.chunks[last]
	ref := uint64(last)<<upperChunkBits | uint64(len(c))
	c = append(c, byte(sh))
	c = binary.AppendUvarint(c, uint64(len(name)))
	u.chunks[last] = append(c, name...)
	u.slots[i] = h>>32<<32 | (ref + 1)
	u.used++
}

// grow doubles the table, keeping it at most three quarters full.
func (u *upperIndex) grow() {
	old := u.slots
	u.slots = make([]uint64, max(2*len(old), 64))
	for _, s := range old {
		if s == 0 {
			continue
		}
		name := u.name(s)
		i, _ := u.find(string(name), maphash.Bytes(u.seed, name))
		u.slots[i] = s
	}
}
