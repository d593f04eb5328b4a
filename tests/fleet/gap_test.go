package fleet

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// Events the source streams evict (source.max_msgs, set by the spec) while
// a job has no worker are never skipped silently (issue 9, item 6): the
// restored task fails with data_loss naming the job, the key groups, the
// stream and the missing sequences, the failure is published as an event,
// and the job fails. With source.on_gap continue the job runs on, each gap
// is an input_gap event and is listed in job status.
func TestEvictedEventsAtRestore(t *testing.T) {
	for _, onGap := range []string{subjects.OnGapFail, subjects.OnGapContinue} {
		t.Run(onGap, func(t *testing.T) {
			f := newFleet(t)
			f.startCoordinator()
			stopW1, _ := f.startWorker("w1", 1)
			f.waitWorkers(1)
			events := f.watchEvents(func(ev subjects.Event) bool { return ev.Job == "clicks" })

			ctx := context.Background()
			spec := withCheckpoints(countSpec("clicks", 1), 100*time.Millisecond, 1)
			spec.Source.Partitions = 4
			spec.Source.MaxMsgs = 50
			spec.Source.OnGap = onGap
			info, err := f.api.Submit(ctx, spec, 0, "")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(info.Warnings, "\n"), "source.max_msgs 50") {
				t.Errorf("submit warnings %q do not mention max_msgs", info.Warnings)
			}
			truth := map[string]int64{}
			f.publish(100, 20, 3, truth) // about 25 per partition: within max_msgs
			f.checkState("clicks", truth, 30*time.Second)
			f.waitCheckpoint("clicks", 0)
			stopW1()
			f.publish(2000, 20, 4, truth) // about 500 per partition: most evicted
			f.startWorker("w2", 1)

			find := func(kind subjects.EventKind, code subjects.Code) []subjects.Event {
				var out []subjects.Event
				for _, ev := range events.list() {
					if ev.Kind == kind && ev.Error != nil && ev.Error.Code == code {
						out = append(out, ev)
					}
				}
				return out
			}
			if onGap == subjects.OnGapFail {
				testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
					info, err := f.api.Status(ctx, "clicks")
					if err == nil && info.State != subjects.JobFailed {
						err = fmt.Errorf("job is %s", info.State)
					}
					if err == nil && len(find(subjects.EventTaskFailed, subjects.CodeDataLoss)) == 0 {
						err = fmt.Errorf("no task_failed event with %s", subjects.CodeDataLoss)
					}
					return err
				})
				msg := find(subjects.EventTaskFailed, subjects.CodeDataLoss)[0].Error.Message
				t.Logf("task_failed: %s", msg)
				for _, want := range []string{"job clicks", "key groups [", "input stream CLICKS-p", "sequences ", "on_gap"} {
					if !strings.Contains(msg, want) {
						t.Errorf("data_loss %q does not say %q", msg, want)
					}
				}
				return
			}
			testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
				info, err := f.api.Status(ctx, "clicks")
				if err != nil {
					return err
				}
				if info.State != subjects.JobRunning || info.Input == nil || len(info.Input.Gaps) != 4 {
					return fmt.Errorf("job %s, input %+v", info.State, info.Input)
				}
				if n := len(find(subjects.EventInputGap, subjects.CodeDataLoss)); n != 4 {
					return fmt.Errorf("%d input_gap events, want one per partition", n)
				}
				return nil
			})
			info, _ = f.api.Status(ctx, "clicks")
			for _, g := range info.Input.Gaps {
				t.Logf("gap: %s", g.String())
				if g.First > g.Last || g.Last < 1 {
					t.Errorf("gap %+v", g)
				}
			}
		})
	}
}
