package metastore

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"
)

// NewMem returns the in-memory twin of New's store. now is its clock (the
// lease's TTL runs on it; nil: time.Now): tests advance a fake one to let a
// lease expire. Buckets share nothing with any other NewMem store.
func NewMem(o Options, now func() time.Time) Store {
	o = o.withDefaults()
	if now == nil {
		now = time.Now
	}
	m := &memBuckets{entries: map[string]memEntry{}, now: now}
	return &store{opts: o, coord: m.bucket("c", 0), leader: m.bucket("l", o.LeaseTTL),
		jobs: m.bucket("j", 0), ckpts: m.bucket("k", 0), transient: Transient}
}

// memBuckets holds every bucket of one store, with one revision counter as
// a JetStream stream has per bucket (revisions only need to grow).
type memBuckets struct {
	mu      sync.Mutex
	rev     uint64
	entries map[string]memEntry // by bucket "/" key
	now     func() time.Time
}

type memEntry struct {
	entry
	expires time.Time // zero: never
}

func (m *memBuckets) bucket(name string, ttl time.Duration) bucket {
	return &memBucket{m: m, prefix: name + "/", ttl: ttl}
}

type memBucket struct {
	m      *memBuckets
	prefix string
	ttl    time.Duration
}

// get returns the live entry of key; the caller holds m.mu.
func (b *memBucket) get(key string) (memEntry, bool) {
	e, ok := b.m.entries[b.prefix+key]
	if ok && !e.expires.IsZero() && !b.m.now().Before(e.expires) {
		delete(b.m.entries, b.prefix+key)
		return memEntry{}, false
	}
	return e, ok
}

// put stores val; the caller holds m.mu.
func (b *memBucket) put(key string, val []byte) uint64 {
	b.m.rev++
	e := memEntry{entry: entry{val: append([]byte(nil), val...), rev: b.m.rev}}
	if b.ttl > 0 {
		e.expires = b.m.now().Add(b.ttl)
	}
	b.m.entries[b.prefix+key] = e
	return e.rev
}

func (b *memBucket) Get(ctx context.Context, key string) (entry, error) {
	if err := ctx.Err(); err != nil {
		return entry{}, err
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	e, ok := b.get(key)
	if !ok {
		return entry{}, errNotFound
	}
	return entry{val: append([]byte(nil), e.val...), rev: e.rev}, nil
}

func (b *memBucket) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	if _, ok := b.get(key); ok {
		return 0, errExists
	}
	return b.put(key, val), nil
}

func (b *memBucket) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	if e, ok := b.get(key); !ok || e.rev != rev {
		return 0, errWrongRevision
	}
	return b.put(key, val), nil
}

func (b *memBucket) Delete(ctx context.Context, key string, rev uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	e, ok := b.get(key)
	if !ok {
		if rev > 0 {
			return errWrongRevision
		}
		return nil
	}
	if rev > 0 && e.rev != rev {
		return errWrongRevision
	}
	b.m.rev++ // a delete marker takes a revision, as in JetStream
	delete(b.m.entries, b.prefix+key)
	return nil
}

func (b *memBucket) Keys(ctx context.Context, filters ...string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	var keys []string
	for full := range b.m.entries {
		k, ok := strings.CutPrefix(full, b.prefix)
		if !ok {
			continue
		}
		if _, live := b.get(k); !live {
			continue
		}
		if len(filters) == 0 || matchesAny(k, filters) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// matchesAny reports whether key matches one of the NATS subject filters
// (tokens split by '.', '*' one token, '>' the rest).
func matchesAny(key string, filters []string) bool {
	kt := strings.Split(key, ".")
next:
	for _, f := range filters {
		ft := strings.Split(f, ".")
		for i, t := range ft {
			if t == ">" {
				if len(kt) > i {
					return true
				}
				continue next
			}
			if i >= len(kt) || (t != "*" && t != kt[i]) {
				continue next
			}
		}
		if len(ft) == len(kt) {
			return true
		}
	}
	return false
}
