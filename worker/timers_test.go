package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

var t0 = time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC)

// feed applies an event of key at JetStream time `at`; pending is how many
// messages the input still held after it.
func feed(t *testing.T, tk *task, seq uint64, key string, at time.Time, pending uint64) {
	t.Helper()
	ev := inputEvent{key: key, subject: "w." + key, group: keygroup.Of([]byte(key), tk.m), seq: seq, time: at, pending: pending, data: []byte(`{"n":1}`)}
	if err := tk.apply(&ev); err != nil {
		t.Fatal(err)
	}
}

// taken returns the collected outputs as "id body" lines and drops them.
func taken(tk *task) []string {
	var out []string
	for _, r := range tk.outs.recs {
		if r.dropped {
			continue
		}
		out = append(out, r.msgID("job")+" "+string(tk.outs.data(r)))
	}
	tk.outs.reset()
	sort.Strings(out)
	return out
}

// fireAt fires the timers due at now.
func fireAt(t *testing.T, tk *task, now time.Time) {
	t.Helper()
	tk.clock.now = now
	if err := tk.fireTimers(); err != nil {
		t.Fatal(err)
	}
}

func windowOf(t *testing.T, line string) (string, windowState) {
	t.Helper()
	_, body, _ := strings.Cut(line, " ")
	var out struct {
		Key   string      `json:"key"`
		Value windowState `json:"value"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return out.Key, out.Value
}

// A window closes on time, by its processing-time timer, when its key goes
// quiet; not before the input has passed its end (a task catching up on a
// backlog); under the same id whether a timer or a later event closes it;
// and an event of a closed window is late.
func TestWindowClosesOnTime(t *testing.T) {
	const m = 8
	op, err := newOperator(subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	tk := newLocalTask(t, op, m, keygroup.Range{Start: 0, End: m - 1}, nil)

	tk.clock.now = t0.Add(5 * time.Second)
	feed(t, tk, 1, "a", t0.Add(time.Second), 1)
	feed(t, tk, 2, "b", t0.Add(2*time.Second), 0)
	fireAt(t, tk, t0.Add(59*time.Second))
	if got := taken(tk); len(got) != 0 {
		t.Fatalf("before the windows' end: %q", got)
	}
	// a and b go quiet while the input moves on (z); at the end of their
	// window both close.
	fireAt(t, tk, t0.Add(time.Minute))
	if got := taken(tk); len(got) != 0 {
		t.Fatalf("closed before the input passed the windows' end: %q", got)
	}
	feed(t, tk, 3, "z", t0.Add(61*time.Second), 0)
	fireAt(t, tk, t0.Add(time.Minute+time.Second)) // the timers' retry
	got := taken(tk)
	if len(got) != 2 {
		t.Fatalf("at the windows' end: %q", got)
	}
	for i, key := range []string{"a", "b"} {
		k, w := windowOf(t, got[i])
		g := keygroup.Of([]byte(key), m)
		wantID := fmt.Sprintf("job.%d.%s.t%d", g, key, t0.Add(time.Minute).UnixNano())
		if k != key || !w.Closed || w.Count != 1 || !w.Start.Equal(t0) || !strings.HasPrefix(got[i], wantID+" ") {
			t.Errorf("closed window %q, want id %s", got[i], wantID)
		}
	}
	// An event of a's closed window is late: skipped and counted.
	feed(t, tk, 4, "a", t0.Add(30*time.Second), 0)
	if tk.skipped.Load() != 1 || len(taken(tk)) != 0 {
		t.Errorf("late event: skipped %d", tk.skipped.Load())
	}

	// Catching up: c's window [1m, 2m) is due by the clock, but the input
	// is at 1m50s with more to read: the timer retries.
	feed(t, tk, 5, "c", t0.Add(70*time.Second), 5)
	feed(t, tk, 6, "d", t0.Add(110*time.Second), 4)
	fireAt(t, tk, t0.Add(2*time.Minute))
	if got := taken(tk); len(got) != 0 {
		t.Fatalf("closed while the input is behind: %q", got)
	}
	feed(t, tk, 7, "c", t0.Add(100*time.Second), 3) // still counts
	feed(t, tk, 8, "d", t0.Add(125*time.Second), 2) // input passes 2m; d's first window closes by event
	got = taken(tk)
	if len(got) != 1 || !strings.Contains(got[0], `"key":"d"`) {
		t.Fatalf("d's window closed by its next event: %q", got)
	}
	wantD := fmt.Sprintf("job.%d.d.t%d ", keygroup.Of([]byte("d"), m), t0.Add(2*time.Minute).UnixNano())
	if !strings.HasPrefix(got[0], wantD) {
		t.Errorf("closed by an event under id %q, want the timer's %q", got[0], wantD)
	}
	fireAt(t, tk, t0.Add(2*time.Minute+time.Second)) // the retry
	got = taken(tk)
	if len(got) != 2 {
		t.Fatalf("after the input passed the window: %q", got)
	}
	for _, line := range got {
		switch k, w := windowOf(t, line); {
		case k == "c" && w.Count == 2, k == "z" && w.Count == 1:
		default:
			t.Errorf("closed window %q, want c's (2) and z's (1)", line)
		}
	}
	if _, ok := tk.op.(TimerOperator); !ok {
		t.Fatal("window has no OnTimer")
	}
}

// Timers are keyed state: committed with the applied marks, carried by a
// canonical savepoint, and after a restore at another parallelism each
// task finds exactly the timers of its own key groups and fires them.
func TestTimersAreRescaledWithTheirKeyGroups(t *testing.T) {
	const m = 8
	all := keygroup.Range{Start: 0, End: m - 1}
	op, _ := newOperator(subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Minute)})
	tk := newLocalTask(t, op, m, all, nil)
	tk.clock.now = t0
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"}
	for i, k := range keys {
		feed(t, tk, uint64(i+1), k, t0.Add(time.Duration(i)*time.Second), 0)
	}
	if err := tk.markPosition(); err != nil {
		t.Fatal(err)
	}
	if err := tk.commit(); err != nil {
		t.Fatal(err)
	}
	sp, err := tk.be.Savepoint()
	if err != nil {
		t.Fatal(err)
	}
	store := objectstore.NewMem()
	h, err := sp.Write(context.Background(), store, "sp/task-0")
	sp.Release()
	if err != nil {
		t.Fatal(err)
	}
	fired := map[string]int{}
	for i := range 2 {
		rng := keygroup.ForTask(i, 2, m)
		be, err := statebackend.Restore(context.Background(), store, t.TempDir(), statebackend.Options{MaxParallelism: m, KeyGroups: rng}, []statebackend.Handle{h})
		if err != nil {
			t.Fatal(err)
		}
		half := newLocalTask(t, op, m, rng, be)
		for _, r := range half.timers {
			if !rng.Contains(r.group) || keygroup.Of([]byte(r.key), m) != r.group || r.at != t0.Add(time.Minute).UnixNano() {
				t.Errorf("task %d (%v) restored timer %+v", i, rng, r)
			}
		}
		half.inputs[0].time = t0.Add(2 * time.Minute)
		fireAt(t, half, t0.Add(time.Minute))
		for _, line := range taken(half) {
			k, w := windowOf(t, line)
			if !w.Closed {
				t.Errorf("not closed: %s", line)
			}
			fired[k]++
		}
		if err := half.commit(); err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if rng.Contains(keygroup.Of([]byte(k), m)) {
				if v, err := half.be.Get(TimerState, []byte(k)); !errors.Is(err, statebackend.ErrNotFound) {
					t.Errorf("fired timer of %s still stored after the commit: %x %v", k, v, err)
				}
			}
		}
	}
	if len(fired) != len(keys) {
		t.Errorf("fired after the rescale: %v, want each of %d keys once", fired, len(keys))
	}
	for k, n := range fired {
		if n != 1 {
			t.Errorf("key %s fired %d times", k, n)
		}
	}
}

// Timer lists: sorted, without duplicates, versioned; operators cannot
// touch the reserved state.
func TestTimerState(t *testing.T) {
	var v []byte
	for _, at := range []int64{30, 10, 20, 10} {
		nv, _, err := editTimers(nil, v, ProcessingTime, at, true)
		if err != nil {
			t.Fatal(err)
		}
		v = nv
	}
	e, err := timerEntries(v)
	if err != nil || len(e) != 3*timerLen {
		t.Fatalf("%x %v", v, err)
	}
	for i, want := range []int64{10, 20, 30} {
		if d, at := timerAt(e, i); d != ProcessingTime || at != want {
			t.Errorf("timer %d: %v %d", i, d, at)
		}
	}
	v, changed, _ := editTimers(nil, v, ProcessingTime, 20, false)
	if !changed || len(v) != 1+2*timerLen {
		t.Errorf("delete: %x", v)
	}
	if _, changed, _ := editTimers(nil, v, ProcessingTime, 99, false); changed {
		t.Error("deleting a missing timer changed the list")
	}
	if _, err := timerEntries([]byte{9, 1}); !errors.Is(err, statebackend.ErrCorrupt) {
		t.Errorf("bad list: %v", err)
	}
	ctx := NewContextAt(newMemState(), "k", t0)
	if err := ctx.Put(TimerState, []byte("x")); !errors.Is(err, errReservedState) {
		t.Errorf("put of the reserved state: %v", err)
	}
	if err := ctx.RegisterTimer(t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if ctx.Now() != t0 || ctx.InputTime() != t0 {
		t.Errorf("now %v input %v", ctx.Now(), ctx.InputTime())
	}
}

// In a running task, the window of a key that goes quiet is emitted once
// the task's (injected) clock is past its end and the input has moved past
// it, with no further event of that key.
func TestRunningTaskFiresTimers(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	clock := testutil.NewClock(time.Now())
	w := testWorker(t, s, Config{Clock: clock})
	j := newTestJob(t, s, "win", 1)
	j.spec.Operator = subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Second), Aggregate: "count"}
	ref := j.deploy(c, w, 0, 1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	j.publish(t, 1) // user-0
	// The event's JetStream timestamp is before now, so its window ends
	// by the next whole second.
	end := time.Now().Truncate(time.Second).Add(time.Second)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if res := j.query(t, "user-0"); !res.Found || !strings.Contains(string(res.Value), `"count":1`) {
			return fmt.Errorf("window of user-0: %+v", res)
		}
		return nil
	})
	clock.Advance(time.Hour)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		if !time.Now().After(end) {
			return errors.New("waiting for the window's end")
		}
		return nil
	})
	if outs := j.outputs(t); len(outs) != 0 {
		t.Fatalf("outputs while the input is behind the window's end: %v", outs)
	}
	// An event of another key in user-0's stream: that stream's input time
	// passes user-0's window (a stream's time says nothing of another's).
	m := j.spec.MaxParallelism
	var part keygroup.Range
	for _, in := range subjects.InputStreams(&j.spec, keygroup.Range{Start: 0, End: m - 1}) {
		if in.Groups.Contains(keygroup.Of([]byte("user-0"), m)) {
			part = in.Groups
		}
	}
	other := ""
	for i := 0; other == ""; i++ {
		if k := "other-" + strconv.Itoa(i); part.Contains(keygroup.Of([]byte(k), m)) {
			other = k
		}
	}
	if _, err := j.js.Publish(context.Background(), strings.Replace(j.spec.Source.Subjects[0], "*", other, 1), []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		outs := j.outputs(t)
		if len(outs) != 1 {
			return fmt.Errorf("%d outputs", len(outs))
		}
		for id, body := range outs {
			if !strings.Contains(id, ".user-0.t") || !strings.Contains(body, `"closed":true`) || !strings.Contains(body, `"count":1`) {
				t.Errorf("output %s %s", id, body)
			}
		}
		return nil
	})
}
