package process

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// A `flotilla worker` process running a task exits within its shutdown
// bound after SIGTERM while its NATS server is gone (issue 9, item 7): the
// task's input consumer cannot be stopped cleanly, the worker abandons it,
// says so, and exits.
func TestWorkerExitsAfterSIGTERMWithNATSDown(t *testing.T) {
	srv := testutil.RunNATS(t)
	storeDir, stopCoord := runCoordinator(t, srv)
	ctx := context.Background()
	nc := testutil.Connect(t, srv)

	const shutdown = 2 * time.Second
	w := startProc(t, "worker", nil, "worker", "-nats", srv.ClientURL(), "-store", "file://"+storeDir, "-name", "p1",
		"-data", t.TempDir(), "-slots", "2", "-log-level", "info", "-shutdown-timeout", shutdown.String())
	api := client.New(nc, subjects.Namespace{})
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 2,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "count"}}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, err := api.Submit(ctx, spec, 0, "")
		return err
	})
	js, _ := jetstream.New(nc)
	truth := map[string]int64{}
	for i := range 200 {
		k := fmt.Sprintf("k%d", i%20)
		if _, err := js.Publish(ctx, "clicks."+k, nil); err != nil {
			t.Fatal(err)
		}
		truth[k]++
	}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return fleettest.Counts(ctx, api, "clicks", truth)
	})

	stopCoord()
	srv.Shutdown()
	srv.WaitForShutdown()
	time.Sleep(500 * time.Millisecond) // the worker notices: reconnecting
	start := time.Now()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The bound: leaving (1 s) + the shutdown timeout + closing the
	// connection (2 s), with room for a loaded machine.
	limit := 1*time.Second + shutdown + 2*time.Second + 2*time.Second
	exited := make(chan error, 1)
	go func() { exited <- w.cmd.Wait() }()
	select {
	case err := <-exited:
		took := time.Since(start)
		t.Logf("worker exited %s after SIGTERM with NATS down (%v)", took.Round(time.Millisecond), err)
		if err != nil {
			t.Errorf("worker exit: %v\n%s", err, w.out.String())
		}
	case <-time.After(limit):
		t.Fatalf("worker still running %s after SIGTERM with NATS down\n%s", limit, w.out.String())
	}
	if !strings.Contains(w.out.String(), "worker stopped") {
		t.Errorf("worker did not log its stop:\n%s", w.out.String())
	}
}
