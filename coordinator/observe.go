package coordinator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-io/flotilla/internal/metrics"
	"github.com/flotilla-io/flotilla/subjects"
)

// coordMetrics are the coordinator's Prometheus metrics that are observed
// as things happen (once per checkpoint, never per event); the rest are
// read from the loop at scrape time (Collect).
type coordMetrics struct {
	checkpoints, savepoints      *prometheus.CounterVec
	ckDuration, ckSize, ckUpload *prometheus.HistogramVec
	ckSync, ckAsync              *prometheus.HistogramVec
	spDuration, spSize, spUpload *prometheus.HistogramVec
	failovers                    *prometheus.CounterVec
}

func newCoordMetrics() *coordMetrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{"job"})
	}
	return &coordMetrics{
		checkpoints: counter("flotilla_checkpoints_total", "Periodic checkpoint attempts by outcome (completed, failed, aborted).", "job", "outcome"),
		savepoints:  counter("flotilla_savepoints_total", "Savepoint attempts by outcome (completed, failed, aborted).", "job", "outcome"),
		ckDuration:  hist("flotilla_checkpoint_duration_seconds", "Duration of completed checkpoints, from trigger to commit.", metrics.DurationBuckets),
		ckSize:      hist("flotilla_checkpoint_size_bytes", "Full size of completed checkpoints (all files referenced).", metrics.SizeBuckets),
		ckUpload:    hist("flotilla_checkpoint_uploaded_bytes", "Bytes completed checkpoints uploaded (incremental: new files only).", metrics.SizeBuckets),
		ckSync:      hist("flotilla_checkpoint_sync_duration_seconds", "Synchronous pause of each task for completed checkpoints and savepoints.", metrics.DurationBuckets),
		ckAsync:     hist("flotilla_checkpoint_upload_duration_seconds", "Asynchronous upload time of each task for completed checkpoints and savepoints.", metrics.DurationBuckets),
		spDuration:  hist("flotilla_savepoint_duration_seconds", "Duration of completed savepoints, from trigger to commit.", metrics.DurationBuckets),
		spSize:      hist("flotilla_savepoint_size_bytes", "Size of completed savepoints.", metrics.SizeBuckets),
		spUpload:    hist("flotilla_savepoint_uploaded_bytes", "Bytes completed savepoints uploaded.", metrics.SizeBuckets),
		failovers:   counter("flotilla_failovers_total", "Task attempts failed over because their worker was lost.", "job"),
	}
}

// attempt observes a checkpoint attempt that ended.
func (m *coordMetrics) attempt(a subjects.CheckpointAttempt) {
	counts, dur, size, up := m.checkpoints, m.ckDuration, m.ckSize, m.ckUpload
	if a.Kind == subjects.KindSavepoint {
		counts, dur, size, up = m.savepoints, m.spDuration, m.spSize, m.spUpload
	}
	counts.WithLabelValues(a.Job, a.Outcome.String()).Inc()
	if a.Outcome != subjects.OutcomeCompleted {
		return
	}
	dur.WithLabelValues(a.Job).Observe(a.Duration.D().Seconds())
	size.WithLabelValues(a.Job).Observe(float64(a.Size))
	up.WithLabelValues(a.Job).Observe(float64(a.Uploaded))
	for _, t := range a.Tasks {
		m.ckSync.WithLabelValues(a.Job).Observe(t.Sync.D().Seconds())
		m.ckAsync.WithLabelValues(a.Job).Observe(t.Async.D().Seconds())
	}
}

func (m *coordMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.checkpoints, m.savepoints, m.ckDuration, m.ckSize, m.ckUpload, m.ckSync, m.ckAsync,
		m.spDuration, m.spSize, m.spUpload, m.failovers}
}

var (
	descWorkers   = prometheus.NewDesc("flotilla_workers", "Registered workers.", nil, nil)
	descSlots     = prometheus.NewDesc("flotilla_slots", "Slots of the registered workers.", nil, nil)
	descSlotsFree = prometheus.NewDesc("flotilla_slots_free", "Free slots of the registered workers.", nil, nil)
	descEpoch     = prometheus.NewDesc("flotilla_coordinator_epoch", "The leading coordinator's epoch (its term): it grows with every new leader (failover).", nil, nil)
	descJobUp     = prometheus.NewDesc("flotilla_job_running", "1 while the job runs (every task running), else 0.", []string{"job"}, nil)
	descRestarts  = prometheus.NewDesc("flotilla_job_restarts_total", "Task restarts of the job's current run.", []string{"job"}, nil)
	descJobRate   = prometheus.NewDesc("flotilla_job_events_per_second", "Events in per second of the job's tasks, from the workers' last heartbeats.", []string{"job"}, nil)
	descJobLag    = prometheus.NewDesc("flotilla_job_input_lag_messages", "Input messages not yet read, summed over the job's tasks.", []string{"job"}, nil)
	descCkptAge   = prometheus.NewDesc("flotilla_job_last_checkpoint_timestamp_seconds", "When the job's newest checkpoint or savepoint completed (Unix time).", []string{"job"}, nil)
)

// Collector returns a Prometheus collector of the coordinator's metrics:
// checkpoint and savepoint counts and histograms, failovers, and, read from
// the coordinator's loop at scrape time, the fleet's workers and slots and
// each job's state, restarts, rate and lag.
func (c *Coordinator) Collector() prometheus.Collector { return coordCollector{c} }

type coordCollector struct{ c *Coordinator }

func (cc coordCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range cc.c.metrics.collectors() {
		m.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descWorkers, descSlots, descSlotsFree, descEpoch, descJobUp, descRestarts, descJobRate, descJobLag, descCkptAge} {
		ch <- d
	}
}

type fleetSnapshot struct {
	epoch   uint64
	workers []subjects.WorkerInfo
	jobs    []subjects.JobInfo
}

func (cc coordCollector) Collect(ch chan<- prometheus.Metric) {
	c := cc.c
	for _, m := range c.metrics.collectors() {
		m.Collect(ch)
	}
	l := c.current()
	if l == nil {
		return // standing by: the leader reports the fleet
	}
	snap, ok := tryCall(l, 5*time.Second, func(time.Time) fleetSnapshot {
		return fleetSnapshot{epoch: l.epoch, workers: l.eng.Workers(), jobs: l.eng.Jobs()}
	})
	if !ok {
		return // the loop is not running: nothing to report but the above
	}
	slots, free := 0, 0
	for _, w := range snap.workers {
		slots += w.Slots
		free += w.FreeSlots
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descWorkers, float64(len(snap.workers)))
	gauge(descSlots, float64(slots))
	gauge(descSlotsFree, float64(free))
	gauge(descEpoch, float64(snap.epoch))
	for _, j := range snap.jobs {
		if j.State.Terminal() {
			continue
		}
		up := 0.0
		if j.State == subjects.JobRunning {
			up = 1
		}
		gauge(descJobUp, up, j.Job)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(j.Restarts), j.Job)
		gauge(descJobRate, j.Rate, j.Job)
		gauge(descJobLag, float64(j.Lag), j.Job)
		if !j.LastCheckpointAt.IsZero() {
			gauge(descCkptAge, float64(j.LastCheckpointAt.UnixNano())/1e9, j.Job)
		}
	}
}

// tryCall is call with a bound: it gives up (ok false) when the loop does
// not run f within d (it is not running, or is stuck).
func tryCall[T any](c *leader, d time.Duration, f func(now time.Time) T) (T, bool) {
	var zero T
	ch := make(chan T, 1)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case c.inbox <- func(now time.Time) { ch <- f(now) }:
	case <-timer.C:
		return zero, false
	}
	select {
	case v := <-ch:
		return v, true
	case <-timer.C:
		return zero, false
	}
}
