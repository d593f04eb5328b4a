package statebackend

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

func TestBatchReadsItsOwnWrites(t *testing.T) {
	b := openTest(t, 8, keygroup.Range{Start: 0, End: 7})
	k := []byte("alice")
	bt := b.NewBatch()
	defer bt.Close()

	if _, err := bt.Get("v", k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of absent key: %v", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	getIs := func(g interface {
		Get(string, []byte) ([]byte, error)
	}, want string) {
		t.Helper()
		v, err := g.Get("v", k)
		if want == "" {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get = %q, %v; want not found", v, err)
			}
			return
		}
		if err != nil || string(v) != want {
			t.Fatalf("Get = %q, %v; want %q", v, err, want)
		}
	}
	int64Is := func(g interface {
		Int64(string, []byte) (int64, error)
	}, want int64) {
		t.Helper()
		if n, err := g.Int64("c", k); err != nil || n != want {
			t.Fatalf("Int64 = %d, %v; want %d", n, err, want)
		}
	}
	must(bt.Put("v", k, []byte("1")))
	getIs(bt, "1")
	getIs(b, "")
	must(bt.Put("v", k, []byte("2")))
	must(bt.Add("c", k, 5))
	must(bt.Add("c", k, -2))
	getIs(bt, "2")
	int64Is(bt, 3)
	int64Is(b, 0)
	must(bt.SetApplied(keygroup.Of(k, 8), 42))
	if bt.Applied(keygroup.Of(k, 8)) != 42 || b.Applied(keygroup.Of(k, 8)) != 0 {
		t.Fatal("applied mark visible before commit, or not in the batch")
	}
	must(bt.Commit())
	getIs(b, "2")
	int64Is(b, 3)
	if b.Applied(keygroup.Of(k, 8)) != 42 {
		t.Fatal("applied mark not committed")
	}

	// Merges on top of committed state, then a Set, a Delete.
	must(bt.Add("c", k, 10))
	int64Is(bt, 13)
	must(bt.SetInt64("c", k, 100))
	must(bt.Add("c", k, 1))
	int64Is(bt, 101)
	must(bt.DeleteInt64("c", k))
	int64Is(bt, 0)
	must(bt.Add("c", k, 7))
	int64Is(bt, 7)
	must(bt.Delete("v", k))
	getIs(bt, "")
	must(bt.Put("v", k, []byte("3")))
	getIs(bt, "3")
	int64Is(b, 3)
	must(bt.Commit())
	int64Is(b, 7)
	getIs(b, "3")

	// Overflow wraps.
	must(bt.SetInt64("c", k, math.MaxInt64))
	must(bt.Add("c", k, 1))
	must(bt.Commit())
	int64Is(b, math.MinInt64)

	// Empty values are values.
	must(bt.Put("v", k, nil))
	must(bt.Commit())
	if v, err := b.Get("v", k); err != nil || len(v) != 0 {
		t.Fatalf("empty value: %q %v", v, err)
	}
}

func TestOwnershipAndNames(t *testing.T) {
	const m = 128
	r := keygroup.ForTask(0, 2, m)
	b := openTest(t, m, r)
	bt := b.NewBatch()
	defer bt.Close()
	var in, out []byte
	for i := 0; in == nil || out == nil; i++ {
		k := fmt.Appendf(nil, "k%d", i)
		if r.Contains(keygroup.Of(k, m)) {
			in = k
		} else {
			out = k
		}
	}
	if err := bt.Put("v", out, nil); !errors.Is(err, ErrNotOwned) {
		t.Errorf("Put of a key not owned: %v", err)
	}
	if _, err := b.Get("v", out); !errors.Is(err, ErrNotOwned) {
		t.Errorf("Get of a key not owned: %v", err)
	}
	if err := bt.SetApplied(r.End+1, 1); !errors.Is(err, ErrNotOwned) {
		t.Errorf("SetApplied of a group not owned: %v", err)
	}
	if _, err := b.Scan("v", keygroup.Range{Start: 0, End: m - 1}); !errors.Is(err, ErrNotOwned) {
		t.Errorf("Scan of groups not owned: %v", err)
	}
	for _, name := range []string{"", strings.Repeat("x", 256)} {
		if err := bt.Put(name, in, nil); !errors.Is(err, ErrInvalidStateName) {
			t.Errorf("state name of %d bytes: %v", len(name), err)
		}
	}
	if err := bt.Put(strings.Repeat("x", 255), in, nil); err != nil {
		t.Error(err)
	}
	for _, o := range []Options{
		{MaxParallelism: 128, KeyGroups: keygroup.Range{Start: 5, End: 4}},
		{MaxParallelism: 128, KeyGroups: keygroup.Range{Start: 0, End: 128}},
		{MaxParallelism: keygroup.MaxMaxParallelism + 1},
	} {
		if _, err := Open(t.TempDir(), o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Open(%+v): %v", o, err)
		}
	}
}

func TestScan(t *testing.T) {
	const m = 16
	b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})
	bt := b.NewBatch()
	defer bt.Close()
	want := map[int][]string{}
	for i := range 300 {
		k := fmt.Sprintf("k%03d", i)
		g := keygroup.Of([]byte(k), m)
		if i%3 == 0 {
			if err := bt.Put("a", []byte(k), []byte("v"+k)); err != nil {
				t.Fatal(err)
			}
			want[g] = append(want[g], k)
		}
		// Neighbouring states, namespaces and meta keys must not show up.
		if err := bt.Put("ab", []byte(k), []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := bt.Add("a", []byte(k), 1); err != nil {
			t.Fatal(err)
		}
		if err := bt.SetApplied(g, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := bt.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []keygroup.Range{{Start: 0, End: m - 1}, {Start: 3, End: 9}, {Start: 7, End: 7}} {
		it, err := b.Scan("a", r)
		if err != nil {
			t.Fatal(err)
		}
		var got, exp []string
		for g := r.Start; g <= r.End; g++ {
			ks := slices.Clone(want[g])
			slices.Sort(ks)
			exp = append(exp, ks...)
		}
		for it.Next() {
			k := string(it.Key())
			if keygroup.Of(it.Key(), m) != it.Group() || string(it.Value()) != "v"+k {
				t.Fatalf("entry %q in group %d = %q", k, it.Group(), it.Value())
			}
			got = append(got, k)
		}
		if err := it.Close(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, exp) {
			t.Errorf("%v: got %d keys, want %d\n%v\n%v", r, len(got), len(exp), got, exp)
		}
	}
	it, err := b.ScanCounters("a", b.Range())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for it.Next() {
		if it.Int64() != 1 {
			t.Fatalf("counter %q = %d", it.Key(), it.Int64())
		}
		n++
	}
	if err := it.Close(); err != nil || n != 300 {
		t.Fatalf("%d counters, %v", n, err)
	}
}

// TestReopen checks that a crash leaves nothing that breaks the next Open,
// and that a reopened DB keeps its state and applied marks, clipped to the
// new range.
func TestReopen(t *testing.T) {
	const m = 64
	dir := t.TempDir()
	b, err := Open(dir, Options{MaxParallelism: m, KeyGroups: keygroup.Range{Start: 0, End: m - 1}})
	if err != nil {
		t.Fatal(err)
	}
	model := newState()
	newWorkload(b, model, 40, 500).run(t, 1000, 10)
	// Leftovers of a crash: a local image and a half-written savepoint.
	if _, err := b.Snapshot(1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tmpDirName, "savepoint-123"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	r := keygroup.ForTask(1, 2, m)
	b, err = Open(dir, Options{MaxParallelism: m, KeyGroups: r})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, sub := range []string{checkpointsDirName, tmpDirName} {
		if entries, _ := os.ReadDir(filepath.Join(dir, sub)); len(entries) != 0 {
			t.Errorf("%s not cleaned: %v", sub, entries)
		}
	}
	checkState(t, b, model.restrict(r, m))
}

func TestHandleEncoding(t *testing.T) {
	h := Handle{
		Version:  HandleVersion,
		Format:   FormatNative,
		Manifest: "job/chk-1/task-0/snapshot.json",
		Range:    keygroup.Range{Start: 0, End: 63},
		Size:     100,
		Uploaded: 40,
		Files:    []string{"job/shared/a-1-000004.sst", "job/chk-1/task-0/snapshot.json"},
	}
	data, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"version":1,"format":"native","manifest":"job/chk-1/task-0/snapshot.json","range":{"start":0,"end":63},"size":100,"uploaded":40,"files":["job/shared/a-1-000004.sst","job/chk-1/task-0/snapshot.json"]}`
	if string(data) != want {
		t.Fatalf("encoding changed:\n%s\nwant\n%s", data, want)
	}
	var back Handle
	if err := json.Unmarshal(data, &back); err != nil || back.Format != FormatNative || back.Manifest != h.Manifest || len(back.Files) != 2 {
		t.Fatalf("%+v %v", back, err)
	}
	if err := back.Validate(64); err != nil {
		t.Fatal(err)
	}
	if FormatCanonical.String() != "canonical" || Format(9).String() != "Format(9)" {
		t.Error(FormatCanonical.String(), Format(9).String())
	}
	if _, err := json.Marshal(Handle{Format: 9}); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("marshal unknown format: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"format":"parquet"}`), &back); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("unmarshal unknown format: %v", err)
	}
	for name, mutate := range map[string]func(*Handle){
		"version":       func(h *Handle) { h.Version = 2 },
		"format":        func(h *Handle) { h.Format = 0 },
		"manifest":      func(h *Handle) { h.Manifest = "/abs" },
		"range":         func(h *Handle) { h.Range.End = 64 },
		"sizes":         func(h *Handle) { h.Uploaded = 101 },
		"files":         func(h *Handle) { h.Files = h.Files[:1] },
		"file key":      func(h *Handle) { h.Files = append(h.Files, "a//b") },
		"canonical two": func(h *Handle) { h.Format = FormatCanonical },
	} {
		bad := h
		bad.Files = slices.Clone(h.Files)
		mutate(&bad)
		if err := bad.Validate(64); !errors.Is(err, ErrInvalidHandle) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
