package worker

import (
	"bytes"
	"errors"

	"github.com/flotilla-io/flotilla/statebackend"
)

// DefaultValueCacheEntries bounds a task's value cache.
const DefaultValueCacheEntries = 1 << 16

// valueCache is a bounded write-through cache of value states in front of a
// task's batch. A task is the only writer of its key groups' state, so a
// cached value is always the current one; it saves a Pebble read per event
// for hot keys. Counters pass through (their reads are merges). A task that
// fails is discarded with its cache, and a new attempt starts empty.
type valueCache struct {
	st   KeyedState
	vals map[string][]byte // state + "\x00" + key -> value; nil: known absent
	max  int
	kbuf []byte
}

func newValueCache(st KeyedState, max int) *valueCache {
	return &valueCache{st: st, vals: make(map[string][]byte), max: max}
}

func (c *valueCache) key(state string, key []byte) []byte {
	c.kbuf = append(append(append(c.kbuf[:0], state...), 0), key...)
	return c.kbuf
}

func (c *valueCache) remember(k []byte, v []byte) {
	if len(c.vals) >= c.max {
		clear(c.vals)
	}
	c.vals[string(k)] = v
}

func (c *valueCache) Get(state string, key []byte) ([]byte, error) {
	k := c.key(state, key)
	if v, ok := c.vals[string(k)]; ok {
		if v == nil {
			return nil, statebackend.ErrNotFound
		}
		return bytes.Clone(v), nil
	}
	v, err := c.st.Get(state, key)
	switch {
	case err == nil:
		c.remember(k, bytes.Clone(v))
	case errors.Is(err, statebackend.ErrNotFound):
		c.remember(k, nil)
	}
	return v, err
}

func (c *valueCache) Put(state string, key, value []byte) error {
	if err := c.st.Put(state, key, value); err != nil {
		delete(c.vals, string(c.key(state, key)))
		return err
	}
	c.remember(c.key(state, key), bytes.Clone(value))
	return nil
}

func (c *valueCache) Delete(state string, key []byte) error {
	if err := c.st.Delete(state, key); err != nil {
		delete(c.vals, string(c.key(state, key)))
		return err
	}
	c.remember(c.key(state, key), nil)
	return nil
}

func (c *valueCache) Add(state string, key []byte, delta int64) error {
	return c.st.Add(state, key, delta)
}

func (c *valueCache) Int64(state string, key []byte) (int64, error) { return c.st.Int64(state, key) }
