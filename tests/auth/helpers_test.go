// Package auth tests a fleet whose processes authenticate to NATS and run
// under subject permissions: every authentication method the processes
// support (user and password, token, nkey, credentials file in operator
// mode, TLS with a private CA), the example server configuration
// compose/auth/nats-auth.conf with one user per role, and that S3
// credentials never reach logs, metadata or events.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// logger returns a debug-level logger writing to buf, and also to stderr
// when FLOTILLA_TEST_LOG is set.
func logger(buf io.Writer) *slog.Logger {
	w := buf
	if os.Getenv("FLOTILLA_TEST_LOG") != "" {
		w = io.MultiWriter(buf, os.Stderr)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// asyncErrors collects a connection's asynchronous errors: the server's
// permission violations for publishes and subscriptions arrive this way.
type asyncErrors struct {
	mu   sync.Mutex
	errs []error
}

func (a *asyncErrors) option() nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err)
		a.mu.Unlock()
	})
}

func (a *asyncErrors) all() []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]error(nil), a.errs...)
}

// violation waits for the server's permissions violation of kind
// ("Publish" or "Subscription") on subject.
func (a *asyncErrors) violation(t *testing.T, kind, subject string) {
	t.Helper()
	want := fmt.Sprintf("Permissions Violation for %s to %q", kind, subject)
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, err := range a.all() {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				return nil
			}
		}
		return fmt.Errorf("no %q among the connection's errors %v", want, a.all())
	})
}

// dial connects with c as a process would (cli.Common.Connect), collecting
// asynchronous errors, and waits until the connection is up.
func dial(t *testing.T, c cli.Common, name string, forever bool) (*nats.Conn, *asyncErrors) {
	t.Helper()
	errs := &asyncErrors{}
	nc, err := c.Connect(name, forever, errs.option(), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("%s: not connected (%v)", name, nc.LastError())
		}
		return nil
	})
	return nc, errs
}

// run runs a fleet component until the returned stop is called or the test
// ends, waiting for ready.
func run(t *testing.T, what string, f func(context.Context) error, ready <-chan struct{}) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f(ctx); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	if ready != nil {
		select {
		case <-ready:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s not ready", what)
		}
	}
	return stop
}

func startCoordinator(t *testing.T, nc *nats.Conn, store objectstore.Store, log *slog.Logger) (stop func()) {
	t.Helper()
	c, err := coordinator.New(coordinator.Config{Conn: nc, Store: store, Logger: log,
		HeartbeatInterval: 300 * time.Millisecond, HeartbeatTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return run(t, "coordinator", c.Run, c.Ready())
}

func startWorker(t *testing.T, nc *nats.Conn, name string, store objectstore.Store, log *slog.Logger) (stop func()) {
	t.Helper()
	w, err := worker.New(worker.Config{Conn: nc, DataDir: t.TempDir(), Name: name, Slots: 2, Store: store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return run(t, "worker "+name, w.Run, nil)
}

func waitWorkers(t *testing.T, api *client.Client, n int) {
	t.Helper()
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		ws, err := api.Workers(context.Background())
		if err == nil && len(ws) != n {
			err = fmt.Errorf("%d workers registered, want %d", len(ws), n)
		}
		return err
	})
}

// countSpec is a count job over clicks.<user> with checkpoints every
// interval (0: none) and outputs on counts.clicks.
func countSpec(name string, parallelism int, interval time.Duration) subjects.JobSpec {
	return subjects.JobSpec{Name: name, Parallelism: parallelism,
		Source:     subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Sink:       subjects.SinkSpec{Subject: "counts.clicks"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(interval), Timeout: subjects.Duration(10 * time.Second)}}
}

// publish publishes n events over keys user-0..user-(keys-1) through
// JetStream on nc and adds them to truth.
func publish(t *testing.T, nc *nats.Conn, n, keys int, seed uint64, truth map[string]int64) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("user-%d", r.IntN(keys))
		if _, err := js.PublishAsync("clicks."+k, []byte(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		truth[k]++
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing timed out")
	}
}

// checkState waits until every key's state, read through the user API,
// equals truth.
func checkState(t *testing.T, api *client.Client, job string, truth map[string]int64) {
	t.Helper()
	fleettest.WaitCounts(t, api, job, truth, 30*time.Second)
}
