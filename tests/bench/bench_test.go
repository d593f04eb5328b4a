// Package bench holds flotilla's end-to-end benchmarks. Each runs its
// workload and a baseline in the same run and reports their ratio, since
// absolute figures on shared machines mean little. Run them with
//
//	go test ./tests/bench -run '^$' -bench . -benchtime 1x
//
// FLOTILLA_BENCH_EVENTS sets the number of events (default 200000).
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

func events() int {
	if n, err := strconv.Atoi(os.Getenv("FLOTILLA_BENCH_EVENTS")); err == nil && n > 0 {
		return n
	}
	return 200000
}

type env struct {
	b     *testing.B
	srv   *server.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	api   *client.Client
	store objectstore.Store
	// storeDir is the store's directory, for worker processes.
	storeDir string
}

func newEnv(b *testing.B) *env {
	opts := testutil.NATSOptions(b.TempDir())
	// Filling the source streams need not wait for the disk; the figures
	// compare reads, and flotilla's own metadata durability is not measured.
	opts.SyncAlways = false
	srv := testutil.RunNATSWithOptions(b, opts)
	nc := testutil.Connect(b, srv)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		b.Fatal(err)
	}
	storeDir := b.TempDir()
	store, err := objectstore.NewFS(storeDir)
	if err != nil {
		b.Fatal(err)
	}
	return &env{b: b, srv: srv, nc: nc, js: js, api: client.New(nc, subjects.Namespace{}), store: store, storeDir: storeDir}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func (e *env) run(name string, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f(ctx) }()
	e.b.Cleanup(func() { cancel(); <-done })
}

// fleet starts a coordinator and one worker with slots slots.
func (e *env) fleet(slots int) *coordinator.Coordinator {
	c := e.coordinator()
	w, err := worker.New(worker.Config{Conn: testutil.Connect(e.b, e.srv), DataDir: e.b.TempDir(), Slots: slots, Store: e.store, Logger: quiet})
	if err != nil {
		e.b.Fatal(err)
	}
	e.run("worker", w.Run)
	testutil.CheckFor(e.b, 10*time.Second, 20*time.Millisecond, func() error {
		ws, err := e.api.Workers(context.Background())
		if err == nil && len(ws) == 0 {
			err = fmt.Errorf("no worker")
		}
		return err
	})
	return c
}

// coordinator starts a coordinator in this process.
func (e *env) coordinator() *coordinator.Coordinator {
	c, err := coordinator.New(coordinator.Config{Conn: testutil.Connect(e.b, e.srv), Store: e.store, Logger: quiet,
		MapInput:          e.srv.GlobalAccount().AddMapping,
		HeartbeatInterval: 500 * time.Millisecond, HeartbeatTimeout: 2 * time.Second})
	if err != nil {
		e.b.Fatal(err)
	}
	e.run("coordinator", c.Run)
	<-c.Ready()
	return c
}

// input creates the partitioned input of job s as the coordinator would
// (the mapping and the partition streams), so that it can be filled before
// the job is submitted; the job adopts the streams.
func (e *env) input(s subjects.JobSpec) []string {
	s = s.WithDefaults()
	s.Source.Layout = subjects.LayoutPartitioned
	src, dest, err := subjects.InputMapping(&s)
	if err != nil {
		e.b.Fatal(err)
	}
	if err := e.srv.GlobalAccount().AddMapping(src, dest); err != nil {
		e.b.Fatal(err)
	}
	var names []string
	for _, c := range subjects.InputStreamConfigs(&s) {
		if _, err := e.js.CreateStream(context.Background(), c); err != nil {
			e.b.Fatal(err)
		}
		names = append(names, c.Name)
	}
	return names
}

// publish fills subject prefix's stream with n events over keys keys.
func (e *env) publish(prefix string, n, keys int) {
	e.publishTo(n, func(i int) string { return prefix + ".k" + strconv.Itoa(i%keys) })
}

// publishTo publishes n events, event i to subject(i), and waits for their
// acks.
func (e *env) publishTo(n int, subject func(i int) string) {
	for i := 0; i < n; i++ {
		if _, err := e.js.PublishAsync(subject(i), []byte(`{"v":1}`)); err != nil {
			e.b.Fatal(err)
		}
		if i%4096 == 4095 {
			<-e.js.PublishAsyncComplete()
		}
	}
	<-e.js.PublishAsyncComplete()
}

// waitRunning waits until every task of job runs.
func (e *env) waitRunning(job string) {
	testutil.CheckFor(e.b, time.Minute, time.Millisecond, func() error {
		info, err := e.api.Status(context.Background(), job)
		if err != nil {
			return err
		}
		for _, t := range info.Tasks {
			if t.State != subjects.TaskRunning {
				return fmt.Errorf("task %d %s", t.Task, t.State)
			}
		}
		return nil
	})
}

func spec(name, stream string, parallelism int, interval time.Duration) subjects.JobSpec {
	return subjects.JobSpec{Name: name, Parallelism: parallelism,
		Source:     subjects.SourceSpec{Stream: stream, Subjects: []string{stream + ".*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(interval)}}
}

// processJob submits job over an already filled stream and returns events
// per second from the moment its tasks run until every key's count adds up
// to n (deployment is not the task's throughput).
func (e *env) processJob(s subjects.JobSpec, n, keys int) float64 {
	ctx := context.Background()
	if _, err := e.api.Submit(ctx, s, 0, ""); err != nil {
		e.b.Fatal(err)
	}
	e.waitRunning(s.Name)
	start := time.Now()
	last := "k" + strconv.Itoa((n-1)%keys)
	want := strconv.Itoa((n-1)/keys + 1)
	testutil.CheckFor(e.b, 10*time.Minute, 2*time.Millisecond, func() error {
		res, err := e.api.State(ctx, s.Name, last)
		if err != nil {
			return err
		}
		if string(res.Value) != want {
			return fmt.Errorf("%s = %s, want %s", last, res.Value, want)
		}
		return nil
	})
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkCheckpointOverhead: the same job with a checkpoint every second
// against checkpointing off, alternating over rounds in one run and
// comparing medians, so that machine noise and warm-up hit both alike.
func BenchmarkCheckpointOverhead(b *testing.B) {
	e := newEnv(b)
	n, keys, rounds := events(), 20000, 3
	e.fleet(2)
	var rates [2][]float64
	for round := 0; round < rounds; round++ {
		for i, interval := range []time.Duration{0, time.Second} {
			stream := fmt.Sprintf("CK%d_%d", i, round)
			s := spec(fmt.Sprintf("ck%d-%d", i, round), stream, 1, interval)
			e.input(s)
			e.publish(stream, n, keys)
			rates[i] = append(rates[i], e.processJob(s, n, keys))
			if interval > 0 {
				cps, _ := e.api.Checkpoints(context.Background(), s.Name)
				for _, cp := range cps {
					for _, t := range cp.Tasks {
						b.Logf("round %d checkpoint %d: sync %s, async %s, %d of %d bytes uploaded", round, cp.ID, t.Sync.D(), t.Async.D(), t.Handle.Uploaded, t.Handle.Size)
					}
				}
			}
			if _, err := e.api.Cancel(context.Background(), s.Name); err != nil {
				b.Fatal(err)
			}
		}
	}
	off, on := median(rates[0]), median(rates[1])
	b.ReportMetric(off, "off-events/s")
	b.ReportMetric(on, "1s-events/s")
	b.ReportMetric(on/off, "ratio")
	b.Logf("checkpoint every 1s: median %.0f events/s, off: median %.0f events/s: ratio %.2f (target >= 0.9)", on, off, on/off)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkCommitLatency: from the last ack of a checkpoint to its
// completion being announced (metadata written, record committed to
// JetStream with sync_interval always), median and p99.
func BenchmarkCommitLatency(b *testing.B) {
	e := newEnv(b)
	e.fleet(2)
	ctx := context.Background()
	s := spec("lat", "LAT", 2, 50*time.Millisecond)
	s.Checkpoint.Retained = 100
	var mu sync.Mutex
	completed := map[uint64]time.Time{}
	sub, err := e.nc.Subscribe(subjects.Namespace{}.Events(subjects.EventCheckpointCompleted, "lat"), func(m *nats.Msg) {
		var ev subjects.Event
		if subjects.Decode(m.Data, &ev) == nil {
			mu.Lock()
			completed[ev.Checkpoint] = time.Now()
			mu.Unlock()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	if _, err := e.api.Submit(ctx, s, 0, ""); err != nil {
		b.Fatal(err)
	}
	e.publish("LAT", 10000, 100)
	testutil.CheckFor(b, 2*time.Minute, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(completed) < 60 {
			return fmt.Errorf("%d checkpoints", len(completed))
		}
		return nil
	})
	cps, err := e.api.Checkpoints(ctx, "lat")
	if err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	mu.Lock()
	for _, cp := range cps {
		if t, ok := completed[cp.ID]; ok {
			lat = append(lat, t.Sub(cp.Completed))
		}
	}
	mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		b.Fatal("no latencies")
	}
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.Logf("last ack -> completed over %d checkpoints: median %s, p99 %s", len(lat), p50, p99)
}
