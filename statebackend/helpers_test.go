package statebackend

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// state is a backend's full logical contents, as a Go model.
type state struct {
	values   map[string]string // state "\x00" user key -> value
	counters map[string]int64  // state "\x00" user key -> value (zero counters are absent)
	applied  map[int]uint64    // group -> seq (zero marks are absent)
}

func newState() *state {
	return &state{values: map[string]string{}, counters: map[string]int64{}, applied: map[int]uint64{}}
}

func mkey(st string, k []byte) string { return st + "\x00" + string(k) }

func splitMKey(mk string) (string, []byte) {
	st, k, _ := strings.Cut(mk, "\x00")
	return st, []byte(k)
}

func (s *state) clone() *state {
	return &state{values: maps.Clone(s.values), counters: maps.Clone(s.counters), applied: maps.Clone(s.applied)}
}

// restrict returns the part of s in groups r of max parallelism m.
func (s *state) restrict(r keygroup.Range, m int) *state {
	out := newState()
	for mk, v := range s.values {
		if _, k := splitMKey(mk); r.Contains(keygroup.Of(k, m)) {
			out.values[mk] = v
		}
	}
	for mk, v := range s.counters {
		if _, k := splitMKey(mk); r.Contains(keygroup.Of(k, m)) {
			out.counters[mk] = v
		}
	}
	for g, seq := range s.applied {
		if r.Contains(g) {
			out.applied[g] = seq
		}
	}
	return out
}

func (s *state) merge(o *state) {
	maps.Copy(s.values, o.values)
	maps.Copy(s.counters, o.counters)
	maps.Copy(s.applied, o.applied)
}

// diff describes the first differences between two states, or "".
func (s *state) diff(o *state) string {
	var out []string
	add := func(format string, args ...any) {
		if len(out) < 10 {
			out = append(out, fmt.Sprintf(format, args...))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.values)) {
		if v, ok := o.values[k]; !ok || v != s.values[k] {
			add("value %q: %q vs %q (present %v)", k, s.values[k], v, ok)
		}
	}
	for k, v := range o.values {
		if _, ok := s.values[k]; !ok {
			add("value %q: absent vs %q", k, v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.counters)) {
		if s.counters[k] != o.counters[k] {
			add("counter %q: %d vs %d", k, s.counters[k], o.counters[k])
		}
	}
	for k, v := range o.counters {
		if _, ok := s.counters[k]; !ok {
			add("counter %q: absent vs %d", k, v)
		}
	}
	for g := range 1 << 15 {
		if s.applied[g] != o.applied[g] {
			add("applied[%d]: %d vs %d", g, s.applied[g], o.applied[g])
		}
	}
	return strings.Join(out, "\n")
}

// dump reads every key of b's DB, owned or not, failing the test on keys
// outside b's range or keys it cannot parse.
func dump(t testing.TB, b *Backend) *state {
	t.Helper()
	s := newState()
	it, err := b.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		g := keyGroupOf(k)
		if !b.Range().Contains(g) {
			t.Fatalf("key %x of group %d outside range %v", k, g, b.Range())
		}
		v := it.Value()
		if len(k) == 4 && k[2] == nsMeta && k[3] == metaApplied {
			seq, _ := decodeSeq(v)
			if seq != 0 {
				s.applied[g] = seq
			}
			if b.Applied(g) != seq {
				t.Fatalf("Applied(%d) = %d, DB holds %d", g, b.Applied(g), seq)
			}
			continue
		}
		p, ok := parseStateKey(k)
		if !ok {
			t.Fatalf("unparseable key %x", k)
		}
		if kg := keygroup.Of(p.user, b.MaxParallelism()); kg != g {
			t.Fatalf("key %q stored in group %d, belongs to %d", p.user, g, kg)
		}
		mk := mkey(string(p.state), p.user)
		if p.ns == nsValue {
			s.values[mk] = string(v)
		} else {
			n, ok := decodeInt64(v)
			if !ok {
				t.Fatalf("counter %q of %d bytes", mk, len(v))
			}
			if n != 0 {
				s.counters[mk] = n
			}
		}
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return s
}

func checkState(t testing.TB, b *Backend, want *state) {
	t.Helper()
	if d := want.diff(dump(t, b)); d != "" {
		t.Fatalf("state differs (want vs got):\n%s", d)
	}
}

func openTest(t testing.TB, m int, r keygroup.Range) *Backend {
	t.Helper()
	b, err := Open(t.TempDir(), Options{MaxParallelism: m, KeyGroups: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func restoreTest(t testing.TB, store objectstore.Store, m int, r keygroup.Range, hs ...Handle) *Backend {
	t.Helper()
	b, err := Restore(context.Background(), store, t.TempDir(), Options{MaxParallelism: m, KeyGroups: r}, hs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// workload applies random operations to b and to model; keys are drawn from
// the groups b owns.
type workload struct {
	rng   *rand.Rand
	b     *Backend
	model *state
	seq   uint64
	keys  [][]byte
}

func newWorkload(b *Backend, model *state, seed uint64, nkeys int) *workload {
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), b: b, model: model}
	for i := 0; len(w.keys) < nkeys; i++ {
		k := fmt.Appendf(nil, "key-%d-%d", seed, i)
		if b.Range().Contains(keygroup.Of(k, b.MaxParallelism())) {
			w.keys = append(w.keys, k)
		}
	}
	return w
}

var workloadStates = []string{"v", "profile", "c", "hits"}

// run applies n events, committing every batchSize.
func (w *workload) run(t testing.TB, n, batchSize int) {
	t.Helper()
	bt := w.b.NewBatch()
	defer bt.Close()
	for i := range n {
		w.seq++
		k := w.keys[w.rng.IntN(len(w.keys))]
		g := keygroup.Of(k, w.b.MaxParallelism())
		var err error
		switch op := w.rng.IntN(10); {
		case op < 3:
			st := workloadStates[w.rng.IntN(2)]
			v := make([]byte, w.rng.IntN(40))
			for j := range v {
				v[j] = byte('a' + w.rng.IntN(26))
			}
			err = bt.Put(st, k, v)
			w.model.values[mkey(st, k)] = string(v)
		case op < 4:
			st := workloadStates[w.rng.IntN(2)]
			err = bt.Delete(st, k)
			delete(w.model.values, mkey(st, k))
		case op < 8:
			st := workloadStates[2+w.rng.IntN(2)]
			d := w.rng.Int64N(1000) - 300
			err = bt.Add(st, k, d)
			w.model.counters[mkey(st, k)] += d
			if w.model.counters[mkey(st, k)] == 0 {
				delete(w.model.counters, mkey(st, k))
			}
		case op < 9:
			// Read-modify-write through the batch.
			st := workloadStates[0]
			old, gerr := bt.Get(st, k)
			want, ok := w.model.values[mkey(st, k)]
			if (gerr == nil) != ok || string(old) != want {
				t.Fatalf("batch Get(%q) = %q, %v; model %q, %v", k, old, gerr, want, ok)
			}
			nv := append(old, 'x')
			if len(nv) > 50 {
				nv = nv[:1]
			}
			err = bt.Put(st, k, nv)
			w.model.values[mkey(st, k)] = string(nv)
		default:
			st := workloadStates[2]
			old, gerr := bt.Int64(st, k)
			if gerr != nil || old != w.model.counters[mkey(st, k)] {
				t.Fatalf("batch Int64(%q) = %d, %v; model %d", k, old, gerr, w.model.counters[mkey(st, k)])
			}
			err = bt.SetInt64(st, k, old*2+1)
			w.model.counters[mkey(st, k)] = old*2 + 1
			if old*2+1 == 0 {
				delete(w.model.counters, mkey(st, k))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := bt.SetApplied(g, w.seq); err != nil {
			t.Fatal(err)
		}
		w.model.applied[g] = w.seq
		if (i+1)%batchSize == 0 || i == n-1 {
			if err := bt.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// countingStore counts the bytes read through Get.
type countingStore struct {
	objectstore.Store
	read atomic.Int64
	gets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := c.Store.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	c.gets.Add(1)
	return &countingReader{ReadCloser: rc, n: &c.read}, nil
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

// stores returns the stores tests run against: memory and a local directory.
func stores(t testing.TB) map[string]objectstore.Store {
	fs, err := objectstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	return map[string]objectstore.Store{"mem": objectstore.NewMem(), "fs": fs}
}

func listKeys(t testing.TB, store objectstore.Store, prefix string) []string {
	t.Helper()
	infos, err := store.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(infos))
	for i, o := range infos {
		keys[i] = o.Key
	}
	sort.Strings(keys)
	return keys
}

func seqBytes(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func readDirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, err
}
