//go:build unix

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/subjects"
)

// wrong is one difference from the ground truth.
type wrong struct {
	what string // "counts k17", "windows k3", "sink COUNTS k5"
	got  string
	want string
}

func (w wrong) String() string { return fmt.Sprintf("%s: got %s, want %s", w.what, w.got, w.want) }

// tally is the outcome of a verification. lost counts what is missing
// against the ground truth and duplicated what is in excess:
//
//   - a key's state is lost if it is below the truth (a count lower than
//     the key's events; a window that starts earlier than the key's last
//     window, or the same window with a lower count, or none) and
//     duplicated if it is above it (any other difference);
//   - a sink output is lost if the truth has it and the sink stream does
//     not, and duplicated for every copy the sink holds beyond the truth's
//     (an output the truth does not have at all counts as duplicated).
//
// So lost and duplicated are numbers of keys plus numbers of outputs; both
// are 0 exactly when every state and every sink stream is exact.
type tally struct {
	keys             int // (job, key) pairs checked
	lost, duplicated int
	wrong            []wrong // the first few of each kind, for the failure message
}

// add counts n lost or duplicated things, described by w.
func (t *tally) add(lost bool, n int, w wrong) {
	if lost {
		t.lost += n
	} else {
		t.duplicated += n
	}
	if len(t.wrong) < 20 {
		t.wrong = append(t.wrong, w)
	}
}

// stateQueryConcurrency bounds the state queries in flight.
const stateQueryConcurrency = 8

// checkStates compares every key's state in both jobs, read through the
// user API (client.State), with the truth. An error means a query failed
// (a task restarting): try again.
func (c *cluster) checkStates(tr truth) (tally, error) {
	keys := make([]string, 0, len(tr.count))
	for k := range tr.count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type query struct{ job, key string }
	type answer struct {
		q     query
		found bool
		value []byte
		err   error
	}
	queries := make(chan query)
	answers := make(chan answer)
	var wg sync.WaitGroup
	for i := 0; i < stateQueryConcurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := range queries {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				res, err := c.api.State(ctx, q.job, q.key)
				cancel()
				if errors.Is(err, subjects.CodeKeyNotFound) {
					err = nil // no state: found is false
				}
				answers <- answer{q, res.Found, res.Value, err}
			}
		}()
	}
	go func() {
		for _, job := range []string{countJob, windowJob} {
			for _, k := range keys {
				queries <- query{job, k}
			}
		}
		close(queries)
		wg.Wait()
		close(answers)
	}()
	got := map[query]answer{}
	var firstErr error
	for a := range answers {
		if a.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("state of %s in %s: %w", a.q.key, a.q.job, a.err)
		}
		got[a.q] = a
	}
	if firstErr != nil {
		return tally{}, firstErr
	}
	var t tally
	for _, k := range keys {
		t.keys += 2
		a := got[query{countJob, k}]
		var n int64
		if a.found {
			if err := json.Unmarshal(a.value, &n); err != nil {
				return t, fmt.Errorf("state of %s in %s: %q: %v", k, countJob, a.value, err)
			}
		}
		if want := tr.count[k]; n != want {
			t.add(n < want, 1, wrong{countJob + " " + k, strconv.FormatInt(n, 10), strconv.FormatInt(want, 10)})
		}
		a = got[query{windowJob, k}]
		want := tr.open[k]
		if !a.found {
			t.add(true, 1, wrong{windowJob + " " + k, "no state", want.String()})
			continue
		}
		w, err := decodeWindow(a.value)
		if err != nil {
			return t, fmt.Errorf("state of %s in %s: %q: %v", k, windowJob, a.value, err)
		}
		if !w.equal(want) {
			below := w.Start.Before(want.Start) || (w.Start.Equal(want.Start) && w.Count < want.Count)
			t.add(below, 1, wrong{windowJob + " " + k, w.String(), want.String()})
		}
	}
	return t, nil
}

// outputs returns how many outputs each sink stream must hold: the count
// job emits one per event (the key's counts 1..n), the window job one per
// window it closed.
func (tr truth) outputs() map[string]int {
	windows := 0
	for _, ws := range tr.closed {
		windows += len(ws)
	}
	return map[string]int{countSink: tr.events, windowSink: windows}
}

// waitSinks waits, boundedly, until each sink stream holds at least as many
// outputs as the truth has: the last outputs are published after the state
// changes they report are committed, so they may trail the state by a
// little. It returns without error after the timeout: checkSinks then
// reports what is missing.
func (c *cluster) waitSinks(tr truth, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		short := false
		for stream, n := range tr.outputs() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s, err := c.js.Stream(ctx, stream)
			cancel()
			if err != nil || s.CachedInfo().State.Msgs < uint64(n) {
				short = true
			}
		}
		if !short {
			return
		}
		time.Sleep(250 * time.Millisecond) // polling, bounded by deadline
	}
}

// sinkOutput is an output as the built-in operators emit it.
type sinkOutput struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// checkSinks reads both sink streams back and compares their outputs with
// the truth's, copy by copy: the count sink must hold each key's counts
// 1..n once each, the window sink each window the truth closed once.
func (c *cluster) checkSinks(tr truth, t *tally) error {
	// The count sink: copies of each key's count i, in seen[key][i-1].
	seen := map[string][]uint8{}
	for k, n := range tr.count {
		seen[k] = make([]uint8, n)
	}
	err := readStream(context.Background(), c.js, countSink, func(m jetstream.Msg, _ *jetstream.MsgMetadata) error {
		var out sinkOutput
		var n int64
		if err := json.Unmarshal(m.Data(), &out); err != nil {
			return fmt.Errorf("%s: output %q: %v", countSink, m.Data(), err)
		}
		if err := json.Unmarshal(out.Value, &n); err != nil {
			return fmt.Errorf("%s: output %q: %v", countSink, m.Data(), err)
		}
		if s := seen[out.Key]; n >= 1 && n <= int64(len(s)) {
			s[n-1] = min(s[n-1]+1, 100)
		} else {
			t.add(false, 1, wrong{"sink " + countSink + " " + out.Key, "an output of count " + strconv.FormatInt(n, 10), fmt.Sprintf("counts 1..%d", len(s))})
		}
		return nil
	})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for i, copies := range seen[k] {
			w := wrong{fmt.Sprintf("sink %s %s count %d", countSink, k, i+1), fmt.Sprintf("%d copies", copies), "1"}
			switch {
			case copies == 0:
				t.add(true, 1, w)
			case copies > 1:
				t.add(false, int(copies)-1, w)
			}
		}
	}

	// The window sink, as a multiset of "<key> <window>".
	want := map[string]int{}
	for k, ws := range tr.closed {
		for _, w := range ws {
			want[k+" "+w.String()]++
		}
	}
	got := map[string]int{}
	err = readStream(context.Background(), c.js, windowSink, func(m jetstream.Msg, _ *jetstream.MsgMetadata) error {
		var out sinkOutput
		if err := json.Unmarshal(m.Data(), &out); err != nil {
			return fmt.Errorf("%s: output %q: %v", windowSink, m.Data(), err)
		}
		w, err := decodeWindow(out.Value)
		if err != nil {
			return fmt.Errorf("%s: output %q: %v", windowSink, m.Data(), err)
		}
		got[out.Key+" "+w.String()]++
		return nil
	})
	if err != nil {
		return err
	}
	var outs []string
	for o := range want {
		outs = append(outs, o)
	}
	for o := range got {
		if _, ok := want[o]; !ok {
			outs = append(outs, o)
		}
	}
	sort.Strings(outs)
	for _, o := range outs {
		if g, w := got[o], want[o]; g != w {
			t.add(g < w, max(g-w, w-g), wrong{"sink " + windowSink + " " + o, fmt.Sprintf("%d copies", g), strconv.Itoa(w)})
		}
	}
	return nil
}

// checkStoredCheckpoints checks that every completed checkpoint and
// savepoint the coordinator records in JetStream references only objects
// that exist ("a checkpoint is complete only if its metadata is durable in
// JetStream and every object it references exists"). It returns how many
// records it checked.
func (c *cluster) checkStoredCheckpoints() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store := c.minio.Store(c.t, storeBucket, storePrefix)
	kv, err := c.js.KeyValue(ctx, checkpointBucket)
	if err != nil {
		return 0, err
	}
	checked := 0
	for _, job := range []string{countJob, windowJob} {
		recs, latest, err := c.storedRecords(ctx, job)
		if err != nil {
			return checked, err
		}
	records:
		for _, r := range recs {
			if r.ID > latest {
				continue // put by a commit that never finished: not completed
			}
			checked++
			for _, f := range checkpoint.Files(r) {
				if _, err := store.Stat(ctx, f); err != nil {
					// Checkpoints go on completing, and retention deletes a
					// subsumed one's record before its files: a file missing
					// while the record is still there is a fault.
					kind := map[subjects.CheckpointKind]string{subjects.KindCheckpoint: "chk", subjects.KindSavepoint: "sp"}[r.Kind]
					if _, gerr := kv.Get(ctx, job+"."+kind+"."+strconv.FormatUint(r.ID, 10)); errors.Is(gerr, jetstream.ErrKeyNotFound) {
						checked--
						continue records
					}
					return checked, fmt.Errorf("%s %d of %s is completed in JetStream (id at or below latest %d) but its object %s is unreadable: %v (harness saw: %s)",
						r.Kind, r.ID, r.Job, latest, f, err, c.obs.history(r.Job, r.ID))
				}
			}
		}
	}
	return checked, nil
}

// triggerSavepoint requests a savepoint of job with an empty request on
// the plain trigger subject (what `nats req flotilla.trigger.savepoint.JOB`
// sends) and returns its outcome.
func (c *cluster) triggerSavepoint(job string, timeout time.Duration) (subjects.SavepointResult, error) {
	var res subjects.SavepointResult
	var msg *nats.Msg
	var err error
	// No responders means no coordinator is subscribed: it is restarting.
	// Ask again until one answers (a user would, too).
	for deadline := time.Now().Add(timeout); ; {
		msg, err = c.nc.Request(c.ns.TriggerSavepoint(job), nil, time.Until(deadline))
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling, bounded by deadline
	}
	if err != nil {
		return res, err
	}
	if err := subjects.Decode(msg.Data, &res); err != nil {
		return res, err
	}
	if res.Error != nil {
		return res, res.Error
	}
	return res, nil
}

// checkRecordsMatchCoordinator checks that the checkpoints JetStream holds
// as completed (records at or below a job's latest pointer) are the ones
// the coordinator retains: a record it aborted must not be left to read as
// completed. Checkpoints go on being taken, so it compares, boundedly, until
// every record is either retained or newer than the newest retained one
// (completed after the list was read), and returns what is left over.
func (c *cluster) checkRecordsMatchCoordinator() []string {
	var extra []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		extra = extra[:0]
		for _, job := range []string{countJob, windowJob} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			retained, err := c.api.Checkpoints(ctx, job)
			var recs []subjects.CheckpointRecord
			var latest uint64
			if err == nil {
				recs, latest, err = c.storedRecords(ctx, job)
			}
			cancel()
			if err != nil {
				extra = append(extra, fmt.Sprintf("%s: %v", job, err))
				continue
			}
			known := map[uint64]bool{}
			var newest uint64
			for _, r := range retained {
				known[r.ID] = true
				newest = max(newest, r.ID)
			}
			for _, r := range recs {
				if r.Kind == subjects.KindCheckpoint && r.ID <= latest && !known[r.ID] && r.ID < newest {
					extra = append(extra, fmt.Sprintf("checkpoint %d of %s reads as completed in JetStream (latest %d) but the coordinator does not retain it (retains %v; harness saw: %s)",
						r.ID, job, latest, ids(retained), c.obs.history(job, r.ID)))
				}
			}
		}
		if len(extra) == 0 || time.Now().After(deadline) {
			return extra
		}
		time.Sleep(500 * time.Millisecond) // polling, bounded by deadline
	}
}

func ids(rs []subjects.CheckpointRecord) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// storedRecords reads job's checkpoint and savepoint records and its latest
// pointer from the coordinator's KV bucket.
func (c *cluster) storedRecords(ctx context.Context, job string) ([]subjects.CheckpointRecord, uint64, error) {
	kv, err := c.js.KeyValue(ctx, checkpointBucket)
	if err != nil {
		return nil, 0, err
	}
	var latest uint64
	if e, err := kv.Get(ctx, job+".latest"); err == nil {
		var p struct {
			ID uint64 `json:"id"`
		}
		if err := json.Unmarshal(e.Value(), &p); err != nil {
			return nil, 0, fmt.Errorf("%s.latest: %v", job, err)
		}
		latest = p.ID
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, err
	}
	lister, err := kv.ListKeysFiltered(ctx, job+".chk.*", job+".sp.*")
	if err != nil {
		return nil, 0, err
	}
	var recs []subjects.CheckpointRecord
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		} else if err != nil {
			return nil, 0, err
		}
		var r subjects.CheckpointRecord
		if err := subjects.Decode(e.Value(), &r); err != nil {
			return nil, 0, fmt.Errorf("%s: %v", k, err)
		}
		recs = append(recs, r)
	}
	return recs, latest, nil
}
