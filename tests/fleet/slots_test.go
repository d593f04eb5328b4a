package fleet

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestFailedJobGivesSlotsBack: a job that fails (here: restored from a
// savepoint whose files are gone) gives its slots back on the workers too,
// so that a resubmit of the job gets them and runs.
func TestFailedJobGivesSlotsBack(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	spec := countSpec("clicks", 2)
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(200, 20, 41, truth)
	f.checkState("clicks", truth, 30*time.Second)
	sp, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}

	// Delete the savepoint's state files, keep its metadata: a restore of
	// it is accepted, and then every task fails to read its state.
	key, err := objectstore.KeyOf(f.store.Location(), sp.Location)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := f.store.List(ctx, key+"/")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, "/"+checkpoint.MetadataName) {
			if err := f.store.Delete(ctx, o.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.api.Submit(ctx, spec, 0, sp.Location); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "clicks")
		if err == nil && info.State != subjects.JobFailed {
			err = fmt.Errorf("job is %s", info.State)
		}
		return err
	})

	// The resubmitted job gets both slots of the only worker and counts
	// from the start of the stream.
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	f.checkState("clicks", truth, 30*time.Second)
}

// TestUnplaceableJobWaits: a job with more tasks than free slots is
// waiting, with the slots it needs and has, in its status, its events and
// state queries; once a worker brings the missing slot it runs.
func TestUnplaceableJobWaits(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	events, err := f.nc.SubscribeSync(f.ns.Events(subjects.EventJobStateChanged, "clicks"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, countSpec("clicks", 3), 0, ""); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "clicks")
		if err != nil {
			return err
		}
		if info.State != subjects.JobWaiting || info.Waiting == nil || *info.Waiting != (subjects.SlotShortage{Needed: 3, Free: 2}) {
			return fmt.Errorf("job is %s, waiting %+v", info.State, info.Waiting)
		}
		return nil
	})
	for {
		msg, err := events.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no job_state event saying waiting: %v", err)
		}
		var ev subjects.Event
		if err := subjects.Decode(msg.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.State == subjects.JobWaiting {
			if !strings.Contains(ev.Message, "3 needed, 2 free") {
				t.Errorf("event: %+v", ev)
			}
			break
		}
	}
	// A key of the task without a slot: the answer says why, at once.
	info, _ := f.api.Status(ctx, "clicks")
	var unplaced subjects.TaskInfo
	for _, task := range info.Tasks {
		if task.Worker == "" {
			unplaced = task
		}
	}
	for i := 0; ; i++ {
		key := fmt.Sprintf("user-%d", i)
		if !unplaced.Range.Contains(keygroup.Of([]byte(key), info.Spec.MaxParallelism)) {
			continue
		}
		_, err := f.api.State(ctx, "clicks", key)
		if subjects.CodeOf(err) != subjects.CodeUnavailable || !strings.Contains(err.Error(), "has no slot") {
			t.Errorf("state of a key without a task: %v", err)
		}
		break
	}

	f.startWorker("w2", 1)
	truth := map[string]int64{}
	f.publish(300, 30, 51, truth)
	f.checkState("clicks", truth, 30*time.Second)
	if info, err := f.api.Status(ctx, "clicks"); err != nil || info.State != subjects.JobRunning || info.Waiting != nil {
		t.Errorf("status once placed: %+v %v", info, err)
	}
}
