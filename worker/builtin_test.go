package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// memState is the in-memory twin of a statebackend.Batch.
type memState struct {
	values   map[string][]byte
	counters map[string]int64
}

func newMemState() *memState {
	return &memState{values: map[string][]byte{}, counters: map[string]int64{}}
}

func mk(state string, key []byte) string { return state + "\x00" + string(key) }

func (m *memState) Get(state string, key []byte) ([]byte, error) {
	v, ok := m.values[mk(state, key)]
	if !ok {
		return nil, statebackend.ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

func (m *memState) Put(state string, key, value []byte) error {
	m.values[mk(state, key)] = append([]byte(nil), value...)
	return nil
}

func (m *memState) Delete(state string, key []byte) error {
	delete(m.values, mk(state, key))
	return nil
}

func (m *memState) Add(state string, key []byte, delta int64) error {
	m.counters[mk(state, key)] += delta
	return nil
}

func (m *memState) Int64(state string, key []byte) (int64, error) {
	return m.counters[mk(state, key)], nil
}

// run feeds events (key, body, time) to op and returns each event's outputs
// and the final value of every key.
type testEvent struct {
	key  string
	body string
	at   time.Time
}

func runOp(t *testing.T, spec subjects.OperatorSpec, events []testEvent) (outs [][]string, st *memState) {
	t.Helper()
	op, err := newOperator(spec)
	if err != nil {
		t.Fatal(err)
	}
	st = newMemState()
	for i, e := range events {
		ctx := NewContext(st, e.key)
		err := op.Process(ctx, Event{Key: e.key, Subject: "s." + e.key, Data: []byte(e.body), Time: e.at, Seq: uint64(i + 1)})
		if errors.Is(err, ErrBadEvent) {
			outs = append(outs, []string{"bad"})
			continue
		}
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		var o []string
		for _, b := range ctx.Emitted() {
			o = append(o, string(b))
		}
		outs = append(outs, o)
	}
	return outs, st
}

func value(t *testing.T, st *memState, key string) string {
	t.Helper()
	v, err := st.Get(ValueState, []byte(key))
	if err != nil {
		return "<none>"
	}
	if !json.Valid(v) {
		t.Fatalf("value of %q is not JSON: %q", key, v)
	}
	return string(v)
}

func TestCount(t *testing.T) {
	outs, st := runOp(t, subjects.OperatorSpec{Type: "count"}, []testEvent{{key: "a"}, {key: "b"}, {key: "a"}})
	want := [][]string{{`{"key":"a","value":1}`}, {`{"key":"b","value":1}`}, {`{"key":"a","value":2}`}}
	if fmt.Sprint(outs) != fmt.Sprint(want) {
		t.Errorf("outputs %q, want %q", outs, want)
	}
	if value(t, st, "a") != "2" || value(t, st, "b") != "1" {
		t.Errorf("values a=%s b=%s", value(t, st, "a"), value(t, st, "b"))
	}
}

func TestSum(t *testing.T) {
	outs, st := runOp(t, subjects.OperatorSpec{Type: "sum", Field: "order.amount"}, []testEvent{
		{key: "a", body: `{"order":{"amount":2.5}}`},
		{key: "a", body: `{"order":{"amount":4}}`},
		{key: "a", body: `not json`},
		{key: "a", body: `{"order":{"amount":"7"}}`},
		{key: "a", body: `{"order":{}}`},
		{key: "b", body: `{"order":{"amount":-1}}`},
	})
	if got := outs[1][0]; got != `{"key":"a","value":6.5}` {
		t.Errorf("second output %s", got)
	}
	for i := 2; i <= 4; i++ {
		if outs[i][0] != "bad" {
			t.Errorf("event %d: %q, want a bad event", i, outs[i])
		}
	}
	if value(t, st, "a") != "6.5" || value(t, st, "b") != "-1" {
		t.Errorf("values a=%s b=%s", value(t, st, "a"), value(t, st, "b"))
	}
	if _, err := newOperator(subjects.OperatorSpec{Type: "sum"}); subjects.CodeOf(err) != subjects.CodeInvalidJobSpec {
		t.Errorf("sum without field: %v", err)
	}
}

// TestSumIsExact checks that integers sum exactly in int64 (float64 loses
// 9007199254740993), that an overflow skips the event with ErrOverflow and
// keeps the sum, and that a fractional input makes the sum a float for good.
func TestSumIsExact(t *testing.T) {
	outs, st := runOp(t, subjects.OperatorSpec{Type: "sum", Field: "n"}, []testEvent{
		{key: "a", body: `{"n":9007199254740993}`},
		{key: "a", body: `{"n":1}`},
		{key: "b", body: `{"n":9223372036854775807}`},
		{key: "b", body: `{"n":1}`},                    // overflow: skipped
		{key: "b", body: `{"n":-9223372036854775807}`}, // back to 0
		{key: "c", body: `{"n":92233720368547758070}`}, // outside int64: skipped
		{key: "d", body: `{"n":1.5}`},
		{key: "d", body: `{"n":1.5}`},
		{key: "d", body: `{"n":1}`},
		{key: "e", body: `{"n":-3}`},
		{key: "e", body: `{"n":1e2}`},
	})
	if got := value(t, st, "a"); got != "9007199254740994" {
		t.Errorf("9007199254740993 + 1 = %s", got)
	}
	if outs[1][0] != `{"key":"a","value":9007199254740994}` {
		t.Errorf("output %s", outs[1][0])
	}
	if outs[3][0] != "bad" || outs[5][0] != "bad" {
		t.Errorf("overflows: %q, %q", outs[3], outs[5])
	}
	if got := value(t, st, "b"); got != "0" {
		t.Errorf("b = %s, want 0 (the overflowing event skipped)", got)
	}
	if got := value(t, st, "c"); got != "<none>" {
		t.Errorf("c = %s", got)
	}
	if got := value(t, st, "d"); got != "4.0" {
		t.Errorf("d = %s, want the float 4.0", got)
	}
	if got := value(t, st, "e"); got != "97.0" {
		t.Errorf("e = %s", got)
	}
	op, _ := newOperator(subjects.OperatorSpec{Type: "sum", Field: "n"})
	ctx := NewContext(newMemState(), "k")
	_ = op.Process(ctx, Event{Key: "k", Data: []byte(`{"n":9223372036854775807}`)})
	err := op.Process(ctx, Event{Key: "k", Data: []byte(`{"n":1}`)})
	if !errors.Is(err, ErrOverflow) || !errors.Is(err, ErrBadEvent) {
		t.Errorf("overflow error %v: want ErrOverflow and ErrBadEvent", err)
	}
}

func TestLatestAndDedupe(t *testing.T) {
	evs := []testEvent{{key: "a", body: `{"x":1}`}, {key: "a", body: `plain text`}, {key: "b", body: `3`}}
	outs, st := runOp(t, subjects.OperatorSpec{Type: "latest"}, evs)
	if outs[1][0] != `{"key":"a","value":"plain text"}` || value(t, st, "a") != `"plain text"` || value(t, st, "b") != "3" {
		t.Errorf("latest: outputs %q, a=%s b=%s", outs, value(t, st, "a"), value(t, st, "b"))
	}
	outs, st = runOp(t, subjects.OperatorSpec{Type: "dedupe"}, evs)
	if len(outs[0]) != 1 || outs[0][0] != `{"x":1}` || len(outs[1]) != 0 || outs[2][0] != "3" {
		t.Errorf("dedupe outputs %q", outs)
	}
	if value(t, st, "a") != `{"x":1}` {
		t.Errorf("dedupe value %s", value(t, st, "a"))
	}
}

func TestWindow(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	evs := []testEvent{
		{key: "a", body: `{"n":1}`, at: at(1 * time.Second)},
		{key: "a", body: `{"n":2}`, at: at(59 * time.Second)},
		{key: "b", body: `{"n":5}`, at: at(30 * time.Second)},
		{key: "a", body: `{"n":4}`, at: at(61 * time.Second)}, // closes a's first window
		{key: "a", body: `{"n":8}`, at: at(50 * time.Second)}, // late: its window has closed
		{key: "a", body: `{"n":16}`, at: at(200 * time.Second)},
	}
	outs, st := runOp(t, subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Minute), Aggregate: "sum", Field: "n"}, evs)
	for i, o := range outs {
		if (i == 3 || i == 4 || i == 5) != (len(o) == 1) {
			t.Fatalf("event %d emitted %q", i, o)
		}
	}
	if outs[4][0] != "bad" {
		t.Errorf("late event: %q", outs[4])
	}
	var closed struct {
		Key   string      `json:"key"`
		Value windowState `json:"value"`
	}
	if err := json.Unmarshal([]byte(outs[3][0]), &closed); err != nil {
		t.Fatal(err)
	}
	if closed.Key != "a" || !closed.Value.Start.Equal(t0) || !closed.Value.End.Equal(at(time.Minute)) || closed.Value.Count != 2 || closed.Value.Sum != "3" || !closed.Value.Closed {
		t.Errorf("first closed window %s", outs[3][0])
	}
	if err := json.Unmarshal([]byte(outs[5][0]), &closed); err != nil {
		t.Fatal(err)
	}
	if closed.Value.Count != 1 || closed.Value.Sum != "4" || !closed.Value.Start.Equal(at(time.Minute)) {
		t.Errorf("second closed window %s", outs[5][0])
	}
	if v := value(t, st, "a"); !strings.Contains(v, `"count":1`) || !strings.Contains(v, `"sum":16`) || strings.Contains(v, "closed") {
		t.Errorf("open window of a: %s", v)
	}
	// Count windows, and determinism: the same events give the same outputs.
	spec := subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Minute), Aggregate: "count"}
	o1, _ := runOp(t, spec, evs)
	o2, _ := runOp(t, spec, evs)
	if fmt.Sprint(o1) != fmt.Sprint(o2) || !strings.Contains(o1[3][0], `"count":2`) || strings.Contains(o1[3][0], "sum") {
		t.Errorf("count windows: %q / %q", o1, o2)
	}
}

func TestRegistry(t *testing.T) {
	for _, name := range subjects.BuiltinOperators {
		if _, ok := lookupOperator(name); !ok {
			t.Errorf("built-in %s is not registered", name)
		}
	}
	if _, err := newOperator(subjects.OperatorSpec{Type: "nope"}); subjects.CodeOf(err) != subjects.CodeUnknownOperator {
		t.Errorf("unknown operator: %v", err)
	}
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		f()
	}
	mustPanic("duplicate", func() { Register("count", func(subjects.OperatorSpec) (Operator, error) { return countOp{}, nil }) })
	mustPanic("bad name", func() { Register("a.b", func(subjects.OperatorSpec) (Operator, error) { return countOp{}, nil }) })
	mustPanic("nil", func() { Register("nilop", nil) })
}
