package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// A task whose worker's disk is full (a real tmpfs) fails with a storage
// error within a commit interval, the worker's next heartbeat says it is
// unhealthy, and the task leaves no goroutine behind: the worker runs as
// many as before it was deployed (issue 9, item 9).
func TestDiskFullFailsTask(t *testing.T) {
	dir := filepath.Join(testutil.MountTmpfs(t, "32m"), "data")
	s := testutil.RunNATS(t)
	c := startCoord(t, s, 1)
	w := testWorker(t, s, Config{DataDir: dir, MemTableSize: 1 << 20, BatchSize: 16})
	j := newTestJob(t, s, "full", 1)
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if w.Instance() == "" {
			return fmt.Errorf("not registered")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // let registration's goroutines settle
	before := clientGoroutines()

	ref := j.deploy(c, w, 0, 1, nil)
	c.waitStatus(ref, subjects.TaskRunning)
	j.publish(t, 200)
	j.waitCount(t, 200)
	free, err := statebackend.FreeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "filler"), make([]byte, free-statebackend.MinFreeBytes(1<<20)/2), 0o644); err != nil {
		t.Fatal(err)
	}
	filled := time.Now()
	j.publish(t, 50)
	c.waitStatus(ref, subjects.TaskFailed)
	took := time.Since(filled)
	_, cause := c.lastStatus(ref)
	t.Logf("task failed %s after the disk filled: %v", took.Round(time.Millisecond), cause)
	if cause == nil || cause.Code != subjects.CodeStorage {
		t.Fatalf("task failed with %v, want %s", cause, subjects.CodeStorage)
	}
	if reason := w.unhealthy(); reason == "" {
		t.Error("the worker on a full disk says it is healthy")
	} else {
		t.Logf("unhealthy: %s", reason)
	}
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		var extra []string
		for id, g := range clientGoroutines() {
			if _, ok := before[id]; !ok {
				extra = append(extra, g)
			}
		}
		if len(extra) > 0 {
			return fmt.Errorf("%d goroutines of the worker, Pebble or the NATS client started with the task are left:\n%s", len(extra), strings.Join(extra, "\n\n"))
		}
		return nil
	})
}

// clientGoroutines returns the goroutines running code of the worker,
// Pebble or the NATS client, by id, with their stacks: not the in-process
// server's (they come and go with its consumers), nor those the test's own
// goroutine started (its connections' request subscriptions).
func clientGoroutines() map[string]string {
	buf := make([]byte, 4<<20)
	stacks := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	self, _, _ := strings.Cut(strings.TrimPrefix(stacks[0], "goroutine "), " ")
	mine := map[string]string{}
	for _, g := range stacks {
		if strings.Contains(g, "nats-server") || strings.Contains(g, "testing.tRunner") || strings.Contains(g, " in goroutine "+self+"\n") {
			continue
		}
		if strings.Contains(g, "flotilla/worker.") || strings.Contains(g, "cockroachdb/pebble") || strings.Contains(g, "nats.go") {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			mine[id] = g
		}
	}
	return mine
}
