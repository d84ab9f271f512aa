package image

// The cold index of a large layer.
//
// flatten keeps every entry of the layer being read, by name, in case a
// later entry of the same layer links to it or replaces it: with its whole
// tar header, its inode and three map entries, about 900 bytes each, so one
// layer of two million files took 1.65 GiB. Most entries are plain
// (regular files, devices, fifos: not directories, symlinks or hardlinks,
// and no upper-layer link resolved at them), and for those the layer needs
// little: a later duplicate of the name just replaces them, so nothing is
// looked up for it, and only a later hardlink to the name needs the entry
// back. So once a layer has coldAfter entries in memory, each further plain
// entry becomes a record (name, the header fields the output uses, whether
// it was written or spooled) appended to one of coldBuckets buffers by a
// hash of its name, and a full buffer is written to a temp file in the
// spool directory. Memory is then the open buffers (at most coldBuckets *
// coldChunk bytes) and 16 bytes per written chunk of about 20 records:
// flat in the number of entries. A hardlink whose target is not in memory
// reads its target's bucket back (a few dozen chunks for millions of
// entries) and keeps the entry in memory from then on. The end of the layer
// reads every record once more to add the names to the index of upper
// layers, unless nothing lies below.

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"time"
)

const (
	// coldAfter is how many entries a layer keeps in memory before plain
	// ones go to the cold index: layers below it pay nothing.
	coldAfter = 8192
	// coldBuckets and coldChunk bound the memory of the open buffers.
	coldBuckets = 4096
	coldChunk   = 1 << 10
)

// Flags of a cold record.
const (
	coldOut     = 1 << iota // the entry's own name holds its content in the output
	coldMarked              // the entry marks its name (markNonDir) for lower layers
	coldSpooled             // the content is in the layer's spool file at spoolOff
)

type chunkRef struct {
	off int64
	n   int
}

// coldIndex holds the plain entries of one layer past coldAfter.
type coldIndex struct {
	seed   maphash.Seed
	open   [coldBuckets][]byte
	chunks [coldBuckets][]chunkRef
	dir    string
	file   *os.File
	w      *bufio.Writer
	end    int64 // bytes given to w
	rec    []byte
	read   []byte
}

func newColdIndex(dir string) *coldIndex {
	return &coldIndex{seed: maphash.MakeSeed(), dir: dir}
}

func (c *coldIndex) bucket(name string) int {
	return int(maphash.String(c.seed, name) % coldBuckets)
}

// add records a plain entry after it was written or spooled: its content
// entry is hdr and its state ino.
func (c *coldIndex) add(name string, hdr *tar.Header, ino *inode, marked bool) error {
	var flags byte
	if ino.out == name {
		flags |= coldOut
	}
	if marked {
		flags |= coldMarked
	}
	if ino.spooled {
		flags |= coldSpooled
	}
	body := c.rec[:0]
	body = append(body, flags, hdr.Typeflag)
	body = appendString(body, name)
	body = binary.AppendVarint(body, hdr.Mode)
	body = binary.AppendVarint(body, int64(hdr.Uid))
	body = binary.AppendVarint(body, int64(hdr.Gid))
	body = appendString(body, hdr.Uname)
	body = appendString(body, hdr.Gname)
	body = binary.AppendVarint(body, hdr.ModTime.Unix())
	body = binary.AppendUvarint(body, uint64(hdr.ModTime.Nanosecond()))
	body = binary.AppendVarint(body, hdr.Size)
	body = binary.AppendVarint(body, hdr.Devmajor)
	body = binary.AppendVarint(body, hdr.Devminor)
	body = binary.AppendVarint(body, ino.spoolOff)
	var pax int
	for k := range hdr.PAXRecords {
		if !paxDerived(k) {
			pax++
		}
	}
	body = binary.AppendUvarint(body, uint64(pax))
	for k, v := range hdr.PAXRecords {
		if !paxDerived(k) {
			body = appendString(appendString(body, k), v)
		}
	}
	c.rec = body

	b := c.bucket(name)
	var lenBuf [binary.MaxVarintLen64]byte
	prefix := lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(body)))]
	size := len(prefix) + len(body)
	if len(c.open[b])+size > coldChunk {
		if err := c.flush(b); err != nil {
			return err
		}
	}
	if c.open[b] == nil {
		c.open[b] = make([]byte, 0, coldChunk)
	}
	c.open[b] = append(append(c.open[b], prefix...), body...)
	if len(c.open[b]) >= coldChunk {
		// One record larger than a chunk (long xattrs) is a chunk of its
		// own, so the buffer never grows past its capacity for long.
		return c.flush(b)
	}
	return nil
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// flush writes bucket b's open buffer to the file as a chunk.
func (c *coldIndex) flush(b int) error {
	buf := c.open[b]
	if len(buf) == 0 {
		return nil
	}
	if c.file == nil {
		f, err := os.CreateTemp(c.dir, ".flatten-index-*")
		if err != nil {
			return fmt.Errorf("creating index file: %w", err)
		}
		c.file, c.w = f, bufio.NewWriterSize(f, 64<<10)
	}
	if _, err := c.w.Write(buf); err != nil {
		return fmt.Errorf("writing index file: %w", err)
	}
	c.chunks[b] = append(c.chunks[b], chunkRef{c.end, len(buf)})
	c.end += int64(len(buf))
	if cap(buf) > coldChunk {
		c.open[b] = nil // a large record's buffer is not kept
	} else {
		c.open[b] = buf[:0]
	}
	return nil
}

// coldRecord is a record as scan reads it: name and body point into a
// buffer that the next record may reuse.
type coldRecord struct {
	name  []byte
	typ   byte
	flags byte
	body  []byte // the rest, for header
}

// header decodes the rest of the record into the entry's header and the
// spool offset.
func (r coldRecord) header() (*tar.Header, int64, error) {
	d := decoder{b: r.body}
	h := &tar.Header{Typeflag: r.typ, Name: string(r.name)}
	h.Mode = d.varint()
	h.Uid = int(d.varint())
	h.Gid = int(d.varint())
	h.Uname = d.string()
	h.Gname = d.string()
	sec := d.varint()
	h.ModTime = time.Unix(sec, int64(d.uvarint()))
	h.Size = d.varint()
	h.Devmajor = d.varint()
	h.Devminor = d.varint()
	spoolOff := d.varint()
	if n := d.uvarint(); n > 0 && d.err == nil {
		h.PAXRecords = make(map[string]string, n)
		for range n {
			k := d.string()
			h.PAXRecords[k] = d.string()
		}
	}
	return h, spoolOff, d.err
}

// decoder reads what add appended; a short or bad record sets err.
type decoder struct {
	b   []byte
	err error
}

var errBadIndexRecord = errors.New("index file record is cut short")

// skip moves past a value of n bytes; n <= 0 is binary's error.
func (d *decoder) skip(n int) bool {
	if n <= 0 {
		d.err, d.b = errBadIndexRecord, nil
		return false
	}
	d.b = d.b[n:]
	return true
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if !d.skip(n) {
		return 0
	}
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if !d.skip(n) {
		return 0
	}
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err, d.b = errBadIndexRecord, nil
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// scan calls fn for each record of bucket b in the order added.
func (c *coldIndex) scan(b int, fn func(coldRecord) error) error {
	if c.w != nil {
		if err := c.w.Flush(); err != nil {
			return fmt.Errorf("writing index file: %w", err)
		}
	}
	for _, ch := range c.chunks[b] {
		if cap(c.read) < ch.n {
			c.read = make([]byte, ch.n)
		}
		buf := c.read[:ch.n]
		if _, err := c.file.ReadAt(buf, ch.off); err != nil {
			return fmt.Errorf("reading index file: %w", err)
		}
		if err := scanChunk(buf, fn); err != nil {
			return err
		}
	}
	return scanChunk(c.open[b], fn)
}

func scanChunk(buf []byte, fn func(coldRecord) error) error {
	for len(buf) > 0 {
		n, k := binary.Uvarint(buf)
		if k <= 0 || n < 2 || n > uint64(len(buf)-k) {
			return errBadIndexRecord
		}
		body := buf[k : k+int(n)]
		buf = buf[k+int(n):]
		d := decoder{b: body[2:]}
		nameLen := d.uvarint()
		if d.err != nil || nameLen > uint64(len(d.b)) {
			return errBadIndexRecord
		}
		r := coldRecord{name: d.b[:nameLen], flags: body[0], typ: body[1], body: d.b[nameLen:]}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// lookup returns the last record of name, if any.
func (c *coldIndex) lookup(name string) (coldRecord, bool, error) {
	var found coldRecord
	var ok bool
	err := c.scan(c.bucket(name), func(r coldRecord) error {
		if string(r.name) == name {
			found, ok = r, true
			found.name = []byte(name)
			found.body = append([]byte(nil), r.body...)
		}
		return nil
	})
	return found, ok, err
}

// each calls fn for every record, bucket by bucket.
func (c *coldIndex) each(fn func(coldRecord) error) error {
	for b := range coldBuckets {
		if err := c.scan(b, fn); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes the index file.
func (c *coldIndex) remove() error {
	f := c.file
	c.file, c.w = nil, nil
	return removeTemp(f, "index file")
}

// warm returns the entry of name from the cold index, keeping it in memory
// from now on, as a hardlink to it may be followed by others.
func (ls *layerState) warm(name string) (*layerEntry, bool, error) {
	r, ok, err := ls.cold.lookup(name)
	if err != nil || !ok {
		return nil, false, err
	}
	h, spoolOff, err := r.header()
	if err != nil {
		return nil, false, err
	}
	ino := &inode{hdr: h, spoolOff: spoolOff, spooled: r.flags&coldSpooled != 0}
	if r.flags&coldOut != 0 {
		ino.out = name
	}
	e := &layerEntry{ino: ino}
	ls.entries[name] = e
	return e, true, nil
}

// mark returns what the layer does at p, cold entries included.
func (ls *layerState) mark(p string) (mark, error) {
	m := ls.marks[p]
	if ls.cold == nil {
		return m, nil
	}
	r, ok, err := ls.cold.lookup(p)
	if err == nil && ok && r.flags&coldMarked != 0 {
		m |= markNonDir
	}
	return m, err
}
