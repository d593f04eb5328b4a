// Package observe tests what flotilla tells about itself: the Prometheus
// endpoints of the coordinator and the workers, the durable checkpoint
// history, the dashboard and its REST API (in a real browser), against a
// fleet on a real in-process nats-server.
package observe

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/metrics"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

type fleet struct {
	t     *testing.T
	srv   *server.Server
	store objectstore.Store
	api   *client.Client
	nc    *nats.Conn
	js    jetstream.JetStream
}

func logger() *slog.Logger { return testutil.Logger(os.Stderr, slog.LevelWarn) }

func newFleet(t *testing.T) *fleet {
	l := fleettest.NewLocal(t)
	js, err := jetstream.New(l.NC)
	if err != nil {
		t.Fatal(err)
	}
	return &fleet{t: t, srv: l.Srv, store: l.Store, api: l.API, nc: l.NC, js: js}
}

func (f *fleet) conn() *nats.Conn { return fleettest.Conn(f.t, f.srv) }

func (f *fleet) run(what string, run func(context.Context) error, ready <-chan struct{}) (context.Context, context.CancelFunc) {
	return fleettest.Run(f.t, what, run, ready, 10*time.Second)
}

// coordinator runs a coordinator with its metrics served on a free port;
// it returns the coordinator, its metrics URL and a stop function.
func (f *fleet) coordinator(adjust func(*coordinator.Config)) (*coordinator.Coordinator, string, context.CancelFunc) {
	reg := metrics.NewRegistry()
	nc := f.conn()
	cfg := coordinator.Config{Conn: nc, Store: metrics.ObjectStore(f.store, reg), Logger: logger(),
		HeartbeatInterval: 200 * time.Millisecond, HeartbeatTimeout: 2 * time.Second}
	if adjust != nil {
		adjust(&cfg)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	reg.MustRegister(c.Collector(), metrics.NATS(nc))
	ctx, stop := f.run("coordinator", c.Run, c.Ready())
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", reg, logger())
	if err != nil {
		f.t.Fatal(err)
	}
	return c, "http://" + addr.String() + "/metrics", stop
}

// worker runs a worker with its metrics served on a free port and returns
// the metrics URL.
func (f *fleet) worker(name string, slots int) string {
	reg := metrics.NewRegistry()
	nc := f.conn()
	w, err := worker.New(worker.Config{Conn: nc, DataDir: f.t.TempDir(), Name: name, Slots: slots,
		Store: metrics.ObjectStore(f.store, reg), Logger: logger()})
	if err != nil {
		f.t.Fatal(err)
	}
	reg.MustRegister(w.Collector(), metrics.NATS(nc))
	ctx, _ := f.run("worker "+name, w.Run, nil)
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", reg, logger())
	if err != nil {
		f.t.Fatal(err)
	}
	return "http://" + addr.String() + "/metrics"
}

func (f *fleet) waitWorkers(n int) { fleettest.WaitWorkers(f.t, f.api, n) }

func countSpec(name string, parallelism int, interval time.Duration) subjects.JobSpec {
	return subjects.JobSpec{Name: name, Parallelism: parallelism,
		Source:     subjects.SourceSpec{Stream: "CLICKS_" + strings.ToUpper(name), Subjects: []string{name + ".*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Sink:       subjects.SinkSpec{Subject: "counts." + name},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(interval)}}
}

// submit submits spec and waits until every task runs.
func (f *fleet) submit(spec subjects.JobSpec) {
	f.t.Helper()
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		f.t.Fatal(err)
	}
	testutil.CheckFor(f.t, 20*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, spec.Name)
		if err != nil {
			return err
		}
		if info.State != subjects.JobRunning {
			return fmt.Errorf("job %s is %s", spec.Name, info.State)
		}
		return nil
	})
}

// publish publishes n events over keys keys on prefix.<key> and returns
// the ground truth.
func (f *fleet) publish(prefix string, n, keys int) map[string]int64 {
	truth := map[string]int64{}
	for i := 0; i < n; i++ {
		k := "k" + strconv.Itoa(i%keys)
		if _, err := f.js.PublishAsync(prefix+"."+k, []byte(`{}`)); err != nil {
			f.t.Fatal(err)
		}
		truth[k]++
	}
	select {
	case <-f.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		f.t.Fatal("publishing did not complete")
	}
	return truth
}

// scrape reads a Prometheus endpoint.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sum adds up the values of family name whose labels include match.
func sum(fams map[string]*dto.MetricFamily, name string, match map[string]string) (float64, bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
	total, found := 0.0, false
next:
	for _, m := range fam.Metric {
		for k, v := range match {
			ok := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					ok = true
				}
			}
			if !ok {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		}
	}
	return total, found
}
