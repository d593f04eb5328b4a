// Package fleet tests a coordinator and workers together over a real
// in-process nats-server, as separate components that share nothing but
// NATS and the object store.
package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

type fleet struct {
	t     *testing.T
	srv   *server.Server
	store objectstore.Store
	ns    subjects.Namespace
	api   *client.Client
	nc    *nats.Conn
}

func logger(*testing.T) *slog.Logger { return testutil.Logger(os.Stderr, slog.LevelWarn) }

func newFleet(t *testing.T) *fleet {
	l := fleettest.NewLocal(t)
	return &fleet{t: t, srv: l.Srv, store: l.Store, api: l.API, nc: l.NC}
}

func (f *fleet) conn() *nats.Conn { return fleettest.Conn(f.t, f.srv) }

// startCoordinator runs a coordinator until the returned cancel is called
// or the test ends.
func (f *fleet) startCoordinator() context.CancelFunc {
	stop, _ := f.startCoordinatorWith(nil)
	return stop
}

// startCoordinatorWith is startCoordinator with a hook to adjust the config.
func (f *fleet) startCoordinatorWith(adjust func(*coordinator.Config)) (context.CancelFunc, *coordinator.Coordinator) {
	c := f.newCoordinator(adjust)
	return f.run("coordinator", c.Run, c.Ready()), c
}

// startStandby runs a coordinator without waiting for it to lead.
func (f *fleet) startStandby(adjust func(*coordinator.Config)) (context.CancelFunc, *coordinator.Coordinator) {
	c := f.newCoordinator(adjust)
	return f.run("coordinator", c.Run, nil), c
}

func (f *fleet) newCoordinator(adjust func(*coordinator.Config)) *coordinator.Coordinator {
	cfg := coordinator.Config{Conn: f.conn(), Store: f.store, Logger: logger(f.t),
		HeartbeatInterval: 200 * time.Millisecond, HeartbeatTimeout: time.Second,
		MapInput: func(src, dest string) error { return f.srv.GlobalAccount().AddMapping(src, dest) }}
	if adjust != nil {
		adjust(&cfg)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// startWorker runs a worker with its own connection and data dir; closing
// the returned connection cuts the worker off as a crash would.
func (f *fleet) startWorker(name string, slots int) (context.CancelFunc, *nats.Conn) {
	nc := f.conn()
	w, err := worker.New(worker.Config{Conn: nc, DataDir: f.t.TempDir(), Name: name, Slots: slots, Store: f.store, Logger: logger(f.t)})
	if err != nil {
		f.t.Fatal(err)
	}
	return f.run("worker "+name, w.Run, nil), nc
}

// waitWorkers waits until n workers are registered.
func (f *fleet) waitWorkers(n int) { fleettest.WaitWorkers(f.t, f.api, n) }

func (f *fleet) run(what string, run func(context.Context) error, ready <-chan struct{}) context.CancelFunc {
	_, stop := fleettest.Run(f.t, what, run, ready, 10*time.Second)
	return stop
}

func countSpec(name string, parallelism int) subjects.JobSpec {
	return subjects.JobSpec{Name: name, Parallelism: parallelism,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "count"},
		Sink:     subjects.SinkSpec{Subject: "counts.clicks"}}
}

// publish publishes n events over keys user-0..user-(keys-1) and returns the
// ground truth count per key.
func (f *fleet) publish(n, keys int, seed uint64, truth map[string]int64) {
	js, err := jetstream.New(f.nc)
	if err != nil {
		f.t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("user-%d", r.IntN(keys))
		if _, err := js.PublishAsync("clicks."+k, []byte(`{"n":1}`)); err != nil {
			f.t.Fatal(err)
		}
		truth[k]++
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		f.t.Fatal("publishing timed out")
	}
}

// checkState waits until every key's state equals truth.
func (f *fleet) checkState(job string, truth map[string]int64, timeout time.Duration) {
	f.t.Helper()
	fleettest.WaitCounts(f.t, f.api, job, truth, timeout)
}

func TestCountJobAcrossWorkers(t *testing.T) {
	f := newFleet(t)
	// Workers first: start order must not matter.
	f.startWorker("w1", 2)
	f.startWorker("w2", 2)
	f.startCoordinator()
	ctx := context.Background()
	f.waitWorkers(2)
	if _, err := f.api.Submit(ctx, countSpec("clicks", 3), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(3000, 50, 1, truth)
	f.checkState("clicks", truth, 30*time.Second)

	info, err := f.api.Status(ctx, "clicks")
	if err != nil || info.State != subjects.JobRunning || len(info.Tasks) != 3 {
		t.Fatalf("status: %+v %v", info, err)
	}
	workers := map[string]int{}
	for _, task := range info.Tasks {
		workers[task.Worker]++
	}
	if len(workers) != 2 {
		t.Errorf("tasks not spread over both workers: %v", workers)
	}
}

func TestBadRequestsGetTypedErrors(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	ctx := context.Background()
	cases := []struct {
		name string
		err  func() error
		code subjects.Code
	}{
		{"unknown job status", func() error { _, err := f.api.Status(ctx, "nope"); return err }, subjects.CodeUnknownJob},
		{"unknown job cancel", func() error { _, err := f.api.Cancel(ctx, "nope"); return err }, subjects.CodeUnknownJob},
		{"unknown job state", func() error { _, err := f.api.State(ctx, "nope", "k"); return err }, subjects.CodeUnknownJob},
		{"bad job name", func() error { _, err := f.api.Status(ctx, "a.b"); return err }, subjects.CodeInvalidName},
		{"parallelism above max", func() error {
			s := countSpec("big", 1)
			s.MaxParallelism = 4
			_, err := f.api.Submit(ctx, s, 5, "")
			return err
		}, subjects.CodeParallelismTooHigh},
		{"unknown operator", func() error {
			s := countSpec("custom", 1)
			s.Operator.Type = "nosuchop"
			_, err := f.api.Submit(ctx, s, 0, "")
			return err
		}, subjects.CodeUnknownOperator},
		{"invalid spec", func() error {
			s := countSpec("bad", 1)
			s.Source.Key.SubjectToken = 1
			_, err := f.api.Submit(ctx, s, 0, "")
			return err
		}, subjects.CodeInvalidJobSpec},
	}
	for _, c := range cases {
		if err := c.err(); subjects.CodeOf(err) != c.code {
			t.Errorf("%s: got %v, want code %s", c.name, err, c.code)
		}
	}
	// Garbage on the API subjects gets a typed error, not silence.
	msg, err := f.nc.Request(subjects.Namespace{}.API(subjects.APIJobSubmit), []byte("{not json"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info subjects.JobInfo
	if err := subjects.Decode(msg.Data, &info); err != nil || info.Error == nil || info.Error.Code != subjects.CodeBadMessage {
		t.Errorf("garbage submit: %s (%v)", msg.Data, err)
	}
	// A duplicate submit of a running job is refused.
	if _, err := f.api.Submit(ctx, countSpec("dup", 1), 0, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.Submit(ctx, countSpec("dup", 1), 0, ""); subjects.CodeOf(err) != subjects.CodeJobExists {
		t.Errorf("duplicate submit: %v", err)
	}
}

func TestLostWorkerTasksMove(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	_, nc1 := f.startWorker("w1", 1)
	f.startWorker("w2", 1)
	f.waitWorkers(2)
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, countSpec("clicks", 2), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(1000, 20, 2, truth)
	f.checkState("clicks", truth, 30*time.Second)

	// w1 vanishes; a spare worker joins. w1's task must move to w3 and
	// state must stay exact while events keep coming.
	f.startWorker("w3", 1)
	nc1.Close()
	f.publish(1000, 20, 3, truth)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "clicks")
		if err != nil {
			return err
		}
		for _, task := range info.Tasks {
			if task.Worker == "w1" || task.State != subjects.TaskRunning {
				return fmt.Errorf("task %d on %q is %s", task.Task, task.Worker, task.State)
			}
		}
		return nil
	})
	f.checkState("clicks", truth, 30*time.Second)
}

// eventLog holds the events published since watchEvents that its filter
// kept.
type eventLog struct {
	mu     sync.Mutex
	events []subjects.Event
}

// watchEvents collects, until the test ends, the events published from
// now on that keep accepts.
func (f *fleet) watchEvents(keep func(subjects.Event) bool) *eventLog {
	f.t.Helper()
	l := &eventLog{}
	sub, err := f.nc.Subscribe(subjects.Namespace{}.EventsAll(), func(m *nats.Msg) {
		var ev subjects.Event
		if subjects.Decode(m.Data, &ev) == nil && keep(ev) {
			l.mu.Lock()
			l.events = append(l.events, ev)
			l.mu.Unlock()
		}
	})
	if err == nil {
		err = f.nc.Flush() // the server knows of the subscription before anything is published
	}
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// list returns the events collected so far.
func (l *eventLog) list() []subjects.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}
