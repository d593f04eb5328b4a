package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// TestLostStatusReports: a worker's task status reports never reach the
// coordinator (the server maps them away), as a report lost with a dying
// server or an unrouted connection would be. The heartbeats that report
// the attempts running stand in for them: the tasks count as running and
// checkpoints complete, long before the deploy timeout would have failed
// the attempts.
func TestLostStatusReports(t *testing.T) {
	f := newFleet(t)
	if err := f.srv.GlobalAccount().AddMapping(subjects.Namespace{}.TaskStatus("clicks", "w1"), "nowhere.status.w1"); err != nil {
		t.Fatal(err)
	}
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	if _, err := f.api.Submit(context.Background(), withCheckpoints(countSpec("clicks", 2), 200*time.Millisecond, 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(500, 20, 21, truth)
	f.checkState("clicks", truth, 30*time.Second)
	f.waitCheckpoint("clicks", 0) // within 30 s; the deploy timeout is 60 s
	info, err := f.api.Status(context.Background(), "clicks")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range info.Tasks {
		if task.State != subjects.TaskRunning {
			t.Errorf("task %d is %s", task.Task, task.State)
		}
	}
	if info.Restarts != 0 {
		t.Errorf("%d restarts", info.Restarts)
	}
}
