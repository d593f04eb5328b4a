package worker

import (
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-io/flotilla/subjects"
)

// taskCounters are a task attempt's figures. The task goroutine adds to
// them once per committed batch or round of events, never per event; heartbeats and metric
// scrapes read them from other goroutines.
type taskCounters struct {
	in, out, lag atomic.Uint64
	// rate is events in per second over the last heartbeat interval
	// (math.Float64bits), written by the heartbeat goroutine.
	rate atomic.Uint64
	// sampledIn and sampledAt are the heartbeat goroutine's last sample.
	sampledIn uint64
	sampledAt time.Time
}

// events adds n committed events; lag is the input's num_pending at the
// last event read.
func (c *taskCounters) events(n int, lag uint64) {
	if n > 0 {
		c.in.Add(uint64(n))
	}
	c.lag.Store(lag)
}

// outputs adds n outputs handed to the sink.
func (c *taskCounters) outputs(n int) {
	if n > 0 {
		c.out.Add(uint64(n))
	}
}

// sample updates the rate from the events counted since the last sample.
// Only the heartbeat goroutine calls it.
func (c *taskCounters) sample(now time.Time) {
	in := c.in.Load()
	if !c.sampledAt.IsZero() {
		if d := now.Sub(c.sampledAt).Seconds(); d > 0 {
			c.rate.Store(math.Float64bits(float64(in-c.sampledIn) / d))
		}
	}
	c.sampledIn, c.sampledAt = in, now
}

// stats returns the task's figures as reported in heartbeats.
func (t *task) stats() *subjects.TaskStats {
	c := &t.counters
	s := &subjects.TaskStats{EventsIn: c.in.Load(), Outputs: c.out.Load(), Lag: c.lag.Load(), Rate: math.Float64frombits(c.rate.Load())}
	t.beMu.RLock()
	if t.be != nil {
		s.StateBytes = t.be.DiskUsage()
	}
	t.beMu.RUnlock()
	return s
}

// statsReport returns the slot report with the figures of each slot's
// task, sampling rates first when now is set. Callers hold no lock.
func (w *Worker) statsReport(now time.Time) []subjects.SlotReport {
	w.mu.Lock()
	report := w.slotReport()
	tasks := make([]*task, len(report))
	for i, s := range report {
		if s.Attempt != 0 {
			tasks[i] = w.tasks[subjects.TaskRef{Job: s.Job, Task: s.Task, Attempt: s.Attempt}]
		}
	}
	w.mu.Unlock()
	for i, t := range tasks {
		if t == nil {
			continue
		}
		if !now.IsZero() {
			t.counters.sample(now)
		}
		report[i].Stats = t.stats()
	}
	return report
}

// Collector returns a Prometheus collector of the worker's metrics: the
// figures of the tasks it runs, labelled job and task, read at scrape time
// from the tasks' counters. It is unchecked (it describes nothing up
// front), so that several workers of one process may share a registry.
func (w *Worker) Collector() prometheus.Collector { return workerCollector{w} }

type workerCollector struct{ w *Worker }

var (
	taskLabels    = []string{"job", "task"}
	descEventsIn  = prometheus.NewDesc("flotilla_task_events_in_total", "Events of the task's key groups read (replays excluded, skipped events included).", taskLabels, nil)
	descOutputs   = prometheus.NewDesc("flotilla_task_outputs_total", "Outputs published to the sink.", taskLabels, nil)
	descSkipped   = prometheus.NewDesc("flotilla_task_skipped_events_total", "Events skipped as unusable (malformed subject, no usable key, refused by the operator).", taskLabels, nil)
	descLag       = prometheus.NewDesc("flotilla_task_input_lag_messages", "Input messages not yet read: the consumer's num_pending at the last message read.", taskLabels, nil)
	descRate      = prometheus.NewDesc("flotilla_task_events_per_second", "Events in per second over the last heartbeat interval.", taskLabels, nil)
	descStateSize = prometheus.NewDesc("flotilla_task_state_size_bytes", "Disk space of the task's state (Pebble).", taskLabels, nil)
)

func (workerCollector) Describe(chan<- *prometheus.Desc) {}

func (c workerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.w.statsReport(time.Time{}) {
		if s.Stats == nil {
			continue
		}
		l := []string{s.Job, strconv.Itoa(s.Task)}
		st := s.Stats
		ch <- prometheus.MustNewConstMetric(descEventsIn, prometheus.CounterValue, float64(st.EventsIn), l...)
		ch <- prometheus.MustNewConstMetric(descOutputs, prometheus.CounterValue, float64(st.Outputs), l...)
		ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(s.Skipped), l...)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(st.Lag), l...)
		ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, st.Rate, l...)
		ch <- prometheus.MustNewConstMetric(descStateSize, prometheus.GaugeValue, float64(st.StateBytes), l...)
	}
}
