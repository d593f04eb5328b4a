package observe

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestMetrics scrapes the coordinator's and two workers' endpoints while a
// job runs: every event is counted once across the workers, the lag drains
// to zero, checkpoints are counted and timed, and the fleet, object-store
// and NATS figures are there. Job status carries the same figures.
func TestMetrics(t *testing.T) {
	f := newFleet(t)
	_, coordURL, _ := f.coordinator(nil)
	workerURLs := []string{f.worker("w1", 2), f.worker("w2", 2)}
	f.waitWorkers(2)
	spec := countSpec("metrics", 2, 200*time.Millisecond)
	f.submit(spec)
	const n, keys = 3000, 50
	truth := f.publish("metrics", n, keys)
	fleettest.WaitCounts(t, f.api, spec.Name, truth, 30*time.Second)

	var wfams []map[string]*dto.MetricFamily
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		wfams = wfams[:0]
		in, out, lag, state := 0.0, 0.0, 0.0, 0.0
		for _, u := range workerURLs {
			fams, err := scrape(u)
			if err != nil {
				return err
			}
			wfams = append(wfams, fams)
			match := map[string]string{"job": spec.Name}
			v, _ := sum(fams, "flotilla_task_events_in_total", match)
			in += v
			v, _ = sum(fams, "flotilla_task_outputs_total", match)
			out += v
			v, _ = sum(fams, "flotilla_task_input_lag_messages", match)
			lag += v
			v, _ = sum(fams, "flotilla_task_state_size_bytes", match)
			state += v
		}
		if in != n || out != n || lag != 0 || state == 0 {
			return fmt.Errorf("workers report %v events in, %v outputs, lag %v, state %v bytes; want %d, %d, 0, > 0", in, out, lag, state, n, n)
		}
		return nil
	})
	for i, fams := range wfams {
		for _, name := range []string{"flotilla_task_skipped_events_total", "flotilla_task_events_per_second",
			"flotilla_objectstore_request_duration_seconds", "flotilla_objectstore_request_errors_total", "flotilla_nats_reconnects_total"} {
			if _, ok := sum(fams, name, nil); !ok {
				t.Errorf("worker %d: no %s", i+1, name)
			}
		}
		if puts, _ := sum(fams, "flotilla_objectstore_request_duration_seconds", map[string]string{"op": "put"}); puts == 0 {
			t.Errorf("worker %d: no object-store puts timed", i+1)
		}
		for name, fam := range fams {
			if !strings.HasPrefix(name, "flotilla_") {
				continue
			}
			for _, m := range fam.Metric {
				for _, l := range m.Label {
					if l.GetName() != "job" && l.GetName() != "task" && l.GetName() != "op" {
						t.Errorf("worker %d: %s has label %s", i+1, name, l.GetName())
					}
				}
			}
		}
	}

	var cfams map[string]*dto.MetricFamily
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		var err error
		if cfams, err = scrape(coordURL); err != nil {
			return err
		}
		completed, _ := sum(cfams, "flotilla_checkpoints_total", map[string]string{"job": spec.Name, "outcome": "completed"})
		timed, _ := sum(cfams, "flotilla_checkpoint_duration_seconds", map[string]string{"job": spec.Name})
		syncs, _ := sum(cfams, "flotilla_checkpoint_sync_duration_seconds", map[string]string{"job": spec.Name})
		workers, _ := sum(cfams, "flotilla_workers", nil)
		slots, _ := sum(cfams, "flotilla_slots", nil)
		free, _ := sum(cfams, "flotilla_slots_free", nil)
		running, _ := sum(cfams, "flotilla_job_running", map[string]string{"job": spec.Name})
		if completed < 1 || timed < 1 || syncs < 2 || workers != 2 || slots != 4 || free != 2 || running != 1 {
			return fmt.Errorf("coordinator: %v checkpoints completed, %v timed, %v task syncs, %v workers, %v slots (%v free), running %v",
				completed, timed, syncs, workers, slots, free, running)
		}
		return nil
	})
	for _, name := range []string{"flotilla_checkpoint_size_bytes", "flotilla_checkpoint_uploaded_bytes", "flotilla_checkpoint_upload_duration_seconds",
		"flotilla_job_restarts_total", "flotilla_coordinator_epoch", "flotilla_job_last_checkpoint_timestamp_seconds", "flotilla_nats_reconnects_total",
		"flotilla_objectstore_request_duration_seconds"} {
		if _, ok := sum(cfams, name, nil); !ok {
			t.Errorf("coordinator: no %s", name)
		}
	}

	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		info, err := f.api.Status(context.Background(), spec.Name)
		if err != nil {
			return err
		}
		in := uint64(0)
		for _, task := range info.Tasks {
			if task.Stats == nil {
				return fmt.Errorf("task %d has no figures in job status: %+v", task.Task, task)
			}
			in += task.Stats.EventsIn
		}
		if in != n || info.Lag != 0 || info.LastCheckpointAt.IsZero() || info.State != subjects.JobRunning {
			return fmt.Errorf("job status: %d events in, lag %d, last checkpoint %s; want %d, 0, set", in, info.Lag, info.LastCheckpointAt, n)
		}
		return nil
	})
}
