// Package engine is the coordinator of one term as one pure state machine:
// the resource manager, a job master and a checkpoint coordinator per job,
// and the routing between them, after etcd raft's RawNode. Its one input is
// Step(now, event); its one output is the effects Step returns, which the
// caller carries out (on other goroutines: nothing an effect does may block
// the loop) and whose outcomes it feeds back as events. The engine never
// touches NATS, JetStream, the object store or a clock; a test drives it
// with a fake clock and reads the effects (testdata/*).
//
// Ordering rules the engine keeps, which the caller must keep too by
// carrying effects out in the order returned:
//   - a checkpoint is announced complete (Publish of subjects.Complete) only
//     in answer to Committed without an error: the record is durable first;
//   - a run's PersistJob precedes its first Deploy;
//   - a savepoint that stops a job answers its requester only after the
//     job's tasks were canceled.
package engine

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/coordinator/resource"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// Config configures the engine of one term.
type Config struct {
	// Epoch is the term: the fencing token of every deployment, barrier,
	// commit and deletion.
	Epoch     uint64
	Namespace subjects.Namespace
	// StoreLocation is the object store's location, which savepoint
	// results and events give in full.
	StoreLocation string
	// HeartbeatInterval and HeartbeatTimeout are handed to workers.
	HeartbeatInterval, HeartbeatTimeout time.Duration
	// SweepInterval is how often Tick emits SweepOrphans with SweepGrace.
	SweepInterval, SweepGrace time.Duration
	// MapInput says the coordinator maps partitioned input at runtime: a
	// job that starts emits MapInput.
	MapInput bool
	Logger   *slog.Logger
}

// Engine is the state of one term. It is not safe for concurrent use: one
// goroutine steps it and asks its queries.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	rm   *resource.Manager
	jobs map[string]*job

	// ended are the jobs the term found ended in the metadata store (and
	// did not resume), with their states.
	ended map[string]subjects.JobState

	requests  uint64 // savepoint request ids
	attempts  uint64 // task deployments of this epoch, shared by every job master
	waiters   map[uint64]*waiter
	lastSweep time.Time
	// The user requests with a request id this term carried out: the
	// answers of those answered (their keys oldest first in answered, at
	// most MaxRemembered), and the savepoints in flight (their waiters).
	answers  map[requestKey]subjects.Message
	answered []requestKey
	inFlight map[requestKey]uint64

	now time.Time
	out []Effect
}

// waiter is a savepoint request waiting for its outcome: everyone who
// asked for it (a request sent again with the same id joins), and what
// to do once the job stopped.
type waiter struct {
	replies []any // empty: nobody to answer
	rescale int   // > 0: resubmit at this parallelism once stopped
	key     requestKey
}

// MaxRemembered is how many answered request ids an engine (a term)
// remembers, the oldest forgotten first: a request sent again with an id
// still remembered is answered as the first was and not carried out again.
// A client sends again within its timeout (seconds), so 1,000 ids cover
// far more than the requests of that window.
const MaxRemembered = 1000

// requestKey names a user request by its operation and its client-chosen
// request id (subjects.SubmitJob.RequestID and the like). Savepoint, stop
// and rescale share the operation "savepoint".
type requestKey struct{ op, id string }

// Operations of requestKey.
const (
	opSubmit    = "submit"
	opCancel    = "cancel"
	opSavepoint = "savepoint"
)

type job struct {
	jm  *jobmaster.Master
	cc  *checkpoint.Coordinator
	rec subjects.JobRecord
	// from is the savepoint or checkpoint the run was submitted with: its
	// files stay referenced for the run's lifetime.
	from *subjects.CheckpointRecord
	// figures are the current attempts' figures, from heartbeats;
	// lastCompleted is when the newest checkpoint or savepoint completed.
	figures       map[int]taskFigures
	lastCompleted time.Time
	// gaps are the input gaps tasks continued past (source.on_gap
	// continue) in this term.
	gaps []subjects.InputGap
}

// taskFigures are a task attempt's figures from its worker's last
// heartbeat.
type taskFigures struct {
	worker  string
	attempt uint64
	stats   subjects.TaskStats
}

// New returns the engine of term cfg.Epoch, with no job: Resume adds the
// jobs the term found.
func New(cfg Config) *Engine {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// lastSweep is left zero: a term sweeps at its first tick (what is
	// swept is older than the grace, whoever wrote it).
	return &Engine{cfg: cfg, log: log, jobs: map[string]*job{}, waiters: map[uint64]*waiter{}, ended: map[string]subjects.JobState{},
		answers: map[requestKey]subjects.Message{}, inFlight: map[requestKey]uint64{},
		rm: resource.New(resource.Config{Epoch: cfg.Epoch, HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTimeout: cfg.HeartbeatTimeout})}
}

// Epoch returns the term.
func (e *Engine) Epoch() uint64 { return e.cfg.Epoch }

// Step feeds ev to the engine at now and returns the effects to carry out,
// in order.
func (e *Engine) Step(now time.Time, ev Event) []Effect {
	e.now, e.out = now, nil
	switch ev := ev.(type) {
	case Tick:
		e.tick(now)
	case Resume:
		if ev.Record.State.Terminal() {
			// Not resumed; known, so that a stop or cancel sent again
			// (its first answer lost with the previous leader) hears that
			// the job ended rather than that it never existed.
			e.ended[ev.Record.Spec.Name] = ev.Record.State
			break
		}
		e.startJob(ev.Record, ev.Checkpoints, now.Add(e.rm.HeartbeatTimeout()), now)
		e.rememberSavepoints(ev.Record.Spec.Name, ev.Checkpoints)
	case Submit:
		e.submit(ev, now)
	case CancelJob:
		key := requestKey{opCancel, ev.RequestID}
		if e.repeat(key, ev.Reply) {
			break
		}
		j := e.jobs[ev.Job]
		if j == nil {
			info, _ := e.JobInfo(ev.Job) // an ended job's state, or unknown_job
			e.answer(key, ev.Reply, &info)
			break
		}
		e.doCC(ev.Job, j.cc.Cancel("job canceled", now), now)
		e.doJM(ev.Job, j.jm.Cancel("canceled by user", now), now)
		info := j.jm.Info()
		e.answer(key, ev.Reply, &info)
	case TriggerSavepoint:
		e.triggerSavepoint(ev, now)
	case RefuseSavepoint:
		e.reply(ev.Reply, e.savepointError(ev.Job, ev.Err))
	case Resubmitted:
		e.resubmitted(ev)
	case Answered:
		e.remember(requestKey{ev.Op, ev.RequestID}, ev.Msg)
	case Register:
		e.register(&ev.Req, ev.Reply, now)
	case Heartbeat:
		e.heartbeat(&ev.HB, ev.Reply, now)
	case Offer:
		e.offer(&ev.Offer, ev.Reply, now)
	case Status:
		st := &ev.Status
		if j := e.jobs[st.Job]; j != nil {
			if st.Gap != nil {
				e.inputGap(j, st)
			}
			e.doJM(st.Job, j.jm.TaskStatus(st, now), now)
		}
	case Ack:
		if j := e.jobs[ev.Ack.Job]; j != nil {
			acts, ignored := j.cc.Ack(&ev.Ack, now)
			if ignored != "" {
				e.log.Debug("ack ignored", "job", ev.Ack.Job, "reason", ignored)
			}
			e.doCC(ev.Ack.Job, acts, now)
		}
	case Decline:
		if j := e.jobs[ev.Decline.Job]; j != nil {
			e.doCC(ev.Decline.Job, j.cc.Decline(&ev.Decline, now), now)
		}
	case SlotRequestDone:
		if ev.Err != nil {
			e.log.Warn("slot request failed", "worker", ev.Req.Worker, "job", ev.Req.Job, "err", ev.Err)
			e.doRM(e.rm.SlotRequestFailed(ev.Req.Allocation, now), now)
			break
		}
		e.rm.SlotRequestAnswered(ev.Req.Allocation, ev.Slot)
	case DeployFailed:
		if j := e.jobs[ev.Job]; j != nil {
			e.doJM(ev.Job, j.jm.DeployFailed(ev.Task, subjects.AsError(ev.Err), now), now)
		}
	case MetadataWritten:
		if j := e.jobs[ev.Job]; j != nil {
			e.doCC(ev.Job, j.cc.MetadataWritten(ev.ID, ev.Err, now), now)
		}
	case Committed:
		if j := e.jobs[ev.Job]; j != nil {
			e.doCC(ev.Job, j.cc.Committed(ev.ID, ev.Err, now), now)
		}
	case Sweep:
		e.sweep(now, ev.Grace, ev.Done)
	default:
		panic(fmt.Sprintf("engine: unknown event %T", ev))
	}
	out := e.out
	e.out = nil
	return out
}

func (e *Engine) emit(f Effect) { e.out = append(e.out, f) }

func (e *Engine) reply(to any, m subjects.Message) {
	if to != nil {
		e.emit(Reply{To: to, Msg: m})
	}
}

// answer replies m to the request key and remembers it as the request's
// answer.
func (e *Engine) answer(key requestKey, to any, m subjects.Message) {
	e.reply(to, m)
	e.remember(key, m)
}

// remember keeps a copy of m as the answer of request key (none without a
// request id), forgetting the oldest beyond MaxRemembered.
func (e *Engine) remember(key requestKey, m subjects.Message) {
	if key.id == "" {
		return
	}
	if _, ok := e.answers[key]; !ok {
		e.answered = append(e.answered, key)
	}
	e.answers[key] = clone(m)
	if len(e.answered) > MaxRemembered {
		delete(e.answers, e.answered[0])
		e.answered = e.answered[1:]
	}
}

// repeat handles a request whose id this term has seen: one answered is
// answered again with the remembered answer (Reply.Repeat), and reply
// joins a savepoint still in flight. It returns false for a request to
// carry out.
func (e *Engine) repeat(key requestKey, reply any) bool {
	if key.id == "" {
		return false
	}
	if m, ok := e.answers[key]; ok {
		e.log.Info("request sent again: answered as before", "op", key.op, "request", key.id)
		if reply != nil {
			e.emit(Reply{To: reply, Msg: clone(m), Repeat: true})
		}
		return true
	}
	if id, ok := e.inFlight[key]; ok {
		e.log.Info("request sent again: it waits for the savepoint in flight", "op", key.op, "request", key.id)
		if reply != nil {
			w := e.waiters[id]
			w.replies = append(w.replies, reply)
		}
		return true
	}
	return false
}

// clone returns a shallow copy of m, so that every reply is its own
// message (encoding a message stamps its header).
func clone(m subjects.Message) subjects.Message {
	v := reflect.New(reflect.TypeOf(m).Elem())
	v.Elem().Set(reflect.ValueOf(m).Elem())
	return v.Interface().(subjects.Message)
}

// notify emits ev as an event about about, stamped now.
func (e *Engine) notify(ev subjects.Event, about string) {
	ev.Time = e.now.UTC()
	e.emit(Notify{Event: ev, About: about})
}

func (e *Engine) publish(subject string, m subjects.Message) {
	e.emit(Publish{Subject: subject, Msg: m})
}

func (e *Engine) tick(now time.Time) {
	e.doRM(e.rm.Tick(now), now)
	for _, name := range sortedKeys(e.jobs) {
		j := e.jobs[name]
		e.doJM(name, j.jm.Tick(now), now)
		if !j.jm.State().Terminal() {
			e.doCC(name, j.cc.Tick(now, checkpointTasks(j.jm)), now)
		}
	}
	if e.cfg.SweepInterval > 0 && now.Sub(e.lastSweep) >= e.cfg.SweepInterval {
		e.lastSweep = now
		e.sweep(now, e.cfg.SweepGrace, nil)
	}
}

// startJob starts run r of a job. A job resumed by a new term (recoverUntil
// set) first adopts the tasks workers still run, until recoverUntil.
func (e *Engine) startJob(r subjects.JobRecord, cps RunCheckpoints, recoverUntil, now time.Time) {
	r.State = subjects.JobCreated
	if r.Spec.Partitions() > 0 && e.cfg.MapInput {
		// A server the coordinator maps at runtime forgets the mapping when
		// it restarts: add it again for every job that runs.
		e.emit(MapInput{Spec: r.Spec})
	}
	jm := jobmaster.New(e.cfg.Epoch, r.Spec, cps.Restore, &e.attempts)
	cc := checkpoint.New(checkpoint.Config{Job: r.Spec.Name, Epoch: e.cfg.Epoch, Spec: r.Spec.Checkpoint,
		Parallelism: r.Spec.Parallelism, MaxParallelism: r.Spec.MaxParallelism,
		Partitions: r.Spec.Partitions(), Input: subjects.InputID(&r.Spec)}, cps.Retained, cps.Latest)
	j := &job{jm: jm, cc: cc, rec: r, from: cps.From}
	for _, cp := range cps.Retained {
		if cp.Completed.After(j.lastCompleted) {
			j.lastCompleted = cp.Completed
		}
	}
	e.jobs[r.Spec.Name] = j
	delete(e.ended, r.Spec.Name)
	if recoverUntil.IsZero() {
		e.doJM(r.Spec.Name, jm.Start(now), now)
	} else {
		e.log.Info("resuming job", "job", r.Spec.Name, "restore_points", len(cps.Restore), "latest", cps.Latest)
		e.doJM(r.Spec.Name, jm.Recover(recoverUntil, r.FirstAttempt, now), now)
	}
}

// submit starts a new run of a job, unless one runs. A submission sent
// again (its request id remembered, or recorded in the job's run by this
// term or an earlier one) is answered with the run it started.
func (e *Engine) submit(s Submit, now time.Time) {
	name := s.Spec.Name
	key := requestKey{opSubmit, s.RequestID}
	if e.repeat(key, s.Reply) {
		return
	}
	if j := e.jobs[name]; j != nil && s.RequestID != "" && j.rec.RequestID == s.RequestID {
		e.log.Info("submission sent again: answered with the run it started", "job", name, "request", s.RequestID)
		info := e.jobInfo(j)
		if s.Reply != nil {
			e.emit(Reply{To: s.Reply, Msg: &info, Repeat: true})
		}
		e.remember(key, &info)
		return
	}
	if j := e.jobs[name]; j != nil && !j.jm.State().Terminal() {
		e.answer(key, s.Reply, &subjects.JobInfo{Error: subjects.Errorf(subjects.CodeJobExists, "job %q is %s; cancel or stop it first", name, j.jm.State())})
		return
	}
	// The run's checkpoint ids continue after every record of the job name,
	// committed or not (never reuse the id of a commit in flight), and after
	// the savepoint's, which may be another job's: restore points are tried
	// newest id first.
	cps := s.Checkpoints
	if cps.From != nil {
		cps.Latest = max(cps.Latest, cps.From.ID)
	}
	rec := subjects.JobRecord{Spec: s.Spec, State: subjects.JobCreated, Submitted: now.UTC(), FromSavepoint: s.FromKey, FirstID: cps.Latest + 1,
		AllowOperatorChange: s.AllowOperatorChange && s.FromKey != "", FirstAttempt: jobmaster.NextAttempt(e.cfg.Epoch, e.attempts),
		RequestID: s.RequestID}
	e.emit(PersistJob{Record: rec})
	e.notify(subjects.Event{Kind: subjects.EventJobSubmitted, Job: name, Location: s.From}, name)
	e.startJob(rec, cps, time.Time{}, now)
	info := e.jobInfo(e.jobs[name])
	e.answer(key, s.Reply, &info)
}

// checkpointTasks returns every task's current attempt and the worker it
// was deployed to when all tasks run, nil otherwise.
func checkpointTasks(jm *jobmaster.Master) []checkpoint.Task {
	attempts := jm.RunningAttempts()
	if attempts == nil {
		return nil
	}
	info := jm.Info()
	out := make([]checkpoint.Task, len(attempts))
	for i, a := range attempts {
		out[i] = checkpoint.Task{Task: i, Attempt: a, Worker: info.Tasks[i].Worker}
	}
	return out
}

func (e *Engine) register(req *subjects.RegisterRequest, reply any, now time.Time) {
	adopted, jmActs := e.adopt(req, now)
	resp, acts := e.rm.Register(req, adopted, now)
	e.reply(reply, &resp)
	if len(resp.Adopted) > 0 {
		e.log.Info("worker registered; its running tasks adopted", "worker", req.Worker, "adopted", resp.Adopted)
	}
	e.doRM(acts, now)
	for _, name := range sortedKeys(jmActs) {
		e.doJM(name, jmActs[name], now)
	}
}

// adopt offers the attempts a worker of an earlier term reports running to
// their jobs' masters, which adopt them while they recover, and returns the
// allocations adopted with the job masters' actions. A job whose attempt is
// adopted triggers its checkpoints above every id the attempt took.
func (e *Engine) adopt(req *subjects.RegisterRequest, now time.Time) ([]resource.Allocation, map[string][]jobmaster.Action) {
	if req.Epoch >= e.cfg.Epoch {
		return nil, nil
	}
	var out []resource.Allocation
	acts := map[string][]jobmaster.Action{}
	for _, s := range req.Running {
		j := e.jobs[s.Job]
		if j == nil {
			continue
		}
		ok, a := j.jm.Adopt(req.Worker, s, now)
		acts[s.Job] = append(acts[s.Job], a...)
		if ok {
			j.cc.Above(s.Checkpoint)
			out = append(out, resource.Allocation{ID: s.Allocation, Job: s.Job, Worker: req.Worker, Slot: s.Slot})
		}
	}
	return out, acts
}

func (e *Engine) heartbeat(hb *subjects.Heartbeat, reply any, now time.Time) {
	resp, acts := e.rm.Heartbeat(hb, now)
	e.reply(reply, &resp)
	if resp.Error == nil {
		e.recordFigures(hb)
	}
	e.doRM(acts, now)
	if resp.Error == nil {
		for _, s := range hb.Slots {
			if j := e.jobs[s.Job]; j != nil && s.Attempt != 0 {
				ref := subjects.TaskRef{Job: s.Job, Task: s.Task, Attempt: s.Attempt}
				j.jm.TaskSkipped(ref, s.Skipped)
				// A status report is one message, never sent again: a
				// deploying attempt the heartbeat reports running is
				// running (jobmaster.Master.HeartbeatRunning).
				if s.State == subjects.TaskRunning && j.jm.HeartbeatRunning(hb.Worker, ref, now) {
					e.log.Info("task running as its worker's heartbeat reports; its own status report has not arrived",
						"job", s.Job, "task", s.Task, "attempt", s.Attempt, "worker", hb.Worker)
				}
			}
		}
	}
}

// recordFigures keeps the task figures of an accepted heartbeat.
func (e *Engine) recordFigures(hb *subjects.Heartbeat) {
	for _, s := range hb.Slots {
		if s.Stats == nil || s.Attempt == 0 {
			continue
		}
		if j := e.jobs[s.Job]; j != nil {
			if j.figures == nil {
				j.figures = map[int]taskFigures{}
			}
			j.figures[s.Task] = taskFigures{worker: hb.Worker, attempt: s.Attempt, stats: *s.Stats}
		}
	}
}

// offer admits into a job's pool only the allocations the resource manager
// requested for that job on that worker, and releases those the job does
// not take.
func (e *Engine) offer(o *subjects.SlotOffer, reply any, now time.Time) {
	if o.Epoch != e.cfg.Epoch {
		e.reply(reply, &subjects.OfferResponse{Error: subjects.Errorf(subjects.CodeStaleEpoch, "offer for epoch %d, coordinator epoch is %d", o.Epoch, e.cfg.Epoch)})
		return
	}
	var valid []subjects.OfferedSlot
	for _, s := range o.Slots {
		if a, ok := e.rm.Allocation(s.Allocation); ok && a.Job == o.Job && a.Worker == o.Worker {
			e.rm.SlotRequestAnswered(s.Allocation, s.Slot)
			valid = append(valid, s)
		}
	}
	var accepted []string
	if j := e.jobs[o.Job]; j != nil {
		var acts []jobmaster.Action
		accepted, acts = j.jm.Offer(o.Worker, valid, now)
		e.doJM(o.Job, acts, now)
	}
	e.reply(reply, &subjects.OfferResponse{Accepted: accepted})
	taken := map[string]bool{}
	for _, a := range accepted {
		taken[a] = true
	}
	for _, s := range valid {
		if !taken[s.Allocation] {
			e.doRM(e.rm.Release(s.Allocation, now), now)
		}
	}
}

// inputGap records input events a task continued past (source.on_gap
// continue): in the log, as an event, and in job status.
func (e *Engine) inputGap(j *job, st *subjects.TaskStatus) {
	const keep = 100
	j.gaps = append(j.gaps, *st.Gap)
	if len(j.gaps) > keep {
		j.gaps = j.gaps[len(j.gaps)-keep:]
	}
	msg := fmt.Sprintf("task %d continued past lost input events: %s", st.Task, st.Gap)
	e.log.Error("input events lost", "job", st.Job, "task", st.Task, "gap", st.Gap.String())
	e.notify(subjects.Event{Kind: subjects.EventInputGap, Job: st.Job, Worker: st.Worker, Message: msg,
		Error: subjects.Errorf(subjects.CodeDataLoss, "%s", msg)}, st.Job)
}

// doRM routes resource-manager actions.
func (e *Engine) doRM(acts []resource.Action, now time.Time) {
	for _, a := range acts {
		switch a := a.(type) {
		case resource.SendSlotRequest:
			e.emit(SendSlotRequest{Req: a.Req})
		case resource.SlotsShort:
			if j := e.jobs[a.Job]; j != nil {
				e.doJM(a.Job, j.jm.SlotsShort(a.Shortage, now), now)
			}
		case resource.SlotsMet:
			if j := e.jobs[a.Job]; j != nil {
				e.doJM(a.Job, j.jm.SlotsMet(now), now)
			}
		case resource.WorkerJoined:
			e.log.Info("worker joined", "worker", a.Info.Worker, "instance", a.Info.Instance, "slots", a.Info.Slots)
			e.notify(subjects.Event{Kind: subjects.EventWorkerJoined, Worker: a.Info.Worker, Message: fmt.Sprintf("%d slots", a.Info.Slots)}, a.Info.Worker)
		case resource.WorkerLost:
			e.log.Warn("worker lost", "worker", a.Worker, "instance", a.Instance, "reason", a.Reason)
			e.notify(subjects.Event{Kind: subjects.EventWorkerLost, Worker: a.Worker, Message: a.Reason}, a.Worker)
			byJob := map[string][]string{}
			for _, al := range a.Allocations {
				byJob[al.Job] = append(byJob[al.Job], al.ID)
			}
			for _, name := range sortedKeys(byJob) {
				if j := e.jobs[name]; j != nil {
					e.emit(FailedOver{Job: name, Tasks: len(byJob[name])})
					e.doJM(name, j.jm.WorkerLost(a.Worker, byJob[name], now), now)
				}
			}
		default:
			panic(fmt.Sprintf("engine: unknown resource action %T", a))
		}
	}
}

// doJM routes job-master actions of job name.
func (e *Engine) doJM(name string, acts []jobmaster.Action, now time.Time) {
	for _, a := range acts {
		switch a := a.(type) {
		case jobmaster.Demand:
			e.doRM(e.rm.SetDemand(name, a.Slots, a.Operator, now), now)
		case jobmaster.Deploy:
			req := a.Req
			e.log.Info("deploying task", "job", name, "task", req.Task, "attempt", req.Attempt, "worker", req.Worker, "range", req.Range.String(), "restore", req.RestoredFrom)
			e.emit(Deploy{Job: name, Req: req})
		case jobmaster.Cancel:
			e.emit(CancelTask{Job: name, Req: a.Req})
		case jobmaster.ReleaseSlot:
			e.doRM(e.rm.Release(a.Allocation, now), now)
		case jobmaster.AvoidWorker:
			e.log.Warn("worker's local storage is full; placing tasks elsewhere", "job", name, "worker", a.Worker, "err", a.Err)
			e.rm.StorageFailed(a.Worker, now)
		case jobmaster.StateChanged:
			e.log.Info("job state", "job", name, "state", a.State.String(), "reason", a.Reason)
			j := e.jobs[name]
			j.rec.State = a.State
			e.emit(PersistJob{Record: j.rec})
			e.notify(subjects.Event{Kind: subjects.EventJobStateChanged, Job: name, State: a.State, Message: a.Reason}, name)
		case jobmaster.RestoreFallback:
			e.log.Warn("restore point unreadable, falling back to the previous one", "job", name, "task", a.Task, "checkpoint", a.Bad, "err", a.Err)
			e.notify(subjects.Event{Kind: subjects.EventTaskFailed, Job: name, Checkpoint: a.Bad, Error: a.Err,
				Message: fmt.Sprintf("task %d cannot restore checkpoint %d; falling back to the previous one", a.Task, a.Bad)}, name)
		case jobmaster.JobFailed:
			e.log.Error("job failed", "job", name, "err", a.Err)
			if j := e.jobs[name]; j != nil {
				e.doCC(name, j.cc.Cancel("job failed", now), now)
			}
		case jobmaster.TaskFailed:
			if j := e.jobs[name]; j != nil {
				e.doCC(name, j.cc.TaskFailed(a.Task.Task, now), now)
			}
			e.log.Warn("task failed", "job", name, "task", a.Task.Task, "attempt", a.Task.Attempt, "worker", a.Worker, "err", a.Err, "restart_in", a.Delay)
			msg := fmt.Sprintf("task %d restarts in %s", a.Task.Task, a.Delay)
			if a.Err.Code == subjects.CodeDataLoss {
				msg = fmt.Sprintf("task %d lost input events; the job fails (source.on_gap continue goes on past them)", a.Task.Task)
			}
			e.notify(subjects.Event{Kind: subjects.EventTaskFailed, Job: name, Worker: a.Worker, Error: a.Err, Message: msg}, name)
		default:
			panic(fmt.Sprintf("engine: unknown job master action %T", a))
		}
	}
}

// doCC routes checkpoint-coordinator actions of job name.
func (e *Engine) doCC(name string, acts []checkpoint.Action, now time.Time) {
	j := e.jobs[name]
	for _, a := range acts {
		switch a := a.(type) {
		case checkpoint.SendBarrier:
			b := a.Barrier
			e.log.Debug("barrier", "job", name, "checkpoint", b.Checkpoint, "kind", b.Kind.String())
			e.publish(e.cfg.Namespace.Barrier(name), &b)
		case checkpoint.WriteMetadata:
			e.emit(WriteMetadata{Job: name, Record: a.Record})
		case checkpoint.Commit:
			e.emit(Commit{Job: name, Record: a.Record, Deadline: a.Deadline})
		case checkpoint.NotifyComplete:
			// Only in answer to a commit: the record is durable.
			r := a.Record
			done := a.Complete
			e.publish(e.cfg.Namespace.Complete(name), &done)
			j.jm.CheckpointCompleted(RestorePoints(r)[0])
			kind := subjects.EventCheckpointCompleted
			if r.Kind == subjects.KindSavepoint {
				kind = subjects.EventSavepointCompleted
			}
			e.log.Info(r.Kind.String()+" completed", "job", name, "id", r.ID, "location", r.Location,
				"size", r.Size, "uploaded", r.Uploaded, "duration", r.Completed.Sub(r.Triggered))
			e.notify(subjects.Event{Kind: kind, Job: name, Checkpoint: r.ID, Location: e.locationOf(r.Location),
				Message: fmt.Sprintf("%d bytes (%d uploaded) in %s", r.Size, r.Uploaded, r.Completed.Sub(r.Triggered).Round(time.Millisecond))}, name)
			j.lastCompleted = r.Completed
			e.emit(RecordAttempt{Attempt: a.Attempt})
		case checkpoint.NotifyAbort:
			ab := a.Abort
			e.publish(e.cfg.Namespace.Abort(name), &ab)
			kind := subjects.EventCheckpointFailed
			if a.Kind == subjects.KindSavepoint {
				kind = subjects.EventSavepointFailed
			}
			e.log.Warn(a.Kind.String()+" aborted", "job", name, "id", ab.Checkpoint, "reason", ab.Reason)
			e.notify(subjects.Event{Kind: kind, Job: name, Checkpoint: ab.Checkpoint, Error: ab.Reason}, name)
			e.emit(RecordAttempt{Attempt: a.Attempt})
		case checkpoint.SavepointDone:
			e.savepointDone(name, a, now)
		case checkpoint.DeleteCheckpoint:
			j.jm.CheckpointDeleted(a.Record.ID)
			e.emit(DeleteCheckpoint{Record: a.Record, Files: a.Files})
		case checkpoint.FailJob:
			e.log.Error("failing job over", "job", name, "reason", a.Reason)
			e.doJM(name, j.jm.FailAll(a.Reason, now), now)
		default:
			panic(fmt.Sprintf("engine: unknown checkpoint action %T", a))
		}
	}
}

// triggerSavepoint queues a savepoint; its waiter hears the outcome. A
// request sent again (its id seen) joins the savepoint in flight or is
// answered as before.
func (e *Engine) triggerSavepoint(t TriggerSavepoint, now time.Time) {
	name := t.Request.Job
	key := requestKey{opSavepoint, t.Request.RequestID}
	if e.repeat(key, t.Reply) {
		return
	}
	j := e.jobs[name]
	switch {
	case j == nil:
		e.answer(key, t.Reply, e.savepointError(name, e.absent(name)))
		return
	case j.jm.State().Terminal():
		e.answer(key, t.Reply, e.savepointError(name, subjects.Errorf(subjects.CodeJobNotRunning, "job %q is %s", name, j.jm.State())))
		return
	}
	e.requests++
	w := &waiter{rescale: t.Rescale, key: key}
	if t.Reply != nil {
		w.replies = append(w.replies, t.Reply)
	}
	e.waiters[e.requests] = w
	if key.id != "" {
		e.inFlight[key] = e.requests
	}
	r := t.Request
	j.cc.TriggerSavepoint(checkpoint.SavepointRequest{ID: e.requests, Format: r.Format, Dir: t.Dir, Stop: r.Stop || t.Rescale > 0, RequestID: key.id}, now)
	e.log.Info("savepoint requested", "job", name, "format", r.Format.String(), "stop", r.Stop, "rescale", t.Rescale)
}

// savepointError returns the answer to a savepoint request refused before
// it was queued, and says so in the log and as an event.
func (e *Engine) savepointError(name string, err error) *subjects.SavepointResult {
	e.log.Warn("savepoint refused", "job", name, "err", err)
	about := name
	if subjects.ValidateName("job", name) != nil {
		about = "" // not a subject token
	}
	e.notify(subjects.Event{Kind: subjects.EventCheckpointFailed, Job: name, Error: subjects.AsError(err),
		Message: "savepoint request refused"}, about)
	return &subjects.SavepointResult{Job: name, Error: subjects.AsError(err)}
}

func (e *Engine) savepointDone(name string, a checkpoint.SavepointDone, now time.Time) {
	w, ok := e.waiters[a.Request]
	res := a.Result
	if res.Error == nil {
		res.Location = e.locationOf(res.Location)
	} else {
		// Whoever triggered it may not be listening (a bare publish): the
		// log and the event are how they learn why no savepoint came.
		e.log.Warn("savepoint request failed", "job", name, "request", a.Request, "err", res.Error)
		e.notify(subjects.Event{Kind: subjects.EventCheckpointFailed, Job: name, Error: res.Error,
			Message: "savepoint request failed: " + res.Error.Message}, name)
	}
	if a.Stop && res.Error == nil {
		// stop-with-savepoint: the job ends only now that the savepoint is
		// committed.
		j := e.jobs[name]
		e.doCC(name, j.cc.Cancel("job stopped with a savepoint", now), now)
		e.doJM(name, j.jm.Finish("stopped with savepoint "+res.Location, now), now)
		if ok && w.rescale > 0 {
			// The waiter stays (a rescale sent again joins it) until
			// Resubmitted.
			spec := j.jm.Spec()
			spec.Parallelism = w.rescale
			e.emit(Resubmit{Spec: spec, Result: res, Request: a.Request, To: slices.Clone(w.replies)})
			return
		}
	}
	if ok {
		e.finish(a.Request, &res)
	}
}

// rememberSavepoints remembers, as the answers of the requests they were
// taken for, the savepoints of a resumed run and the one it was started
// from: a savepoint, stop or rescale request whose answer was lost with
// the previous leader, sent again, is answered as that leader would have,
// not carried out twice. (A rescale's run starts from the savepoint its
// request took.)
func (e *Engine) rememberSavepoints(job string, cps RunCheckpoints) {
	rs := cps.Savepoints
	if cps.From != nil {
		rs = append(slices.Clip(rs), *cps.From)
	}
	for _, r := range rs {
		if r.RequestID == "" || r.Kind != subjects.KindSavepoint {
			continue
		}
		e.remember(requestKey{opSavepoint, r.RequestID}, &subjects.SavepointResult{Job: job, Checkpoint: r.ID, Location: e.locationOf(r.Location)})
	}
}

// finish answers everyone waiting for savepoint request id with res and
// remembers it as the request's answer.
func (e *Engine) finish(id uint64, res *subjects.SavepointResult) {
	w := e.waiters[id]
	delete(e.waiters, id)
	if w.key.id != "" {
		delete(e.inFlight, w.key)
	}
	for _, to := range w.replies {
		e.reply(to, clone(res))
	}
	e.remember(w.key, res)
}

// resubmitted answers a rescale once its job was resubmitted.
func (e *Engine) resubmitted(r Resubmitted) {
	if _, ok := e.waiters[r.Request]; !ok {
		return
	}
	res := r.Result
	e.finish(r.Request, &res)
}

// sweep emits an orphan sweep of every job's checkpoint directories: what
// each job's retained checkpoints, its initial savepoint and its pending
// checkpoints use is kept.
func (e *Engine) sweep(now time.Time, grace time.Duration, done any) {
	var jobs []SweepJob
	for _, name := range sortedKeys(e.jobs) {
		j := e.jobs[name]
		sj := SweepJob{Job: name, Referenced: j.cc.Referenced()}
		if j.from != nil {
			for _, f := range checkpoint.Files(*j.from) {
				sj.Referenced[f] = true
			}
		}
		for _, id := range j.cc.Pending() {
			sj.Pending = append(sj.Pending, checkpoint.CheckpointLocation(name, id)+"/")
		}
		jobs = append(jobs, sj)
	}
	e.emit(SweepOrphans{Jobs: jobs, Cutoff: now.Add(-grace), Done: done})
}

// locationOf returns the full location (store location + key) of key.
func (e *Engine) locationOf(key string) string {
	return objectstore.JoinLocation(e.cfg.StoreLocation, key)
}

// absent is the error for a request about job name, which the engine does
// not run: job_not_running for a job the term found ended, else
// unknown_job.
func (e *Engine) absent(name string) *subjects.Error {
	if st, ok := e.ended[name]; ok {
		return subjects.Errorf(subjects.CodeJobNotRunning, "job %q is %s", name, st)
	}
	return unknownJob(name)
}

func unknownJob(name string) *subjects.Error {
	return subjects.Errorf(subjects.CodeUnknownJob, "no job named %q", name)
}

func handlesOf(r subjects.CheckpointRecord) []statebackend.Handle {
	out := make([]statebackend.Handle, 0, len(r.Tasks))
	for _, t := range r.Tasks {
		out = append(out, t.Handle)
	}
	return out
}

// RestorePoints turns records into job-master restore points.
func RestorePoints(rs ...subjects.CheckpointRecord) []jobmaster.RestorePoint {
	out := make([]jobmaster.RestorePoint, 0, len(rs))
	for _, r := range rs {
		rp := jobmaster.RestorePoint{ID: r.ID, Handles: handlesOf(r)}
		if op, ok := r.Operator(); ok {
			rp.Operator = &op
		}
		out = append(out, rp)
	}
	return out
}
