package checkpoint

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/flotilla-io/flotilla/internal/tracetest"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestScenarios runs the trace scenarios in testdata/. Commands:
//
//	new parallelism=2 [interval=10s] [timeout=1m] [tolerable=0] [retained=2] [retries=1] [highest=N] [max_concurrent=1] [min_pause=0s]
//	tick 10s [running]            advance the clock; "running" = every task runs (attempt 1, on worker w)
//	ack 3 task=0 [attempt=1] [worker=w] [range=0-3] [files=a,b]
//	decline 3 task=0 [worker=w]
//	metadata 3 [err] [missing=k1,k2] the metadata write finished (or found objects missing)
//	commit 3 [err]                the JetStream commit finished
//	task-failed 0
//	savepoint id=9 [stop] [format=native]
//	restart                       a new coordinator from the retained records
//	retained
//	show-history                  from now on, print the history record of each ended attempt
//
// Rewrite with go test ./coordinator/checkpoint -rewrite.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		var c *Coordinator
		var cfg Config
		showHistory := false
		out := func(acts []Action) string {
			if showHistory {
				return format(acts) + historyLines(acts)
			}
			return format(acts)
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(k string) string { return tracetest.Arg(d, k) }
			num := func(k string) int { return tracetest.Int(d, k) }
			dur := func(k string, def time.Duration) subjects.Duration {
				if v := arg(k); v != "" {
					d, err := time.ParseDuration(v)
					if err != nil {
						t.Fatal(err)
					}
					return subjects.Duration(d)
				}
				return subjects.Duration(def)
			}
			id := func() uint64 {
				var n uint64
				fmt.Sscan(d.CmdArgs[0].Key, &n)
				return n
			}
			switch d.Cmd {
			case "new":
				retries, tolerable := num("retries"), num("tolerable")
				cfg = Config{Job: "clicks", Epoch: 1, Parallelism: num("parallelism"), MaxParallelism: 8,
					Spec: subjects.CheckpointSpec{Interval: dur("interval", 0), Timeout: dur("timeout", time.Minute),
						MaxConcurrent: max(num("max_concurrent"), 1), MinPause: dur("min_pause", 0),
						TolerableFailures: &tolerable, Retained: max(num("retained"), 1), SavepointRetries: &retries}}
				c = New(cfg, nil, uint64(num("highest")))
				return "ok\n"
			case "tick":
				now = now.Add(tracetest.Duration(t, d))
				var tasks []Task
				if arg("running") != "" {
					for i := 0; i < cfg.Parallelism; i++ {
						tasks = append(tasks, Task{Task: i, Attempt: 1, Worker: "w"})
					}
				}
				return fmt.Sprintf("t=%s\n", now.Sub(start)) + out(c.Tick(now, tasks))
			case "ack":
				task := num("task")
				attempt := uint64(1)
				if a := arg("attempt"); a != "" {
					attempt = uint64(num("attempt"))
				}
				format_ := statebackend.FormatNative
				if arg("canonical") != "" {
					format_ = statebackend.FormatCanonical
				}
				manifest := fmt.Sprintf("clicks/chk-%d/task-%d/snapshot.json", id(), task)
				files := []string{manifest}
				if f := arg("files"); f != "" {
					for _, x := range strings.Split(f, ",") {
						files = append(files, "clicks/shared/"+x)
					}
				}
				worker := "w"
				if w := arg("worker"); w != "" {
					worker = w
				}
				rng := keygroup.ForTask(task, cfg.Parallelism, 8)
				if r := arg("range"); r != "" {
					fmt.Sscanf(r, "%d-%d", &rng.Start, &rng.End)
				}
				var epoch uint64
				if e := arg("epoch"); e != "" {
					epoch = uint64(num("epoch"))
				}
				acts, ignored := c.Ack(&subjects.Ack{Worker: worker, Checkpoint: id(), Epoch: epoch,
					TaskRef: subjects.TaskRef{Job: "clicks", Task: task, Attempt: attempt},
					Handle: statebackend.Handle{Version: 1, Format: format_, Manifest: manifest, Files: files, Size: 10, Uploaded: 5,
						Range: rng}}, now)
				if ignored != "" {
					return "ignored: " + ignored + "\n"
				}
				return out(acts)
			case "decline":
				worker := "w"
				if w := arg("worker"); w != "" {
					worker = w
				}
				var epoch uint64
				if e := arg("epoch"); e != "" {
					epoch = uint64(num("epoch"))
				}
				return out(c.Decline(&subjects.Decline{Worker: worker, Checkpoint: id(), Epoch: epoch,
					TaskRef: subjects.TaskRef{Job: "clicks", Task: num("task"), Attempt: 1},
					Reason:  subjects.Errorf(subjects.CodeStorageUnavailable, "s3 down")}, now))
			case "metadata", "commit":
				var err error
				if arg("err") != "" {
					err = errors.New("injected failure")
				}
				if m := arg("missing"); m != "" {
					keys := strings.Split(m, ",")
					err = &MissingObjectsError{Keys: keys, Total: len(keys), Details: []string{keys[0] + ": absent"}}
				}
				if d.Cmd == "metadata" {
					return out(c.MetadataWritten(id(), err, now))
				}
				return out(c.Committed(id(), err, now))
			case "task-failed":
				return out(c.TaskFailed(int(id()), now))
			case "savepoint":
				f := statebackend.FormatCanonical
				if arg("format") == "native" {
					f = statebackend.FormatNative
				}
				c.TriggerSavepoint(SavepointRequest{ID: uint64(num("id")), Format: f, Stop: arg("stop") != ""}, now)
				return "queued\n"
			case "cancel":
				return out(c.Cancel("job canceled", now))
			case "restart":
				c = New(cfg, c.Retained(), 0)
				return fmt.Sprintf("next id %d\n", c.nextID)
			case "show-history":
				showHistory = true
				return "ok\n"
			case "retained":
				var b strings.Builder
				for _, r := range c.Retained() {
					fmt.Fprintf(&b, "chk %d files=%v\n", r.ID, Files(r))
				}
				return b.String() + fmt.Sprintf("pending %v\n", c.Pending())
			}
			t.Fatalf("unknown command %q", d.Cmd)
			return ""
		})
	})
}

func format(acts []Action) string {
	if len(acts) == 0 {
		return "(no actions)\n"
	}
	var b strings.Builder
	for _, a := range acts {
		switch a := a.(type) {
		case SendBarrier:
			fmt.Fprintf(&b, "barrier %s %d format=%s target=%s shared=%s\n", a.Barrier.Kind, a.Barrier.Checkpoint, a.Barrier.Format, a.Barrier.Target, a.Barrier.Shared)
		case WriteMetadata:
			fmt.Fprintf(&b, "write-metadata %s size=%d uploaded=%d tasks=%d\n", MetadataKey(a.Record.Location), a.Record.Size, a.Record.Uploaded, len(a.Record.Tasks))
		case Commit:
			fmt.Fprintf(&b, "commit %s %d\n", a.Record.Kind, a.Record.ID)
		case NotifyComplete:
			fmt.Fprintf(&b, "complete %s %d\n", a.Complete.Kind, a.Complete.Checkpoint)
		case NotifyAbort:
			fmt.Fprintf(&b, "abort %s %d: %s: %s\n", a.Kind, a.Abort.Checkpoint, a.Abort.Reason.Code, a.Abort.Reason.Message)
			if len(a.Abort.Missing) > 0 {
				fmt.Fprintf(&b, "  missing %s\n", strings.Join(a.Abort.Missing, " "))
			}
		case SavepointDone:
			if a.Result.Error != nil {
				fmt.Fprintf(&b, "savepoint-done request=%d error %s: %s\n", a.Request, a.Result.Error.Code, a.Result.Error.Message)
			} else {
				fmt.Fprintf(&b, "savepoint-done request=%d id=%d location=%s stop=%v\n", a.Request, a.Result.Checkpoint, a.Result.Location, a.Stop)
			}
		case DeleteCheckpoint:
			fmt.Fprintf(&b, "delete chk %d files=%v\n", a.Record.ID, a.Files)
		case FailJob:
			fmt.Fprintf(&b, "fail-job: %s\n", a.Reason.Message)
		default:
			fmt.Fprintf(&b, "%T\n", a)
		}
	}
	return b.String()
}

// historyLines prints the checkpoint history records of acts.
func historyLines(acts []Action) string {
	var b strings.Builder
	for _, a := range acts {
		var h subjects.CheckpointAttempt
		switch a := a.(type) {
		case NotifyComplete:
			h = a.Attempt
		case NotifyAbort:
			h = a.Attempt
		default:
			continue
		}
		fmt.Fprintf(&b, "  history %s %d trigger=%s outcome=%s duration=%s size=%d uploaded=%d", h.Kind, h.ID, h.Trigger, h.Outcome, h.Duration.D(), h.Size, h.Uploaded)
		if h.Failure != nil {
			fmt.Fprintf(&b, " failure=%s", h.Failure.Code)
		}
		b.WriteString("\n")
		for _, t := range h.Tasks {
			fmt.Fprintf(&b, "    task %d worker=%s acked=%t size=%d uploaded=%d\n", t.Task, t.Worker, t.Acked, t.Size, t.Uploaded)
		}
		if err := h.Validate(); err != nil {
			fmt.Fprintf(&b, "  invalid: %v\n", err)
		}
	}
	return b.String()
}
