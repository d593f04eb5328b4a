package observe

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestHistorySurvivesRestart: the checkpoint history a coordinator
// recorded (periodic checkpoints and a savepoint, with per-task figures)
// is served unchanged by the next coordinator, and its retention is what
// the new coordinator configures.
func TestHistorySurvivesRestart(t *testing.T) {
	f := newFleet(t)
	_, _, stop := f.coordinator(nil)
	f.worker("w1", 2)
	f.waitWorkers(1)
	spec := countSpec("hist", 2, 100*time.Millisecond)
	f.submit(spec)
	f.publish("hist", 500, 20)
	ctx := context.Background()
	sp, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: spec.Name})
	if err != nil {
		t.Fatal(err)
	}
	var before subjects.CheckpointHistory
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		before, err = f.api.History(ctx, spec.Name, 0)
		if err != nil {
			return err
		}
		periodic, savepoint := 0, false
		for _, a := range before.Attempts {
			if a.Kind == subjects.KindCheckpoint && a.Outcome == subjects.OutcomeCompleted {
				periodic++
			}
			if a.ID == sp.Checkpoint && a.Outcome == subjects.OutcomeCompleted && a.Trigger == subjects.TriggerUser && a.Location == sp.Location {
				savepoint = true
			}
		}
		if periodic < 8 || !savepoint {
			return fmt.Errorf("history has %d completed checkpoints and savepoint %d: %t", periodic, sp.Checkpoint, savepoint)
		}
		return nil
	})
	for _, a := range before.Attempts {
		if len(a.Tasks) != 2 || a.Duration <= 0 || a.Triggered.IsZero() {
			t.Fatalf("attempt %d: %d tasks, duration %s", a.ID, len(a.Tasks), a.Duration.D())
		}
		if a.Outcome == subjects.OutcomeCompleted && (a.Size == 0 || !a.Tasks[0].Acked || !a.Tasks[1].Acked || a.Tasks[0].Worker != "w1") {
			t.Fatalf("completed attempt %d without its figures: %+v", a.ID, a)
		}
	}
	stop()

	// The next coordinator keeps at most 5 attempts per job.
	_, _, _ = f.coordinator(func(c *coordinator.Config) { c.HistoryPerJob = 5 })
	after, err := f.api.History(ctx, spec.Name, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Attempts) == 0 || len(after.Attempts) > 5 {
		t.Fatalf("after the restart: %d attempts, want 1 to 5", len(after.Attempts))
	}
	byID := map[uint64]subjects.CheckpointAttempt{}
	for _, a := range before.Attempts {
		byID[a.ID] = a
	}
	for _, a := range after.Attempts {
		b, ok := byID[a.ID]
		if !ok {
			continue // recorded by the new coordinator
		}
		if a.Outcome != b.Outcome || a.Size != b.Size || a.Duration != b.Duration || len(a.Tasks) != len(b.Tasks) {
			t.Fatalf("attempt %d changed across the restart: %+v, was %+v", a.ID, a, b)
		}
	}
	if a := after.Attempts[0]; a.ID < before.Attempts[0].ID {
		t.Fatalf("oldest attempt %d, want retention to have dropped the oldest", a.ID)
	}
	h, err := f.api.History(ctx, spec.Name, 2)
	if err != nil || len(h.Attempts) != 2 || !h.Truncated {
		t.Fatalf("limit 2: %d attempts, truncated %t, err %v", len(h.Attempts), h.Truncated, err)
	}
	if _, err := f.api.History(ctx, spec.Name, subjects.MaxHistoryLimit+1); subjects.CodeOf(err) != subjects.CodeInvalidArgument {
		t.Fatalf("limit above the max: %v, want invalid_argument", err)
	}
}
