package fleet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// A worker whose data directory's disk fills up (a real 32 MiB tmpfs) fails
// its task at once with a storage error instead of hanging, reports itself
// unhealthy, and the job fails over to the other worker (not back onto the
// full one), where every count comes out exact (issue 9, item 9).
func TestDiskFullFailsOver(t *testing.T) {
	full := testutil.MountTmpfs(t, "32m")
	f := newFleet(t)
	f.startCoordinator()
	startOn := func(name, dir string) {
		w, err := worker.New(worker.Config{Conn: f.conn(), DataDir: dir, Name: name, Slots: 1, Store: f.store,
			Logger: logger(t), MemTableSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		f.run("worker "+name, w.Run, nil)
	}
	startOn("w-full", filepath.Join(full, "data"))
	f.waitWorkers(1)

	failed := f.watchEvents(func(ev subjects.Event) bool { return ev.Kind == subjects.EventTaskFailed })

	ctx := context.Background()
	if _, err := f.api.Submit(ctx, withCheckpoints(countSpec("clicks", 1), 200*time.Millisecond, 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(2000, 50, 91, truth)
	f.checkState("clicks", truth, 30*time.Second)
	f.waitCheckpoint("clicks", 0)
	startOn("w-roomy", t.TempDir())
	f.waitWorkers(2)

	// Fill the disk but for less than a task needs to commit.
	need := statebackend.MinFreeBytes(1 << 20)
	free, err := statebackend.FreeBytes(full)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, "filler"), make([]byte, free-need/2), 0o644); err != nil {
		t.Fatal(err)
	}
	filled := time.Now()
	f.publish(2000, 50, 92, truth)

	var ev subjects.Event
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, e := range failed.list() {
			if e.Worker == "w-full" {
				ev = e
				return nil
			}
		}
		return fmt.Errorf("no task failed on w-full")
	})
	took := time.Since(filled)
	t.Logf("task failed %s after the disk filled: %s", took.Round(time.Millisecond), ev.Error)
	if ev.Error == nil || ev.Error.Code != subjects.CodeStorage {
		t.Fatalf("task failed with %v, want %s", ev.Error, subjects.CodeStorage)
	}
	if took > 5*time.Second {
		t.Errorf("the task took %s to fail on a full disk", took)
	}
	// The full worker says it is unhealthy; the job runs on the other one
	// and counts every event exactly once.
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ws, err := f.api.Workers(ctx)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if w.Worker == "w-full" && w.Unhealthy == "" {
				return fmt.Errorf("w-full reports itself healthy")
			}
		}
		return nil
	})
	f.checkState("clicks", truth, 30*time.Second)
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	if w := info.Tasks[0].Worker; w != "w-roomy" || info.State != subjects.JobRunning {
		t.Fatalf("job %s with its task on %q, want running on w-roomy", info.State, w)
	}
	for _, e := range failed.list() {
		if e.Worker != "w-full" || e.Error == nil || e.Error.Code != subjects.CodeStorage {
			t.Errorf("another task failure: %+v", e)
		}
	}
}
