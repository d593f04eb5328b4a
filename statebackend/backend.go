package statebackend

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// Subdirectories of a backend directory.
const (
	dbDirName          = "db"          // the Pebble DB
	checkpointsDirName = "checkpoints" // local images of pending snapshots
	tmpDirName         = "tmp"         // restore downloads and SSTs being built
)

// Backend is the keyed state of one task: the key groups of one
// keygroup.Range of one job, in one Pebble DB.
//
// Reads, Batch commits, Snapshot and Savepoint may be called from any
// goroutine. A Batch itself is used by one goroutine at a time. Snapshot and
// Savepoint see every batch committed before they are called and none
// committed after they return. Close must be called once, after every
// Iterator, PendingSavepoint and Batch is closed or released; uploads of
// pending snapshots read only their own local files and may finish after
// Close.
type Backend struct {
	dir      string
	opts     Options
	popts    *pebble.Options
	db       *pebble.DB
	fs       *backendFS
	instance string // random; names this DB's uploads

	// applied[g-Start] caches group g's last applied input sequence. Written
	// under commitMu held for reading (after the batch is applied), read
	// without locks.
	applied []atomic.Uint64

	// commitMu orders batch commits (readers) against Snapshot (writer), so
	// that a snapshot and the applied marks it records agree.
	commitMu sync.RWMutex

	closed atomic.Bool
	// broken is set once a commit failed inside Pebble (see apply).
	broken atomic.Bool

	mu       sync.Mutex
	snapSeq  uint64                      // attempts so far; names each attempt's uploads
	pending  map[uint64]*PendingSnapshot // by snapshot id, until completed, aborted or released
	uploaded map[string]sharedObject     // local SST name -> object a completed snapshot holds it in
}

// sharedObject is an immutable DB file already in the object store, as part
// of a completed snapshot.
type sharedObject struct {
	location string // Store.Location() of the store holding it
	key      string
	size     int64
	crc      uint32
}

// Open opens the backend in dir, creating it if needed. dir is the backend's
// own: the Pebble DB lives in dir/db, local snapshot images in
// dir/checkpoints and temporary files in dir/tmp; the last two are emptied
// here, which removes anything an earlier process left after a crash.
//
// An existing DB is reopened with the state its last flush or WAL write holds
// (a consistent prefix of committed batches, with matching applied marks),
// and keys outside opts.KeyGroups are deleted. Since the backend never
// fsyncs, a DB that survived a machine crash may fail to open: delete dir and
// Restore from a checkpoint.
func Open(dir string, opts Options) (*Backend, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(filepath.Join(dir, dbDirName))
	existed := statErr == nil
	b, err := openDB(dir, opts)
	if err != nil {
		return nil, err
	}
	if existed {
		if err := b.clipToRange(); err != nil {
			_ = b.Close()
			return nil, err
		}
	}
	return b, nil
}

// prepareDir creates dir and empties its scratch subdirectories.
func prepareDir(dir string) error {
	for _, sub := range []string{checkpointsDirName, tmpDirName} {
		p := filepath.Join(dir, sub)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("statebackend: clean %s: %w", sub, err)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("statebackend: %w", err)
		}
	}
	return nil
}

// openDB opens the Pebble DB in dir/db and loads the applied marks.
func openDB(dir string, opts Options) (*Backend, error) {
	dbDir := filepath.Clean(filepath.Join(dir, dbDirName))
	fs := newBackendFS(dbDir, filepath.Clean(filepath.Join(dir, checkpointsDirName)), opts.testFS)
	popts := opts.pebbleOptions(fs)
	db, err := pebble.Open(dbDir, popts)
	if err != nil {
		return nil, fmt.Errorf("statebackend: open: %w", err)
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("statebackend: instance id: %w", err)
	}
	b := &Backend{
		dir:      dir,
		opts:     opts,
		popts:    popts,
		db:       db,
		fs:       fs,
		instance: hex.EncodeToString(id[:]),
		applied:  make([]atomic.Uint64, opts.KeyGroups.Len()),
		pending:  make(map[uint64]*PendingSnapshot),
		uploaded: make(map[string]sharedObject),
	}
	for g := opts.KeyGroups.Start; g <= opts.KeyGroups.End; g++ {
		v, closer, err := db.Get(appliedKey(g))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("statebackend: read applied mark of group %d: %w", g, err)
		}
		seq, ok := decodeSeq(v)
		_ = closer.Close()
		if !ok {
			_ = db.Close()
			return nil, fmt.Errorf("%w: applied mark of group %d has %d bytes", ErrCorrupt, g, len(v))
		}
		b.applied[g-opts.KeyGroups.Start].Store(seq)
	}
	return b, nil
}

// clipToRange deletes every key outside the owned range.
func (b *Backend) clipToRange() error {
	r := b.opts.KeyGroups
	if r.Start > 0 {
		if err := b.db.DeleteRange(groupPrefix(0), groupPrefix(r.Start), pebble.NoSync); err != nil {
			return fmt.Errorf("statebackend: clip: %w", err)
		}
	}
	if r.End < b.opts.MaxParallelism-1 {
		if err := b.db.DeleteRange(groupPrefix(r.End+1), groupPrefix(b.opts.MaxParallelism), pebble.NoSync); err != nil {
			return fmt.Errorf("statebackend: clip: %w", err)
		}
	}
	return nil
}

func (b *Backend) tmpDir() string { return filepath.Join(b.dir, tmpDirName) }

// Close closes the DB. Pending snapshots not yet uploaded can no longer be
// uploaded once their local images are removed by the next Open.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return ErrClosed
	}
	if b.broken.Load() {
		return fmt.Errorf("%w: its Pebble DB in %s is abandoned, not closed (closing it would wait forever on the failed commit)", ErrBroken, b.dir)
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("statebackend: close: %w", err)
	}
	return nil
}

// Range returns the key groups the backend owns.
func (b *Backend) Range() keygroup.Range { return b.opts.KeyGroups }

// MaxParallelism returns the job's max parallelism M.
func (b *Backend) MaxParallelism() int { return b.opts.MaxParallelism }

// Applied returns the last input sequence applied to group g: the sequence
// last passed to Batch.SetApplied for g in a committed batch, or what a
// restored snapshot or savepoint recorded. It returns 0 for a group never applied to and
// for a group the backend does not own. Events of g with a sequence at or
// below it are already reflected in the state and must be skipped.
func (b *Backend) Applied(g int) uint64 {
	if !b.opts.KeyGroups.Contains(g) {
		return 0
	}
	return b.applied[g-b.opts.KeyGroups.Start].Load()
}

// groupOf returns the key group of userKey, or ErrNotOwned.
func (b *Backend) groupOf(userKey []byte) (int, error) {
	g := keygroup.Of(userKey, b.opts.MaxParallelism)
	if !b.opts.KeyGroups.Contains(g) {
		return g, fmt.Errorf("%w: key %q is in group %d, backend owns %v", ErrNotOwned, userKey, g, b.opts.KeyGroups)
	}
	return g, nil
}

func (b *Backend) stateKey(dst []byte, ns byte, state string, userKey []byte) ([]byte, error) {
	if err := checkStateName(state); err != nil {
		return dst, err
	}
	g, err := b.groupOf(userKey)
	if err != nil {
		return dst, err
	}
	return appendStateKey(dst[:0], g, ns, state, userKey), nil
}

// groupStateKey is stateKey for a key the caller knows to be in group g.
func (b *Backend) groupStateKey(dst []byte, g int, ns byte, state string, userKey []byte) ([]byte, error) {
	if err := checkStateName(state); err != nil {
		return dst, err
	}
	if !b.opts.KeyGroups.Contains(g) {
		return dst, fmt.Errorf("%w: group %d, backend owns %v", ErrNotOwned, g, b.opts.KeyGroups)
	}
	return appendStateKey(dst[:0], g, ns, state, userKey), nil
}

// get reads k from committed state into a fresh slice.
func (b *Backend) get(k []byte) ([]byte, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	v, closer, err := b.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("statebackend: get: %w", err)
	}
	out := bytes.Clone(v)
	if out == nil {
		out = []byte{}
	}
	_ = closer.Close()
	return out, nil
}

// Get returns the committed value of userKey in value state `state`, or
// ErrNotFound. The caller owns the returned slice.
func (b *Backend) Get(state string, userKey []byte) ([]byte, error) {
	k, err := b.stateKey(nil, nsValue, state, userKey)
	if err != nil {
		return nil, err
	}
	return b.get(k)
}

// Int64 returns the committed value of counter userKey in counter state
// `state`; a counter never written (or deleted) is 0.
func (b *Backend) Int64(state string, userKey []byte) (int64, error) {
	k, err := b.stateKey(nil, nsCounter, state, userKey)
	if err != nil {
		return 0, err
	}
	return b.getInt64(k)
}

func (b *Backend) getInt64(k []byte) (int64, error) {
	v, err := b.get(k)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, ok := decodeInt64(v)
	if !ok {
		return 0, fmt.Errorf("%w: counter of %d bytes", ErrCorrupt, len(v))
	}
	return n, nil
}

// Scan returns an iterator over the committed entries of value state `state`
// in groups (which the backend must own), in key-group order and, within a
// group, in byte order of user keys. Use b.Range() for all groups.
func (b *Backend) Scan(state string, groups keygroup.Range) (*Iterator, error) {
	return b.newIter(nsValue, state, groups)
}

// ScanCounters is Scan for counter state; Iterator.Int64 returns each value.
func (b *Backend) ScanCounters(state string, groups keygroup.Range) (*Iterator, error) {
	return b.newIter(nsCounter, state, groups)
}

func (b *Backend) newIter(ns byte, state string, groups keygroup.Range) (*Iterator, error) {
	if err := checkStateName(state); err != nil {
		return nil, err
	}
	if err := groups.Validate(b.opts.MaxParallelism); err != nil {
		return nil, err
	}
	if groups.Start < b.opts.KeyGroups.Start || groups.End > b.opts.KeyGroups.End {
		return nil, fmt.Errorf("%w: scan of %v, backend owns %v", ErrNotOwned, groups, b.opts.KeyGroups)
	}
	if b.closed.Load() {
		return nil, ErrClosed
	}
	it, err := b.db.NewIter(&pebble.IterOptions{
		LowerBound: groupPrefix(groups.Start),
		UpperBound: groupPrefix(groups.End + 1),
	})
	if err != nil {
		return nil, fmt.Errorf("statebackend: scan: %w", err)
	}
	return &Iterator{it: it, ns: ns, state: state, groups: groups, g: groups.Start - 1}, nil
}

// Iterator walks the entries of one state. It reads a consistent view of
// committed state as of its creation. It is not safe for concurrent use.
type Iterator struct {
	it     *pebble.Iterator
	ns     byte
	state  string
	groups keygroup.Range
	g      int    // current group
	prefix []byte // state prefix in group g
	err    error
	done   bool
}

// Next advances to the next entry and reports whether there is one.
func (it *Iterator) Next() bool {
	if it.done || it.err != nil {
		return false
	}
	var valid bool
	if it.g < it.groups.Start {
		it.g = it.groups.Start
		it.prefix = appendStatePrefix(it.prefix[:0], it.g, it.ns, it.state)
		valid = it.it.SeekGE(it.prefix)
	} else {
		valid = it.it.Next()
	}
	for {
		if !valid {
			it.done, it.err = true, it.it.Error()
			return false
		}
		k := it.it.Key()
		if bytes.HasPrefix(k, it.prefix) {
			return true
		}
		// Past this group's entries of the state: jump to the group of the
		// current key if it is later, else to the next group.
		next := it.g + 1
		if kg := keyGroupOf(k); kg > it.g {
			next = kg
		}
		if next > it.groups.End {
			it.done = true
			return false
		}
		it.g = next
		it.prefix = appendStatePrefix(it.prefix[:0], it.g, it.ns, it.state)
		valid = it.it.SeekGE(it.prefix)
	}
}

// Group returns the key group of the current entry.
func (it *Iterator) Group() int { return it.g }

// Key returns the current user key; it is valid until the next call to Next.
func (it *Iterator) Key() []byte { return it.it.Key()[len(it.prefix):] }

// Value returns the current value; it is valid until the next call to Next.
func (it *Iterator) Value() []byte {
	v, err := it.it.ValueAndErr()
	if err != nil && it.err == nil {
		it.err = err
	}
	return v
}

// Int64 returns the current counter value (ScanCounters iterators only).
func (it *Iterator) Int64() int64 {
	v := it.Value()
	n, ok := decodeInt64(v)
	if !ok && it.err == nil {
		it.err = fmt.Errorf("%w: counter of %d bytes", ErrCorrupt, len(v))
	}
	return n
}

// Err returns the error that stopped iteration, if any.
func (it *Iterator) Err() error { return it.err }

// Close releases the iterator.
func (it *Iterator) Close() error {
	err := it.it.Close()
	if it.err != nil {
		return it.err
	}
	return err
}
