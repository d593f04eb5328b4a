// Package jobmaster runs one job for the coordinator, after Flink's
// JobMaster: it keeps the job's slot pool, deploys one task per key-group
// range into pooled slots, follows task status, and fails tasks over with an
// exponential-delay restart strategy.
//
// Tasks of a job share nothing (each owns its key groups' input and state),
// so each task is its own failover region: a failed task restarts alone,
// from the latest completed checkpoint's handles for its range.
//
// Master is a pure state machine: the caller feeds events with the current
// time and carries out the returned Actions in order. One goroutine only.
package jobmaster

import (
	"sort"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// DeployTimeout bounds how long a deployed attempt may take to report
// running before it is failed.
const DeployTimeout = 60 * time.Second

// ResetBackoffAfter is how long a job must run without task failures before
// the restart delay falls back to its initial value.
const ResetBackoffAfter = 5 * time.Minute

// Action is something the caller must do.
type Action interface{ isAction() }

// Demand: ask the resource manager for Slots slots in total for the job.
type Demand struct {
	Slots    int
	Operator string
}

// Deploy: request Req on subjects.Deploy(Req.Worker). An error answer must
// be fed back with DeployFailed.
type Deploy struct{ Req subjects.DeployTask }

// Cancel: request Req on subjects.Cancel(Req.Worker); best effort.
type Cancel struct{ Req subjects.CancelTask }

// ReleaseSlot: tell the resource manager the allocation is no longer used.
type ReleaseSlot struct{ Allocation string }

// AvoidWorker: a task failed because Worker's local storage is full; the
// resource manager should place tasks elsewhere. It comes before the
// ReleaseSlot of the failed task's slot, so that the slot asked for instead
// is not asked of the same worker.
type AvoidWorker struct {
	Worker string
	Err    *subjects.Error
}

// StateChanged: the job moved to State; publish an event and persist.
type StateChanged struct {
	State  subjects.JobState
	Reason string
}

// TaskFailed: a task attempt failed and will be restarted after Delay.
type TaskFailed struct {
	Task    subjects.TaskRef
	Worker  string
	Err     *subjects.Error
	Delay   time.Duration
	Restart int
}

// RestoreFallback: a task could not read restore point Bad and will use
// the previous one; warn.
type RestoreFallback struct {
	Task int
	Bad  uint64
	Err  *subjects.Error
}

// JobFailed: no restore point is readable for a task; the job stops.
type JobFailed struct{ Err *subjects.Error }

func (RestoreFallback) isAction() {}
func (JobFailed) isAction()       {}
func (Demand) isAction()          {}
func (Deploy) isAction()          {}
func (Cancel) isAction()          {}
func (ReleaseSlot) isAction()     {}
func (AvoidWorker) isAction()     {}
func (StateChanged) isAction()    {}
func (TaskFailed) isAction()      {}

type slot struct {
	alloc  string
	worker string
	index  int
	task   int // -1: free
}

type task struct {
	index      int
	bad        map[uint64]bool // restore points this task found unreadable
	rng        keygroup.Range
	alloc      string // "" when not deployed
	worker     string
	attempt    uint64
	state      subjects.TaskState
	since      time.Time // of the current state
	restartAt  time.Time // waiting to be deployed no earlier than this
	restoredID uint64
	skipped    uint64 // events the current attempt skipped, as last reported
}

// Master is one job's master. Create it with New.
type Master struct {
	epoch    uint64
	spec     subjects.JobSpec
	state    subjects.JobState
	pool     map[string]*slot
	tasks    []*task
	attempts *uint64 // shared by every job master of the coordinator
	restarts int
	failures int // consecutive, for the restart delay
	lastFail time.Time
	// backoffUntil is when the restarts of the current incident are due.
	backoffUntil time.Time
	short        *subjects.SlotShortage // while JobWaiting

	// restore holds the points tasks restore from, newest first: the
	// retained completed checkpoints and savepoints.
	restore []RestorePoint

	// recoverUntil is set while the job recovers (Recover): until then it
	// adopts the attempts workers report, and asks for no slots.
	recoverUntil time.Time
	firstAttempt uint64 // of the run; lower reported attempts are never adopted
}

// RestorePoint is a completed checkpoint or savepoint to restore from.
type RestorePoint struct {
	ID      uint64
	Handles []statebackend.Handle
	// Operator is the operator whose state the handles hold (nil: not
	// recorded); AllowOperatorChange lets a task of another operator or
	// state version restore them (a submit that says the change is
	// intended, for the savepoint it restores).
	Operator            *subjects.OperatorInfo
	AllowOperatorChange bool
}

// New returns the master of a job with spec (defaults filled, validated)
// that restores from the newest of restore (nil for a fresh start).
// attempts counts the deployments of the coordinator's epoch; every job
// master of the coordinator must share it, so that an attempt number never
// repeats within the epoch, even across runs of the same job.
func New(epoch uint64, spec subjects.JobSpec, restore []RestorePoint, attempts *uint64) *Master {
	m := &Master{epoch: epoch, spec: spec, state: subjects.JobCreated, pool: map[string]*slot{}, attempts: attempts}
	for _, r := range restore {
		m.CheckpointCompleted(r)
	}
	for i := 0; i < spec.Parallelism; i++ {
		m.tasks = append(m.tasks, &task{index: i, rng: subjects.TaskRange(&spec, i, spec.Parallelism)})
	}
	return m
}

// NextAttempt is the number of the next attempt a job master of epoch
// deploys, given the shared count of the epoch's deployments.
func NextAttempt(epoch, attempts uint64) uint64 { return epoch<<20 | (attempts + 1) }

// Job returns the job's name.
func (m *Master) Job() string { return m.spec.Name }

// Spec returns the job's spec.
func (m *Master) Spec() subjects.JobSpec { return m.spec }

// State returns the job's state.
func (m *Master) State() subjects.JobState { return m.state }

// Start makes the job ask for its slots.
func (m *Master) Start(now time.Time) []Action {
	if m.state != subjects.JobCreated {
		return nil
	}
	return append(m.setState(subjects.JobRunning, "started"), m.demand())
}

// Recover starts a job that an earlier leader term ran, instead of Start.
// Its tasks may still run on workers, which report them when they register
// with this term, and Adopt takes them over with their state and input
// positions, so that they do not restart. Until until, or until every task
// is adopted, the job asks for no slots and deploys nothing; then every task
// not adopted is deployed as after Start, from the newest restore point.
// firstAttempt is the run's lowest attempt number (JobRecord.FirstAttempt).
func (m *Master) Recover(until time.Time, firstAttempt uint64, now time.Time) []Action {
	if m.state != subjects.JobCreated {
		return nil
	}
	m.recoverUntil, m.firstAttempt = until, firstAttempt
	return m.setState(subjects.JobRunning, "resumed by a new leader; adopting the tasks that still run")
}

// Recovering reports whether the job still waits for workers to report
// its tasks.
func (m *Master) Recovering() bool { return !m.recoverUntil.IsZero() }

// Adopt offers the job, while it recovers, the attempt a worker reports in
// slot s. The job adopts it, and the slot into its pool, when it is an
// attempt of this run (not below the run's first attempt), deploying or
// running, for the key groups the task owns, and newer than any attempt of
// the task adopted so far: two workers may report the same task when the
// previous leader failed it over from a worker it could not reach, and the
// newest attempt is the one it deployed last. A lower attempt adopted before
// is then canceled and its slot released. adopted reports whether the
// caller must tell the worker that the attempt is adopted.
func (m *Master) Adopt(worker string, s subjects.SlotReport, now time.Time) (adopted bool, acts []Action) {
	if !m.Recovering() || m.state.Terminal() || s.Job != m.spec.Name || s.Task < 0 || s.Task >= len(m.tasks) ||
		s.Allocation == "" || s.Attempt == 0 || s.Attempt < m.firstAttempt ||
		(s.State != subjects.TaskDeploying && s.State != subjects.TaskRunning) {
		return false, nil
	}
	t := m.tasks[s.Task]
	if s.Range == nil || *s.Range != t.rng || t.attempt >= s.Attempt {
		return false, nil
	}
	if old, ok := m.pool[t.alloc]; ok {
		acts = append(acts, Cancel{Req: subjects.CancelTask{Epoch: m.epoch, Worker: old.worker, Release: true, TaskRef: m.ref(t)}},
			ReleaseSlot{Allocation: old.alloc})
		delete(m.pool, old.alloc)
	}
	m.pool[s.Allocation] = &slot{alloc: s.Allocation, worker: worker, index: s.Slot, task: t.index}
	t.alloc, t.worker, t.attempt = s.Allocation, worker, s.Attempt
	t.state, t.since, t.restartAt, t.restoredID, t.skipped = s.State, now, time.Time{}, 0, s.Skipped
	for _, o := range m.tasks {
		if o.attempt == 0 {
			return true, acts
		}
	}
	return true, append(acts, m.endRecovery(now)...)
}

// endRecovery ends the recovery: the job asks for a slot per task, and
// tasks nobody reported are deployed.
func (m *Master) endRecovery(now time.Time) []Action {
	m.recoverUntil = time.Time{}
	return append([]Action{m.demand()}, m.deployWaiting(now)...)
}

func (m *Master) demand() Demand {
	return Demand{Slots: len(m.tasks), Operator: m.spec.Operator.Type}
}

// Offer handles a worker's slot offer. It returns the allocations it
// accepts into the pool; the caller must have checked with the resource
// manager that each offered allocation was requested for this job on that
// worker. Accepted slots receive waiting tasks at once.
func (m *Master) Offer(worker string, offered []subjects.OfferedSlot, now time.Time) (accepted []string, acts []Action) {
	if m.state.Terminal() {
		return nil, nil
	}
	for _, o := range offered {
		if _, ok := m.pool[o.Allocation]; ok {
			accepted = append(accepted, o.Allocation) // a duplicate offer: still ours
			continue
		}
		if len(m.pool) >= len(m.tasks) {
			continue
		}
		m.pool[o.Allocation] = &slot{alloc: o.Allocation, worker: worker, index: o.Slot, task: -1}
		accepted = append(accepted, o.Allocation)
	}
	return accepted, m.deployWaiting(now)
}

// TaskStatus handles a status report. Reports of attempts other than the
// current one are ignored: they come from superseded attempts.
func (m *Master) TaskStatus(st *subjects.TaskStatus, now time.Time) []Action {
	t := m.taskOf(st.TaskRef)
	if t == nil || m.state.Terminal() {
		return nil
	}
	switch st.State {
	case subjects.TaskRunning:
		if t.state == subjects.TaskDeploying {
			t.state, t.since = subjects.TaskRunning, now
		}
		return nil
	case subjects.TaskFailed, subjects.TaskCanceled, subjects.TaskFinished:
		err := st.Error
		if err == nil {
			err = subjects.Errorf(subjects.CodeInternal, "task %s unexpectedly", st.State)
		}
		if err.Code == subjects.CodeStorage && t.worker != "" {
			// The worker's disk is full: give its slot back, so that the
			// task restarts in a slot of another worker.
			avoid := AvoidWorker{Worker: t.worker, Err: err}
			if acts := m.fail(t, err, true, now); len(acts) > 0 {
				return append([]Action{avoid}, acts...)
			}
			return nil
		}
		return m.failOrEnd(m.fail(t, err, false, now), err)
	}
	return nil
}

// HeartbeatRunning handles a worker's heartbeat reporting that attempt ref
// runs there, and reports whether it made the attempt running. The
// attempt's own running status is a core NATS message, which a server's
// loss or a route not yet re-established after a restart can drop; until
// the attempt counts as running no checkpoint is triggered, and after
// DeployTimeout it would be failed over. The heartbeat is answered, and
// repeated every heartbeat interval: it makes up for the lost status.
// Only the worker the attempt was deployed to counts, and only while the
// attempt is deploying: a failed attempt stays failed.
func (m *Master) HeartbeatRunning(worker string, ref subjects.TaskRef, now time.Time) bool {
	t := m.taskOf(ref)
	if t == nil || m.state.Terminal() || t.worker != worker || t.state != subjects.TaskDeploying {
		return false
	}
	t.state, t.since = subjects.TaskRunning, now
	return true
}

// DeployFailed handles an error answer (or no answer) to a Deploy.
func (m *Master) DeployFailed(ref subjects.TaskRef, err *subjects.Error, now time.Time) []Action {
	t := m.taskOf(ref)
	if t == nil {
		return nil
	}
	// A worker that refuses the slot no longer holds it for us.
	release := err.Code == subjects.CodeSlotMismatch || err.Code == subjects.CodeStaleEpoch
	return m.failOrEnd(m.fail(t, err, release, now), err)
}

// failOrEnd returns the actions of a task failure, and fails the job too
// when a restart would meet the same error: input events gone (data_loss:
// the user decides, with source.on_gap continue or a fix), or state another
// operator or state version wrote (operator_mismatch: resubmit with
// allow_operator_change if intended).
func (m *Master) failOrEnd(acts []Action, err *subjects.Error) []Action {
	if (err.Code == subjects.CodeDataLoss || err.Code == subjects.CodeOperatorMismatch) && len(acts) > 0 {
		return append(append(acts, JobFailed{Err: err}), m.end(subjects.JobFailed, err.Message)...)
	}
	return acts
}

// WorkerLost voids the allocations the resource manager lost with a worker
// and fails over the tasks that ran in them.
func (m *Master) WorkerLost(worker string, allocs []string, now time.Time) []Action {
	var acts []Action
	for _, id := range allocs {
		s, ok := m.pool[id]
		if !ok {
			continue
		}
		delete(m.pool, id)
		if s.task >= 0 {
			t := m.tasks[s.task]
			t.alloc = ""
			acts = append(acts, m.fail(t, subjects.Errorf(subjects.CodeUnknownWorker, "worker %s lost", worker), false, now)...)
		}
	}
	return acts
}

// Tick deploys tasks whose restart delay has passed and fails attempts that
// never reported running.
func (m *Master) Tick(now time.Time) []Action {
	if m.state.Terminal() {
		return nil
	}
	var acts []Action
	for _, t := range m.tasks {
		if t.state == subjects.TaskDeploying && now.Sub(t.since) > DeployTimeout {
			acts = append(acts, m.fail(t, subjects.Errorf(subjects.CodeTimeout, "not running %s after deployment", DeployTimeout), false, now)...)
		}
	}
	if m.Recovering() {
		if now.Before(m.recoverUntil) {
			return acts
		}
		return append(acts, m.endRecovery(now)...)
	}
	return append(acts, m.deployWaiting(now)...)
}

// CheckpointCompleted records the handles of a completed checkpoint or
// savepoint: tasks restarted from now on restore from the newest one.
func (m *Master) CheckpointCompleted(rp RestorePoint) {
	for _, r := range m.restore {
		if r.ID == rp.ID {
			return
		}
	}
	m.restore = append(m.restore, rp)
	sort.Slice(m.restore, func(i, j int) bool { return m.restore[i].ID > m.restore[j].ID })
}

// CheckpointDeleted forgets a restore point that retention deleted.
func (m *Master) CheckpointDeleted(id uint64) {
	for i, r := range m.restore {
		if r.ID == id {
			m.restore = append(m.restore[:i], m.restore[i+1:]...)
			return
		}
	}
}

// LatestRestorePoint returns the newest checkpoint id tasks restore from
// (0 if none).
func (m *Master) LatestRestorePoint() uint64 {
	if len(m.restore) == 0 {
		return 0
	}
	return m.restore[0].ID
}

// restorePointFor returns the newest restore point task t has not found
// unreadable, and false if every one is.
func (m *Master) restorePointFor(t *task) (RestorePoint, bool) {
	for _, r := range m.restore {
		if !t.bad[r.ID] {
			return r, true
		}
	}
	return RestorePoint{}, len(m.restore) == 0
}

// SlotsShort: the resource manager cannot give the job a slot for every
// task. The job waits (JobWaiting, Flink's NoResourceAvailable) instead of
// claiming to run with tasks on no worker; tasks that have a slot run on.
func (m *Master) SlotsShort(s subjects.SlotShortage, now time.Time) []Action {
	if !m.active() {
		return nil
	}
	m.short = &s
	if m.state == subjects.JobWaiting {
		// Still waiting, for a different number of slots: say so.
		return []Action{StateChanged{State: m.state, Reason: s.String()}}
	}
	return m.setState(subjects.JobWaiting, s.String())
}

// SlotsMet: the job has (or has requested) a slot for every task again.
func (m *Master) SlotsMet(now time.Time) []Action {
	if m.state != subjects.JobWaiting {
		return nil
	}
	m.short = nil
	return m.setState(subjects.JobRunning, "a slot for every task")
}

// active reports whether the job is running or waiting for slots: whether
// it deploys tasks.
func (m *Master) active() bool {
	return m.state == subjects.JobRunning || m.state == subjects.JobWaiting
}

// FailAll fails every task over, e.g. after too many failed checkpoints.
func (m *Master) FailAll(err *subjects.Error, now time.Time) []Action {
	var acts []Action
	for _, t := range m.tasks {
		if t.state == subjects.TaskDeploying || t.state == subjects.TaskRunning {
			acts = append(acts, m.fail(t, err, false, now)...)
		}
	}
	return acts
}

// RunningAttempts returns every task's current attempt when all tasks run,
// and nil otherwise.
func (m *Master) RunningAttempts() []uint64 {
	if !m.AllRunning() {
		return nil
	}
	out := make([]uint64, len(m.tasks))
	for i, t := range m.tasks {
		out[i] = t.attempt
	}
	return out
}

// Cancel ends the job: every task is canceled and every slot released.
func (m *Master) Cancel(reason string, now time.Time) []Action {
	return m.end(subjects.JobCanceled, reason)
}

// Finish ends the job as finished (after stop-with-savepoint).
func (m *Master) Finish(reason string, now time.Time) []Action {
	return m.end(subjects.JobFinished, reason)
}

func (m *Master) end(state subjects.JobState, reason string) []Action {
	if m.state.Terminal() {
		return nil
	}
	// The demand drops to zero before the slots are released: released
	// slots would otherwise be requested again for the job that ends.
	acts := []Action{Demand{Slots: 0}}
	for _, t := range m.tasks {
		if t.alloc != "" && t.attempt != 0 {
			s := m.pool[t.alloc]
			acts = append(acts, Cancel{Req: subjects.CancelTask{Epoch: m.epoch, Worker: s.worker, Release: true,
				TaskRef: m.ref(t)}})
		}
		t.state = subjects.TaskCanceled
	}
	for _, id := range m.poolIDs() {
		acts = append(acts, ReleaseSlot{Allocation: id})
		delete(m.pool, id)
	}
	return append(acts, m.setState(state, reason)...)
}

// AllRunning reports whether every task's current attempt is running: the
// condition for triggering a checkpoint.
func (m *Master) AllRunning() bool {
	if m.state != subjects.JobRunning {
		return false
	}
	for _, t := range m.tasks {
		if t.state != subjects.TaskRunning {
			return false
		}
	}
	return true
}

// TaskSkipped records how many events attempt ref has skipped, as its
// worker's heartbeat reports it. Reports of other attempts are ignored.
func (m *Master) TaskSkipped(ref subjects.TaskRef, n uint64) {
	if t := m.taskOf(ref); t != nil {
		t.skipped = n
	}
}

// Attempt returns the current attempt of task i (0 if never deployed).
func (m *Master) Attempt(i int) uint64 {
	if i < 0 || i >= len(m.tasks) {
		return 0
	}
	return m.tasks[i].attempt
}

// Info describes the job for the user API.
func (m *Master) Info() subjects.JobInfo {
	spec := m.spec
	info := subjects.JobInfo{Job: m.spec.Name, State: m.state, Spec: &spec, LatestCheckpoint: m.LatestRestorePoint(), Restarts: m.restarts}
	if m.state == subjects.JobWaiting && m.short != nil {
		s := *m.short
		info.Waiting = &s
	}
	for _, t := range m.tasks {
		info.Tasks = append(info.Tasks, subjects.TaskInfo{Task: t.index, Range: t.rng, Worker: t.worker, Attempt: t.attempt, State: t.state, Skipped: t.skipped})
	}
	return info
}

func (m *Master) ref(t *task) subjects.TaskRef {
	return subjects.TaskRef{Job: m.spec.Name, Task: t.index, Attempt: t.attempt}
}

func (m *Master) taskOf(ref subjects.TaskRef) *task {
	if ref.Job != m.spec.Name || ref.Task < 0 || ref.Task >= len(m.tasks) {
		return nil
	}
	t := m.tasks[ref.Task]
	if t.attempt != ref.Attempt || t.attempt == 0 {
		return nil
	}
	return t
}

// fail handles the failure of t's current attempt: the slot stays in the
// pool (unless release, or it is gone), and the task is redeployed after the
// restart delay.
func (m *Master) fail(t *task, err *subjects.Error, release bool, now time.Time) []Action {
	if t.state == subjects.TaskUnknown || t.state == subjects.TaskFailed {
		return nil
	}
	var acts []Action
	failed := m.ref(t)
	worker := t.worker
	if err.Code == subjects.CodeCorruptState && t.state == subjects.TaskDeploying && t.restoredID != 0 {
		// The restore point is unreadable for this task: fall back to the
		// previous one (tasks share nothing, so each may restore from a
		// different checkpoint; replay makes up the difference exactly once).
		if t.bad == nil {
			t.bad = map[uint64]bool{}
		}
		t.bad[t.restoredID] = true
		acts = append(acts, RestoreFallback{Task: t.index, Bad: t.restoredID, Err: err})
	}
	if s, ok := m.pool[t.alloc]; ok {
		s.task = -1
		if release {
			delete(m.pool, t.alloc)
			acts = append(acts, ReleaseSlot{Allocation: t.alloc})
		} else {
			// Best effort: make sure the old attempt stops before its slot is reused.
			acts = append(acts, Cancel{Req: subjects.CancelTask{Epoch: m.epoch, Worker: s.worker, TaskRef: failed}})
		}
	}
	if !m.lastFail.IsZero() && now.Sub(m.lastFail) > ResetBackoffAfter {
		m.failures = 0
	}
	// A failure while an earlier one's restart is still pending belongs to
	// the same incident (one lost worker fails all its tasks at once): it
	// restarts with the earlier one and does not grow the delay (Flink's
	// exponential-delay strategy since FLIP-364). Otherwise the seventh
	// task of a lost worker would wait 64 times the initial delay.
	restartAt := m.backoffUntil
	if !now.Before(m.backoffUntil) {
		delay := m.spec.Restart.InitialDelay.D() << min(m.failures, 30)
		if max := m.spec.Restart.MaxDelay.D(); delay > max || delay <= 0 {
			delay = max
		}
		m.failures++
		restartAt = now.Add(delay)
		m.backoffUntil = restartAt
	}
	delay := restartAt.Sub(now)
	m.restarts++
	m.lastFail = now
	t.alloc, t.worker = "", ""
	t.state, t.since, t.restartAt = subjects.TaskFailed, now, restartAt
	acts = append(acts, TaskFailed{Task: failed, Worker: worker, Err: err, Delay: delay, Restart: m.restarts})
	if m.Recovering() {
		return acts // the demand is set when the recovery ends
	}
	return append(acts, m.demand())
}

// deployWaiting deploys every task that is due into a free pooled slot.
func (m *Master) deployWaiting(now time.Time) []Action {
	if !m.active() || m.Recovering() {
		return nil
	}
	var acts []Action
	free := m.freeSlots()
	for _, t := range m.tasks {
		if len(free) == 0 {
			break
		}
		if (t.state != subjects.TaskUnknown && t.state != subjects.TaskFailed) || now.Before(t.restartAt) {
			continue
		}
		rp, ok := m.restorePointFor(t)
		if !ok {
			err := subjects.Errorf(subjects.CodeCorruptState, "task %d: no readable checkpoint or savepoint to restore key groups %s from", t.index, t.rng)
			return append(append(acts, JobFailed{Err: err}), m.end(subjects.JobFailed, err.Message)...)
		}
		s := free[0]
		free = free[1:]
		*m.attempts++
		if *m.attempts >= 1<<20 {
			panic("jobmaster: more than 2^20 deployments in one coordinator epoch")
		}
		s.task = t.index
		t.alloc, t.worker, t.attempt = s.alloc, s.worker, NextAttempt(m.epoch, *m.attempts-1)
		t.skipped = 0
		t.state, t.since, t.restoredID = subjects.TaskDeploying, now, rp.ID
		acts = append(acts, Deploy{Req: subjects.DeployTask{
			Epoch: m.epoch, Worker: s.worker, Allocation: s.alloc, TaskRef: m.ref(t),
			Parallelism: len(m.tasks), Range: t.rng, Spec: m.spec,
			Restore: handlesFor(rp.Handles, t.rng), RestoredFrom: rp.ID,
			RestoredOperator: rp.Operator, AllowOperatorChange: rp.AllowOperatorChange,
		}})
	}
	return acts
}

// handlesFor returns the handles whose ranges intersect r.
func handlesFor(all []statebackend.Handle, r keygroup.Range) []statebackend.Handle {
	var out []statebackend.Handle
	for _, h := range all {
		if _, ok := h.Range.Intersect(r); ok {
			out = append(out, h)
		}
	}
	return out
}

func (m *Master) freeSlots() []*slot {
	var free []*slot
	for _, id := range m.poolIDs() {
		if s := m.pool[id]; s.task < 0 {
			free = append(free, s)
		}
	}
	return free
}

func (m *Master) poolIDs() []string {
	ids := make([]string, 0, len(m.pool))
	for id := range m.pool {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (m *Master) setState(s subjects.JobState, reason string) []Action {
	if m.state == s {
		return nil
	}
	m.state = s
	return []Action{StateChanged{State: s, Reason: reason}}
}
