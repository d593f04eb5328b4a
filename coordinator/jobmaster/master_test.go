package jobmaster

import (
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
//	new parallelism=2 [max=8] [restore=4] [epoch=2]   a job master (restoring from checkpoint 4)
//	start
//	recover until=1s first=e1.1            resumed by a new leader: adopt until 1 s from now
//	report w1 slot=0 alloc=a1 task=0 attempt=e1.3 running [range=other]
//	                                        a worker reports an attempt on registering
//	offer w1 0:a1 1:a2                      a worker offers slots
//	status task=0 attempt=N running|failed|canceled|corrupt|data_loss|storage
//	deploy-failed task=0 attempt=N code=slot_mismatch|corrupt_state|operator_mismatch
//	heartbeat w1 task=0 attempt=N           w1's heartbeat reports the attempt running
//	lost w1 a1 a2                           the resource manager lost a worker
//	tick 1s
//	completed 7                             checkpoint 7 completed
//	short needed=3 free=2                   the resource manager cannot give every task a slot
//	met                                     ... and now can
//	cancel
//	info
//
// Rewrite with go test ./coordinator/jobmaster -rewrite.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		var m *Master
		var attempts uint64
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(k string) string { return tracetest.Arg(d, k) }
			num := func(k string) int { return tracetest.Int(d, k) }
			switch d.Cmd {
			case "new":
				spec := subjects.JobSpec{Name: "clicks", Parallelism: num("parallelism"), MaxParallelism: num("max"),
					Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
					Operator: subjects.OperatorSpec{Type: "count"}}
				spec = spec.WithDefaults()
				var restore []RestorePoint
				if r := num("restore"); r > 0 {
					var handles []statebackend.Handle
					for i := 0; i < 2; i++ {
						handles = append(handles, statebackend.Handle{Format: statebackend.FormatNative, Manifest: fmt.Sprintf("h%d", i),
							Range: keygroup.ForTask(i, 2, spec.MaxParallelism)})
					}
					restore = append(restore, RestorePoint{ID: uint64(r), Handles: handles})
				}
				epoch := uint64(1)
				if d.HasArg("epoch") {
					epoch = uint64(num("epoch"))
				}
				m = New(epoch, spec, restore, &attempts)
				return "ok\n"
			case "start":
				return format(m.Start(now))
			case "recover":
				dur, err := time.ParseDuration(arg("until"))
				if err != nil {
					t.Fatal(err)
				}
				until := now.Add(dur)
				return format(m.Recover(until, tracetest.ParseAttempt(arg("first")), now))
			case "report":
				r := subjects.SlotReport{Slot: num("slot"), Allocation: arg("alloc"), Job: "clicks", Task: num("task"),
					Attempt: tracetest.ParseAttempt(arg("attempt")), State: subjects.TaskDeploying}
				if d.HasArg("running") {
					r.State = subjects.TaskRunning
				}
				rng := subjects.TaskRange(ptr(m.Spec()), r.Task, m.Spec().Parallelism)
				if d.HasArg("range") {
					rng.End++
				}
				r.Range = &rng
				ok, acts := m.Adopt(d.CmdArgs[0].Key, r, now)
				return fmt.Sprintf("adopted %v recovering %v\n", ok, m.Recovering()) + format(acts)
			case "offer":
				var slots []subjects.OfferedSlot
				for _, a := range d.CmdArgs[1:] {
					var s int
					fmt.Sscan(a.Key[:strings.Index(a.Key, ":")], &s)
					slots = append(slots, subjects.OfferedSlot{Slot: s, Allocation: a.Key[strings.Index(a.Key, ":")+1:]})
				}
				acc, acts := m.Offer(d.CmdArgs[0].Key, slots, now)
				return fmt.Sprintf("accepted %v\n", acc) + format(acts)
			case "status":
				st := &subjects.TaskStatus{Worker: "w", TaskRef: subjects.TaskRef{Job: "clicks", Task: num("task"), Attempt: tracetest.ParseAttempt(arg("attempt"))}}
				for _, a := range d.CmdArgs {
					switch a.Key {
					case "running":
						st.State = subjects.TaskRunning
					case "failed":
						st.State, st.Error = subjects.TaskFailed, subjects.Errorf(subjects.CodeInternal, "boom")
					case "canceled":
						st.State = subjects.TaskCanceled
					case "corrupt":
						st.State, st.Error = subjects.TaskFailed, subjects.Errorf(subjects.CodeCorruptState, "bad checksum")
					case "data_loss":
						st.State, st.Error = subjects.TaskFailed, subjects.Errorf(subjects.CodeDataLoss, "events evicted")
					case "storage":
						st.State, st.Error = subjects.TaskFailed, subjects.Errorf(subjects.CodeStorage, "disk full")
					}
				}
				return format(m.TaskStatus(st, now))
			case "heartbeat":
				ok := m.HeartbeatRunning(d.CmdArgs[0].Key, subjects.TaskRef{Job: "clicks", Task: num("task"), Attempt: tracetest.ParseAttempt(arg("attempt"))}, now)
				return fmt.Sprintf("made running %v\n", ok)
			case "deploy-failed":
				code := subjects.CodeTimeout
				switch arg("code") {
				case "slot_mismatch":
					code = subjects.CodeSlotMismatch
				case "corrupt_state":
					code = subjects.CodeCorruptState
				case "operator_mismatch":
					code = subjects.CodeOperatorMismatch
				}
				return format(m.DeployFailed(subjects.TaskRef{Job: "clicks", Task: num("task"), Attempt: tracetest.ParseAttempt(arg("attempt"))}, subjects.Errorf(code, "x"), now))
			case "lost":
				var ids []string
				for _, a := range d.CmdArgs[1:] {
					ids = append(ids, a.Key)
				}
				return format(m.WorkerLost(d.CmdArgs[0].Key, ids, now))
			case "tick":
				now = now.Add(tracetest.Duration(t, d))
				return fmt.Sprintf("t=%s\n", now.Sub(start)) + format(m.Tick(now))
			case "completed":
				var id uint64
				fmt.Sscan(d.CmdArgs[0].Key, &id)
				m.CheckpointCompleted(RestorePoint{ID: id, Handles: []statebackend.Handle{{Format: statebackend.FormatNative, Manifest: "all", Range: keygroup.Range{Start: 0, End: m.Spec().MaxParallelism - 1}}}})
				return "ok\n"
			case "short":
				return format(m.SlotsShort(subjects.SlotShortage{Needed: num("needed"), Free: num("free")}, now))
			case "met":
				return format(m.SlotsMet(now))
			case "cancel":
				return format(m.Cancel("by user", now))
			case "info":
				info := m.Info()
				var b strings.Builder
				fmt.Fprintf(&b, "%s running=%v restarts=%d restore=%d\n", info.State, m.AllRunning(), info.Restarts, info.LatestCheckpoint)
				if info.Waiting != nil {
					fmt.Fprintf(&b, "%s\n", info.Waiting)
				}
				for _, t := range info.Tasks {
					fmt.Fprintf(&b, "task %d %s worker=%q attempt=%s %s\n", t.Task, t.Range, t.Worker, tracetest.Attempt(t.Attempt), t.State)
				}
				return b.String()
			}
			t.Fatalf("unknown command %q", d.Cmd)
			return ""
		})
	})
}

func ptr[T any](v T) *T { return &v }

// Attempts print as "e<epoch>.<n>".

func format(acts []Action) string {
	if len(acts) == 0 {
		return "(no actions)\n"
	}
	var b strings.Builder
	for _, a := range acts {
		switch a := a.(type) {
		case Demand:
			fmt.Fprintf(&b, "demand %d op=%s\n", a.Slots, a.Operator)
		case Deploy:
			var hs []string
			for _, h := range a.Req.Restore {
				hs = append(hs, h.Manifest)
			}
			fmt.Fprintf(&b, "deploy task=%d attempt=%s to %s/%s range=%s restore=%d%v\n", a.Req.Task, tracetest.Attempt(a.Req.Attempt),
				a.Req.Worker, a.Req.Allocation, a.Req.Range, a.Req.RestoredFrom, hs)
		case Cancel:
			fmt.Fprintf(&b, "cancel task=%d attempt=%s on %s release=%v\n", a.Req.Task, tracetest.Attempt(a.Req.Attempt), a.Req.Worker, a.Req.Release)
		case ReleaseSlot:
			fmt.Fprintf(&b, "release %s\n", a.Allocation)
		case AvoidWorker:
			fmt.Fprintf(&b, "avoid worker %s: %s\n", a.Worker, a.Err.Code)
		case StateChanged:
			fmt.Fprintf(&b, "job %s (%s)\n", a.State, a.Reason)
		case RestoreFallback:
			fmt.Fprintf(&b, "task %d cannot read restore point %d (%s); falls back\n", a.Task, a.Bad, a.Err.Code)
		case JobFailed:
			fmt.Fprintf(&b, "job failed: %s\n", a.Err.Message)
		case TaskFailed:
			fmt.Fprintf(&b, "task %d attempt=%s failed on %q: %s; restart #%d in %s\n", a.Task.Task, tracetest.Attempt(a.Task.Attempt), a.Worker, a.Err.Code, a.Restart, a.Delay)
		default:
			fmt.Fprintf(&b, "%T\n", a)
		}
	}
	return b.String()
}

// TestAttemptsNeverRepeatWithinAnEpoch: a job resubmitted under the same
// coordinator gets new attempt numbers, so nothing of the previous run (its
// consumers, its late acks and status reports) can pass for the new one.
func TestAttemptsNeverRepeatWithinAnEpoch(t *testing.T) {
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 2,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "count"}}.WithDefaults()
	var attempts uint64
	seen := map[uint64]bool{}
	now := time.Now()
	for run := 0; run < 3; run++ {
		m := New(7, spec, nil, &attempts)
		m.Start(now)
		_, acts := m.Offer("w1", []subjects.OfferedSlot{{Slot: 0, Allocation: "a1"}, {Slot: 1, Allocation: "a2"}}, now)
		for _, a := range acts {
			if d, ok := a.(Deploy); ok {
				if seen[d.Req.Attempt] || d.Req.Attempt>>20 != 7 {
					t.Fatalf("run %d: attempt %d repeated or not of epoch 7", run, d.Req.Attempt)
				}
				seen[d.Req.Attempt] = true
			}
		}
		m.Cancel("resubmit", now)
	}
	if len(seen) != 6 {
		t.Fatalf("%d attempts, want 6", len(seen))
	}
}
