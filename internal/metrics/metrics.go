// Package metrics holds what flotilla's processes share to expose
// Prometheus metrics: the HTTP endpoint, the object-store and NATS
// instrumentation. Metric names follow Prometheus conventions: a flotilla_
// prefix, base units (seconds, bytes), _total for counters, and labels of
// bounded cardinality (job and task; never a key).
package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flotilla-io/flotilla/objectstore"
)

// NewRegistry returns a registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus text format.
func Handler(reg prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Serve serves reg on addr at /metrics until ctx is done. It returns once
// the listener is bound, with the address it bound (addr may use port 0).
func Serve(ctx context.Context, addr string, reg prometheus.Gatherer, log *slog.Logger) (net.Addr, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(reg))
	return ServeHTTP(ctx, addr, mux, log)
}

// ServeHTTP serves h on addr until ctx is done. It returns once the
// listener is bound, with the address it bound.
func ServeHTTP(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return ln.Addr(), nil
}

var (
	descReconnects = prometheus.NewDesc("flotilla_nats_reconnects_total", "Times the process's NATS connection reconnected.", nil, nil)
	descConnected  = prometheus.NewDesc("flotilla_nats_connected", "1 while the process's NATS connection is connected.", nil, nil)
)

type natsCollector struct{ nc *nats.Conn }

// NATS returns a collector of nc's reconnects and connection state, read
// at scrape time.
func NATS(nc *nats.Conn) prometheus.Collector { return natsCollector{nc} }

func (natsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descReconnects; ch <- descConnected }

func (c natsCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(c.nc.Stats().Reconnects))
	up := 0.0
	if c.nc.IsConnected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, up)
}

// Buckets of flotilla's histograms.
var (
	// DurationBuckets: 1 ms to about 2 min.
	DurationBuckets = prometheus.ExponentialBuckets(0.001, 2, 18)
	// SizeBuckets: 1 KiB to 64 GiB.
	SizeBuckets = prometheus.ExponentialBuckets(1024, 4, 14)
)

// store wraps an objectstore.Store with request latency and error metrics.
type store struct {
	objectstore.Store
	latency *prometheus.HistogramVec
	errs    *prometheus.CounterVec
}

// ObjectStore returns s with every request timed and every failure
// counted, by operation, in metrics registered with reg:
// flotilla_objectstore_request_duration_seconds and
// flotilla_objectstore_request_errors_total. A missing object (ErrNotFound)
// or an existing one refused by PutIfAbsent is an answer, not an error.
func ObjectStore(s objectstore.Store, reg prometheus.Registerer) objectstore.Store {
	w := &store{Store: s,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flotilla_objectstore_request_duration_seconds",
			Help: "Object-store request latency by operation (put, get, stat, list, delete).", Buckets: DurationBuckets}, []string{"op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_objectstore_request_errors_total",
			Help: "Object-store requests that failed, by operation."}, []string{"op"}),
	}
	for _, op := range []string{"put", "get", "stat", "list", "delete"} {
		w.latency.WithLabelValues(op)
		w.errs.WithLabelValues(op)
	}
	reg.MustRegister(w.latency, w.errs)
	return w
}

func (s *store) done(op string, start time.Time, err error) {
	s.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, objectstore.ErrNotFound) && !errors.Is(err, objectstore.ErrExists) && !errors.Is(err, context.Canceled) {
		s.errs.WithLabelValues(op).Inc()
	}
}

func (s *store) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	defer func(start time.Time) { s.done("put", start, err) }(time.Now())
	return s.Store.Put(ctx, key, r, size)
}

func (s *store) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	defer func(start time.Time) { s.done("put", start, err) }(time.Now())
	return s.Store.PutIfAbsent(ctx, key, r, size)
}

func (s *store) Get(ctx context.Context, key string, offset, length int64) (rc io.ReadCloser, err error) {
	defer func(start time.Time) { s.done("get", start, err) }(time.Now())
	return s.Store.Get(ctx, key, offset, length)
}

func (s *store) Stat(ctx context.Context, key string) (info objectstore.ObjectInfo, err error) {
	defer func(start time.Time) { s.done("stat", start, err) }(time.Now())
	return s.Store.Stat(ctx, key)
}

func (s *store) List(ctx context.Context, prefix string) (out []objectstore.ObjectInfo, err error) {
	defer func(start time.Time) { s.done("list", start, err) }(time.Now())
	return s.Store.List(ctx, prefix)
}

func (s *store) Delete(ctx context.Context, keys ...string) (err error) {
	defer func(start time.Time) { s.done("delete", start, err) }(time.Now())
	return s.Store.Delete(ctx, keys...)
}
