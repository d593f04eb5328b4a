package engine

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/flotilla-io/flotilla/internal/tracetest"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestScenarios runs the cross-machine trace scenarios in testdata/: the
// engine of a term with workers around it, whose messages the harness
// makes from the engine's effects. Commands:
//
//	engine term=1                          a new engine (a new term: the previous one is gone)
//	register w1 slots=2 [epoch=1]          a worker registers; with epoch, having run under that term (it reports its tasks)
//	submit clicks parallelism=2 [interval=10s] [concurrent=1] [pause=0s] [timeout=60s] [latest=0]
//	grant                                  workers answer every slot request and offer the slots
//	run                                    every task deployed and not yet running reports running
//	beat w1 w2                             heartbeats (with the workers' slot reports)
//	tick 5s                                time passes
//	ack [task=0,1] [id=N]                  tasks ack the latest barrier (id N); default every task
//	decline task=0 [id=N]
//	written [err]                          every metadata write in flight ends
//	committed [err]                        every commit in flight ends
//	savepoint clicks | stop clicks | rescale clicks parallelism=3 | cancel clicks
//	resubmitted                            the adapter resubmits what Resubmit asked for
//	info clicks                            the job's state and tasks
//	refusal clicks [request=ID]            what the adapter's early check of a savepoint, stop or rescale says
//
// submit, savepoint, stop, rescale and cancel take [request=ID] (the
// client's request id) and [as=NAME] (who asks: the reply then reads
// "reply to=NAME"; without it the user, unnamed). A reply that repeats an
// earlier answer reads "reply again".
//
// Each command prints the effects the engine returned. Rewrite with
// go test ./coordinator/engine -rewrite.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := &harness{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), workers: map[string]*fakeWorker{}}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.run(t, d)
		})
	})
}

type harness struct {
	now     time.Time
	eng     *Engine
	workers map[string]*fakeWorker
	// What the engine asked for and nobody answered yet.
	slotReqs  []subjects.SlotRequest
	deploys   []Deploy
	writes    []WriteMetadata
	commits   []Commit
	resubmits []Resubmit
	barriers  map[string][]subjects.Barrier // per job, as sent (workers remember them across terms)
	spec      subjects.JobSpec
	latestID  uint64 // the highest checkpoint id committed, for a resubmit
	// savepoints are the savepoints committed in the job's current run,
	// and from is the savepoint the run started from (a rescale's): a new
	// term resumes with both.
	savepoints []subjects.CheckpointRecord
	from       *subjects.CheckpointRecord
	persisted  subjects.JobRecord // the job's record as last persisted, which a new term resumes
}

// asker is the reply token of a user named with as=NAME.
type asker string

// fakeWorker is what a worker holds: its slots' allocations and tasks.
type fakeWorker struct {
	name, instance string
	slots          []subjects.SlotReport
}

func (h *harness) step(ev Event) string {
	effects := h.eng.Step(h.now, ev)
	var b strings.Builder
	for _, f := range effects {
		h.note(f)
		if line := describe(f); line != "" {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// note keeps what the workers and the adapter must answer.
func (h *harness) note(f Effect) {
	switch f := f.(type) {
	case SendSlotRequest:
		h.slotReqs = append(h.slotReqs, f.Req)
	case Deploy:
		h.deploys = append(h.deploys, f)
		w := h.workers[f.Req.Worker]
		for i := range w.slots {
			if w.slots[i].Allocation == f.Req.Allocation {
				rng := f.Req.Range
				w.slots[i].Task, w.slots[i].Attempt, w.slots[i].State, w.slots[i].Range = f.Req.Task, f.Req.Attempt, subjects.TaskDeploying, &rng
			}
		}
	case CancelTask:
		for _, w := range h.workers {
			for i := range w.slots {
				if s := &w.slots[i]; s.Job == f.Job && s.Attempt == f.Req.Attempt {
					if f.Req.Release {
						*s = subjects.SlotReport{Slot: i}
					} else {
						s.Task, s.Attempt, s.State, s.Range = 0, 0, 0, nil
					}
				}
			}
		}
	case Publish:
		if b, ok := f.Msg.(*subjects.Barrier); ok {
			h.barriers[b.Job] = append(h.barriers[b.Job], *b)
		}
	case WriteMetadata:
		h.writes = append(h.writes, f)
	case Commit:
		h.commits = append(h.commits, f)
	case Resubmit:
		h.resubmits = append(h.resubmits, f)
	case PersistJob:
		h.persisted = f.Record
	case Reply:
		if r, ok := f.Msg.(*subjects.HeartbeatResponse); ok {
			for _, a := range r.Release {
				h.release(a)
			}
		}
	}
}

func (h *harness) release(alloc string) {
	for _, w := range h.workers {
		for i := range w.slots {
			if w.slots[i].Allocation == alloc {
				w.slots[i] = subjects.SlotReport{Slot: i}
			}
		}
	}
}

// describe prints an effect as one trace line ("" for none).
func describe(f Effect) string {
	switch f := f.(type) {
	case SendSlotRequest:
		return fmt.Sprintf("slot-request %s %s job=%s", f.Req.Worker, f.Req.Allocation, f.Req.Job)
	case Deploy:
		r := f.Req
		return fmt.Sprintf("deploy %s task=%d attempt=%s worker=%s range=%s restore=%d", f.Job, r.Task, tracetest.Attempt(r.Attempt), r.Worker, r.Range, r.RestoredFrom)
	case CancelTask:
		return fmt.Sprintf("cancel %s task=%d attempt=%s worker=%s", f.Job, f.Req.Task, tracetest.Attempt(f.Req.Attempt), f.Req.Worker)
	case Publish:
		switch m := f.Msg.(type) {
		case *subjects.Barrier:
			return fmt.Sprintf("barrier %s id=%d epoch=%d %s", m.Job, m.Checkpoint, m.Epoch, m.Kind)
		case *subjects.Complete:
			return fmt.Sprintf("complete %s id=%d", m.Job, m.Checkpoint)
		case *subjects.Abort:
			return fmt.Sprintf("abort %s id=%d: %s", m.Job, m.Checkpoint, m.Reason)
		}
		return fmt.Sprintf("publish %s %T", f.Subject, f.Msg)
	case Notify:
		ev := f.Event
		s := "event " + ev.Kind.String()
		if ev.Job != "" {
			s += " " + ev.Job
		}
		if ev.Worker != "" {
			s += " worker=" + ev.Worker
		}
		if ev.Checkpoint != 0 {
			s += fmt.Sprintf(" id=%d", ev.Checkpoint)
		}
		if ev.Kind == subjects.EventJobStateChanged {
			s += " " + ev.State.String()
		}
		return s
	case PersistJob:
		return fmt.Sprintf("persist %s %s first-id=%d", f.Record.Spec.Name, f.Record.State, f.Record.FirstID)
	case WriteMetadata:
		return fmt.Sprintf("write-metadata %s id=%d tasks=%d", f.Job, f.Record.ID, len(f.Record.Tasks))
	case Commit:
		return fmt.Sprintf("commit %s id=%d %s", f.Job, f.Record.ID, f.Record.Kind)
	case DeleteCheckpoint:
		return fmt.Sprintf("delete %s id=%d", f.Record.Job, f.Record.ID)
	case RecordAttempt:
		a := f.Attempt
		return fmt.Sprintf("history %s id=%d %s", a.Job, a.ID, a.Outcome)
	case FailedOver:
		return fmt.Sprintf("failed-over %s tasks=%d", f.Job, f.Tasks)
	case MapInput:
		return "map-input " + f.Spec.Name
	case Reply:
		s := "reply "
		if f.Repeat {
			s = "reply again "
		}
		if a, ok := f.To.(asker); ok {
			s += "to=" + string(a) + " "
		}
		if line := replyLine(f.Msg); line != "" {
			return s + line
		}
		return ""
	case Resubmit:
		return fmt.Sprintf("resubmit %s parallelism=%d from=%s", f.Spec.Name, f.Spec.Parallelism, f.Result.Location)
	case SweepOrphans:
		return fmt.Sprintf("sweep jobs=%d", len(f.Jobs))
	}
	return fmt.Sprintf("%T", f)
}

func replyLine(m subjects.Message) string {
	switch m := m.(type) {
	case *subjects.RegisterResponse:
		if m.Error != nil {
			return "register: " + m.Error.Error()
		}
		if len(m.Adopted) > 0 {
			return fmt.Sprintf("register: adopted %v", m.Adopted)
		}
		return "register: ok"
	case *subjects.HeartbeatResponse:
		if m.Error != nil {
			return "heartbeat: " + m.Error.Error()
		}
		if len(m.Release) > 0 {
			return fmt.Sprintf("heartbeat: release %v", m.Release)
		}
		return "" // the usual answer
	case *subjects.OfferResponse:
		if m.Error != nil {
			return "offer: " + m.Error.Error()
		}
		return fmt.Sprintf("offer: accepted %v", m.Accepted)
	case *subjects.JobInfo:
		if m.Error != nil {
			return "job: " + m.Error.Error()
		}
		return fmt.Sprintf("job %s %s", m.Job, m.State)
	case *subjects.SavepointResult:
		if m.Error != nil {
			return "savepoint: " + m.Error.Error()
		}
		return fmt.Sprintf("savepoint %s id=%d", m.Location, m.Checkpoint)
	}
	return fmt.Sprintf("%T", m)
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	arg := func(k string) string { return tracetest.Arg(d, k) }
	num := func(k string) int { return tracetest.Int(d, k) }
	user := func() any {
		if v := arg("as"); v != "" {
			return asker(v)
		}
		return "user"
	}
	var out strings.Builder
	emit := func(s string) {
		for _, line := range strings.Split(s, "\n") {
			if line != "" && line != "reply " {
				out.WriteString(line + "\n")
			}
		}
	}
	switch d.Cmd {
	case "engine":
		h.eng = New(Config{Epoch: uint64(num("term")), StoreLocation: "s3://bucket",
			HeartbeatInterval: 2 * time.Second, HeartbeatTimeout: 10 * time.Second})
		h.slotReqs, h.deploys, h.writes, h.commits, h.resubmits = nil, nil, nil, nil, nil
		if h.barriers == nil {
			h.barriers = map[string][]subjects.Barrier{}
		}
		if h.spec.Name != "" {
			// The new term resumes the job from the store: its record and
			// the checkpoints committed so far.
			rec := subjects.JobRecord{Spec: h.spec, State: subjects.JobRunning, FirstID: 1, RequestID: h.persisted.RequestID}
			if h.persisted.Spec.Name != "" {
				rec.State, rec.FirstID = h.persisted.State, h.persisted.FirstID
			}
			cps := RunCheckpoints{Latest: h.latestID, Savepoints: h.savepoints, From: h.from}
			if h.latestID > 0 {
				cps.Restore = RestorePoints(h.record(h.latestID))
				cps.Retained = []subjects.CheckpointRecord{h.record(h.latestID)}
			}
			emit(h.step(Resume{Record: rec, Checkpoints: cps}))
		}
	case "register":
		name := tracetest.First(d)
		w := h.workers[name]
		if w == nil || !d.HasArg("epoch") {
			w = &fakeWorker{name: name, instance: fmt.Sprintf("%s-%d", name, len(h.workers)+1)}
			for i := range num("slots") {
				w.slots = append(w.slots, subjects.SlotReport{Slot: i})
			}
			h.workers[name] = w
		}
		req := subjects.RegisterRequest{Worker: name, Slots: len(w.slots), Operators: []string{"count"}}
		if d.HasArg("epoch") {
			req.Epoch = uint64(num("epoch"))
			for _, s := range w.slots {
				if s.Allocation != "" && s.Attempt != 0 {
					s.Checkpoint = h.barrier(s.Job, 0).Checkpoint
					req.Running = append(req.Running, s)
				}
			}
		}
		effects := h.eng.Step(h.now, Register{Req: req, Reply: name})
		for _, f := range effects {
			if r, ok := f.(Reply); ok {
				if resp := r.Msg.(*subjects.RegisterResponse); resp.Error == nil {
					w.instance = resp.Instance
				}
			}
			h.note(f)
			emit(describe(f))
		}
	case "submit":
		spec := subjects.JobSpec{Name: tracetest.First(d), Parallelism: num("parallelism"), MaxParallelism: 8,
			Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
			Operator: subjects.OperatorSpec{Type: "count"}}
		spec.Checkpoint.Interval = subjects.Duration(10 * time.Second)
		if v := arg("interval"); v != "" {
			spec.Checkpoint.Interval = subjects.Duration(duration(t, v))
		}
		if v := arg("timeout"); v != "" {
			spec.Checkpoint.Timeout = subjects.Duration(duration(t, v))
		}
		if v := arg("pause"); v != "" {
			spec.Checkpoint.MinPause = subjects.Duration(duration(t, v))
		}
		spec.Checkpoint.MaxConcurrent = num("concurrent")
		spec = spec.WithDefaults()
		h.spec = spec
		emit(h.step(Submit{Spec: spec, Checkpoints: RunCheckpoints{Latest: uint64(num("latest"))}, Reply: user(), RequestID: arg("request")}))
	case "grant":
		reqs := h.slotReqs
		h.slotReqs = nil
		offers := map[string][]subjects.OfferedSlot{}
		var order []string
		for _, r := range reqs {
			w := h.workers[r.Worker]
			slot := -1
			for i := range w.slots {
				if w.slots[i].Allocation == "" {
					slot = i
					break
				}
			}
			if slot < 0 {
				emit(h.step(SlotRequestDone{Req: r, Err: subjects.Errorf(subjects.CodeNoSlot, "no free slot")}))
				continue
			}
			w.slots[slot] = subjects.SlotReport{Slot: slot, Allocation: r.Allocation, Job: r.Job}
			emit(h.step(SlotRequestDone{Req: r, Slot: slot}))
			key := r.Worker + "/" + r.Job
			if _, ok := offers[key]; !ok {
				order = append(order, key)
			}
			offers[key] = append(offers[key], subjects.OfferedSlot{Slot: slot, Allocation: r.Allocation})
		}
		for _, key := range order {
			worker, job, _ := strings.Cut(key, "/")
			emit(h.step(Offer{Offer: subjects.SlotOffer{Worker: worker, Epoch: h.eng.Epoch(), Job: job, Slots: offers[key]}, Reply: worker}))
		}
	case "run":
		deploys := h.deploys
		h.deploys = nil
		for _, dp := range deploys {
			w := h.workers[dp.Req.Worker]
			for i := range w.slots {
				if w.slots[i].Attempt == dp.Req.Attempt {
					w.slots[i].State = subjects.TaskRunning
				}
			}
			emit(h.step(Status{Status: subjects.TaskStatus{Worker: dp.Req.Worker, TaskRef: dp.Req.TaskRef, State: subjects.TaskRunning}}))
		}
	case "beat":
		for _, a := range d.CmdArgs {
			w := h.workers[a.Key]
			var slots []subjects.SlotReport
			for _, s := range w.slots {
				if s.Allocation != "" {
					slots = append(slots, s)
				}
			}
			emit(h.step(Heartbeat{HB: subjects.Heartbeat{Worker: w.name, Instance: w.instance, Epoch: h.eng.Epoch(), Slots: slots}, Reply: w.name}))
		}
	case "tick":
		h.now = h.now.Add(tracetest.Duration(t, d))
		emit(h.step(Tick{}))
	case "ack", "decline":
		for _, s := range h.tasks(d) {
			b := h.barrier(s.Job, uint64(num("id")))
			id := b.Checkpoint
			ref := subjects.TaskRef{Job: s.Job, Task: s.Task, Attempt: s.Attempt}
			if d.Cmd == "decline" {
				emit(h.step(Decline{Decline: subjects.Decline{Worker: s.worker, TaskRef: ref, Checkpoint: id, Epoch: b.Epoch,
					Reason: subjects.Errorf(subjects.CodeStorageUnavailable, "upload failed")}}))
				continue
			}
			manifest := fmt.Sprintf("%s/t%d", b.Target, s.Task)
			emit(h.step(Ack{Ack: subjects.Ack{Worker: s.worker, TaskRef: ref, Checkpoint: id, Epoch: b.Epoch,
				Handle: statebackend.Handle{Version: 1, Format: b.Format, Manifest: manifest, Files: []string{manifest}, Size: 10, Uploaded: 10,
					Range: h.rangeOf(s)}}}))
		}
	case "written", "committed":
		var err error
		if d.HasArg("err") {
			err = subjects.Errorf(subjects.CodeTimeout, "no answer")
		}
		if d.Cmd == "written" {
			writes := h.writes
			h.writes = nil
			for _, w := range writes {
				emit(h.step(MetadataWritten{Job: w.Job, ID: w.Record.ID, Err: err}))
			}
			break
		}
		commits := h.commits
		h.commits = nil
		for _, c := range commits {
			if err == nil && c.Record.Kind == subjects.KindCheckpoint {
				h.latestID = max(h.latestID, c.Record.ID)
			}
			if err == nil && c.Record.Kind == subjects.KindSavepoint {
				h.savepoints = append(h.savepoints, c.Record)
			}
			emit(h.step(Committed{Job: c.Job, ID: c.Record.ID, Err: err}))
		}
	case "savepoint", "stop", "rescale":
		req := subjects.TriggerSavepoint{Job: tracetest.First(d), Stop: d.Cmd == "stop", RequestID: arg("request")}
		emit(h.step(TriggerSavepoint{Request: req, Reply: user(), Rescale: num("parallelism")}))
	case "resubmitted":
		rs := h.resubmits
		h.resubmits = nil
		for _, r := range rs {
			// What the adapter does: submit from the savepoint, then answer.
			sp := RestorePoints(subjects.CheckpointRecord{ID: r.Result.Checkpoint, Tasks: h.savepointTasks(r.Result.Checkpoint)})
			h.spec = r.Spec
			for _, s := range h.savepoints {
				if s.ID == r.Result.Checkpoint {
					h.from = &s
				}
			}
			h.savepoints = nil // the new run's own are above its first id
			emit(h.step(Submit{Spec: r.Spec, From: r.Result.Location, FromKey: r.Result.Location,
				Checkpoints: RunCheckpoints{Latest: r.Result.Checkpoint, Restore: sp}, Reply: "adapter"}))
			emit(h.step(Resubmitted{Request: r.Request, Result: r.Result}))
		}
	case "cancel":
		emit(h.step(CancelJob{Job: tracetest.First(d), Reply: user(), RequestID: arg("request")}))
	case "refusal":
		if err := h.eng.Refusal(tracetest.First(d), arg("request")); err != nil {
			fmt.Fprintf(&out, "refused: %v\n", err)
		} else {
			out.WriteString("not refused\n")
		}
	case "info":
		info, _ := h.eng.JobInfo(tracetest.First(d))
		fmt.Fprintf(&out, "%s %s parallelism=%d\n", info.Job, info.State, len(info.Tasks))
		for _, tk := range info.Tasks {
			if tk.Attempt == 0 {
				fmt.Fprintf(&out, "  task %d waiting for a slot\n", tk.Task)
				continue
			}
			fmt.Fprintf(&out, "  task %d %s attempt=%s worker=%s\n", tk.Task, tk.State, tracetest.Attempt(tk.Attempt), tk.Worker)
		}
	default:
		d.Fatalf(t, "unknown command %s", d.Cmd)
	}
	if out.Len() == 0 {
		return "ok\n"
	}
	return out.String()
}

// barrier returns the barrier of job with id, or the latest (id 0).
func (h *harness) barrier(job string, id uint64) subjects.Barrier {
	bs := h.barriers[job]
	for i := len(bs) - 1; i >= 0; i-- {
		if id == 0 || bs[i].Checkpoint == id {
			return bs[i]
		}
	}
	return subjects.Barrier{Job: job, Checkpoint: id}
}

// task is a running task as a worker holds it.
type task struct {
	subjects.SlotReport
	worker string
}

// tasks returns the running tasks the command names (task=0,1), or all,
// by task number.
func (h *harness) tasks(d *datadriven.TestData) []task {
	want := map[int]bool{}
	if v := tracetest.Arg(d, "task"); v != "" {
		for _, x := range strings.Split(v, ",") {
			var n int
			fmt.Sscan(x, &n)
			want[n] = true
		}
	}
	var out []task
	for _, w := range h.workers {
		for _, s := range w.slots {
			if s.Attempt != 0 && s.State == subjects.TaskRunning && (len(want) == 0 || want[s.Task]) {
				out = append(out, task{s, w.name})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Task < out[j].Task })
	return out
}

func (h *harness) rangeOf(s task) (r keygroup.Range) {
	info, _ := h.eng.JobInfo(s.Job)
	for _, tk := range info.Tasks {
		if tk.Task == s.Task {
			return tk.Range
		}
	}
	return r
}

// record is the checkpoint record id would have: one handle per task.
func (h *harness) record(id uint64) subjects.CheckpointRecord {
	return subjects.CheckpointRecord{Job: h.spec.Name, ID: id, Kind: subjects.KindCheckpoint, Tasks: h.savepointTasks(id)}
}

func (h *harness) savepointTasks(id uint64) []subjects.TaskCheckpoint {
	var out []subjects.TaskCheckpoint
	p := h.spec.Parallelism
	for i := range p {
		out = append(out, subjects.TaskCheckpoint{Task: i, Handle: statebackend.Handle{Version: 1, Manifest: fmt.Sprintf("chk-%d/t%d", id, i),
			Range: keygroup.ForTask(i, p, h.spec.MaxParallelism)}})
	}
	return out
}

func duration(t *testing.T, s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRememberedRequestsAreBounded: a term remembers the answers of the
// last MaxRemembered request ids; a request whose id was forgotten is
// carried out again.
func TestRememberedRequestsAreBounded(t *testing.T) {
	e := New(Config{Epoch: 1})
	cancel := func(id string) Reply {
		t.Helper()
		fs := e.Step(e.now, CancelJob{Job: "clicks", Reply: "user", RequestID: id})
		if len(fs) != 1 {
			t.Fatalf("cancel %s: effects %v", id, fs)
		}
		return fs[0].(Reply)
	}
	for i := range MaxRemembered + 1 {
		if r := cancel(fmt.Sprint("r", i)); r.Repeat {
			t.Fatalf("request %d, a new id, answered as a repeat", i)
		}
	}
	if len(e.answers) != MaxRemembered || len(e.answered) != MaxRemembered {
		t.Fatalf("remembers %d answers (%d in order), want %d", len(e.answers), len(e.answered), MaxRemembered)
	}
	if r := cancel(fmt.Sprint("r", MaxRemembered)); !r.Repeat {
		t.Errorf("the newest id was not remembered")
	}
	if r := cancel("r0"); r.Repeat {
		t.Errorf("the oldest id is still remembered past %d", MaxRemembered)
	}
	// A repeat is a copy: encoding one answer does not touch another.
	a, b := cancel("r1"), cancel("r1")
	if a.Msg == b.Msg {
		t.Errorf("two repeats share one message")
	}
}
