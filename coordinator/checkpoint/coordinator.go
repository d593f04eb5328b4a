// Package checkpoint is the checkpoint coordinator of one job, after Flink's
// CheckpointCoordinator.
//
// It triggers periodic checkpoints and requested savepoints, collects the
// tasks' acks, and completes a checkpoint in a fixed order:
//
//  1. every task of the job acked the checkpoint (with the attempt that got
//     the barrier);
//  2. the checkpoint's _metadata object is written to the object store
//     (WriteMetadata) — it makes the checkpoint self-describing, so that it
//     can be restored from its location alone;
//  3. the record is committed to JetStream (Commit): a compare-and-set on
//     the job's latest pointer. Committed is completed;
//  4. only then are the tasks and the requester told (NotifyComplete,
//     SavepointDone), and subsumed checkpoints deleted (DeleteCheckpoint).
//
// A decline, a timeout, a failed step or a task failure aborts a pending
// checkpoint (NotifyAbort). A lost or duplicated message can delay a
// checkpoint but never complete one that some task did not persist.
//
// Coordinator is a pure state machine: the caller feeds it events with the
// current time and carries out the returned actions in order, feeding the
// outcome of WriteMetadata and Commit back. One goroutine only.
package checkpoint

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// Action is something the caller must do.
type Action interface{ isAction() }

// SendBarrier: publish Barrier on subjects.Barrier(job).
type SendBarrier struct{ Barrier subjects.Barrier }

// WriteMetadata: check that every object Record's handles name is in the
// store with the size they give (a *MissingObjectsError otherwise), then
// put Record (encoded) as MetadataKey(Record.Location), then call
// MetadataWritten.
type WriteMetadata struct{ Record subjects.CheckpointRecord }

// Commit: commit Record to JetStream with compare-and-set on the job's
// latest pointer, then call Committed. The record must be durable (synced)
// before Committed is called with a nil error. A step that gets no answer
// (a JetStream leader election, a server lost) is retried with the same
// compare-and-set until Deadline, the end of the checkpoint's timeout.
type Commit struct {
	Record   subjects.CheckpointRecord
	Deadline time.Time
}

// NotifyComplete: publish Complete to the tasks, give the record's handles
// to the job master, publish a completion event and record Attempt in the
// checkpoint history.
type NotifyComplete struct {
	Complete subjects.Complete
	Record   subjects.CheckpointRecord
	Attempt  subjects.CheckpointAttempt
}

// NotifyAbort: publish Abort to the tasks and a failure event, and record
// Attempt in the checkpoint history.
type NotifyAbort struct {
	Abort   subjects.Abort
	Kind    subjects.CheckpointKind
	Attempt subjects.CheckpointAttempt
}

// SavepointDone: answer the requester of a savepoint.
type SavepointDone struct {
	Request uint64
	Result  subjects.SavepointResult
	// Stop says the job must now end (stop-with-savepoint succeeded).
	Stop bool
}

// DeleteCheckpoint: retention subsumed Record. Delete its JetStream record
// first, then the Files (only those no retained checkpoint references),
// then its metadata object.
type DeleteCheckpoint struct {
	Record subjects.CheckpointRecord
	Files  []string
}

// FailJob: more consecutive checkpoints failed than tolerated; fail every
// task over.
type FailJob struct{ Reason *subjects.Error }

func (SendBarrier) isAction()      {}
func (WriteMetadata) isAction()    {}
func (Commit) isAction()           {}
func (NotifyComplete) isAction()   {}
func (NotifyAbort) isAction()      {}
func (SavepointDone) isAction()    {}
func (DeleteCheckpoint) isAction() {}
func (FailJob) isAction()          {}

// MetadataName is the name of a checkpoint's metadata object under its
// location.
const MetadataName = "_metadata"

// MetadataKey returns the metadata object key of a checkpoint at location.
func MetadataKey(location string) string { return location + "/" + MetadataName }

// CheckpointLocation returns the object-key prefix of checkpoint id of job.
func CheckpointLocation(job string, id uint64) string {
	return job + "/chk-" + strconv.FormatUint(id, 10)
}

// SharedLocation returns the object-key prefix of job's shared files.
func SharedLocation(job string) string { return job + "/shared" }

// SavepointLocation returns the object-key prefix of savepoint id of job
// under dir (default "savepoints/<job>").
func SavepointLocation(dir, job string, id uint64) string {
	if dir == "" {
		dir = "savepoints/" + job
	}
	return dir + "/sp-" + strconv.FormatUint(id, 10)
}

// Task is one task's current attempt, as the job master knows it.
type Task struct {
	Task    int
	Attempt uint64
	// Worker is the worker the attempt was deployed to: only it may ack or
	// decline the attempt's checkpoints.
	Worker string
}

// SavepointRequest asks for a savepoint.
type SavepointRequest struct {
	// ID identifies the requester, for SavepointDone.
	ID     uint64
	Format statebackend.Format
	// Dir is the object-key prefix to write under (default
	// "savepoints/<job>").
	Dir  string
	Stop bool
	// RequestID is the client's request id, recorded in the savepoint's
	// record (subjects.CheckpointRecord.RequestID).
	RequestID string
}

type savepointReq struct {
	SavepointRequest
	attempts int
	deadline time.Time
	lastErr  *subjects.Error
}

type phase uint8

const (
	collecting phase = iota
	writingMetadata
	committing
)

type pending struct {
	id        uint64
	kind      subjects.CheckpointKind
	format    statebackend.Format
	location  string
	triggered time.Time
	attempts  map[int]uint64 // task -> attempt that got the barrier
	workers   map[int]string // task -> worker running that attempt
	acks      map[int]subjects.TaskCheckpoint
	phase     phase
	sp        *savepointReq
	record    subjects.CheckpointRecord
	barrier   subjects.Barrier
	sent      time.Time // when the barrier was last sent
}

// BarrierResend is how long a checkpoint waits for acks before its barrier
// is sent again. Barriers and acks are core NATS messages: one lost with a
// server that dies (or a connection that breaks) would otherwise hold the
// checkpoint until it expires. A task ignores a barrier it took before but
// answers it again with its ack, and the coordinator ignores repeated acks.
const BarrierResend = 2 * time.Second

// Config configures a job's checkpoint coordinator.
type Config struct {
	Job            string
	Epoch          uint64
	Spec           subjects.CheckpointSpec // defaults filled
	Parallelism    int
	MaxParallelism int
	// Partitions is the job's partition count (0: input not partitioned):
	// task ranges are keygroup.ForTaskIn.
	Partitions int
	// Input is the job's subjects.InputID, recorded in every checkpoint.
	Input string
}

// Coordinator is one job's checkpoint coordinator. Create it with New.
type Coordinator struct {
	cfg         Config
	nextID      uint64
	pending     map[uint64]*pending
	retained    []subjects.CheckpointRecord // completed checkpoints, oldest first
	lastTrigger time.Time
	lastDone    time.Time
	failures    int // consecutive failed periodic checkpoints
	queue       []*savepointReq
}

// New returns the coordinator of a job whose retained checkpoints (as read
// back from JetStream after a restart; savepoints excluded) are retained.
// Checkpoint ids continue after the highest id known.
func New(cfg Config, retained []subjects.CheckpointRecord, highestID uint64) *Coordinator {
	c := &Coordinator{cfg: cfg, pending: map[uint64]*pending{}, nextID: highestID + 1}
	for _, r := range retained {
		if r.Kind == subjects.KindCheckpoint {
			c.retained = append(c.retained, r)
		}
		if r.ID >= c.nextID {
			c.nextID = r.ID + 1
		}
	}
	sort.Slice(c.retained, func(i, j int) bool { return c.retained[i].ID < c.retained[j].ID })
	return c
}

// Above makes every checkpoint triggered from now on have an id above id:
// a task adopted from an earlier leader term reports the highest id it took
// a barrier for, and the ids of that term's checkpoints in flight (aborted)
// are never reused.
func (c *Coordinator) Above(id uint64) {
	if id >= c.nextID {
		c.nextID = id + 1
	}
}

// Retained returns the retained completed checkpoints, oldest first.
func (c *Coordinator) Retained() []subjects.CheckpointRecord { return c.retained }

// Pending returns the ids of pending checkpoints, in order.
func (c *Coordinator) Pending() []uint64 {
	ids := make([]uint64, 0, len(c.pending))
	for id := range c.pending {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// Tick triggers what is due and expires what is late. tasks is the current
// attempt of every task when all are running, nil otherwise (no checkpoint
// is triggered then, and queued savepoints wait).
func (c *Coordinator) Tick(now time.Time, tasks []Task) []Action {
	var acts []Action
	for _, id := range c.Pending() {
		p := c.pending[id]
		if p.phase == collecting && now.Sub(p.triggered) > c.cfg.Spec.Timeout.D() {
			acts = append(acts, c.abort(p, subjects.Errorf(subjects.CodeCheckpointExpired,
				"%s %d expired after %s with %d of %d acks", p.kind, p.id, c.cfg.Spec.Timeout.D(), len(p.acks), len(p.attempts)), true, now)...)
			continue
		}
		if p.phase == collecting && len(p.acks) < len(p.attempts) && now.Sub(p.sent) >= BarrierResend {
			p.sent = now
			acts = append(acts, SendBarrier{Barrier: p.barrier})
		}
	}
	// Savepoints that waited too long to be taken fail, each at its own
	// deadline: neither a job whose tasks do not all run nor a savepoint
	// ahead of it in the queue holds a request past the checkpoint timeout.
	queue := c.queue[:0]
	for _, sp := range c.queue {
		if !now.After(sp.deadline) {
			queue = append(queue, sp)
			continue
		}
		err := sp.lastErr
		switch {
		case err != nil:
		case c.savepointPending():
			err = subjects.Errorf(subjects.CodeCheckpointExpired, "savepoint not taken within %s: an earlier savepoint of the job was still in progress", c.cfg.Spec.Timeout.D())
		default:
			err = subjects.Errorf(subjects.CodeJobNotRunning, "savepoint not taken within %s: the job's tasks were not all running", c.cfg.Spec.Timeout.D())
		}
		acts = append(acts, c.savepointFailed(sp, err))
	}
	c.queue = queue
	if tasks == nil || len(tasks) != c.cfg.Parallelism {
		return acts
	}
	if len(c.queue) > 0 && !c.savepointPending() {
		sp := c.queue[0]
		c.queue = c.queue[1:]
		acts = append(acts, c.trigger(subjects.KindSavepoint, sp.Format, SavepointLocation(sp.Dir, c.cfg.Job, c.nextID), sp, tasks, now))
	}
	s := c.cfg.Spec
	if s.Interval > 0 && c.checkpointsPending() < s.MaxConcurrent &&
		now.Sub(c.lastTrigger) >= s.Interval.D() && now.Sub(c.lastDone) >= s.MinPause.D() {
		acts = append(acts, c.trigger(subjects.KindCheckpoint, statebackend.FormatNative, CheckpointLocation(c.cfg.Job, c.nextID), nil, tasks, now))
	}
	return acts
}

// TriggerSavepoint queues a savepoint; it is taken on the next Tick at
// which every task runs, retried up to the spec's SavepointRetries times,
// and answered with SavepointDone.
func (c *Coordinator) TriggerSavepoint(req SavepointRequest, now time.Time) {
	if req.Format == 0 {
		req.Format = statebackend.FormatCanonical
	}
	c.queue = append(c.queue, &savepointReq{SavepointRequest: req, deadline: now.Add(c.cfg.Spec.Timeout.D())})
}

func (c *Coordinator) trigger(kind subjects.CheckpointKind, format statebackend.Format, location string, sp *savepointReq, tasks []Task, now time.Time) Action {
	id := c.nextID
	c.nextID++
	p := &pending{id: id, kind: kind, format: format, location: location, triggered: now, sp: sp,
		attempts: map[int]uint64{}, workers: map[int]string{}, acks: map[int]subjects.TaskCheckpoint{}}
	for _, t := range tasks {
		p.attempts[t.Task] = t.Attempt
		p.workers[t.Task] = t.Worker
	}
	c.pending[id] = p
	if kind == subjects.KindCheckpoint {
		c.lastTrigger = now
	}
	b := subjects.Barrier{Epoch: c.cfg.Epoch, Job: c.cfg.Job, Checkpoint: id, Kind: kind, Format: format,
		Target: location, Timestamp: now.UTC()}
	if kind == subjects.KindCheckpoint {
		b.Shared = SharedLocation(c.cfg.Job)
	}
	p.barrier, p.sent = b, now
	return SendBarrier{Barrier: b}
}

// Ack records a task's ack. Acks for unknown, aborted or completed
// checkpoints, of another epoch's barrier, from attempts that did not get the barrier or from a worker
// other than the one the attempt was deployed to, with a handle of the
// wrong format or for key groups other than the task's, and duplicates are
// ignored.
func (c *Coordinator) Ack(a *subjects.Ack, now time.Time) ([]Action, string) {
	p := c.pending[a.Checkpoint]
	switch {
	case p == nil:
		return nil, fmt.Sprintf("ack for checkpoint %d, which is not pending", a.Checkpoint)
	case p.phase != collecting:
		return nil, fmt.Sprintf("late ack for checkpoint %d", a.Checkpoint)
	case a.Epoch != 0 && a.Epoch != c.cfg.Epoch:
		return nil, fmt.Sprintf("ack for checkpoint %d of epoch %d, not this epoch %d", a.Checkpoint, a.Epoch, c.cfg.Epoch)
	case p.attempts[a.Task] != a.Attempt || a.Job != c.cfg.Job:
		return nil, fmt.Sprintf("ack for checkpoint %d from task %d attempt %d, which did not get its barrier", a.Checkpoint, a.Task, a.Attempt)
	case p.workers[a.Task] != a.Worker:
		return nil, fmt.Sprintf("ack for checkpoint %d from task %d attempt %d on worker %s; the attempt runs on %s", a.Checkpoint, a.Task, a.Attempt, a.Worker, p.workers[a.Task])
	case a.Handle.Format != p.format:
		return nil, fmt.Sprintf("ack for checkpoint %d with a %s handle, want %s", a.Checkpoint, a.Handle.Format, p.format)
	case a.Handle.Range != keygroup.ForTaskIn(a.Task, c.cfg.Parallelism, c.cfg.MaxParallelism, c.cfg.Partitions):
		return nil, fmt.Sprintf("ack for checkpoint %d from task %d with key groups %s; the task owns %s", a.Checkpoint, a.Task,
			a.Handle.Range, keygroup.ForTaskIn(a.Task, c.cfg.Parallelism, c.cfg.MaxParallelism, c.cfg.Partitions))
	}
	if _, dup := p.acks[a.Task]; dup {
		return nil, fmt.Sprintf("duplicate ack for checkpoint %d from task %d", a.Checkpoint, a.Task)
	}
	p.acks[a.Task] = subjects.TaskCheckpoint{Task: a.Task, Worker: a.Worker, Handle: a.Handle, Sync: a.Sync, Async: a.Async, Operator: a.Operator}
	if len(p.acks) < len(p.attempts) {
		return nil, ""
	}
	// Every task acked: build the record and persist its metadata.
	r := subjects.CheckpointRecord{Job: c.cfg.Job, ID: p.id, Kind: p.kind, Format: p.format, Location: p.location,
		Parallelism: c.cfg.Parallelism, MaxParallelism: c.cfg.MaxParallelism, Triggered: p.triggered.UTC(), Completed: now.UTC(), Input: c.cfg.Input}
	if p.sp != nil {
		r.RequestID = p.sp.RequestID
	}
	for i := 0; i < c.cfg.Parallelism; i++ {
		t := p.acks[i]
		r.Tasks = append(r.Tasks, t)
		r.Size += t.Handle.Size
		r.Uploaded += t.Handle.Uploaded
	}
	p.record, p.phase = r, writingMetadata
	return []Action{WriteMetadata{Record: r}}, ""
}

// Decline aborts the checkpoint a task declined. Like acks, declines count
// only from the attempt that got the barrier, on the worker it runs on.
func (c *Coordinator) Decline(d *subjects.Decline, now time.Time) []Action {
	p := c.pending[d.Checkpoint]
	if p == nil || p.phase != collecting || p.attempts[d.Task] != d.Attempt || p.workers[d.Task] != d.Worker ||
		(d.Epoch != 0 && d.Epoch != c.cfg.Epoch) {
		return nil
	}
	return c.abort(p, subjects.Errorf(subjects.CodeCheckpointDeclined, "task %d declined %s %d: %s", d.Task, p.kind, p.id, d.Reason.Message), true, now)
}

// MetadataWritten continues a checkpoint whose metadata was written (err
// nil) or aborts it.
func (c *Coordinator) MetadataWritten(id uint64, err error, now time.Time) []Action {
	p := c.pending[id]
	if p == nil || p.phase != writingMetadata {
		return nil
	}
	var missing *MissingObjectsError
	if errors.As(err, &missing) {
		acts := c.abort(p, subjects.Errorf(subjects.CodeMissingObject, "%s %d: %v", p.kind, id, missing), true, now)
		if a, ok := acts[0].(NotifyAbort); ok {
			a.Abort.Missing = missing.Keys
			acts[0] = a
		}
		return acts
	}
	if err != nil {
		return c.abort(p, subjects.Errorf(subjects.CodeStorageUnavailable, "writing metadata of %s %d: %v", p.kind, id, err), true, now)
	}
	p.phase = committing
	return []Action{Commit{Record: p.record, Deadline: p.triggered.Add(c.cfg.Spec.Timeout.D())}}
}

// Committed completes a checkpoint whose record is durable in JetStream
// (err nil), or aborts it.
func (c *Coordinator) Committed(id uint64, err error, now time.Time) []Action {
	p := c.pending[id]
	if p == nil || p.phase != committing {
		return nil
	}
	if err != nil {
		return c.abort(p, subjects.Errorf(subjects.CodeStorageUnavailable, "committing %s %d: %v", p.kind, id, err), true, now)
	}
	delete(c.pending, id)
	c.lastDone = now
	acts := []Action{NotifyComplete{Complete: subjects.Complete{Epoch: c.cfg.Epoch, Job: c.cfg.Job, Checkpoint: id, Kind: p.kind}, Record: p.record,
		Attempt: c.attempt(p, nil, now)}}
	if p.kind == subjects.KindCheckpoint {
		c.failures = 0
		c.retained = append(c.retained, p.record)
		// Checkpoints may complete out of id order (max_concurrent > 1):
		// keep the oldest first, for retention.
		sort.Slice(c.retained, func(i, j int) bool { return c.retained[i].ID < c.retained[j].ID })
		// Older pending checkpoints are subsumed: they can only complete
		// out of order, and restoring prefers the newest anyway.
		for _, oid := range c.Pending() {
			if op := c.pending[oid]; oid < id && op.kind == subjects.KindCheckpoint && op.phase == collecting {
				acts = append(acts, c.abort(op, subjects.Errorf(subjects.CodeCheckpointAborted, "subsumed by checkpoint %d", id), false, now)...)
			}
		}
		acts = append(acts, c.retain()...)
	}
	if p.sp != nil {
		acts = append(acts, SavepointDone{Request: p.sp.ID, Stop: p.sp.Stop,
			Result: subjects.SavepointResult{Job: c.cfg.Job, Checkpoint: id, Location: p.location}})
	}
	return acts
}

// TaskFailed aborts the pending checkpoints that wait for task's ack: the
// attempt that got the barrier is gone. It does not count as a checkpoint
// failure (the task failure is handled on its own).
func (c *Coordinator) TaskFailed(task int, now time.Time) []Action {
	var acts []Action
	for _, id := range c.Pending() {
		p := c.pending[id]
		if _, acked := p.acks[task]; p.phase == collecting && !acked {
			acts = append(acts, c.abort(p, subjects.Errorf(subjects.CodeCheckpointAborted, "task %d failed during %s %d", task, p.kind, id), false, now)...)
		}
	}
	return acts
}

// Cancel aborts the pending checkpoints still collecting acks and fails
// every queued savepoint: the job is ending. A checkpoint already writing
// its metadata or committing goes on to completion, since its record may
// already be durable in JetStream.
func (c *Coordinator) Cancel(reason string, now time.Time) []Action {
	var acts []Action
	for _, id := range c.Pending() {
		p := c.pending[id]
		if p.phase != collecting {
			continue
		}
		delete(c.pending, id)
		why := subjects.Errorf(subjects.CodeCheckpointAborted, "%s", reason)
		acts = append(acts, NotifyAbort{Kind: p.kind, Abort: subjects.Abort{Epoch: c.cfg.Epoch, Job: c.cfg.Job, Checkpoint: id, Reason: why},
			Attempt: c.attempt(p, why, now)})
		if p.sp != nil {
			acts = append(acts, c.savepointFailed(p.sp, subjects.Errorf(subjects.CodeCheckpointAborted, "%s", reason)))
		}
	}
	for _, sp := range c.queue {
		acts = append(acts, c.savepointFailed(sp, subjects.Errorf(subjects.CodeCheckpointAborted, "%s", reason)))
	}
	c.queue = nil
	return acts
}

func (c *Coordinator) abort(p *pending, reason *subjects.Error, countFailure bool, now time.Time) []Action {
	delete(c.pending, p.id)
	acts := []Action{NotifyAbort{Kind: p.kind, Abort: subjects.Abort{Epoch: c.cfg.Epoch, Job: c.cfg.Job, Checkpoint: p.id, Reason: reason},
		Attempt: c.attempt(p, reason, now)}}
	if p.sp != nil {
		sp := p.sp
		sp.attempts++
		sp.lastErr = reason
		retries := subjects.DefaultSavepointRetries
		if r := c.cfg.Spec.SavepointRetries; r != nil {
			retries = *r
		}
		if sp.attempts <= retries {
			sp.deadline = now.Add(c.cfg.Spec.Timeout.D())
			c.queue = append([]*savepointReq{sp}, c.queue...)
		} else {
			acts = append(acts, c.savepointFailed(sp, reason))
		}
		return acts
	}
	if countFailure {
		c.failures++
		tolerable := subjects.DefaultTolerableFailures
		if t := c.cfg.Spec.TolerableFailures; t != nil {
			tolerable = *t
		}
		if c.failures > tolerable {
			c.failures = 0
			acts = append(acts, FailJob{Reason: subjects.Errorf(subjects.CodeCheckpointDeclined,
				"more than %d consecutive checkpoints failed; last: %s", tolerable, reason.Message)})
		}
	}
	return acts
}

func (c *Coordinator) savepointFailed(sp *savepointReq, reason *subjects.Error) Action {
	err := subjects.Errorf(subjects.CodeSavepointFailed, "savepoint of %s failed after %d attempt(s): %s", c.cfg.Job, sp.attempts, reason.Message)
	return SavepointDone{Request: sp.ID, Result: subjects.SavepointResult{Job: c.cfg.Job, Error: err}}
}

// retain drops the oldest completed checkpoints beyond the spec's Retained
// and deletes the files only they reference.
func (c *Coordinator) retain() []Action {
	n := len(c.retained) - c.cfg.Spec.Retained
	if n <= 0 {
		return nil
	}
	drop, keep := c.retained[:n], c.retained[n:]
	c.retained = append([]subjects.CheckpointRecord(nil), keep...)
	referenced := map[string]bool{}
	for _, r := range keep {
		for _, f := range Files(r) {
			referenced[f] = true
		}
	}
	var acts []Action
	for _, r := range drop {
		var files []string
		for _, f := range Files(r) {
			if !referenced[f] {
				files = append(files, f)
			}
		}
		acts = append(acts, DeleteCheckpoint{Record: r, Files: files})
	}
	return acts
}

// Files returns every object a checkpoint record references, its metadata
// object included, sorted.
func Files(r subjects.CheckpointRecord) []string {
	set := map[string]bool{MetadataKey(r.Location): true}
	for _, t := range r.Tasks {
		for _, f := range t.Handle.Files {
			set[f] = true
		}
	}
	out := make([]string, 0, len(set))
	for f := range set {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// Referenced returns the set of objects the retained checkpoints and the
// acks of pending ones reference: what the orphan sweep must keep.
func (c *Coordinator) Referenced() map[string]bool {
	set := map[string]bool{}
	for _, r := range c.retained {
		for _, f := range Files(r) {
			set[f] = true
		}
	}
	for _, p := range c.pending {
		for _, a := range p.acks {
			for _, f := range a.Handle.Files {
				set[f] = true
			}
		}
	}
	return set
}

func (c *Coordinator) savepointPending() bool {
	for _, p := range c.pending {
		if p.sp != nil {
			return true
		}
	}
	return false
}

func (c *Coordinator) checkpointsPending() int {
	n := 0
	for _, p := range c.pending {
		if p.kind == subjects.KindCheckpoint {
			n++
		}
	}
	return n
}

// attempt returns p's checkpoint history record, ended now: completed when
// failure is nil, else failed or aborted by failure's code. Tasks that had
// not acked are listed with Acked false.
func (c *Coordinator) attempt(p *pending, failure *subjects.Error, now time.Time) subjects.CheckpointAttempt {
	a := subjects.CheckpointAttempt{Job: c.cfg.Job, ID: p.id, Kind: p.kind, Trigger: subjects.TriggerPeriodic,
		Outcome: subjects.OutcomeCompleted, Location: p.location, Parallelism: len(p.attempts),
		Triggered: p.triggered.UTC(), Ended: now.UTC(), Duration: subjects.Duration(now.Sub(p.triggered)), Failure: failure}
	if failure != nil {
		a.Outcome = subjects.OutcomeOf(failure)
	}
	if p.sp != nil {
		a.Trigger = subjects.TriggerUser
		if p.sp.Stop {
			a.Trigger = subjects.TriggerStop
		}
	}
	for i := 0; i < len(p.attempts); i++ {
		t := subjects.TaskAttempt{Task: i, Worker: p.workers[i]}
		if ack, ok := p.acks[i]; ok {
			t.Acked, t.Sync, t.Async, t.Size, t.Uploaded = true, ack.Sync, ack.Async, ack.Handle.Size, ack.Handle.Uploaded
			a.Size += ack.Handle.Size
			a.Uploaded += ack.Handle.Uploaded
		}
		a.Tasks = append(a.Tasks, t)
	}
	return a
}
