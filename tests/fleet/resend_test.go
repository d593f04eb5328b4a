package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestRequestsResentToTheNextLeader: a savepoint whose leader's term ends
// before it is answered (the leader dies between the tasks' acks and the
// commit) is lost with the term; the client, hearing nothing, sends it
// again with the same request id, and the next leader takes and answers
// it. A submission sent again to the next leader is answered with the run
// it started (which the job's record names), as it is by the leader that
// started it, not job_exists.
func TestRequestsResentToTheNextLeader(t *testing.T) {
	f := newFleet(t)
	var (
		once sync.Once
		held = make(chan struct{}) // the old leader is at its savepoint's commit
		dead = make(chan struct{})
	)
	defer close(dead)
	stopA, a := f.startCoordinatorWith(func(cfg *coordinator.Config) {
		cfg.Name = "a"
		cfg.BeforeCommit = func(r subjects.CheckpointRecord) error {
			if r.Kind != subjects.KindSavepoint {
				return nil
			}
			once.Do(func() { close(held) })
			<-dead // the process is gone: this commit never happens
			return errors.New("coordinator died")
		}
	})
	termA := a.Epoch()
	_, b := f.startStandby(func(cfg *coordinator.Config) { cfg.Name = "b" })
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	submit := subjects.SubmitJob{Spec: countSpec("clicks", 2), RequestID: "submit-1"}
	if _, err := f.api.SubmitJob(ctx, submit); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(500, 10, 7, truth)
	f.checkState("clicks", truth, 30*time.Second)
	// Sent again to the same leader: the run it started.
	if info, err := f.api.SubmitJob(ctx, submit); err != nil || info.State != subjects.JobRunning {
		t.Fatalf("the submission sent again to its leader: %+v, %v; want the running run", info, err)
	}

	type outcome struct {
		res subjects.SavepointResult
		err error
	}
	answered := make(chan outcome, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		res, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks", RequestID: "savepoint-1"})
		answered <- outcome{res, err}
	}()
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the savepoint never reached its commit")
	}
	stopA() // gives the lease up: b takes over at once
	var o outcome
	select {
	case o = <-answered:
	case <-time.After(time.Minute):
		t.Fatal("the savepoint was never answered")
	}
	if o.err != nil || o.res.Checkpoint == 0 || o.res.Location == "" {
		t.Fatalf("savepoint: %+v, %v", o.res, o.err)
	}
	termB := b.Epoch()
	if termB <= termA {
		t.Fatalf("b leads in term %d, a led in %d", termB, termA)
	}
	sps, err := f.api.Savepoints(ctx, "clicks")
	if err != nil || len(sps) != 1 || sps[0].ID != o.res.Checkpoint {
		t.Fatalf("savepoints %+v (%v), want one: %d", sps, err, o.res.Checkpoint)
	}
	t.Logf("savepoint %d answered by the leader of term %d %v after it was requested (term %d lost it)",
		o.res.Checkpoint, termB, time.Since(start).Round(time.Millisecond), termA)

	info, err := f.api.SubmitJob(ctx, submit)
	if err != nil || info.Job != "clicks" || info.State != subjects.JobRunning {
		t.Fatalf("the submission sent again: %+v, %v; want the running run", info, err)
	}
	if _, err := f.api.Submit(ctx, countSpec("clicks", 2), 0, ""); !errors.Is(err, subjects.CodeJobExists) {
		t.Fatalf("another submission: %v, want job_exists", err)
	}
	f.publish(500, 10, 8, truth)
	f.checkState("clicks", truth, 30*time.Second)
}

// TestSavepointAnsweredByTheNextLeader: a savepoint the leader took, whose
// answer never reached the client (here: the trigger was a bare publish),
// is answered by the next leader when the client sends the request again
// with the same id, from the savepoint's record, and not taken again.
func TestSavepointAnsweredByTheNextLeader(t *testing.T) {
	f := newFleet(t)
	stopA, a := f.startCoordinatorWith(func(cfg *coordinator.Config) { cfg.Name = "a" })
	termA := a.Epoch()
	_, b := f.startStandby(func(cfg *coordinator.Config) { cfg.Name = "b" })
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, countSpec("clicks", 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(500, 10, 7, truth)
	f.checkState("clicks", truth, 30*time.Second)

	req := subjects.TriggerSavepoint{Job: "clicks", RequestID: "savepoint-lost"}
	body, err := subjects.Encode(&req)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.nc.Publish(subjects.Namespace{}.TriggerSavepoint("clicks"), body); err != nil {
		t.Fatal(err)
	}
	var taken subjects.CheckpointRecord
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		sps, err := f.api.Savepoints(ctx, "clicks")
		if err != nil || len(sps) != 1 {
			return fmt.Errorf("savepoints %d (%v), want 1", len(sps), err)
		}
		taken = sps[0]
		return nil
	})
	if taken.RequestID != req.RequestID {
		t.Fatalf("the savepoint's record names request %q, want %q", taken.RequestID, req.RequestID)
	}

	stopA() // gives the lease up: b takes over at once
	select {
	case <-b.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("b never led")
	}
	if b.Epoch() <= termA {
		t.Fatalf("b leads in term %d, a led in %d", b.Epoch(), termA)
	}
	res, err := f.api.TriggerSavepoint(ctx, req)
	if err != nil || res.Checkpoint != taken.ID {
		t.Fatalf("the request sent again to the next leader: %+v, %v; want savepoint %d", res, err, taken.ID)
	}
	sps, err := f.api.Savepoints(ctx, "clicks")
	if err != nil || len(sps) != 1 {
		t.Fatalf("savepoints %+v (%v), want only %d", sps, err, taken.ID)
	}
	t.Logf("savepoint %d of term %d answered again by term %d: %s", taken.ID, termA, b.Epoch(), res.Location)
	// Another id is another savepoint.
	res, err = f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks", RequestID: "savepoint-new"})
	if err != nil || res.Checkpoint <= taken.ID {
		t.Fatalf("a new savepoint request: %+v, %v", res, err)
	}
}
