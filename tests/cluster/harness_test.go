// Package cluster tests a coordinator and workers over a three-node
// JetStream cluster of nats-server processes: replicas of everything
// flotilla creates, and node loss, partitions and loss of quorum with every
// key exact and no completed checkpoint lost.
package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
	"time"

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

const (
	checkpointBucket = "FLOTILLA_CHECKPOINTS"
	sourceStream     = "CLICKS"
)

// fleet is a coordinator and workers (in this process, each with its own
// connection to all three servers) over a NATSCluster.
type fleet struct {
	t     *testing.T
	nats  *testutil.NATSCluster
	store objectstore.Store
	nc    *nats.Conn
	js    jetstream.JetStream
	api   *client.Client
	logs  *fleettest.Buffer
}

// newFleet starts the cluster; extra lines (the mapping that partitions a
// job's input) go into every node's configuration.
func newFleet(t *testing.T, extra ...string) *fleet {
	c := testutil.StartNATSClusterWith(t, testutil.NATSServerBinary(t), 3, extra...)
	store, err := objectstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, nats: c, store: store, logs: &fleettest.Buffer{}}
	f.nc = f.conn()
	f.js, _ = jetstream.New(f.nc)
	f.api = client.New(f.nc, subjects.Namespace{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fleet logs (tail):\n%s", tail(f.logs.String(), 8000))
		}
		if path := os.Getenv("FLOTILLA_TEST_LOGFILE"); path != "" {
			_ = os.WriteFile(path, []byte(f.logs.String()), 0o644)
		}
	})
	return f
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (f *fleet) conn() *nats.Conn {
	return f.nats.Connect(nats.Timeout(2 * time.Second))
}

func (f *fleet) logger() *slog.Logger { return testutil.Logger(f.logs, slog.LevelInfo) }

func (f *fleet) startCoordinator(adjust func(*coordinator.Config)) context.CancelFunc {
	cfg := coordinator.Config{Conn: f.conn(), Store: f.store, Logger: f.logger(),
		HeartbeatInterval: 300 * time.Millisecond, HeartbeatTimeout: 3 * time.Second}
	if adjust != nil {
		adjust(&cfg)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.run("coordinator", c.Run, c.Ready(), time.Minute)
}

func (f *fleet) startWorker(name string, slots int) context.CancelFunc {
	w, err := worker.New(worker.Config{Conn: f.conn(), DataDir: f.t.TempDir(), Name: name, Slots: slots,
		Store: f.store, Logger: f.logger().With("worker", name)})
	if err != nil {
		f.t.Fatal(err)
	}
	return f.run("worker "+name, w.Run, nil, 0)
}

func (f *fleet) run(what string, run func(context.Context) error, ready <-chan struct{}, wait time.Duration) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil && ctx.Err() == nil {
			f.t.Errorf("%s: %v", what, err)
		}
	}()
	stop := func() { cancel(); <-done }
	f.t.Cleanup(stop)
	if ready != nil {
		select {
		case <-ready:
		case <-time.After(wait):
			f.t.Fatalf("%s not ready", what)
		}
	}
	return stop
}

func countSpec(name string, parallelism int) subjects.JobSpec {
	return subjects.JobSpec{Name: name, Parallelism: parallelism,
		Source:     subjects.SourceSpec{Stream: sourceStream, Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(300 * time.Millisecond)},
	}
}

// publisher publishes events to the source stream with retries, so that a
// publish lost to a leader election is sent again; the source stream's
// duplicate window drops a retry of a publish that was stored after all.
type publisher struct {
	f     *fleet
	r     *rand.Rand
	seq   int
	truth map[string]int64
}

func (f *fleet) publisher(seed uint64) *publisher {
	return &publisher{f: f, r: rand.New(rand.NewPCG(seed, 7)), truth: map[string]int64{}}
}

// publish publishes n events over keys user-0..user-(keys-1), each until
// JetStream acknowledges it (bounded: a minute per event).
func (p *publisher) publish(n, keys int) {
	p.f.t.Helper()
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("user-%d", p.r.IntN(keys))
		p.seq++
		msg := &nats.Msg{Subject: "clicks." + k, Data: []byte(`{"n":1}`), Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("e-%d", p.seq))
		deadline := time.Now().Add(time.Minute)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := p.f.js.PublishMsg(ctx, msg)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				p.f.t.Fatalf("publish %d: %v", p.seq, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		p.truth[k]++
	}
}

// checkState waits until every key's state equals the truth.
func (f *fleet) checkState(job string, truth map[string]int64, timeout time.Duration) {
	f.t.Helper()
	fleettest.WaitCounts(f.t, f.api, job, truth, timeout)
}

// latest returns the job's latest completed checkpoint id (0: none),
// retrying a failed listing for up to a minute.
func (f *fleet) latest(job string) uint64 {
	f.t.Helper()
	var id uint64
	testutil.CheckFor(f.t, time.Minute, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cps, err := f.api.Checkpoints(ctx, job)
		if err != nil {
			return err
		}
		id = 0
		for _, c := range cps {
			id = max(id, c.ID)
		}
		return nil
	})
	return id
}

// replicas returns the replica count of stream name.
func (f *fleet) replicas(name string) int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := f.js.Stream(ctx, name)
	if err != nil {
		f.t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().Config.Replicas
}
