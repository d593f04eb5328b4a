package statebackend

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
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

// Tuning of Write's second pass.
const (
	streamChunk      = 256 << 10 // bytes an encoder hands to the writer at once
	streamUnitChunks = 4         // chunks a unit may have waiting for the writer
	streamUnitBytes  = streamChunk * streamUnitChunks
)

// Write writes the view as object key, with PutIfAbsent, and returns its
// handle. It makes two passes over the view, each spread over up to 4
// goroutines. The first measures every group's block: the store needs the
// object's size before its first byte. The second encodes the blocks again,
// in units of about 1 MiB of consecutive groups, and streams them in order
// through an io.Pipe into the store, checksumming each group on the way.
// Memory stays bounded (a window of encoded chunks), nothing is written to
// local disk, and the upload overlaps the encoding: a temp file would double
// the disk writes, which on a slow disk halved throughput (BENCHMARKS.md).
func (p *PendingSavepoint) Write(ctx context.Context, store objectstore.Store, key string) (Handle, error) {
	if err := objectstore.ValidateKey(key); err != nil {
		return Handle{}, err
	}
	par := min(runtime.GOMAXPROCS(0), 4)
	f, err := p.measure(ctx, par)
	if err != nil {
		return Handle{}, fmt.Errorf("statebackend: savepoint %q: %w", key, err)
	}
	size := f.dataEnd + int64(footerHeaderLen+footerEntryLen*len(f.blocks)+trailerLen)

	pr, pw := io.Pipe()
	putErr := make(chan error, 1)
	go func() {
		err := store.PutIfAbsent(ctx, key, pr, size)
		// If the store gave up without reading everything, unblock the
		// writer.
		_ = pr.CloseWithError(cmp.Or(err, io.ErrClosedPipe))
		putErr <- err
	}()
	werr := p.stream(ctx, pw, f, par)
	if werr == nil {
		_, werr = pw.Write(f.encode())
	}
	_ = pw.CloseWithError(werr)
	if err := <-putErr; err != nil {
		if werr != nil && !errors.Is(werr, io.ErrClosedPipe) {
			// The store failed because the writer did.
			return Handle{}, fmt.Errorf("statebackend: savepoint %q: %w", key, werr)
		}
		return Handle{}, storeErr("put", key, err)
	}
	if werr != nil {
		return Handle{}, fmt.Errorf("statebackend: savepoint %q: %w", key, werr)
	}
	return Handle{
		Version:  HandleVersion,
		Format:   FormatCanonical,
		Manifest: key,
		Range:    f.rng,
		Size:     size,
		Uploaded: size,
		Files:    []string{key},
		Sizes:    []int64{size},
	}, nil
}

// entryVisitor receives a walk over the view.
type entryVisitor interface {
	// group starts group g; every group of the walked range is started, in
	// order, empty ones too.
	group(g int) error
	// applied gives the current group's applied mark.
	applied(seq uint64)
	// entry gives an entry of the current group, in key order;
	// nameFollows says whether its state name is written.
	entry(kind byte, nameFollows bool, name, user, value []byte) error
}

// walk visits the entries of groups r in the view.
func (p *PendingSavepoint) walk(ctx context.Context, r keygroup.Range, v entryVisitor) error {
	it, err := p.snap.NewIter(&pebble.IterOptions{LowerBound: groupPrefix(r.Start), UpperBound: groupPrefix(r.End + 1)})
	if err != nil {
		return err
	}
	defer it.Close()
	g := r.Start
	if err := v.group(g); err != nil {
		return err
	}
	var prevKind byte
	var prevName []byte
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		for kg := keyGroupOf(k); g < kg; {
			g++
			if err := v.group(g); err != nil {
				return err
			}
			prevKind = 0
		}
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(k) == 4 && k[2] == nsMeta && k[3] == metaApplied {
			seq, ok := decodeSeq(val)
			if !ok {
				return fmt.Errorf("%w: applied mark of group %d has %d bytes", ErrCorrupt, g, len(val))
			}
			v.applied(seq)
			continue
		}
		pk, ok := parseStateKey(k)
		if !ok {
			return fmt.Errorf("%w: unknown key %x", ErrCorrupt, k)
		}
		kind := byte(entryKindValue)
		if pk.ns == nsCounter {
			kind = entryKindCounter
			if len(val) != 8 {
				return fmt.Errorf("%w: counter of %d bytes", ErrCorrupt, len(val))
			}
		}
		nameFollows := kind != prevKind || !bytes.Equal(pk.state, prevName)
		if nameFollows {
			prevKind = kind
			prevName = append(prevName[:0], pk.state...)
		}
		if err := v.entry(kind, nameFollows, pk.state, pk.user, val); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	for g < r.End {
		g++
		if err := v.group(g); err != nil {
			return err
		}
	}
	return nil
}

// entrySize is the encoded size of an entry; appendEntry writes exactly
// that many bytes. value is a counter's 8 bytes for kind entryKindCounter.
func entrySize(kind byte, nameFollows bool, name, user, value []byte) int64 {
	n := 1 + uvarintLen(uint64(len(user))) + len(user)
	if nameFollows {
		n += 1 + len(name)
	}
	if kind == entryKindCounter {
		c, _ := decodeInt64(value)
		n += uvarintLen(uint64(c<<1) ^ uint64(c>>63))
	} else {
		n += uvarintLen(uint64(len(value))) + len(value)
	}
	return int64(n)
}

func appendEntry(buf []byte, kind byte, nameFollows bool, name, user, value []byte) []byte {
	if nameFollows {
		buf = append(buf, kind|entryNameFollows, byte(len(name)))
		buf = append(buf, name...)
	} else {
		buf = append(buf, kind)
	}
	buf = binary.AppendUvarint(buf, uint64(len(user)))
	buf = append(buf, user...)
	if kind == entryKindCounter {
		c, _ := decodeInt64(value)
		return binary.AppendVarint(buf, c)
	}
	buf = binary.AppendUvarint(buf, uint64(len(value)))
	return append(buf, value...)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// measurer is the first pass: it fills in each group's length, entry count
// and applied mark.
type measurer struct {
	f   *savepointFooter
	cur *groupBlock
}

func (m *measurer) group(g int) error {
	m.cur = &m.f.blocks[g-m.f.rng.Start]
	return nil
}

func (m *measurer) applied(seq uint64) { m.cur.applied = seq }

func (m *measurer) entry(kind byte, nameFollows bool, name, user, value []byte) error {
	m.cur.length += entrySize(kind, nameFollows, name, user, value)
	m.cur.entries++
	return nil
}

// measure runs the first pass and returns the footer, without checksums.
func (p *PendingSavepoint) measure(ctx context.Context, par int) (*savepointFooter, error) {
	rng := p.b.opts.KeyGroups
	f := &savepointFooter{maxParallelism: p.b.opts.MaxParallelism, rng: rng, blocks: make([]groupBlock, rng.Len())}
	for i := range f.blocks {
		f.blocks[i].group = rng.Start + i
	}
	parts := p.b.splitRange(rng, par)
	jobs := make([]func(context.Context) error, len(parts))
	for i, r := range parts {
		jobs[i] = func(ctx context.Context) error { return p.walk(ctx, r, &measurer{f: f}) }
	}
	if err := runParallel(ctx, len(jobs), jobs); err != nil {
		return nil, err
	}
	var off int64
	for i := range f.blocks {
		f.blocks[i].offset = off
		off += f.blocks[i].length
	}
	f.dataEnd = off
	return f, nil
}

// splitRange splits r into at most n contiguous parts of about equal
// estimated size.
func (b *Backend) splitRange(r keygroup.Range, n int) []keygroup.Range {
	n = min(n, r.Len())
	if n <= 1 {
		return []keygroup.Range{r}
	}
	sizes := make([]uint64, r.Len())
	var total uint64
	for g := r.Start; g <= r.End; g++ {
		s, err := b.db.EstimateDiskUsage(groupPrefix(g), groupPrefix(g+1))
		if err != nil {
			s = 0
		}
		sizes[g-r.Start] = s + 1
		total += s + 1
	}
	var parts []keygroup.Range
	start := r.Start
	var acc uint64
	for g := r.Start; g <= r.End; g++ {
		acc += sizes[g-r.Start]
		if len(parts) < n-1 && g < r.End && acc*uint64(n) >= total*uint64(len(parts)+1) {
			parts = append(parts, keygroup.Range{Start: start, End: g})
			start = g + 1
		}
	}
	return append(parts, keygroup.Range{Start: start, End: r.End})
}

// streamUnit is a run of consecutive groups that one goroutine encodes in
// the second pass.
type streamUnit struct {
	groups keygroup.Range
	bytes  int64
	ch     chan []byte // encoded chunks, closed when done
	err    error       // set before ch is closed
}

// encoder is the second pass over one unit: it encodes entries into chunks
// and sends them to the writer.
type encoder struct {
	ctx  context.Context
	ch   chan<- []byte
	free *sync.Pool
	buf  []byte
}

func (e *encoder) group(int) error { return nil }
func (e *encoder) applied(uint64)  {}

func (e *encoder) entry(kind byte, nameFollows bool, name, user, value []byte) error {
	if e.buf == nil {
		e.buf = (*e.free.Get().(*[]byte))[:0]
	}
	e.buf = appendEntry(e.buf, kind, nameFollows, name, user, value)
	if len(e.buf) >= streamChunk {
		return e.flush()
	}
	return nil
}

func (e *encoder) flush() error {
	if len(e.buf) == 0 {
		return nil
	}
	select {
	case e.ch <- e.buf:
		e.buf = nil
		return nil
	case <-e.ctx.Done():
		return e.ctx.Err()
	}
}

// stream runs the second pass: units are encoded by par goroutines, at most
// 2*par units ahead of the writer, and written to w in order while each
// group's CRC32C is computed into f.
func (p *PendingSavepoint) stream(ctx context.Context, w io.Writer, f *savepointFooter, par int) error {
	var units []*streamUnit
	for i := 0; i < len(f.blocks); {
		u := &streamUnit{groups: keygroup.Range{Start: f.blocks[i].group}, ch: make(chan []byte, streamUnitChunks)}
		for ; i < len(f.blocks) && (u.bytes == 0 || u.bytes+f.blocks[i].length <= streamUnitBytes); i++ {
			u.bytes += f.blocks[i].length
			u.groups.End = f.blocks[i].group
		}
		units = append(units, u)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	free := &sync.Pool{New: func() any {
		b := make([]byte, 0, streamChunk+64<<10)
		return &b
	}}
	window := make(chan struct{}, 2*par)
	next := make(chan *streamUnit)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(next)
		for _, u := range units {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case next <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range next {
				e := &encoder{ctx: ctx, ch: u.ch, free: free}
				u.err = p.walk(ctx, u.groups, e)
				if u.err == nil {
					u.err = e.flush()
				}
				close(u.ch)
			}
		}()
	}

	gi, left := 0, f.blocks[0].length // group being written, its bytes to go
	for _, u := range units {
		var n int64
		for chunk := range u.ch {
			n += int64(len(chunk))
			if n > u.bytes {
				return fmt.Errorf("statebackend: savepoint groups %v: encoded more than the %d bytes measured", u.groups, u.bytes)
			}
			for rest := chunk; len(rest) > 0; {
				for left == 0 {
					gi++
					left = f.blocks[gi].length
				}
				c := rest[:min(int64(len(rest)), left)]
				f.blocks[gi].crc = crc32.Update(f.blocks[gi].crc, castagnoli, c)
				left -= int64(len(c))
				rest = rest[len(c):]
			}
			if _, err := w.Write(chunk); err != nil {
				return err
			}
			free.Put(&chunk)
		}
		if u.err != nil {
			return u.err
		}
		if n != u.bytes {
			return fmt.Errorf("statebackend: savepoint groups %v: encoded %d bytes, measured %d", u.groups, n, u.bytes)
		}
		<-window
	}
	return nil
}

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

// split splits groups r (within the footer's range) into at most n
// contiguous sub-ranges of about equal bytes, none smaller than minBytes
// unless r is.
func (f *savepointFooter) split(r keygroup.Range, n int, minBytes int64) []keygroup.Range {
	var total int64
	for g := r.Start; g <= r.End; g++ {
		total += f.blocks[g-f.rng.Start].length
	}
	n = max(1, min(n, int(total/max(minBytes, 1)), r.Len()))
	var out []keygroup.Range
	start := r.Start
	var acc int64
	for g := r.Start; g <= r.End; g++ {
		acc += f.blocks[g-f.rng.Start].length
		if len(out) < n-1 && g < r.End && acc*int64(n) >= total*int64(len(out)+1) {
			out = append(out, keygroup.Range{Start: start, End: g})
			start = g + 1
		}
	}
	return append(out, keygroup.Range{Start: start, End: r.End})
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
