package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

const waitLong = 20 * time.Second

func TestRegistersWhenCoordinatorAppears(t *testing.T) {
	s := testutil.RunNATS(t)
	nc := testutil.Connect(t, s)
	// Count the worker's attempts while nobody answers them.
	var attempts atomic.Int32
	sub, err := nc.Subscribe(subjects.Namespace{}.Register(), func(*nats.Msg) { attempts.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	w := testWorker(t, s, Config{Slots: 3, RequestTimeout: 100 * time.Millisecond})
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if n := attempts.Load(); n < 3 {
			return fmt.Errorf("%d registration attempts", n)
		}
		return nil
	})
	if w.Instance() != "" {
		t.Fatal("registered without a coordinator")
	}
	_ = sub.Unsubscribe()

	c := startCoord(t, s, 7)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if w.Instance() == "" || c.numHeartbeats() < 2 {
			return fmt.Errorf("instance %q, %d heartbeats", w.Instance(), c.numHeartbeats())
		}
		return nil
	})
	c.mu.Lock()
	reg, hb := c.registrations[0], c.heartbeats[0]
	c.mu.Unlock()
	if reg.Worker != w.Name() || reg.Slots != 3 || !slices.Contains(reg.Operators, "count") || !slices.Contains(reg.Operators, "window") {
		t.Errorf("registration %+v", reg)
	}
	if hb.Instance != w.Instance() || hb.Epoch != 7 || len(hb.Slots) != 3 {
		t.Errorf("heartbeat %+v", hb)
	}
	if w.Epoch() != 7 {
		t.Errorf("epoch %d", w.Epoch())
	}
}

func TestUnknownWorkerRegistersAgain(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{})
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if c.numHeartbeats() == 0 {
			return errors.New("no heartbeat")
		}
		return nil
	})
	first := w.Instance()
	c.forget(w.Name())
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if c.numRegistrations() < 2 || w.Instance() == first {
			return fmt.Errorf("%d registrations, instance %q", c.numRegistrations(), w.Instance())
		}
		return nil
	})
}

// A worker that hears nothing keeps its tasks and keeps trying; when the
// coordinator answers again, it carries on with the same registration.
func TestSilentCoordinatorKeepsTasks(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{})
	j := newTestJob(t, s, "quiet", 1)
	ref := j.deploy(c, w, 0, 1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	inst := w.Instance()

	c.setSilent(true)
	before := c.numHeartbeats()
	j.publish(t, 50)
	j.waitCount(t, 50) // the task keeps working
	c.setSilent(false)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if c.numHeartbeats() <= before {
			return errors.New("no heartbeat after the silence")
		}
		return nil
	})
	if st, _ := c.lastStatus(ref); st != subjects.TaskRunning || w.Instance() != inst || c.numRegistrations() != 1 {
		t.Errorf("after the silence: task %s, instance %q (was %q), %d registrations", st, w.Instance(), inst, c.numRegistrations())
	}
}

func TestHigherEpochCancelsTasks(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{Slots: 2})
	j := newTestJob(t, s, "fenced", 2)
	r0 := j.deploy(c, w, 0, 1, nil)
	r1 := j.deploy(c, w, 1, 2, nil)
	c.waitStatus(r0, subjects.TaskRunning)
	c.waitStatus(r1, subjects.TaskRunning)

	c.restart(2) // heartbeats now get unknown_worker from epoch 2
	c.waitStatus(r0, subjects.TaskCanceled)
	c.waitStatus(r1, subjects.TaskCanceled)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		for _, sl := range w.Slots() {
			if sl.Phase != SlotFree {
				return fmt.Errorf("slot %+v", sl)
			}
		}
		if w.Epoch() != 2 {
			return fmt.Errorf("epoch %d", w.Epoch())
		}
		return nil
	})

	// The old coordinator's messages are refused or ignored now.
	err := c.deploy(subjects.DeployTask{Epoch: 1, Worker: w.Name(), Allocation: "x", TaskRef: subjects.TaskRef{Job: j.spec.Name, Task: 0, Attempt: 9},
		Parallelism: 2, Range: j.rangeOf(0), Spec: j.spec})
	if subjects.CodeOf(err) != subjects.CodeStaleEpoch {
		t.Errorf("deploy of epoch 1: %v", err)
	}
	if _, err := c.allocate(w.Name(), j.spec.Name, "y"); err != nil {
		t.Errorf("slot request of epoch 2: %v", err)
	}
	err = c.cancel(subjects.CancelTask{Epoch: 1, Worker: w.Name(), TaskRef: r0})
	if subjects.CodeOf(err) != subjects.CodeStaleEpoch {
		t.Errorf("cancel of epoch 1: %v", err)
	}
}

func TestBadDeployments(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{})
	j := newTestJob(t, s, "bad", 1)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if w.Instance() == "" {
			return errors.New("not registered")
		}
		return nil
	})
	if _, err := c.allocate(w.Name(), j.spec.Name, "a1"); err != nil {
		t.Fatal(err)
	}
	d := subjects.DeployTask{Epoch: 1, Worker: w.Name(), Allocation: "a1", TaskRef: subjects.TaskRef{Job: j.spec.Name, Task: 0, Attempt: 1},
		Parallelism: 1, Range: j.rangeOf(0), Spec: j.spec}

	wrongAlloc := d
	wrongAlloc.Allocation = "a2"
	unknownOp := d
	unknownOp.Spec.Operator.Type = "nosuchop"
	badConfig := d
	badConfig.Spec.Operator = subjects.OperatorSpec{Type: "window", Size: subjects.Duration(time.Second), Aggregate: "median"}
	otherWorker := d
	otherWorker.Worker = "someone-else"
	stale := d
	stale.Epoch = 0
	for _, tc := range []struct {
		name string
		d    subjects.DeployTask
		want subjects.Code
	}{
		{"wrong allocation", wrongAlloc, subjects.CodeSlotMismatch},
		{"unknown operator", unknownOp, subjects.CodeUnknownOperator},
		{"bad operator config", badConfig, subjects.CodeInvalidJobSpec},
		{"other worker", otherWorker, subjects.CodeInvalidArgument},
		{"stale epoch", stale, subjects.CodeStaleEpoch},
	} {
		var resp subjects.Response
		b, _ := encodeUnchecked(&tc.d)
		m, err := c.nc.Request(c.ns.Deploy(w.Name()), b, 5*time.Second)
		if err == nil {
			err = subjects.Decode(m.Data, &resp)
		}
		if err == nil {
			err = resp.Err()
		}
		if subjects.CodeOf(err) != tc.want {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.want)
		}
	}
	// A malformed message gets a 1xx code, not silence.
	m, err := c.nc.Request(c.ns.Deploy(w.Name()), []byte(`{"type":"deploy_task","v":1,"epoch":"x"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp subjects.Response
	if err := subjects.Decode(m.Data, &resp); err != nil || subjects.CodeOf(resp.Err()) != subjects.CodeBadMessage {
		t.Errorf("malformed deploy: %v / %v", err, resp.Err())
	}
	// The good deployment still works after all that.
	if err := c.deploy(d); err != nil {
		t.Fatal(err)
	}
	c.waitStatus(d.TaskRef, subjects.TaskRunning)
}

// encodeUnchecked encodes d without validating it, as a buggy peer might.
func encodeUnchecked(d *subjects.DeployTask) ([]byte, error) {
	d.Header = subjects.Header{Type: subjects.TypeDeployTask, V: subjects.Version}
	return json.Marshal(d)
}

func TestSlotOffers(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{Slots: 1})
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if w.Instance() == "" {
			return errors.New("not registered")
		}
		return nil
	})
	// Rejected: the slot is freed.
	c.mu.Lock()
	c.rejectOffers = true
	c.mu.Unlock()
	if i, err := c.allocate(w.Name(), "j", "a1"); err != nil || i != 0 {
		t.Fatalf("slot %d, %v", i, err)
	}
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if sl := w.Slots()[0]; sl.Phase != SlotFree {
			return fmt.Errorf("slot %+v", sl)
		}
		return nil
	})
	// Accepted: allocated, and reported in heartbeats.
	c.mu.Lock()
	c.rejectOffers = false
	c.mu.Unlock()
	if _, err := c.allocate(w.Name(), "j", "a2"); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if n := len(c.heartbeats); n == 0 || c.heartbeats[n-1].Slots[0].Allocation != "a2" {
			return errors.New("allocation a2 not in the slot report")
		}
		return nil
	})
	if sl := w.Slots()[0]; sl.Phase != SlotAllocated || sl.Job != "j" {
		t.Errorf("slot %+v", sl)
	}
	if _, err := c.allocate(w.Name(), "j", "a3"); subjects.CodeOf(err) != subjects.CodeNoSlot {
		t.Errorf("second allocation of one slot: %v", err)
	}
	c.mu.Lock()
	o := c.offers[len(c.offers)-1]
	c.mu.Unlock()
	if o.Worker != w.Name() || o.Instance != w.Instance() || o.Epoch != 1 || o.Slots[0].Allocation != "a2" {
		t.Errorf("offer %+v", o)
	}
}

func TestIdentityIsKept(t *testing.T) {
	dir := t.TempDir()
	s := testutil.RunNATS(t)
	nc := testutil.Connect(t, s)
	cfg := Config{Conn: nc, Store: objectstore.NewMem(), DataDir: dir}
	w1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if w1.Name() != w2.Name() || subjects.ValidateName("worker", w1.Name()) != nil {
		t.Errorf("names %q and %q", w1.Name(), w2.Name())
	}
	cfg.Name = "explicit"
	w3, err := New(cfg)
	if err != nil || w3.Name() != "explicit" {
		t.Errorf("explicit name: %v %v", w3, err)
	}
	cfg.Name = "not a name"
	if _, err := New(cfg); err == nil {
		t.Error("invalid name accepted")
	}
}

// A closed connection (which, unlike a broken one, never reconnects) stops
// the tasks; Run still returns only when its context is done.
func TestClosedConnectionStopsTasks(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	nc := testutil.Connect(t, s)
	w := testWorker(t, s, Config{Conn: nc})
	j := newTestJob(t, s, "closed", 1)
	ref := j.deploy(c, w, 0, 1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	nc.Close()
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if sl := w.Slots()[0]; sl.Phase != SlotFree {
			return fmt.Errorf("slot %+v", sl)
		}
		entries, err := os.ReadDir(w.tasksDir())
		if err != nil || len(entries) != 0 {
			return fmt.Errorf("task directories: %v %v", entries, err)
		}
		return nil
	})
}

// TestAdoptedTasksKeepRunning: a coordinator of a newer term adopts one of
// the two attempts the worker reports when it registers. The adopted one
// runs on with its state, answers the new epoch's barriers and no longer
// the old one's, and declines a new-epoch barrier whose id it took under
// the old epoch; the other is fenced.
func TestAdoptedTasksKeepRunning(t *testing.T) {
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{Slots: 2})
	j := newTestJob(t, s, "adopted", 2)
	r0 := j.deploy(c, w, 0, 1<<20|1, nil)
	r1 := j.deploy(c, w, 1, 1<<20|2, nil)
	c.waitStatus(r0, subjects.TaskRunning)
	c.waitStatus(r1, subjects.TaskRunning)
	j.publish(t, 40)
	j.waitCount(t, 40)
	barrier := func(id, epoch uint64) {
		c.publish(c.ns.Barrier(j.spec.Name), &subjects.Barrier{Epoch: epoch, Job: j.spec.Name, Checkpoint: id,
			Kind: subjects.KindCheckpoint, Format: statebackend.FormatNative, Target: fmt.Sprintf("adopted/chk-%d", id), Shared: "adopted/shared", Timestamp: time.Now()})
	}
	barrier(5, 1)
	if ack, _ := c.waitAck(r0, 5); ack == nil || ack.Epoch != 1 {
		t.Fatalf("checkpoint 5 of epoch 1: %+v", ack)
	}

	alloc0 := fmt.Sprintf("%s-t0-a%d", j.spec.Name, r0.Attempt)
	var report []subjects.SlotReport
	c.mu.Lock()
	c.adopt = func(req subjects.RegisterRequest) []string {
		report = req.Running
		return []string{alloc0}
	}
	c.mu.Unlock()
	c.restart(2)
	c.waitStatus(r1, subjects.TaskCanceled)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if w.Epoch() != 2 {
			return fmt.Errorf("epoch %d", w.Epoch())
		}
		return nil
	})
	c.mu.Lock()
	if len(report) != 2 || report[0].Checkpoint != 5 || report[0].Range == nil || *report[0].Range != j.rangeOf(report[0].Task) {
		t.Errorf("running attempts reported on registering: %+v", report)
	}
	c.mu.Unlock()
	for _, sl := range w.Slots() {
		if sl.Allocation == alloc0 && (sl.Epoch != 2 || sl.Task != r0) {
			t.Errorf("adopted slot %+v", sl)
		}
	}
	if st, _ := c.lastStatus(r0); st != subjects.TaskRunning {
		t.Fatalf("adopted task is %s", st)
	}

	// The old epoch's barriers are ignored; a new-epoch barrier reusing an
	// id the attempt took is declined; the next one is acked for epoch 2.
	barrier(6, 1)
	barrier(5, 2)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, d := range c.declines {
			if d.TaskRef == r0 && d.Checkpoint == 5 && d.Epoch == 2 && d.Reason.Code == subjects.CodeCheckpointAborted {
				return nil
			}
		}
		return errors.New("barrier 5 of epoch 2 not declined")
	})
	barrier(7, 2)
	if ack, _ := c.waitAck(r0, 7); ack == nil || ack.Epoch != 2 {
		t.Fatalf("checkpoint 7 of epoch 2: %+v", ack)
	}
	c.mu.Lock()
	for _, a := range c.acks {
		if a.Checkpoint == 6 {
			t.Errorf("acked checkpoint 6 of epoch 1 after the adoption: %+v", a)
		}
	}
	c.mu.Unlock()

	// The adopted task kept its state: counts of its key groups go on from
	// where they were.
	j.publish(t, 40)
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error { return j.checkCounts(t, j.rangeOf(0)) })
}
