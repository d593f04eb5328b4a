package fleet

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestCoordinatorDiesBetweenAckedAndCommitted: every task acked checkpoint
// n and its _metadata is written, but the coordinator dies before the
// JetStream commit. n is not complete: the next coordinator resumes the
// job from n-1, reuses the id n for its next checkpoint (overwriting the
// stale metadata), and the state stays exact.
func TestCoordinatorDiesBetweenAckedAndCommitted(t *testing.T) {
	f := minioFleet(t)
	var (
		once    sync.Once
		crashed = make(chan uint64, 1)
		dead    = make(chan struct{})
	)
	stop, _ := f.startCoordinatorWith(func(cfg *coordinator.Config) {
		cfg.BeforeCommit = func(r subjects.CheckpointRecord) error {
			if r.ID < 3 {
				return nil
			}
			once.Do(func() { crashed <- r.ID })
			<-dead // the process is gone: this commit never happens
			return errors.New("coordinator died")
		}
	})
	f.startWorker("w1", 2)
	f.startWorker("w2", 2)
	f.waitWorkers(2)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, withCheckpoints(countSpec("clicks", 2), 200*time.Millisecond, 3), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(2000, 30, 41, truth)
	f.checkState("clicks", truth, 30*time.Second)

	var n uint64
	select {
	case n = <-crashed:
	case <-time.After(30 * time.Second):
		t.Fatal("no checkpoint reached the commit")
	}
	stop()
	close(dead)
	// Its metadata object exists, written before the commit that never came.
	if _, err := f.store.Stat(ctx, checkpoint.MetadataKey(checkpoint.CheckpointLocation("clicks", n))); err != nil {
		t.Fatalf("metadata of checkpoint %d: %v", n, err)
	}
	f.publish(1000, 30, 42, truth)

	// A new coordinator: the job resumes from checkpoint n-1 at most.
	f.startCoordinator()
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	if info.LatestCheckpoint >= n {
		t.Fatalf("resumed from checkpoint %d, but %d was never committed", info.LatestCheckpoint, n)
	}
	f.checkState("clicks", truth, 60*time.Second)
	// Checkpoint ids go on from the last committed one: n is reused and its
	// metadata now describes the new, committed checkpoint.
	f.waitCheckpoint("clicks", n)
	cps, err := f.api.Checkpoints(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range cps {
		if cp.ID != n {
			continue
		}
		rc, err := f.store.Get(ctx, checkpoint.MetadataKey(checkpoint.CheckpointLocation("clicks", n)), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		var md subjects.CheckpointRecord
		if err := subjects.Decode(b, &md); err != nil || !md.Triggered.Equal(cp.Triggered) {
			t.Errorf("metadata of checkpoint %d is not the committed one: %v", n, err)
		}
	}
	f.publish(500, 30, 43, truth)
	f.checkState("clicks", truth, 30*time.Second)
}
