// Package devcluster runs a whole flotilla fleet in one process: an
// embedded nats-server with JetStream, a local-directory object store, a
// coordinator and workers. It is `flotilla dev`, the embedded default.
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/coordinator/web"
	"github.com/flotilla-io/flotilla/internal/metrics"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// Config configures a dev cluster.
type Config struct {
	// Listen is the NATS client address (default 127.0.0.1:4222), so that
	// other processes (the nats CLI, more workers) can join.
	Listen string
	// DataDir holds JetStream's store, the object store and the workers'
	// state.
	DataDir string
	Workers int
	Slots   int
	// Demo submits an example job, publishes sample events and prints what
	// happens.
	Demo   bool
	Out    io.Writer
	Logger *slog.Logger
	// Metrics is the address of the Prometheus endpoint of every part
	// ("": off); DefaultMetrics unless set otherwise by the caller.
	Metrics string
	// HTTP is the address of the dashboard ("": off); DefaultHTTP unless
	// set otherwise by the caller.
	HTTP string
}

// DefaultHTTP is where `flotilla dev` serves the dashboard: the port of
// Flink's web UI.
const DefaultHTTP = "127.0.0.1:8081"

// DefaultMetrics is where `flotilla dev` serves Prometheus metrics: the
// port of Flink's Prometheus reporter.
const DefaultMetrics = "127.0.0.1:9249"

// Run runs the cluster until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.Slots <= 0 {
		cfg.Slots = 2
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("-listen %q: bad port", cfg.Listen)
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return err
	}
	// nats-server reports a port it cannot bind only in its log, and then
	// never becomes ready: find out first, and say why.
	if err := checkListen(cfg.Listen); err != nil {
		return err
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "flotilla-dev", Host: host, Port: port, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: filepath.Join(dataDir, "jetstream"),
		// flotilla's checkpoint metadata must be on disk before it counts.
		SyncAlways: true,
	})
	if err != nil {
		return fmt.Errorf("nats-server: %w", err)
	}
	go srv.Start()
	defer srv.WaitForShutdown()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats-server did not start on %s (port in use? try -listen 127.0.0.1:0)", cfg.Listen)
	}
	storeDir := filepath.Join(dataDir, "store")
	fsStore, err := objectstore.NewFS(storeDir)
	if err != nil {
		return err
	}
	// One registry for the whole process: the store, the coordinator and
	// every worker (their task series differ by job and task).
	reg := metrics.NewRegistry()
	store := metrics.ObjectStore(fsStore, reg)
	connect := func(name string) (*nats.Conn, error) {
		return nats.Connect(srv.ClientURL(), nats.Name(name), nats.MaxReconnects(-1))
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	goRun := func(name string, run func(context.Context) error, nc *nats.Conn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer nc.Close()
			if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				mu.Lock()
				firstErr = errors.Join(firstErr, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				cancel()
			}
		}()
	}
	nc, err := connect("flotilla coordinator")
	if err != nil {
		return err
	}
	co, err := coordinator.New(coordinator.Config{Conn: nc, Store: store, Logger: cfg.Logger,
		// Jobs' inputs are partitioned out of the box: the coordinator adds
		// each job's subject mapping to the embedded server.
		MapInput: srv.GlobalAccount().AddMapping})
	if err != nil {
		return err
	}
	reg.MustRegister(co.Collector(), metrics.NATS(nc))
	goRun("coordinator", co.Run, nc)
	for i := 1; i <= cfg.Workers; i++ {
		nc, err := connect(fmt.Sprintf("flotilla worker %d", i))
		if err != nil {
			return err
		}
		w, err := worker.New(worker.Config{Conn: nc, DataDir: filepath.Join(dataDir, fmt.Sprintf("worker-%d", i)),
			Name: fmt.Sprintf("dev-worker-%d", i), Slots: cfg.Slots, Store: store, Logger: cfg.Logger})
		if err != nil {
			return err
		}
		reg.MustRegister(w.Collector())
		goRun(fmt.Sprintf("worker %d", i), w.Run, nc)
	}
	metricsURL := "off"
	if cfg.Metrics != "" {
		addr, err := metrics.Serve(ctx, cfg.Metrics, reg, cfg.Logger)
		if err != nil {
			return fmt.Errorf("-metrics %s: %w", cfg.Metrics, err)
		}
		metricsURL = "http://" + addr.String() + "/metrics"
	}
	dashURL := "off"
	if cfg.HTTP != "" {
		addr, err := web.Serve(ctx, cfg.HTTP, web.Config{Conn: nc, Logger: cfg.Logger}, false)
		if err != nil {
			return fmt.Errorf("-http %s: %w", cfg.HTTP, err)
		}
		dashURL = "http://" + addr.String() + "/"
	}
	select {
	case <-co.Ready():
	case <-ctx.Done():
	}
	fmt.Fprintf(cfg.Out, `flotilla dev is running (Ctrl-C to stop).
  NATS:          %s (JetStream in %s)
  object store:  file://%s
  coordinator and %d workers with %d slots each
  dashboard:     %s
  metrics:       %s

From a second terminal:
  list workers:         go run ./cmd/flotilla workers
  start another worker: go run ./cmd/flotilla worker --store file://%s --data /tmp/flotilla-w3 --slots 2
  submit a job:         go run ./cmd/flotilla job submit examples/clicks.json
  publish events:       nats pub clicks.alice '{"n":1}'   (or any NATS client)
  query state:          go run ./cmd/flotilla state get clicks alice
  trigger a savepoint:  nats pub flotilla.trigger.savepoint.clicks ''

`, srv.ClientURL(), filepath.Join(dataDir, "jetstream"), storeDir, cfg.Workers, cfg.Slots, dashURL, metricsURL, storeDir)
	if cfg.Demo && ctx.Err() == nil {
		dnc, err := connect("flotilla demo")
		if err != nil {
			return err
		}
		defer dnc.Close()
		if err := demo(ctx, dnc, cfg.Out); err != nil && ctx.Err() == nil {
			fmt.Fprintf(cfg.Out, "demo: %v\n", err)
		}
	}
	<-ctx.Done()
	wg.Wait()
	return firstErr
}

// DemoSpec is the example job of the demo and of examples/clicks.json.
func DemoSpec() subjects.JobSpec {
	return subjects.JobSpec{Name: "clicks", Parallelism: 2,
		Source:     subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Sink:       subjects.SinkSpec{Subject: "counts.clicks"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(10 * time.Second)}}
}

var demoUsers = []string{"alice", "bob", "carol", "dave", "erin", "frank"}

// demo submits the example job, then publishes a few events a second and
// prints each key's state next to the number of events published for it.
func demo(ctx context.Context, nc *nats.Conn, out io.Writer) error {
	api := client.New(nc, subjects.Namespace{})
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// Capture the outputs in a stream: with it, replayed outputs are dropped
	// by their Nats-Msg-Id and every output is kept exactly once.
	if _, _, err := replicas.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "COUNTS", Subjects: []string{"counts.>"},
		Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute, MaxAge: 24 * time.Hour}, replicas.Policy{}, true); err != nil {
		return err
	}
	info, err := api.Submit(ctx, DemoSpec(), 0, "")
	if subjects.CodeOf(err) == subjects.CodeJobExists {
		fmt.Fprintln(out, "demo: job clicks is already running (from an earlier run); carrying on")
	} else if err != nil {
		return err
	} else {
		fmt.Fprintf(out, "demo: submitted job %s (%d tasks, operator count, input stream CLICKS on clicks.*)\n", info.Job, len(info.Tasks))
	}
	outputs := 0
	sub, err := nc.Subscribe("counts.clicks", func(*nats.Msg) { outputs++ })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	published := map[string]int{}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for round := 1; ; round++ {
		for i := 0; i < 25; i++ {
			u := demoUsers[rand.IntN(len(demoUsers))]
			if _, err := js.Publish(ctx, "clicks."+u, []byte(`{"n":1}`)); err != nil {
				return err
			}
			published[u]++
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		fmt.Fprintf(out, "demo round %d: published %d events; state (count / published this run):", round, round*25)
		for _, u := range demoUsers {
			res, err := api.State(ctx, "clicks", u)
			v := "?"
			if err == nil && res.Found {
				var n int64
				if json.Unmarshal(res.Value, &n) == nil {
					v = strconv.FormatInt(n, 10)
				}
			}
			fmt.Fprintf(out, " %s=%s/%d", u, v, published[u])
		}
		fmt.Fprintf(out, "; %d outputs on counts.clicks\n", outputs)
	}
}

// DefaultDataDir is where `flotilla dev` keeps its data unless told.
func DefaultDataDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "flotilla", "dev")
	}
	return filepath.Join(os.TempDir(), "flotilla-dev")
}

// checkListen fails at once, with the reason, when addr cannot be listened
// on (most often: the port is in use, by another flotilla dev or a
// nats-server).
func checkListen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w (is another flotilla dev or nats-server running? pick another address with -listen, e.g. -listen 127.0.0.1:0)", addr, err)
	}
	return l.Close()
}
