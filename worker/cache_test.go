package worker

import (
	"errors"
	"fmt"
	"sort"
	"testing"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// The write-back cache combines a key's updates into one Pebble write per
// commit, commits nothing before the task commits, reads its own writes,
// and after an eviction reads committed values back from Pebble.
func TestStateCacheWriteBack(t *testing.T) {
	const m = 16
	all := keygroup.Range{Start: 0, End: m - 1}
	be, err := statebackend.Open(t.TempDir(), statebackend.Options{MaxParallelism: m, KeyGroups: all})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	bt := be.NewBatch()
	defer bt.Close()
	c := newStateCache(bt, 8, 1<<20)
	key := func(i int) []byte { return fmt.Appendf(nil, "k%d", i) }
	group := func(i int) int { return keygroup.Of(key(i), m) }

	// 10 keys, each written 5 times, one deleted at the end.
	for round := range 5 {
		for i := range 10 {
			if err := c.put(group(i), ValueState, key(i), fmt.Appendf(nil, "%d", round*100+i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.del(group(3), ValueState, key(3)); err != nil {
		t.Fatal(err)
	}
	if v, found, _ := c.get(group(7), ValueState, key(7)); !found || string(v) != "407" {
		t.Errorf("read own write: %q %v", v, found)
	}
	if _, found, _ := c.get(group(3), ValueState, key(3)); found {
		t.Error("deleted key found")
	}
	if _, err := be.Get(ValueState, key(7)); !errors.Is(err, statebackend.ErrNotFound) {
		t.Errorf("a value reached Pebble before the commit: %v", err)
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	if n := bt.Len(); n != 10 {
		t.Errorf("flush wrote %d Pebble operations for 10 keys written 51 times", n)
	}
	if err := bt.SetApplied(0, 51); err != nil {
		t.Fatal(err)
	}
	if err := bt.Commit(); err != nil {
		t.Fatal(err)
	}
	if !c.full() {
		t.Fatal("10 entries do not exceed a bound of 8")
	}
	c.committed() // evicts
	if len(c.entries) != 0 || c.dirtyLen() != 0 {
		t.Fatalf("after eviction: %d entries, %d dirty", len(c.entries), c.dirtyLen())
	}
	for i := range 10 {
		v, found, err := c.get(group(i), ValueState, key(i))
		want := fmt.Sprint(400 + i)
		if err != nil || (i == 3) == found || (i != 3 && string(v) != want) {
			t.Errorf("key %d after commit: %q %v %v", i, v, found, err)
		}
		if got, err := be.Get(ValueState, key(i)); i != 3 && (err != nil || string(got) != want) {
			t.Errorf("committed key %d: %q %v", i, got, err)
		}
	}
	if be.Applied(0) != 51 {
		t.Errorf("applied mark %d", be.Applied(0))
	}
}

// With "emit": "latest" a round publishes each key's last value only, under
// the id of the event that produced it; outputs that are not value changes
// (a window's, under a timer id) are never combined; dropping a skipped
// event's output brings back the one it superseded.
func TestEmitLatest(t *testing.T) {
	const m = 8
	tk := newLocalTask(t, countOp{}, m, keygroup.Range{Start: 0, End: m - 1}, nil)
	tk.outs.latest = map[string]int{}
	for i, k := range []string{"a", "a", "b", "a"} {
		feed(t, tk, uint64(i+1), k, t0, 0)
	}
	got := taken(tk)
	ga, gb := keygroup.Of([]byte("a"), m), keygroup.Of([]byte("b"), m)
	want := []string{
		fmt.Sprintf(`job.%d.4 {"key":"a","value":3}`, ga),
		fmt.Sprintf(`job.%d.3 {"key":"b","value":1}`, gb),
	}
	if fmt.Sprint(sortedLines(got)) != fmt.Sprint(sortedLines(want)) {
		t.Errorf("combined round: %q, want %q", got, want)
	}

	var o outputs
	o.latest = map[string]int{}
	o.addResult(outID{group: 1, seq: 1}, "k", []byte("1"))
	o.addResult(outID{group: 1, seq: 2, timer: true}, "k", []byte(`{"w":1}`))
	o.addResult(outID{group: 1, seq: 3}, "k", []byte("2"))
	o.truncate(2)
	var live []string
	for _, r := range o.recs {
		if !r.dropped {
			live = append(live, string(o.data(r)))
		}
	}
	if fmt.Sprint(live) != `[{"key":"k","value":1} {"key":"k","value":{"w":1}}]` {
		t.Errorf("after dropping the last output: %q", live)
	}
}

func sortedLines(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
