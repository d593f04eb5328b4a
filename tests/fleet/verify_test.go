package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// checkRetainedObjects fails the test if a retained checkpoint of job names
// an object the store does not hold with the size its handle gives.
func (f *fleet) checkRetainedObjects(job string) {
	f.t.Helper()
	ctx := context.Background()
	cps, err := f.api.Checkpoints(ctx, job)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, cp := range cps {
		for _, task := range cp.Tasks {
			if len(task.Handle.Sizes) != len(task.Handle.Files) {
				f.t.Fatalf("checkpoint %d task %d: %d sizes for %d files", cp.ID, task.Task, len(task.Handle.Sizes), len(task.Handle.Files))
			}
			for i, file := range task.Handle.Files {
				info, err := f.store.Stat(ctx, file)
				if err != nil {
					f.t.Fatalf("completed checkpoint %d names %s: %v", cp.ID, file, err)
				}
				if info.Size != task.Handle.Sizes[i] {
					f.t.Fatalf("completed checkpoint %d names %s of %d bytes; the store holds %d", cp.ID, file, task.Handle.Sizes[i], info.Size)
				}
			}
		}
	}
}

// TestForgedAcksNeverComplete: acks with handles naming objects that do not
// exist, sent for every task as soon as the barrier is out (so they arrive
// before the real ones and are taken), abort the checkpoint with
// missing_object instead of completing it. Three such checkpoints later the
// job checkpoints again, and every retained checkpoint names only objects
// the store holds.
func TestForgedAcksNeverComplete(t *testing.T) {
	f := minioFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	spec := withCheckpoints(countSpec("clicks", 2), 200*time.Millisecond, 2)
	tolerable := 5
	spec.Checkpoint.TolerableFailures = &tolerable
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(2000, 50, 61, truth)
	f.checkState("clicks", truth, 30*time.Second)
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}

	ns := subjects.Namespace{}
	var mu sync.Mutex
	forged := map[uint64]bool{}   // checkpoints acked with forged handles
	rejected := map[uint64]bool{} // of those, aborted for missing objects
	var completed []uint64        // forged ones that completed: must stay empty
	forge := func(m *nats.Msg) {
		var b subjects.Barrier
		if subjects.Decode(m.Data, &b) != nil || b.Kind != subjects.KindCheckpoint {
			return
		}
		mu.Lock()
		if len(forged) >= 3 {
			mu.Unlock()
			return
		}
		forged[b.Checkpoint] = true
		mu.Unlock()
		for _, task := range info.Tasks {
			manifest := fmt.Sprintf("%s/forged-%d/snapshot.json", b.Target, task.Task)
			h := statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatNative,
				Manifest: manifest, Range: task.Range, Size: 10, Uploaded: 10, Files: []string{manifest}, Sizes: []int64{10}}
			ack := subjects.Ack{Worker: task.Worker, TaskRef: subjects.TaskRef{Job: "clicks", Task: task.Task, Attempt: task.Attempt},
				Checkpoint: b.Checkpoint, Handle: h}
			if err := f.nc.Publish(ns.Ack("clicks", task.Worker), subjects.MustEncode(&ack)); err != nil {
				t.Error(err)
			}
		}
	}
	outcome := func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		var ab subjects.Abort
		if subjects.Decode(m.Data, &ab) == nil && forged[ab.Checkpoint] && ab.Reason != nil && ab.Reason.Code == subjects.CodeMissingObject {
			rejected[ab.Checkpoint] = true
			return
		}
		var c subjects.Complete
		if subjects.Decode(m.Data, &c) == nil && forged[c.Checkpoint] {
			completed = append(completed, c.Checkpoint)
		}
	}
	for subject, cb := range map[string]nats.MsgHandler{ns.Barrier("clicks"): forge, ns.Abort("clicks"): outcome, ns.Complete("clicks"): outcome} {
		sub, err := f.nc.Subscribe(subject, cb)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(rejected) < 3 {
			return fmt.Errorf("%d of %d forged checkpoints rejected so far (forged: %v)", len(rejected), len(forged), forged)
		}
		return nil
	})
	mu.Lock()
	if len(completed) > 0 {
		t.Fatalf("checkpoints %v completed with forged acks", completed)
	}
	mu.Unlock()
	// Checkpoints complete again, and retained ones name real objects.
	last := f.waitCheckpoint("clicks", 0)
	f.waitCheckpoint("clicks", last)
	f.checkRetainedObjects("clicks")
	f.publish(1000, 50, 62, truth)
	f.checkState("clicks", truth, 30*time.Second)
}

// TestDeletedSharedFileIsUploadedAgain: an SST the tasks share between
// checkpoints is deleted behind their back. The next checkpoint naming it
// is aborted (missing_object), the task uploads the file again, later
// checkpoints name only objects that exist, and a failover restores from
// them exactly.
func TestDeletedSharedFileIsUploadedAgain(t *testing.T) {
	f := minioFleet(t)
	f.startCoordinator()
	small := func(c *worker.Config) { c.MemTableSize = 64 << 10 }
	_, nc1 := f.startWorkerWith("w1", 2, small)
	f.waitWorkers(1)
	ctx := context.Background()
	const keys = 200
	if _, err := f.api.Submit(ctx, withCheckpoints(latestSpec("clicks", 1), 100*time.Millisecond, 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	var next int64
	f.publishLatest(1000, keys, &next, truth)
	f.checkState("clicks", truth, 30*time.Second)
	// Once the state is quiet, checkpoints keep naming the same SSTs.
	var victim string
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		cps, err := f.api.Checkpoints(ctx, "clicks")
		if err != nil || len(cps) < 2 {
			return fmt.Errorf("%d checkpoints: %v", len(cps), err)
		}
		a, b := sharedFiles("clicks", f.keyed(cps[0])), sharedFiles("clicks", f.keyed(cps[1]))
		for _, x := range a {
			for _, y := range b {
				if x == y {
					victim = x
					return nil
				}
			}
		}
		return errors.New("no SST shared by the two retained checkpoints yet")
	})
	deletedAt := f.waitCheckpoint("clicks", 0)
	if err := f.store.Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %s after checkpoint %d", victim, deletedAt)
	// Two checkpoints after the deletion completed: the first may have
	// been verified before it; the second was verified after.
	after := f.waitCheckpoint("clicks", f.waitCheckpoint("clicks", deletedAt))
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		cps, err := f.api.Checkpoints(ctx, "clicks")
		if err != nil {
			return err
		}
		for _, cp := range cps {
			if cp.ID <= after {
				return fmt.Errorf("checkpoint %d retained, waiting for newer ones", cp.ID)
			}
			for _, file := range checkpoint.Files(f.keyed(cp)) {
				if file == victim {
					return fmt.Errorf("checkpoint %d names the deleted %s", cp.ID, victim)
				}
			}
		}
		return nil
	})
	f.checkRetainedObjects("clicks")
	// Fail over: the new attempt restores from those checkpoints.
	f.startWorkerWith("w2", 2, small)
	nc1.Close()
	f.publishLatest(300, keys, &next, truth)
	f.checkState("clicks", truth, 60*time.Second)
	info, err := f.api.Status(ctx, "clicks")
	if err != nil || info.Restarts == 0 || !strings.HasPrefix(info.Tasks[0].Worker, "w2") {
		t.Fatalf("no failover to w2: %+v %v", info, err)
	}
}
