package worker

import (
	"bytes"
	"cmp"
	"errors"
	"slices"
	"strings"
	"unsafe"

	"github.com/flotilla-io/flotilla/statebackend"
)

// Defaults of a task's write-back state cache.
const (
	// DefaultStateCacheEntries bounds the keys a task's cache holds.
	DefaultStateCacheEntries = 1 << 16
	// DefaultStateCacheBytes bounds the bytes of the values it holds.
	DefaultStateCacheBytes = 64 << 20
)

// keyedStore is the state an operator's Context reads and writes, addressed
// by key group (decoded once per event), state name and key. A value
// returned by get is valid until the next call.
type keyedStore interface {
	get(g int, state string, key []byte) (v []byte, found bool, err error)
	put(g int, state string, key, value []byte) error
	del(g int, state string, key []byte) error
	add(g int, state string, key []byte, delta int64) error
	int64(g int, state string, key []byte) (int64, error)
}

// stateCache is a task's bounded write-back cache of value states, in front
// of its Pebble batch: Flink's mini-batch. An operator's reads and writes of
// a key's value hit memory; a key written many times between two commits
// costs one Pebble write, at flush. A task is the only writer of its key
// groups' state, so a cached value is always the current one.
//
// Consistency: flush hands every dirty value to the batch, and the task
// commits that batch with the groups' applied marks, atomically; nothing in
// the cache is ever committed without the marks of the events it reflects,
// nor the reverse. A barrier commits (flushes) before the synchronous
// snapshot. A task that fails is discarded with its cache: its next attempt
// restores from a checkpoint, never from this task's local state.
//
// Counters pass through to the batch (their writes are blind merges).
// Owned by the task goroutine.
type stateCache struct {
	batch *statebackend.Batch

	idx     map[string]int32 // cache key -> index in entries
	entries []cacheEntry
	dirty   []int32 // indexes of dirty entries
	bytes   int     // of the cached values
	kbuf    []byte

	maxEntries, maxBytes int
}

type cacheEntry struct {
	group   int
	state   string
	user    []byte // the user key (shared with the map key's bytes)
	val     []byte // nil with found false: known absent
	found   bool
	isDirty bool
}

func newStateCache(batch *statebackend.Batch, maxEntries, maxBytes int) *stateCache {
	return &stateCache{batch: batch, idx: make(map[string]int32), maxEntries: maxEntries, maxBytes: maxBytes}
}

// cacheKey is len(state), state, key: unique per (state, key); the key
// determines the group.
func (c *stateCache) cacheKey(state string, key []byte) []byte {
	c.kbuf = append(append(append(c.kbuf[:0], byte(len(state))), state...), key...)
	return c.kbuf
}

// entry returns the index of the entry of (state, key), reading the value
// from the batch on a miss.
func (c *stateCache) entry(g int, state string, key []byte) (int32, error) {
	ck := c.cacheKey(state, key)
	if i, ok := c.idx[string(ck)]; ok {
		return i, nil
	}
	v, err := c.batch.GetIn(g, state, key)
	found := err == nil
	if err != nil && !errors.Is(err, statebackend.ErrNotFound) {
		return 0, err
	}
	// One allocation per new key: the map key shares the entry's bytes,
	// which are never written again.
	kb := append(make([]byte, 0, len(ck)), ck...)
	i := int32(len(c.entries))
	c.entries = append(c.entries, cacheEntry{group: g, state: state, user: kb[1+len(state):], val: v, found: found})
	c.idx[unsafe.String(&kb[0], len(kb))] = i
	c.bytes += len(v) + len(kb)
	return i, nil
}

func (c *stateCache) get(g int, state string, key []byte) ([]byte, bool, error) {
	i, err := c.entry(g, state, key)
	if err != nil {
		return nil, false, err
	}
	e := &c.entries[i]
	if !e.found {
		return nil, false, nil
	}
	return e.val, true, nil
}

func (c *stateCache) set(g int, state string, key, value []byte, found bool) error {
	i, err := c.entry(g, state, key)
	if err != nil {
		return err
	}
	e := &c.entries[i]
	c.bytes += len(value) - len(e.val)
	if found {
		e.val = append(e.val[:0], value...)
		if e.val == nil {
			e.val = []byte{}
		}
	} else {
		e.val = e.val[:0]
	}
	e.found = found
	if !e.isDirty {
		e.isDirty = true
		c.dirty = append(c.dirty, i)
	}
	return nil
}

func (c *stateCache) put(g int, state string, key, value []byte) error {
	return c.set(g, state, key, value, true)
}

func (c *stateCache) del(g int, state string, key []byte) error {
	return c.set(g, state, key, nil, false)
}

func (c *stateCache) add(g int, state string, key []byte, delta int64) error {
	return c.batch.AddIn(g, state, key, delta)
}

func (c *stateCache) int64(g int, state string, key []byte) (int64, error) {
	return c.batch.Int64In(g, state, key)
}

// full reports whether the cache is over its bounds: the task should commit
// (which flushes and then evicts).
func (c *stateCache) full() bool {
	return len(c.entries) > c.maxEntries || c.bytes > c.maxBytes
}

// dirtyLen returns how many keys have changed since the last flush.
func (c *stateCache) dirtyLen() int { return len(c.dirty) }

// flush hands every dirty value to the batch, once per key, in Pebble key
// order (group, state, key), which makes the memtable inserts of the commit
// cheaper: each starts its skiplist search where the previous one ended.
// The caller commits the batch.
func (c *stateCache) flush() error {
	slices.SortFunc(c.dirty, func(a, b int32) int {
		x, y := &c.entries[a], &c.entries[b]
		if x.group != y.group {
			return cmp.Compare(x.group, y.group)
		}
		if len(x.state) != len(y.state) {
			return cmp.Compare(len(x.state), len(y.state))
		}
		if x.state != y.state {
			return strings.Compare(x.state, y.state)
		}
		return bytes.Compare(x.user, y.user)
	})
	for _, i := range c.dirty {
		e := &c.entries[i]
		var err error
		if e.found {
			err = c.batch.PutIn(e.group, e.state, e.user, e.val)
		} else {
			err = c.batch.DeleteIn(e.group, e.state, e.user)
		}
		if err != nil {
			return err
		}
		e.isDirty = false
	}
	c.dirty = c.dirty[:0]
	return nil
}

// committed is called after the batch holding the flushed values committed.
// A cache over its bounds drops every entry (all are clean now): simple, and
// a hot key is read back from Pebble's memtable once.
func (c *stateCache) committed() {
	if c.full() {
		c.reset()
	}
}

// reset drops every entry, dirty or not (after a failed commit, the task
// fails anyway).
func (c *stateCache) reset() {
	clear(c.idx)
	clear(c.entries) // release the values
	c.entries = c.entries[:0]
	c.dirty = c.dirty[:0]
	c.bytes = 0
}

// storeAdapter serves a KeyedState (which has no notion of groups) as a
// keyedStore, for NewContext.
type storeAdapter struct {
	st KeyedState
}

func (a storeAdapter) get(_ int, state string, key []byte) ([]byte, bool, error) {
	v, err := a.st.Get(state, key)
	if errors.Is(err, statebackend.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

func (a storeAdapter) put(_ int, state string, key, value []byte) error {
	return a.st.Put(state, key, value)
}

func (a storeAdapter) del(_ int, state string, key []byte) error { return a.st.Delete(state, key) }

func (a storeAdapter) add(_ int, state string, key []byte, delta int64) error {
	return a.st.Add(state, key, delta)
}

func (a storeAdapter) int64(_ int, state string, key []byte) (int64, error) {
	return a.st.Int64(state, key)
}
