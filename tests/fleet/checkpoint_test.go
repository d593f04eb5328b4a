package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// minioFleet is a fleet whose object store is a real MinIO server.
func minioFleet(t *testing.T) *fleet {
	m := testutil.RunMinIO(t)
	f := newFleet(t)
	f.store = m.Store(t, "flotilla", "ckpt")
	return f
}

func withCheckpoints(s subjects.JobSpec, interval time.Duration, retained int) subjects.JobSpec {
	s.Checkpoint = subjects.CheckpointSpec{Interval: subjects.Duration(interval), Retained: retained}
	return s
}

// waitCheckpoint waits until job has completed a checkpoint newer than after
// and returns its id.
func (f *fleet) waitCheckpoint(job string, after uint64) uint64 {
	f.t.Helper()
	var id uint64
	testutil.CheckFor(f.t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(context.Background(), job)
		if err != nil {
			return err
		}
		if info.LatestCheckpoint <= after {
			return fmt.Errorf("latest checkpoint %d, waiting for one after %d", info.LatestCheckpoint, after)
		}
		id = info.LatestCheckpoint
		return nil
	})
	return id
}

// TestFailoverRestoresFromCheckpoint: tasks that move after a worker is
// lost restore from the latest checkpoint and replay only what came after
// it, exactly once.
func TestFailoverRestoresFromCheckpoint(t *testing.T) {
	f := minioFleet(t)
	f.startCoordinator()
	_, nc1 := f.startWorker("w1", 2)
	f.startWorker("w2", 3) // room for all three tasks once w1 is gone
	f.waitWorkers(2)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, withCheckpoints(countSpec("clicks", 3), 200*time.Millisecond, 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(2000, 40, 11, truth)
	f.checkState("clicks", truth, 30*time.Second)
	id := f.waitCheckpoint("clicks", 0)

	nc1.Close() // w1 is gone; its tasks restore elsewhere from checkpoint >= id
	f.publish(2000, 40, 12, truth)
	f.checkState("clicks", truth, 60*time.Second)
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	if info.Restarts == 0 {
		t.Errorf("no task was restarted: %+v", info)
	}
	f.waitCheckpoint("clicks", id)

	cps, err := f.api.Checkpoints(ctx, "clicks")
	if err != nil || len(cps) == 0 || len(cps) > 2 {
		t.Fatalf("checkpoints: %d %v", len(cps), err)
	}
	for _, cp := range cps {
		if cp.Kind != subjects.KindCheckpoint || len(cp.Tasks) != 3 || cp.Size <= 0 || cp.Completed.Before(cp.Triggered) {
			t.Errorf("checkpoint statistics: %+v", cp)
		}
	}
}

// TestSavepointRescale takes a savepoint at parallelism 4 by publishing a
// trigger message and restores it at 2 and at 7.
func TestSavepointRescale(t *testing.T) {
	f := minioFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 4)
	f.startWorker("w2", 4)
	f.waitWorkers(2)
	ctx := context.Background()
	spec := countSpec("clicks", 4)
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(3000, 100, 21, truth)
	f.checkState("clicks", truth, 30*time.Second)

	// nats req flotilla.trigger.savepoint.clicks ''
	msg, err := f.nc.Request(subjects.Namespace{}.TriggerSavepoint("clicks"), nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var res subjects.SavepointResult
	if err := subjects.Decode(msg.Data, &res); err != nil || res.Error != nil {
		t.Fatalf("savepoint: %s %v", msg.Data, err)
	}
	t.Logf("savepoint %d at %s", res.Checkpoint, res.Location)
	sps, err := f.api.Savepoints(ctx, "clicks")
	if err != nil || len(sps) != 1 || sps[0].Location != res.Location {
		t.Fatalf("savepoints: %+v %v", sps, err)
	}

	for _, p := range []int{2, 7} {
		if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.api.Submit(ctx, spec, p, res.Location); err != nil {
			t.Fatalf("restore at %d: %v", p, err)
		}
		f.checkState("clicks", truth, 30*time.Second)
		info, err := f.api.Status(ctx, "clicks")
		if err != nil || len(info.Tasks) != p {
			t.Fatalf("status at %d: %+v %v", p, info, err)
		}
	}
	// Events after the restore are counted on top, exactly once.
	f.publish(1000, 100, 22, truth)
	f.checkState("clicks", truth, 30*time.Second)

	// A bare publish (no reply) triggers a savepoint too.
	if err := f.nc.Publish(subjects.Namespace{}.TriggerSavepoint("clicks"), []byte(`{"format":"native"}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		sps, err := f.api.Savepoints(ctx, "clicks")
		if err == nil && len(sps) != 2 {
			err = fmt.Errorf("%d savepoints", len(sps))
		}
		return err
	})
	// Restoring from a location outside the store, or a path escaping it,
	// is refused with a typed error.
	for _, bad := range []string{"s3://elsewhere/x", "savepoints/../../etc", "file:///etc/passwd"} {
		if _, err := f.api.Submit(ctx, countSpec("other", 1), 0, bad); subjects.CodeOf(err) != subjects.CodeInvalidLocation {
			t.Errorf("restore from %q: %v", bad, err)
		}
	}
	if _, err := f.api.Submit(ctx, countSpec("other", 1), 0, "savepoints/clicks/sp-999"); subjects.CodeOf(err) != subjects.CodeUnknownCheckpoint {
		t.Errorf("restore from a missing savepoint: %v", err)
	}
}

// TestRetention: after many checkpoints only the retained ones' objects
// remain under the job's prefix, once the orphan sweep has reclaimed what
// the checkpoint in flight at cancel left.
func TestRetention(t *testing.T) {
	f := minioFleet(t)
	_, co := f.startCoordinatorWith(nil)
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, withCheckpoints(countSpec("clicks", 2), 100*time.Millisecond, 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	var last uint64
	for round := 0; round < 6; round++ {
		f.publish(300, 50, uint64(30+round), truth)
		last = f.waitCheckpoint("clicks", last)
	}
	f.checkState("clicks", truth, 30*time.Second)
	// Stop checkpointing by canceling, sweep, then compare what is stored
	// with what the retained checkpoints reference.
	if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}
	// A checkpoint committing at the cancel still completes, uploads may
	// still be ending, and subsumed files are deleted in the background:
	// sweep until the store holds exactly what the retained checkpoints
	// reference, no more and no less.
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		co.SweepOrphans(0)
		cps, err := f.api.Checkpoints(ctx, "clicks")
		if err != nil {
			return err
		}
		if len(cps) != 2 {
			return fmt.Errorf("%d checkpoints retained, want 2", len(cps))
		}
		referenced := map[string]bool{}
		for _, cp := range cps {
			key, err := objectstore.KeyOf(f.store.Location(), cp.Location)
			if err != nil {
				t.Fatal(err)
			}
			cp.Location = key
			for _, file := range checkpoint.Files(cp) {
				referenced[file] = true
			}
		}
		objs, err := f.store.List(ctx, "clicks/")
		if err != nil {
			return err
		}
		var unreferenced []string
		for _, o := range objs {
			if !referenced[o.Key] {
				unreferenced = append(unreferenced, o.Key)
			}
			delete(referenced, o.Key)
		}
		sort.Strings(unreferenced)
		if len(unreferenced) > 0 {
			return fmt.Errorf("objects no retained checkpoint references: %v", unreferenced)
		}
		for missing := range referenced {
			// Never converges: a retained checkpoint lost a file.
			t.Fatalf("retained checkpoint references missing object %s", missing)
		}
		return nil
	})
}

// TestUnservedSavepointIsReported: a savepoint triggered by a bare publish
// (nobody to answer) for a job whose tasks cannot all run fails after the
// checkpoint timeout with a checkpoint_failed event saying why.
func TestUnservedSavepointIsReported(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 1)
	f.waitWorkers(1)
	events, err := f.nc.SubscribeSync(f.ns.Events(subjects.EventCheckpointFailed, "clicks"))
	if err != nil {
		t.Fatal(err)
	}
	spec := countSpec("clicks", 2) // one slot for two tasks: never all running
	spec.Checkpoint.Timeout = subjects.Duration(time.Second)
	if _, err := f.api.Submit(context.Background(), spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.nc.Publish(f.ns.TriggerSavepoint("clicks"), []byte(`{"format":"native"}`)); err != nil {
		t.Fatal(err)
	}
	msg, err := events.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatalf("no checkpoint_failed event: %v", err)
	}
	var ev subjects.Event
	if err := subjects.Decode(msg.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Job != "clicks" || ev.Error == nil || ev.Error.Code != subjects.CodeSavepointFailed ||
		!strings.Contains(ev.Error.Message, "not all running") {
		t.Errorf("event: %+v", ev)
	}
}
