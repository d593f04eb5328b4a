package statebackend

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/batchrepr"
)

// Batch collects writes that Commit applies atomically. Reads through the
// batch (Get, Int64, Applied) see its own uncommitted writes on top of
// committed state.
//
// Read-your-writes costs nothing until the first read: the batch is a plain
// Pebble batch, and a read indexes the operations appended since the
// previous read into a map (amortized O(1) per operation). Pure write
// batches (counter updates, blind puts) never build the map. This measured
// faster than a Pebble indexed batch, which keeps a skiplist for every
// operation (see BENCHMARKS.md).
//
// A Batch is used by one goroutine at a time. It is reusable after Commit;
// Close releases it.
type Batch struct {
	b    *Backend
	pb   *pebble.Batch
	kbuf []byte

	// applied holds the SetApplied marks by group - KeyGroups.Start (0:
	// none) and touched the groups set, in first-set order; Commit writes
	// each group's mark once, however many events of the group the batch
	// holds.
	applied []uint64
	touched []int

	// idx maps Pebble keys to their pending operations; it covers the first
	// idxOff bytes of pb.Repr().
	idx    map[string]*pendingOp
	idxOff int
	slab   []pendingOp
}

type opKind byte

const (
	opNone   opKind = iota
	opSet           // the last Set is repr[off:off+n], then delta of merges
	opDelete        // deleted, then delta of merges
	opMerge         // only merges: committed value + delta
)

type pendingOp struct {
	kind  opKind
	off   int
	n     int
	delta int64
}

// NewBatch returns an empty batch.
func (b *Backend) NewBatch() *Batch {
	return &Batch{b: b, pb: b.db.NewBatch()}
}

func (bt *Batch) key(ns byte, state string, userKey []byte) ([]byte, error) {
	k, err := bt.b.stateKey(bt.kbuf, ns, state, userKey)
	bt.kbuf = k
	return k, err
}

// Put sets userKey of value state `state` to value.
func (bt *Batch) Put(state string, userKey, value []byte) error {
	k, err := bt.key(nsValue, state, userKey)
	if err != nil {
		return err
	}
	return bt.pb.Set(k, value, nil)
}

// Delete removes userKey from value state `state`.
func (bt *Batch) Delete(state string, userKey []byte) error {
	k, err := bt.key(nsValue, state, userKey)
	if err != nil {
		return err
	}
	return bt.pb.Delete(k, nil)
}

// Add adds delta to counter userKey of counter state `state` (wrapping on
// int64 overflow). It never reads: it writes a merge operand.
func (bt *Batch) Add(state string, userKey []byte, delta int64) error {
	k, err := bt.key(nsCounter, state, userKey)
	if err != nil {
		return err
	}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], uint64(delta))
	return bt.pb.Merge(k, v[:], nil)
}

// SetInt64 sets counter userKey of counter state `state` to v.
func (bt *Batch) SetInt64(state string, userKey []byte, v int64) error {
	k, err := bt.key(nsCounter, state, userKey)
	if err != nil {
		return err
	}
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(v))
	return bt.pb.Set(k, buf[:], nil)
}

// DeleteInt64 removes counter userKey of counter state `state` (it reads as
// 0 afterwards).
func (bt *Batch) DeleteInt64(state string, userKey []byte) error {
	k, err := bt.key(nsCounter, state, userKey)
	if err != nil {
		return err
	}
	return bt.pb.Delete(k, nil)
}

// SetApplied records seq as the last input sequence applied to group g,
// committed atomically with the batch's state changes. Sequences of a group
// must not decrease.
func (bt *Batch) SetApplied(g int, seq uint64) error {
	if !bt.b.opts.KeyGroups.Contains(g) {
		return fmt.Errorf("%w: group %d, backend owns %v", ErrNotOwned, g, bt.b.opts.KeyGroups)
	}
	if bt.applied == nil {
		bt.applied = make([]uint64, bt.b.opts.KeyGroups.Len())
	}
	i := g - bt.b.opts.KeyGroups.Start
	if bt.applied[i] == 0 {
		bt.touched = append(bt.touched, g)
	}
	bt.applied[i] = seq
	return nil
}

// Applied is Backend.Applied seen through the batch.
func (bt *Batch) Applied(g int) uint64 {
	if bt.b.opts.KeyGroups.Contains(g) && bt.applied != nil {
		if seq := bt.applied[g-bt.b.opts.KeyGroups.Start]; seq != 0 {
			return seq
		}
	}
	return bt.b.Applied(g)
}

// lookup returns the batch's pending operation on Pebble key k, or nil.
func (bt *Batch) lookup(k []byte) (*pendingOp, error) {
	if bt.pb.Empty() {
		return nil, nil
	}
	repr := bt.pb.Repr()
	if bt.idxOff < batchrepr.HeaderLen {
		bt.idxOff = batchrepr.HeaderLen
	}
	if bt.idxOff < len(repr) {
		if bt.idx == nil {
			bt.idx = make(map[string]*pendingOp)
		}
		r := batchrepr.Reader(repr[bt.idxOff:])
		for {
			kind, ukey, value, ok, err := r.Next()
			if err != nil {
				return nil, fmt.Errorf("statebackend: index batch: %w", err)
			}
			if !ok {
				break
			}
			p := bt.idx[string(ukey)]
			if p == nil {
				if len(bt.slab) == cap(bt.slab) {
					bt.slab = make([]pendingOp, 0, max(16, min(2*cap(bt.slab), 1024)))
				}
				bt.slab = bt.slab[:len(bt.slab)+1]
				p = &bt.slab[len(bt.slab)-1]
				*p = pendingOp{} // the slab is reused across commits
				bt.idx[string(ukey)] = p
			}
			switch kind {
			case pebble.InternalKeyKindSet:
				*p = pendingOp{kind: opSet, off: len(repr) - len(r) - len(value), n: len(value)}
			case pebble.InternalKeyKindDelete:
				*p = pendingOp{kind: opDelete}
			case pebble.InternalKeyKindMerge:
				d, _ := decodeInt64(value)
				p.delta += d
				if p.kind == opNone {
					p.kind = opMerge
				}
			}
		}
		bt.idxOff = len(repr)
	}
	return bt.idx[string(k)], nil
}

// Get returns the value of userKey in value state `state` as the batch would
// leave it, or ErrNotFound. The caller owns the returned slice.
func (bt *Batch) Get(state string, userKey []byte) ([]byte, error) {
	k, err := bt.key(nsValue, state, userKey)
	if err != nil {
		return nil, err
	}
	return bt.get(k)
}

func (bt *Batch) get(k []byte) ([]byte, error) {
	p, err := bt.lookup(k)
	if err != nil {
		return nil, err
	}
	if p != nil {
		switch p.kind {
		case opSet:
			return bytes.Clone(bt.pb.Repr()[p.off : p.off+p.n : p.off+p.n]), nil
		case opDelete:
			return nil, ErrNotFound
		}
	}
	return bt.b.get(k)
}

// Int64 returns counter userKey of counter state `state` as the batch would
// leave it.
func (bt *Batch) Int64(state string, userKey []byte) (int64, error) {
	k, err := bt.key(nsCounter, state, userKey)
	if err != nil {
		return 0, err
	}
	return bt.int64(k)
}

func (bt *Batch) int64(k []byte) (int64, error) {
	p, err := bt.lookup(k)
	if err != nil {
		return 0, err
	}
	if p == nil {
		return bt.b.getInt64(k)
	}
	switch p.kind {
	case opSet:
		base, ok := decodeInt64(bt.pb.Repr()[p.off : p.off+p.n])
		if !ok {
			return 0, fmt.Errorf("%w: counter of %d bytes", ErrCorrupt, p.n)
		}
		return base + p.delta, nil
	case opDelete:
		return p.delta, nil
	default:
		base, err := bt.b.getInt64(k)
		return base + p.delta, err
	}
}

// Len returns the number of operations in the batch (SetApplied marks not
// counted).
func (bt *Batch) Len() int { return int(bt.pb.Count()) }

// Commit applies the batch atomically and empties it for reuse. Nothing is
// synced to disk (see Options). After an error the batch is emptied too and
// the backend should be considered failed.
func (bt *Batch) Commit() error {
	if bt.b.closed.Load() {
		return ErrClosed
	}
	start := bt.b.opts.KeyGroups.Start
	slices.Sort(bt.touched)
	groups := bt.touched
	for _, g := range groups {
		if err := bt.pb.Set(appliedKey(g), encodeSeq(bt.applied[g-start]), nil); err != nil {
			bt.reset()
			return err
		}
	}
	if bt.pb.Empty() {
		return nil
	}
	if err := bt.b.checkRoom(); err != nil {
		bt.reset()
		return err
	}
	bt.b.commitMu.RLock()
	err, abandoned := bt.b.apply(bt.pb)
	if abandoned {
		// Pebble may still be reading the abandoned batch: it is left to
		// it, never reset or reused.
		bt.pb = bt.b.db.NewBatch()
	}
	if err == nil {
		for _, g := range groups {
			bt.b.applied[g-start].Store(bt.applied[g-start])
		}
	}
	bt.b.commitMu.RUnlock()
	bt.reset()
	if err != nil {
		return fmt.Errorf("statebackend: commit: %w", err)
	}
	return nil
}

func (bt *Batch) reset() {
	bt.pb.Reset()
	clear(bt.applied)
	bt.touched = bt.touched[:0]
	clear(bt.idx)
	bt.idxOff = 0
	bt.slab = bt.slab[:0]
}

// Close discards uncommitted writes and releases the batch.
func (bt *Batch) Close() error {
	return bt.pb.Close()
}

// Group-scoped access. A task decodes each event's key group once, where the
// event enters; the methods below take that group instead of hashing the
// user key again on every state access. The caller guarantees that g is the
// key group of userKey (keygroup.Of): a key filed under another group would
// be invisible to reads by key and refused by canonical savepoint restores.
// g must be owned by the backend (ErrNotOwned otherwise).

// groupKey builds the Pebble key of (ns, state, userKey) in group g.
func (bt *Batch) groupKey(g int, ns byte, state string, userKey []byte) ([]byte, error) {
	k, err := bt.b.groupStateKey(bt.kbuf, g, ns, state, userKey)
	bt.kbuf = k
	return k, err
}

// PutIn is Put for a key of group g.
func (bt *Batch) PutIn(g int, state string, userKey, value []byte) error {
	k, err := bt.groupKey(g, nsValue, state, userKey)
	if err != nil {
		return err
	}
	return bt.pb.Set(k, value, nil)
}

// DeleteIn is Delete for a key of group g.
func (bt *Batch) DeleteIn(g int, state string, userKey []byte) error {
	k, err := bt.groupKey(g, nsValue, state, userKey)
	if err != nil {
		return err
	}
	return bt.pb.Delete(k, nil)
}

// AddIn is Add for a key of group g.
func (bt *Batch) AddIn(g int, state string, userKey []byte, delta int64) error {
	k, err := bt.groupKey(g, nsCounter, state, userKey)
	if err != nil {
		return err
	}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], uint64(delta))
	return bt.pb.Merge(k, v[:], nil)
}

// Int64In is Int64 for a key of group g.
func (bt *Batch) Int64In(g int, state string, userKey []byte) (int64, error) {
	k, err := bt.groupKey(g, nsCounter, state, userKey)
	if err != nil {
		return 0, err
	}
	return bt.int64(k)
}

// GetIn is Get for a key of group g.
func (bt *Batch) GetIn(g int, state string, userKey []byte) ([]byte, error) {
	k, err := bt.groupKey(g, nsValue, state, userKey)
	if err != nil {
		return nil, err
	}
	return bt.get(k)
}

// apply commits pb to the DB, on its own goroutine, so that a commit Pebble
// cannot finish does not hold the caller: a flush that met ENOSPC makes a
// commit wait for memtable room that never comes, and a failed WAL write
// makes it panic holding the commit lock that DB.Close takes. Once a write
// met ENOSPC, the caller waits noSpaceGrace more; a commit still running
// then (or one that panicked) marks the backend broken, and Close abandons
// the DB rather than wait on it forever.
//
// abandoned reports that the commit is still running inside Pebble, which
// may still read pb.
func (b *Backend) apply(pb *pebble.Batch) (err error, abandoned bool) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				cause, ok := r.(error)
				if !ok {
					cause = fmt.Errorf("%v", r)
				}
				b.broken.Store(true)
				done <- b.commitFailed(cause)
			}
		}()
		done <- b.db.Apply(pb, pebble.NoSync)
	}()
	select {
	case err := <-done:
		return err, false
	case <-b.fs.space.fullCh:
	}
	select {
	case err := <-done:
		return err, false
	case <-time.After(noSpaceGrace):
		b.broken.Store(true)
		return &NoSpaceError{Dir: b.dir, Cause: fmt.Errorf("a write met ENOSPC and the commit did not finish in %s: %w", noSpaceGrace, syscall.ENOSPC)}, true
	}
}

// noSpaceGrace is how long a commit may still take once a write met ENOSPC.
const noSpaceGrace = time.Second

// commitFailed gives a commit's failure inside Pebble its error.
func (b *Backend) commitFailed(cause error) error {
	if b.fs.space.full.Load() || IsNoSpace(cause) {
		return &NoSpaceError{Dir: b.dir, Cause: cause}
	}
	return fmt.Errorf("%w: %v", ErrBroken, cause)
}
