package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// A count task over a partitioned stream consumes only its key groups and
// ends with exact counts, answers state queries for them, and publishes one
// output per event with its deterministic Msg-Id.
func TestCountOwnGroupsOnly(t *testing.T) {
	t.Run("partitioned", func(t *testing.T) { testCountOwnGroupsOnly(t, subjects.LayoutPartitioned) })
	t.Run("stream", func(t *testing.T) { testCountOwnGroupsOnly(t, subjects.LayoutStream) })
}

func testCountOwnGroupsOnly(t *testing.T, layout string) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{BatchSize: 64})
	j := newTestJobIn(t, s, "clicks", 2, layout)
	j.publish(t, 300)
	ref := j.deploy(c, w, 0, 1, nil) // task 1 is not deployed
	c.waitStatus(ref, subjects.TaskRunning)
	j.publish(t, 300)

	r0, r1 := j.rangeOf(0), j.rangeOf(1)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error { return j.checkCounts(t, r0) })
	j.checkOutputs(t, r0) // nothing of task 1's groups

	// Queries: a key never seen is not found; a key of an unowned group has
	// no responder; a query on the wrong group's subject is refused.
	for _, k := range []string{"nobody", "nobody-1", "nobody-2", "nobody-3"} {
		res := j.query(t, k)
		if j.ownedBy(k, r0) && (res.Error != nil || res.Found) || !j.ownedBy(k, r0) && res.Error == nil {
			t.Errorf("query of unseen key %s: %+v", k, res)
		}
	}
	for k := range j.counts {
		if j.ownedBy(k, r1) {
			if res := j.query(t, k); res.Error == nil {
				t.Errorf("key %s of task 1's groups answered: %+v", k, res)
			}
			break
		}
	}
	var res subjects.StateResult
	m, err := j.nc.Request(j.ns.StateQuery(j.spec.Name, r0.Start), []byte(`{"key":"user-1"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := subjects.Decode(m.Data, &res); err != nil {
		t.Fatal(err)
	}
	if g := keygroup.Of([]byte("user-1"), testM); g != r0.Start && subjects.CodeOf(res.Error) != subjects.CodeInvalidArgument {
		t.Errorf("query of user-1 (group %d) on group %d: %+v", g, r0.Start, res)
	}
}

// A task canceled and redeployed from a checkpoint's handle skips the events
// the checkpoint holds and applies the rest exactly once; the outputs of the
// replayed events are dropped by the sink's duplicate window.
func TestRestoreFromCheckpointIsExactlyOnce(t *testing.T) {
	for _, format := range []statebackend.Format{statebackend.FormatNative, statebackend.FormatCanonical} {
		t.Run(format.String(), func(t *testing.T) {
			s := testutil.RunNATS(t)
			c := startCoord(t, s, 1)
			store := objectstore.NewMem()
			w := testWorker(t, s, Config{Slots: 2, Store: store, BatchSize: 32})
			j := newTestJob(t, s, "orders", 1)
			all := j.rangeOf(0)

			ref1 := j.deploy(c, w, 0, 1, nil)
			c.waitStatus(ref1, subjects.TaskRunning)
			j.publish(t, 400)
			j.waitCount(t, 400)
			atCheckpoint := j.lastSeqs(t)

			c.publish(c.ns.Barrier(j.spec.Name), &subjects.Barrier{Epoch: 1, Job: j.spec.Name, Checkpoint: 1,
				Kind: subjects.KindCheckpoint, Format: format, Target: "orders/chk-1", Shared: "orders/shared", Timestamp: time.Now()})
			ack, dec := c.waitAck(ref1, 1)
			if dec != nil {
				t.Fatalf("declined: %+v", dec.Reason)
			}
			h := ack.Handle
			if err := h.Validate(testM); err != nil || h.Range != all || h.Format != format || ack.Worker != w.Name() {
				t.Fatalf("ack %+v: %v", ack, err)
			}
			if !strings.HasPrefix(h.Manifest, "orders/chk-1/task-0-1") {
				t.Errorf("manifest %s is not under the attempt's prefix", h.Manifest)
			}
			c.publish(c.ns.Complete(j.spec.Name), &subjects.Complete{Epoch: 1, Job: j.spec.Name, Checkpoint: 1, Kind: subjects.KindCheckpoint})

			// Events after the checkpoint: applied by attempt 1, then again
			// (from the stream) by attempt 2.
			j.publish(t, 200)
			j.waitCount(t, 600)
			if err := c.cancel(subjects.CancelTask{Epoch: 1, Worker: w.Name(), TaskRef: ref1, Release: true}); err != nil {
				t.Fatal(err)
			}
			c.waitStatus(ref1, subjects.TaskCanceled)
			if sl := w.Slots(); sl[0].Phase != SlotFree {
				t.Errorf("slot after cancel with release: %+v", sl[0])
			}
			j.publish(t, 100)

			ref2 := j.deploy(c, w, 0, 2, []statebackend.Handle{h})
			c.waitStatus(ref2, subjects.TaskRunning)
			// The restored attempt resumes each partition right after the
			// checkpoint's input position, whatever its groups' own marks.
			for stream, last := range atCheckpoint {
				if last == 0 {
					continue // no event: read from the start
				}
				if cfg := j.consumerOf(t, ref2, stream); cfg.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || cfg.OptStartSeq != last+1 {
					t.Errorf("restored consumer of %s starts with %v at %d, want sequence %d", stream, cfg.DeliverPolicy, cfg.OptStartSeq, last+1)
				}
			}
			j.publish(t, 100)
			j.waitCount(t, 800)
			j.checkOutputs(t, all)
		})
	}
}

func TestCheckpointPlane(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 3)
	store := &flakyStore{Store: objectstore.NewMem()}
	w := testWorker(t, s, Config{Store: store})
	j := newTestJob(t, s, "ckpt", 1)
	ref := j.deploy(c, w, 0, 3<<20|1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	j.publish(t, 50)
	j.waitCount(t, 50)
	barrier := func(id uint64, epoch uint64) {
		c.publish(c.ns.Barrier(j.spec.Name), &subjects.Barrier{Epoch: epoch, Job: j.spec.Name, Checkpoint: id,
			Kind: subjects.KindCheckpoint, Format: statebackend.FormatNative, Target: fmt.Sprintf("ckpt/chk-%d", id), Shared: "ckpt/shared", Timestamp: time.Now()})
	}

	// A storage failure is declined with a code; nothing of the attempt's
	// private files is left behind.
	store.fail.Store(true)
	barrier(1, 3)
	_, dec := c.waitAck(ref, 1)
	if dec == nil || dec.Reason.Code != subjects.CodeStorageUnavailable {
		t.Fatalf("want a decline with %s, got %+v", subjects.CodeStorageUnavailable, dec)
	}
	if objs, _ := store.List(context.Background(), "ckpt/chk-1/"); len(objs) != 0 {
		t.Errorf("failed upload left %d objects, e.g. %s", len(objs), objs[0].Key)
	}
	store.fail.Store(false)

	// Barriers of other epochs are ignored. A repeated barrier (the
	// coordinator resends one while acks are missing) is answered with the
	// same ack again, never with a second snapshot.
	barrier(2, 2)
	barrier(3, 4)
	barrier(4, 3)
	ack, dec := c.waitAck(ref, 4)
	if dec != nil {
		t.Fatalf("declined: %+v", dec.Reason)
	}
	if ack.Sync <= 0 || ack.Async <= 0 || ack.Handle.Uploaded == 0 {
		t.Errorf("ack %+v", ack)
	}
	manifest := ack.Handle.Manifest
	barrier(4, 3)
	testutil.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		var again []subjects.Ack
		for _, a := range c.acks {
			if a.Checkpoint == 4 {
				again = append(again, a)
			}
		}
		switch {
		case len(again) < 2:
			return errors.New("the repeated barrier of checkpoint 4 was not answered")
		case again[1].Handle.Manifest != manifest:
			return fmt.Errorf("repeated barrier answered with another snapshot: %s, then %s", manifest, again[1].Handle.Manifest)
		}
		return nil
	})
	// Abort of a checkpoint, then more after a completed one.
	c.publish(c.ns.Abort(j.spec.Name), &subjects.Abort{Epoch: 3, Job: j.spec.Name, Checkpoint: 4})
	barrier(5, 3)
	ack5, _ := c.waitAck(ref, 5)
	c.publish(c.ns.Complete(j.spec.Name), &subjects.Complete{Epoch: 3, Job: j.spec.Name, Checkpoint: 5})
	j.publish(t, 10)
	j.waitCount(t, 60)
	barrier(6, 3)
	ack6, _ := c.waitAck(ref, 6)
	if ack5 == nil || ack6 == nil || ack6.Handle.Manifest == ack5.Handle.Manifest {
		t.Fatalf("checkpoints 5 and 6: %+v, %+v", ack5, ack6)
	}
	// A native savepoint shares nothing: every file is under its own prefix.
	c.publish(c.ns.Barrier(j.spec.Name), &subjects.Barrier{Epoch: 3, Job: j.spec.Name, Checkpoint: 7,
		Kind: subjects.KindSavepoint, Format: statebackend.FormatNative, Target: "savepoints/ckpt/sp-7", Timestamp: time.Now()})
	sp, _ := c.waitAck(ref, 7)
	if sp == nil {
		t.Fatal("savepoint 7 declined")
	}
	for _, f := range sp.Handle.Files {
		if !strings.HasPrefix(f, "savepoints/ckpt/sp-7/task-0-") {
			t.Errorf("savepoint file %s outside the savepoint", f)
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.acks {
		if a.Checkpoint == 2 || a.Checkpoint == 3 {
			t.Errorf("acked checkpoint %d of another epoch", a.Checkpoint)
		}
	}
	n4 := 0
	for _, a := range c.acks {
		if a.Checkpoint == 4 {
			n4++
		}
	}
	if n4 != 2 {
		t.Errorf("checkpoint 4 acked %d times, want 2 (once for each of its barriers)", n4)
	}
}

// flakyStore fails every Put while fail is set.
type flakyStore struct {
	objectstore.Store
	fail atomic.Bool
}

var errFlaky = errors.New("flaky store: unavailable")

func (f *flakyStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if f.fail.Load() {
		return errFlaky
	}
	return f.Store.Put(ctx, key, r, size)
}

func (f *flakyStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if f.fail.Load() {
		return errFlaky
	}
	return f.Store.PutIfAbsent(ctx, key, r, size)
}

// A NATS restart (file storage) breaks every connection, the task's
// consumer and its unconfirmed outputs. The task carries on: the ordered
// consumer resumes after the last event it handed over, outputs are
// published again under their Msg-Ids, and every event is applied once.
func TestSurvivesNATSRestart(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	s := testutil.RunNATSWithOptions(t, opts)
	opts.Port = s.Addr().(*net.TCPAddr).Port
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{BatchSize: 16})
	j := newTestJob(t, s, "restart", 1)
	ref := j.deploy(c, w, 0, 1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	j.publish(t, 300)
	j.waitCount(t, 300)
	// Restart while the task is busy with a backlog.
	j.publish(t, 1000)

	s.Shutdown()
	s.WaitForShutdown()
	j.mapInput(t, testutil.RunNATSWithOptions(t, opts))
	j.publish(t, 300)
	j.waitCount(t, 1600)
	j.checkOutputs(t, j.rangeOf(0))
	if st, err := c.lastStatus(ref); st != subjects.TaskRunning {
		t.Errorf("task is %s: %v", st, err)
	}
}

// A task that cannot start reports failed with a code the job master can
// act on, and frees nothing but its own directory.
func TestTaskFailuresAreCoded(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{Slots: 2})
	j := newTestJob(t, s, "failing", 1)

	missing := statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatNative,
		Manifest: "failing/chk-9/task-0-1/snapshot.json", Range: j.rangeOf(0), Files: []string{"failing/chk-9/task-0-1/snapshot.json"}}
	ref := j.deploy(c, w, 0, 1, []statebackend.Handle{missing})
	c.waitStatus(ref, subjects.TaskFailed)
	if _, err := c.lastStatus(ref); err == nil || err.Code != subjects.CodeCorruptState {
		t.Errorf("restore from a missing checkpoint: %v, want %s", err, subjects.CodeCorruptState)
	}

	j.spec.Source.Stream = "NO_SUCH_STREAM"
	ref = j.deploy(c, w, 0, 2, nil)
	c.waitStatus(ref, subjects.TaskFailed)
	if _, err := c.lastStatus(ref); err == nil || err.Code != subjects.CodeUnknownJob {
		t.Errorf("missing source stream: %v, want %s", err, subjects.CodeUnknownJob)
	}
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		entries, err := os.ReadDir(w.tasksDir())
		if err != nil || len(entries) != 0 {
			return fmt.Errorf("task directories left: %v %v", entries, err)
		}
		return nil
	})
	// Both slots stay allocated to the job, without a task.
	for _, sl := range w.Slots() {
		if sl.Phase != SlotAllocated || sl.Task.Attempt != 0 {
			t.Errorf("slot %+v", sl)
		}
	}
}
