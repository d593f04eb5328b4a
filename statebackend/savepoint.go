package statebackend

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"flotilla/objectstore"
	"flotilla/statebackend/keygroup"
)

// Canonical savepoint format, version 1. One object per task, independent of
// Pebble's file formats, readable by any build that knows the version:
//
//	object  := block(Range.Start) ... block(Range.End) footer trailer
//	block   := entry*                   one key group; may be empty
//	entry   := tag [nameLen:1 name] uvarint(len(key)) key value
//	tag     := kind | 0x80 if the state name follows (first entry of a block,
//	           and whenever kind or state changes); kind 1 = value, 2 = counter
//	value   := uvarint(len) bytes       for kind 1
//	         | varint(int64)             for kind 2: the counter's final value
//	footer  := maxParallelism:4 rangeStart:4 rangeEnd:4 groups:4
//	           groups x (group:4 offset:8 length:8 entries:8 applied:8 crc32c:4 codec:1 reserved:3)
//	trailer := footerLength:8 footerCRC32C:4 version:4 magic:8 ("FLOTSVPT")
//
// Integers in footer and trailer are little-endian. Blocks hold the group's
// entries in Pebble key order (state kind, state name, user key); a block's
// CRC32C covers its stored bytes; codec 0 means uncompressed, the only codec
// of version 1. The applied sequence of each group is in the footer, not in
// the blocks. A reader range-reads the trailer and footer, then only the
// blocks of the groups it needs (after Flink's KeyGroupRangeOffsets).
const (
	savepointMagic    = "FLOTSVPT"
	savepointVersion  = 1
	trailerLen        = 24
	footerHeaderLen   = 16
	footerEntryLen    = 44
	entryKindValue    = 1
	entryKindCounter  = 2
	entryNameFollows  = 0x80
	codecNone         = 0
	savepointTailRead = 8 << 10 // the first read of a footer fetches this much of the end: the footer of 128 groups and the trailer
)

// groupBlock is one footer entry.
type groupBlock struct {
	group   int
	offset  int64
	length  int64
	entries uint64
	applied uint64
	crc     uint32
	codec   byte
}

type savepointFooter struct {
	maxParallelism int
	rng            keygroup.Range
	blocks         []groupBlock // one per group of rng, in order
	dataEnd        int64        // offset of the footer
}

func (f *savepointFooter) encode() []byte {
	buf := make([]byte, 0, footerHeaderLen+footerEntryLen*len(f.blocks)+trailerLen)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(f.maxParallelism))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(f.rng.Start))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(f.rng.End))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(f.blocks)))
	for _, b := range f.blocks {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(b.group))
		buf = binary.LittleEndian.AppendUint64(buf, uint64(b.offset))
		buf = binary.LittleEndian.AppendUint64(buf, uint64(b.length))
		buf = binary.LittleEndian.AppendUint64(buf, b.entries)
		buf = binary.LittleEndian.AppendUint64(buf, b.applied)
		buf = binary.LittleEndian.AppendUint32(buf, b.crc)
		buf = append(buf, b.codec, 0, 0, 0)
	}
	footerLen := len(buf)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(footerLen))
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[:footerLen], castagnoli))
	buf = binary.LittleEndian.AppendUint32(buf, savepointVersion)
	return append(buf, savepointMagic...)
}

// decodeSavepointFooter parses footer (without trailer) of an object whose
// data blocks end at dataEnd.
func decodeSavepointFooter(key string, footer []byte, dataEnd int64) (*savepointFooter, error) {
	if len(footer) < footerHeaderLen {
		return nil, corruptf(key, "footer of %d bytes", len(footer))
	}
	le := binary.LittleEndian
	f := &savepointFooter{
		maxParallelism: int(le.Uint32(footer[0:])),
		rng:            keygroup.Range{Start: int(le.Uint32(footer[4:])), End: int(le.Uint32(footer[8:]))},
		dataEnd:        dataEnd,
	}
	n := int(le.Uint32(footer[12:]))
	if f.maxParallelism < 1 || f.maxParallelism > keygroup.MaxMaxParallelism || f.rng.Validate(f.maxParallelism) != nil ||
		n != f.rng.Len() || len(footer) != footerHeaderLen+n*footerEntryLen {
		return nil, corruptf(key, "footer: max parallelism %d, range %v, %d groups in %d bytes", f.maxParallelism, f.rng, n, len(footer))
	}
	f.blocks = make([]groupBlock, n)
	var next int64
	for i := range f.blocks {
		e := footer[footerHeaderLen+i*footerEntryLen:]
		b := groupBlock{
			group:   int(le.Uint32(e[0:])),
			offset:  int64(le.Uint64(e[4:])),
			length:  int64(le.Uint64(e[12:])),
			entries: le.Uint64(e[20:]),
			applied: le.Uint64(e[28:]),
			crc:     le.Uint32(e[36:]),
			codec:   e[40],
		}
		if b.group != f.rng.Start+i || b.offset != next || b.length < 0 || b.length > dataEnd-b.offset {
			return nil, corruptf(key, "footer entry %d: group %d at [%d, +%d)", i, b.group, b.offset, b.length)
		}
		if b.codec != codecNone {
			return nil, fmt.Errorf("%w: %q: group %d has codec %d", ErrUnknownFormat, key, b.group, b.codec)
		}
		next = b.offset + b.length
		f.blocks[i] = b
	}
	if next != dataEnd {
		return nil, corruptf(key, "blocks end at %d, footer starts at %d", next, dataEnd)
	}
	return f, nil
}

// readSavepointFooter reads and verifies the trailer and footer of savepoint
// object key.
func readSavepointFooter(ctx context.Context, store objectstore.Store, key string) (*savepointFooter, error) {
	info, err := store.Stat(ctx, key)
	if err != nil {
		return nil, storeErr("stat", key, err)
	}
	size := info.Size
	if size < trailerLen {
		return nil, corruptf(key, "%d bytes, shorter than a trailer", size)
	}
	tailLen := min(size, savepointTailRead)
	tail, err := readRange(ctx, store, key, size-tailLen, tailLen)
	if err != nil {
		return nil, err
	}
	tr := tail[len(tail)-trailerLen:]
	le := binary.LittleEndian
	if string(tr[16:24]) != savepointMagic {
		return nil, corruptf(key, "no savepoint magic")
	}
	if v := le.Uint32(tr[12:]); v != savepointVersion {
		return nil, fmt.Errorf("%w: %q: savepoint version %d", ErrUnknownFormat, key, v)
	}
	footerLen := int64(le.Uint64(tr[0:]))
	if footerLen < footerHeaderLen || footerLen > size-trailerLen {
		return nil, corruptf(key, "footer length %d in an object of %d bytes", footerLen, size)
	}
	var footer []byte
	if footerLen+trailerLen <= tailLen {
		footer = tail[tailLen-trailerLen-footerLen : tailLen-trailerLen]
	} else if footer, err = readRange(ctx, store, key, size-trailerLen-footerLen, footerLen); err != nil {
		return nil, err
	}
	if got, want := crc32.Checksum(footer, castagnoli), le.Uint32(tr[8:]); got != want {
		return nil, corruptf(key, "footer crc32c %08x, trailer says %08x", got, want)
	}
	return decodeSavepointFooter(key, footer, size-trailerLen-footerLen)
}

// readRange reads exactly length bytes of key at offset.
func readRange(ctx context.Context, store objectstore.Store, key string, offset, length int64) ([]byte, error) {
	rc, err := store.Get(ctx, key, offset, length)
	if err != nil {
		return nil, storeErr("get", key, err)
	}
	defer rc.Close()
	buf := make([]byte, length)
	if _, err := io.ReadFull(rc, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, corruptf(key, "short read at %d+%d", offset, length)
		}
		return nil, storeErr("get", key, err)
	}
	return buf, nil
}

// PendingSavepoint is a consistent view of the backend's state, taken by
// Savepoint, until Write turns it into a canonical savepoint. Release it
// before closing the backend.
type PendingSavepoint struct {
	b    *Backend
	snap *pebble.Snapshot
	once sync.Once
}

// Savepoint takes a consistent view of committed state (a Pebble snapshot,
// microseconds) for a canonical savepoint, so that processing can continue
// while Write runs.
func (b *Backend) Savepoint() (*PendingSavepoint, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	return &PendingSavepoint{b: b, snap: b.db.NewSnapshot()}, nil
}

// Release drops the view. It is safe to call more than once.
func (p *PendingSavepoint) Release() {
	p.once.Do(func() { _ = p.snap.Close() })
}

// WriteSavepoint writes a canonical savepoint of the state committed when it
// is called as object key, with PutIfAbsent, and returns its handle. Batches
// may commit concurrently; they are not in the savepoint.
func (b *Backend) WriteSavepoint(ctx context.Context, store objectstore.Store, key string) (Handle, error) {
	p, err := b.Savepoint()
	if err != nil {
		return Handle{}, err
	}
	defer p.Release()
	return p.Write(ctx, store, key)
}

// savepointPart is the encoded blocks of a contiguous sub-range of groups,
// in a local temp file.
type savepointPart struct {
	rng    keygroup.Range
	path   string
	size   int64
	blocks []groupBlock // offsets relative to the part
}

// Write encodes the view into local temp files (one per CPU, up to 4, each a
// contiguous sub-range of groups), then uploads them as one object: the
// store needs the size before the first byte, and a local file keeps memory
// bounded whatever the state size. The object is written with PutIfAbsent.
func (p *PendingSavepoint) Write(ctx context.Context, store objectstore.Store, key string) (Handle, error) {
	if err := objectstore.ValidateKey(key); err != nil {
		return Handle{}, err
	}
	b := p.b
	rng := b.opts.KeyGroups
	parts := b.splitRange(rng, min(runtime.GOMAXPROCS(0), 4))
	defer func() {
		for _, part := range parts {
			if part.path != "" {
				_ = os.Remove(part.path)
			}
		}
	}()
	jobs := make([]func(context.Context) error, len(parts))
	for i := range parts {
		part := &parts[i]
		jobs[i] = func(ctx context.Context) error { return p.encodePart(ctx, part) }
	}
	if err := runParallel(ctx, len(jobs), jobs); err != nil {
		return Handle{}, fmt.Errorf("statebackend: savepoint %q: %w", key, err)
	}

	footer := savepointFooter{maxParallelism: b.opts.MaxParallelism, rng: rng}
	var offset int64
	readers := make([]io.Reader, 0, len(parts)+1)
	for _, part := range parts {
		for _, blk := range part.blocks {
			blk.offset += offset
			footer.blocks = append(footer.blocks, blk)
		}
		offset += part.size
		f, err := os.Open(part.path)
		if err != nil {
			return Handle{}, fmt.Errorf("statebackend: savepoint %q: %w", key, err)
		}
		defer f.Close()
		// Stores copy in small chunks; a large buffer saves most read calls.
		readers = append(readers, bufio.NewReaderSize(f, 1<<20))
	}
	tail := footer.encode()
	readers = append(readers, bytes.NewReader(tail))
	size := offset + int64(len(tail))
	if err := store.PutIfAbsent(ctx, key, io.MultiReader(readers...), size); err != nil {
		return Handle{}, storeErr("put", key, err)
	}
	return Handle{
		Version:  HandleVersion,
		Format:   FormatCanonical,
		Manifest: key,
		Range:    rng,
		Size:     size,
		Uploaded: size,
		Files:    []string{key},
	}, nil
}

// splitRange splits r into at most n contiguous parts of about equal
// estimated size.
func (b *Backend) splitRange(r keygroup.Range, n int) []savepointPart {
	n = min(n, r.Len())
	if n <= 1 {
		return []savepointPart{{rng: r}}
	}
	sizes := make([]uint64, r.Len())
	var total uint64
	for g := r.Start; g <= r.End; g++ {
		s, err := b.db.EstimateDiskUsage(groupPrefix(g), groupPrefix(g+1))
		if err != nil {
			s = 1
		}
		sizes[g-r.Start] = s + 1
		total += s + 1
	}
	var parts []savepointPart
	start := r.Start
	var acc uint64
	for g := r.Start; g <= r.End; g++ {
		acc += sizes[g-r.Start]
		if acc*uint64(n) >= total*uint64(len(parts)+1) && len(parts) < n-1 && g < r.End {
			parts = append(parts, savepointPart{rng: keygroup.Range{Start: start, End: g}})
			start = g + 1
		}
	}
	return append(parts, savepointPart{rng: keygroup.Range{Start: start, End: r.End}})
}

// blockEncoder writes blocks into a file, buffering and checksumming.
type blockEncoder struct {
	f        *os.File
	buf      []byte
	off      int64 // bytes written to f
	blockOff int64 // offset of the current block
	crc      uint32
	entries  uint64
	prevKind byte
	prevName []byte
	tmp      [binary.MaxVarintLen64]byte
}

const encoderBufSize = 1 << 20

func (e *blockEncoder) flushBuf() error {
	if len(e.buf) == 0 {
		return nil
	}
	e.crc = crc32.Update(e.crc, castagnoli, e.buf)
	n, err := e.f.Write(e.buf)
	e.off += int64(n)
	e.buf = e.buf[:0]
	return err
}

func (e *blockEncoder) beginBlock() {
	e.blockOff = e.off + int64(len(e.buf))
	e.crc = 0
	e.entries = 0
	e.prevKind = 0
	e.prevName = e.prevName[:0]
}

func (e *blockEncoder) endBlock(g int, applied uint64) (groupBlock, error) {
	if err := e.flushBuf(); err != nil {
		return groupBlock{}, err
	}
	return groupBlock{group: g, offset: e.blockOff, length: e.off - e.blockOff, entries: e.entries, applied: applied, crc: e.crc, codec: codecNone}, nil
}

func (e *blockEncoder) add(kind byte, name, user, value []byte) error {
	tag := kind
	if kind != e.prevKind || !bytes.Equal(name, e.prevName) {
		tag |= entryNameFollows
		e.prevKind = kind
		e.prevName = append(e.prevName[:0], name...)
	}
	e.buf = append(e.buf, tag)
	if tag&entryNameFollows != 0 {
		e.buf = append(e.buf, byte(len(name)))
		e.buf = append(e.buf, name...)
	}
	e.buf = binary.AppendUvarint(e.buf, uint64(len(user)))
	e.buf = append(e.buf, user...)
	if kind == entryKindCounter {
		n, ok := decodeInt64(value)
		if !ok {
			return fmt.Errorf("%w: counter of %d bytes", ErrCorrupt, len(value))
		}
		e.buf = binary.AppendVarint(e.buf, n)
	} else {
		e.buf = binary.AppendUvarint(e.buf, uint64(len(value)))
		e.buf = append(e.buf, value...)
	}
	e.entries++
	if len(e.buf) >= encoderBufSize {
		return e.flushBuf()
	}
	return nil
}

// encodePart encodes the groups of part.rng into a new temp file.
func (p *PendingSavepoint) encodePart(ctx context.Context, part *savepointPart) (err error) {
	f, err := os.CreateTemp(p.b.tmpDir(), "savepoint-*")
	if err != nil {
		return err
	}
	part.path = f.Name()
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	it, err := p.snap.NewIter(&pebble.IterOptions{
		LowerBound: groupPrefix(part.rng.Start),
		UpperBound: groupPrefix(part.rng.End + 1),
	})
	if err != nil {
		return err
	}
	defer it.Close()
	e := &blockEncoder{f: f, buf: make([]byte, 0, encoderBufSize+64<<10)}
	g := part.rng.Start
	var applied uint64
	e.beginBlock()
	finish := func(upTo int) error {
		for ; g < upTo; g++ {
			blk, err := e.endBlock(g, applied)
			if err != nil {
				return err
			}
			part.blocks = append(part.blocks, blk)
			applied = 0
			e.beginBlock()
		}
		return nil
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if kg := keyGroupOf(k); kg != g {
			if err := finish(kg); err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(k) == 4 && k[2] == nsMeta && k[3] == metaApplied {
			seq, ok := decodeSeq(v)
			if !ok {
				return fmt.Errorf("%w: applied mark of group %d has %d bytes", ErrCorrupt, g, len(v))
			}
			applied = seq
			continue
		}
		pk, ok := parseStateKey(k)
		if !ok {
			return fmt.Errorf("%w: unknown key %x", ErrCorrupt, k)
		}
		kind := byte(entryKindValue)
		if pk.ns == nsCounter {
			kind = entryKindCounter
		}
		if err := e.add(kind, pk.state, pk.user, v); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := finish(part.rng.End + 1); err != nil {
		return err
	}
	part.size = e.off
	return nil
}

func (b *Backend) tmpDir() string { return b.dir + string(os.PathSeparator) + tmpDirName }

// blockDecoder decodes the blocks of one range read of a savepoint. It
// reads the source in chunks and parses entries in place; an entry larger
// than a chunk grows the buffer to that entry's size, which the block's
// length bounds.
type blockDecoder struct {
	key     string // object, for errors
	m       int
	src     io.Reader
	data    []byte // read, not yet parsed: data[pos:]
	pos     int
	left    int64  // bytes of the current block not yet read from src
	crc     uint32 // of the current block's bytes read so far
	kbuf    []byte // Pebble key being built
	name    []byte
	vbuf    []byte // value: in data, or counter
	counter [8]byte
	prev    []byte // previous Pebble key
}

const (
	decoderChunk = 256 << 10
	// maxEntryHead bounds an entry's bytes before its key: tag, name
	// length, name, key length.
	maxEntryHead = 1 + 1 + MaxStateNameLen + binary.MaxVarintLen64
)

func newBlockDecoder(key string, m int, src io.Reader) *blockDecoder {
	return &blockDecoder{key: key, m: m, src: src, data: make([]byte, 0, decoderChunk)}
}

// fill makes at least need bytes available at data[pos:], unless the block
// has fewer left.
func (d *blockDecoder) fill(need int) error {
	avail := len(d.data) - d.pos
	if avail >= need || d.left == 0 {
		return nil
	}
	n := copy(d.data, d.data[d.pos:])
	d.data, d.pos = d.data[:n], 0
	want := int(min(int64(max(need-avail, decoderChunk)), d.left))
	d.data = growTo(d.data, avail+want)
	got, err := io.ReadFull(d.src, d.data[avail:])
	d.crc = crc32.Update(d.crc, castagnoli, d.data[avail:avail+got])
	d.data = d.data[:avail+got]
	d.left -= int64(got)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return corruptf(d.key, "truncated: %d bytes of a block missing", d.left)
		}
		return storeErr("get", d.key, err)
	}
	return nil
}

// decode reads block blk from the source, calling emit with each entry's
// Pebble key and value, in key order, the applied mark first. The slices
// passed to emit are valid only during the call.
func (d *blockDecoder) decode(blk groupBlock, emit func(k, v []byte) error) error {
	d.left, d.crc = blk.length, 0
	d.data, d.pos = d.data[:0], 0
	d.prev = d.prev[:0]
	if blk.applied > 0 {
		if err := emit(appliedKey(blk.group), encodeSeq(blk.applied)); err != nil {
			return err
		}
	}
	var n uint64
	bad := func(format string, args ...any) error {
		return corruptf(d.key, "group %d, entry %d: %s", blk.group, n, fmt.Sprintf(format, args...))
	}
	var kind byte
	for ; ; n++ {
		if err := d.fill(maxEntryHead); err != nil {
			return err
		}
		p := d.data[d.pos:]
		if len(p) == 0 {
			break
		}
		tag := p[0]
		i := 1
		if k := tag &^ entryNameFollows; k != entryKindValue && k != entryKindCounter {
			return bad("tag %#x", tag)
		} else if tag&entryNameFollows != 0 {
			if i >= len(p) || p[i] == 0 || i+1+int(p[i]) > len(p) {
				return bad("state name")
			}
			d.name = append(d.name[:0], p[i+1:i+1+int(p[i])]...)
			i += 1 + int(p[i])
			kind = k
		} else if k != kind {
			return bad("no state name")
		}
		ulen, w := binary.Uvarint(p[i:])
		if w <= 0 || ulen > uint64(len(p)-i-w)+uint64(d.left) {
			return bad("key length")
		}
		i += w
		// The key and the value's length (or the counter).
		if err := d.fill(i + int(ulen) + binary.MaxVarintLen64); err != nil {
			return err
		}
		p = d.data[d.pos:]
		if i+int(ulen) > len(p) {
			return bad("key")
		}
		user := p[i : i+int(ulen)]
		i += int(ulen)
		ns := nsValue
		if kind == entryKindCounter {
			ns = nsCounter
			c, w := binary.Varint(p[i:])
			if w <= 0 {
				return bad("counter")
			}
			i += w
			binary.LittleEndian.PutUint64(d.counter[:], uint64(c))
			d.vbuf = d.counter[:]
		} else {
			vlen, w := binary.Uvarint(p[i:])
			if w <= 0 || vlen > uint64(len(p)-i-w)+uint64(d.left) {
				return bad("value length")
			}
			i += w
			if err := d.fill(i + int(vlen)); err != nil {
				return err
			}
			p = d.data[d.pos:]
			if i+int(vlen) > len(p) {
				return bad("value")
			}
			d.vbuf = p[i : i+int(vlen)]
			i += int(vlen)
			user = p[i-int(vlen)-w-int(ulen) : i-int(vlen)-w]
		}
		if g := keygroup.Of(user, d.m); g != blk.group {
			return bad("key %q belongs to group %d", user, g)
		}
		d.kbuf = append(appendStatePrefix(d.kbuf[:0], blk.group, ns, d.name), user...)
		if bytes.Compare(d.kbuf, d.prev) <= 0 {
			return bad("key out of order")
		}
		d.prev, d.kbuf = d.kbuf, d.prev
		if err := emit(d.prev, d.vbuf); err != nil {
			return err
		}
		d.pos += i
	}
	if d.crc != blk.crc {
		return corruptf(d.key, "group %d: crc32c %08x, footer says %08x", blk.group, d.crc, blk.crc)
	}
	if n != blk.entries {
		return corruptf(d.key, "group %d: %d entries, footer says %d", blk.group, n, blk.entries)
	}
	return nil
}

// growTo returns b resized to n bytes, keeping its contents.
func growTo(b []byte, n int) []byte {
	if cap(b) < n {
		nb := make([]byte, n, n+n/4)
		copy(nb, b)
		return nb
	}
	return b[:n]
}

// readSavepointGroups range-reads the blocks of groups r (within the
// footer's range) in one request and decodes them.
func readSavepointGroups(ctx context.Context, store objectstore.Store, key string, f *savepointFooter, r keygroup.Range, emit func(k, v []byte) error) error {
	first := f.blocks[r.Start-f.rng.Start]
	last := f.blocks[r.End-f.rng.Start]
	length := last.offset + last.length - first.offset
	rc, err := store.Get(ctx, key, first.offset, length)
	if err != nil {
		return storeErr("get", key, err)
	}
	defer rc.Close()
	d := newBlockDecoder(key, f.maxParallelism, rc)
	for g := r.Start; g <= r.End; g++ {
		if err := d.decode(f.blocks[g-f.rng.Start], emit); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}
