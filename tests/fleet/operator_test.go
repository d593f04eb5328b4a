package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// TestRestoreChecksOperator: checkpoints and savepoints record the operator
// (and its state version) whose state they hold. A savepoint of a count job
// restored into a sum job is refused with operator_mismatch, unless the
// submit says the change is intended; into a count job of another name it
// restores exactly.
func TestRestoreChecksOperator(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 4)
	f.waitWorkers(1)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, withCheckpoints(countSpec("clicks", 2), 100*time.Millisecond, 1), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(500, 20, 71, truth)
	f.checkState("clicks", truth, 30*time.Second)
	f.waitCheckpoint("clicks", 0)
	res, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks"})
	if err != nil {
		t.Fatal(err)
	}
	cps, err := f.api.Checkpoints(ctx, "clicks")
	if err != nil || len(cps) == 0 {
		t.Fatalf("checkpoints: %v %v", cps, err)
	}
	sps, err := f.api.Savepoints(ctx, "clicks")
	if err != nil || len(sps) != 1 {
		t.Fatalf("savepoints: %v %v", sps, err)
	}
	want := subjects.OperatorInfo{Type: "count", StateVersion: 1}
	for _, r := range []subjects.CheckpointRecord{cps[len(cps)-1], sps[0]} {
		for _, task := range r.Tasks {
			if task.Operator == nil || *task.Operator != want {
				t.Errorf("%s %d task %d records operator %+v, want %+v", r.Kind, r.ID, task.Task, task.Operator, want)
			}
		}
	}
	if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}

	sum := countSpec("totals", 2)
	sum.Operator = subjects.OperatorSpec{Type: "sum", Field: "n"}
	_, err = f.api.Submit(ctx, sum, 0, res.Location)
	if subjects.CodeOf(err) != subjects.CodeOperatorMismatch {
		t.Fatalf("restoring a count savepoint into a sum job: %v, want %s", err, subjects.CodeOperatorMismatch)
	}
	t.Logf("refused: %v", err)
	if info, err := f.api.Status(ctx, "totals"); subjects.CodeOf(err) != subjects.CodeUnknownJob {
		t.Fatalf("the refused job exists: %+v %v", info, err)
	}
	// Said to be intended: accepted.
	if _, err := f.api.SubmitJob(ctx, subjects.SubmitJob{Spec: sum, FromSavepoint: res.Location, AllowOperatorChange: true}); err != nil {
		t.Fatalf("restoring with allow_operator_change: %v", err)
	}
	if _, err := f.api.Cancel(ctx, "totals"); err != nil {
		t.Fatal(err)
	}
	// The same operator under another name restores exactly.
	if _, err := f.api.Submit(ctx, countSpec("again", 3), 0, res.Location); err != nil {
		t.Fatal(err)
	}
	f.checkState("again", truth, 30*time.Second)
}

// stateVersion is the state version of the vcount operator, which a test
// raises to stand for a new build of it.
var stateVersion atomic.Int64

func init() {
	stateVersion.Store(1)
	worker.Register("vcount", func(subjects.OperatorSpec) (worker.Operator, error) {
		return vcount{v: int(stateVersion.Load())}, nil
	})
}

// vcount counts events per key and writes state format version v.
type vcount struct{ v int }

func (o vcount) StateVersion() int { return o.v }

func (vcount) Process(ctx *worker.Context, ev worker.Event) error {
	n, err := ctx.AddInt64("n", 1)
	if err != nil {
		return err
	}
	return ctx.Put(worker.ValueState, strconv.AppendInt(nil, n, 10))
}

// TestRestoreChecksStateVersion: a savepoint of an operator's state version
// 1, restored by a build whose operator writes version 2, fails the job with
// operator_mismatch naming both versions (the type matches, so submit
// accepts it; the worker that would read the state refuses it) and emits
// the failure as an event, unless the submit says the change is intended;
// then it restores exactly.
func TestRestoreChecksStateVersion(t *testing.T) {
	t.Cleanup(func() { stateVersion.Store(1) })
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	spec := withCheckpoints(countSpec("v1", 1), 100*time.Millisecond, 1)
	spec.Operator = subjects.OperatorSpec{Type: "vcount"}
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(300, 20, 5, truth)
	f.checkState("v1", truth, 30*time.Second)
	res, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.Cancel(ctx, "v1"); err != nil {
		t.Fatal(err)
	}

	events := f.watchEvents(func(ev subjects.Event) bool { return ev.Error != nil })

	stateVersion.Store(2) // a new build of the operator
	spec.Name = "v2"
	if _, err := f.api.Submit(ctx, spec, 0, res.Location); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "v2")
		if err != nil {
			return err
		}
		if info.State != subjects.JobFailed {
			return fmt.Errorf("job v2 is %s", info.State)
		}
		return nil
	})
	// The event may be handed to the subscription a moment after status
	// says failed.
	var found *subjects.Error
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for _, ev := range events.list() {
			if ev.Job == "v2" && ev.Error.Code == subjects.CodeOperatorMismatch {
				found = ev.Error
				return nil
			}
		}
		return fmt.Errorf("no event of job v2 carries %s: %+v", subjects.CodeOperatorMismatch, events.list())
	})
	for _, want := range []string{`"vcount" in state version 1`, "state version 2", "allow-operator-change"} {
		if !strings.Contains(found.Message, want) {
			t.Errorf("operator_mismatch %q does not say %q", found.Message, want)
		}
	}
	t.Logf("refused: %v", found)

	spec.Name = "v3"
	if _, err := f.api.SubmitJob(ctx, subjects.SubmitJob{Spec: spec, FromSavepoint: res.Location, AllowOperatorChange: true}); err != nil {
		t.Fatal(err)
	}
	f.checkState("v3", truth, 30*time.Second)
}
