package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
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
