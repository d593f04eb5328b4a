package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// Cancel causes of a task's context: errStopped for a task stopped on
// purpose (cancel, fencing, shutdown), which reports canceled; errEnded once
// the task ended by itself, which reports failed.
var (
	errStopped = errors.New("worker: task stopped")
	errEnded   = errors.New("worker: task ended")
)

// task is one attempt of one task of a job: one key-group range, its Pebble
// state, its input consumer, its sink and its checkpoints.
//
// Every field below the line is owned by the task goroutine (run), except
// where noted; NATS callbacks hand it barriers, completions and aborts
// through ctl.
type task struct {
	w   *Worker
	ref subjects.TaskRef
	// epoch is the coordinator epoch the attempt answers to: the deploying
	// one, or the one of the coordinator that adopted it. Written under
	// w.mu (adopt), read by the task goroutine.
	epoch atomic.Uint64
	// lastBarrier is the highest checkpoint id the attempt took a barrier
	// for; heartbeats and registrations report it.
	lastBarrier atomic.Uint64
	spec        subjects.JobSpec
	rng         keygroup.Range
	m           int
	restore     []statebackend.Handle
	op          Operator
	dir         string
	log         *slog.Logger
	older       []*task // superseded attempts to wait for before starting

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	ctl    chan any // *subjects.Barrier, *subjects.Complete, *subjects.Abort, adopted

	// beMu guards be against Close for state queries, which run on NATS
	// goroutines; the task goroutine writes be only under it.
	beMu sync.RWMutex
	be   *statebackend.Backend

	counters taskCounters // read by heartbeats and metric scrapes

	// ---
	sink     *sink
	batch    *statebackend.Batch
	cache    *stateCache
	octx     Context
	clock    taskClock
	timers   timerQueue
	outs     outputs     // outputs not yet handed to the sink
	pending  []*nats.Msg // dead letters not yet handed to the sink
	n        int         // events applied since the last commit
	inputs   []*input    // the streams the task reads, each with its position
	barriers barrierLog  // barriers taken, so that a repeated one is ignored
	ckpts    map[uint64]*checkpoint
	// barrierEpoch is the newest epoch whose barrier the attempt took, and
	// priorBarrier the highest checkpoint id taken under older epochs: a
	// coordinator that adopted the attempt must trigger above it.
	barrierEpoch, priorBarrier uint64
	asyncWG                    sync.WaitGroup
	lag                        uint64 // input num_pending at the last event read

	// skipped counts the events this attempt skipped (bad()); heartbeats
	// read it from other goroutines.
	skipped atomic.Uint64
}

func newTask(w *Worker, d *subjects.DeployTask, op Operator, older []*task) *task {
	ctx, cancel := context.WithCancelCause(w.base)
	t := &task{
		w:       w,
		ref:     d.TaskRef,
		spec:    d.Spec,
		rng:     d.Range,
		m:       d.Spec.MaxParallelism,
		restore: d.Restore,
		op:      op,
		dir:     filepath.Join(w.tasksDir(), fmt.Sprintf("%s-%d-%d", d.Job, d.Task, d.Attempt)),
		log:     w.log.With("job", d.Job, "task", d.Task, "attempt", d.Attempt),
		older:   older,
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		ctl:     make(chan any, 64),
		ckpts:   map[uint64]*checkpoint{},
	}
	t.epoch.Store(d.Epoch)
	return t
}

// adopt moves the attempt to the coordinator of epoch, which adopted it:
// from now on it takes that coordinator's barriers and ignores the older
// ones', and its checkpoints of older epochs still in flight are aborted
// on the task goroutine. The caller holds w.mu.
func (t *task) adopt(epoch uint64) {
	t.epoch.Store(epoch)
	go func() {
		select {
		case t.ctl <- adopted{epoch: epoch}:
		case <-t.ctx.Done():
		}
	}()
}

// stop makes the task end and report canceled. It does not wait.
func (t *task) stop() { t.cancel(errStopped) }

// run executes the attempt and reports how it ended.
func (t *task) run() {
	defer close(t.done)
	for _, o := range t.older {
		select {
		case <-o.done:
		case <-t.ctx.Done():
		case <-time.After(supersedeWait):
			t.log.Warn("superseded attempt did not stop in time", "attempt", o.ref.Attempt)
		}
	}
	var err error
	if t.ctx.Err() == nil {
		err = t.execute()
	}
	st := subjects.TaskFailed
	if errors.Is(context.Cause(t.ctx), errStopped) {
		st, err = subjects.TaskCanceled, nil
	}
	var cause *subjects.Error
	if err != nil {
		cause = subjects.AsError(err)
		t.log.Warn("task failed", "err", err)
	} else {
		t.log.Info("task stopped", "state", st.String())
	}
	t.w.taskStateChanged(t, st, cause)
}

// execute runs the attempt until it is stopped or fails. Cleanup is
// ordered: the consumer and subscriptions stop first, then asynchronous
// checkpoint uploads are canceled and waited for, then the state is closed
// and its directory removed.
func (t *task) execute() (err error) {
	if err := t.openState(); err != nil {
		return err
	}
	defer func() {
		t.beMu.Lock()
		cerr := t.be.Close()
		switch {
		case errors.Is(cerr, statebackend.ErrBroken):
			t.log.Error("state store abandoned after a failed commit", "err", cerr)
		case cerr != nil && err == nil && !errors.Is(cerr, statebackend.ErrClosed):
			err = subjects.Errorf(subjects.CodeInternal, "close state: %v", cerr)
		}
		t.be = nil
		t.beMu.Unlock()
		if rerr := os.RemoveAll(t.dir); rerr != nil {
			t.log.Warn("removing task directory", "dir", t.dir, "err", rerr)
		}
	}()
	defer t.asyncWG.Wait()
	defer t.cancel(errEnded) // ends async uploads however execute returns

	t.sink, err = newSink(t.ctx, t.w.nc, []string{t.spec.Sink.Subject, t.spec.Sink.DeadLetter}, t.w.cfg.MaxPendingOutputs, t.log)
	if err != nil {
		return err
	}
	defer t.sink.close()

	subs, err := t.subscribe()
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	if err != nil {
		return err
	}

	queue, inputErr, stopInput, err := t.consume()
	if err != nil {
		return err
	}
	defer stopInput()

	t.batch = t.be.NewBatch()
	defer func() { _ = t.batch.Close() }()
	t.cache = newStateCache(t.batch, t.w.cfg.StateCacheEntries, t.w.cfg.StateCacheBytes)
	t.octx.st = t.cache
	t.octx.out = &t.outs
	t.clock.input = t.inputTime
	t.octx.clock, t.octx.timers = &t.clock, &t.timers
	if t.spec.Sink.Emit == subjects.EmitLatest {
		t.outs.latest = map[string]int{}
	}
	if err := loadTimers(&t.timers, t.be); err != nil {
		return subjects.Errorf(subjects.CodeCorruptState, "load timers: %v", err)
	}

	t.w.taskStateChanged(t, subjects.TaskRunning, nil)
	t.log.Info("task running", "range", t.rng.String(), "inputs", t.inputNames(), "restored", len(t.restore) > 0)
	return t.loop(queue, inputErr)
}

// openState opens a fresh backend or restores one from the deployment's
// handles.
func (t *task) openState() error {
	if err := os.RemoveAll(t.dir); err != nil {
		return subjects.Errorf(subjects.CodeInternal, "clean task directory: %v", err)
	}
	opts := statebackend.Options{MaxParallelism: t.m, KeyGroups: t.rng, Logger: pebbleLogger{t.log}, MemTableSize: t.w.cfg.MemTableSize}
	var be *statebackend.Backend
	var err error
	if len(t.restore) > 0 {
		be, err = statebackend.Restore(t.ctx, t.w.cfg.Store, t.dir, opts, t.restore)
	} else {
		be, err = statebackend.Open(t.dir, opts)
	}
	if err != nil {
		_ = os.RemoveAll(t.dir)
		if statebackend.IsNoSpace(err) {
			return t.noSpace("open state", err)
		}
		if len(t.restore) == 0 {
			return subjects.Errorf(subjects.CodeInternal, "open state in %s: %v", t.dir, err)
		}
		return restoreError(err)
	}
	t.beMu.Lock()
	t.be = be
	t.beMu.Unlock()
	return nil
}

// noSpace is the error of a task whose state storage is full: a storage
// error, which makes the coordinator place the task on another worker. It
// tells the worker at once, so that its next heartbeat says it is unhealthy.
func (t *task) noSpace(what string, err error) error {
	t.w.diskFull(err)
	return subjects.Errorf(subjects.CodeStorage, "%s of job %s task %d on worker %s: %v", what, t.ref.Job, t.ref.Task, t.w.name, err)
}

// restoreError gives a restore error its code.
func restoreError(err error) error {
	var missing *statebackend.MissingError
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, statebackend.ErrCorrupt), errors.As(err, &missing), errors.Is(err, objectstore.ErrNotFound),
		errors.Is(err, statebackend.ErrInvalidHandle), errors.Is(err, statebackend.ErrUnknownFormat):
		return subjects.Errorf(subjects.CodeCorruptState, "restore: %v", err)
	case errors.Is(err, statebackend.ErrNotCovered), errors.Is(err, statebackend.ErrOverlap),
		errors.Is(err, statebackend.ErrMaxParallelismMismatch), errors.Is(err, statebackend.ErrInvalidOptions):
		return subjects.Errorf(subjects.CodeInvalidArgument, "restore: %v", err)
	}
	return subjects.Errorf(subjects.CodeStorageUnavailable, "restore: %v", err)
}

type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }

// subscribe installs the task's subscriptions: state queries of its groups
// and the job's checkpoint plane.
func (t *task) subscribe() ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	nc, ns, job := t.w.nc, t.w.ns, t.ref.Job
	for g := t.rng.Start; g <= t.rng.End; g++ {
		s, err := nc.Subscribe(ns.StateQuery(job, g), func(msg *nats.Msg) { t.onQuery(msg, g) })
		if err != nil {
			return subs, subjects.Errorf(subjects.CodeUnavailable, "subscribe state queries: %v", err)
		}
		subs = append(subs, s)
	}
	for _, c := range []struct {
		subject string
		msg     func() subjects.Message
	}{
		{ns.Barrier(job), func() subjects.Message { return new(subjects.Barrier) }},
		{ns.Complete(job), func() subjects.Message { return new(subjects.Complete) }},
		{ns.Abort(job), func() subjects.Message { return new(subjects.Abort) }},
	} {
		s, err := nc.Subscribe(c.subject, func(msg *nats.Msg) {
			m := c.msg()
			if err := subjects.Decode(msg.Data, m); err != nil {
				t.log.Warn("bad checkpoint message", "subject", msg.Subject, "err", err)
				return
			}
			select {
			case t.ctl <- m:
			default:
				t.log.Warn("checkpoint messages pile up; dropping one", "type", m.MsgType().String())
			}
		})
		if err != nil {
			return subs, subjects.Errorf(subjects.CodeUnavailable, "subscribe %s: %v", c.subject, err)
		}
		subs = append(subs, s)
	}
	// The subscriptions must be in place before the task reports running,
	// so that a barrier sent after that reaches it.
	fctx, cancel := context.WithTimeout(t.ctx, t.w.cfg.RequestTimeout)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		return subs, subjects.Errorf(subjects.CodeUnavailable, "subscribe: %v", err)
	}
	return subs, nil
}

// onQuery answers a state query for group g from committed state.
func (t *task) onQuery(msg *nats.Msg, g int) {
	var q subjects.StateQuery
	if err := subjects.Decode(msg.Data, &q); err != nil {
		subjects.Reply(msg, &subjects.StateResult{Group: g, Task: t.ref.Task, Error: subjects.AsError(err)})
		return
	}
	res := subjects.StateResult{Job: t.ref.Job, Key: q.Key, Group: g, Task: t.ref.Task}
	if q.Job != "" && q.Job != t.ref.Job {
		res.Error = subjects.Errorf(subjects.CodeInvalidArgument, "query for job %q reached job %q", q.Job, t.ref.Job)
		subjects.Reply(msg, &res)
		return
	}
	if kg := keygroup.Of([]byte(q.Key), t.m); kg != g {
		res.Error = subjects.Errorf(subjects.CodeInvalidArgument, "key %q is in key group %d, not %d", q.Key, kg, g)
		subjects.Reply(msg, &res)
		return
	}
	t.beMu.RLock()
	var v []byte
	err := statebackend.ErrClosed
	if t.be != nil {
		v, err = t.be.Get(ValueState, []byte(q.Key))
	}
	t.beMu.RUnlock()
	switch {
	case errors.Is(err, statebackend.ErrNotFound):
	case errors.Is(err, statebackend.ErrClosed):
		res.Error = subjects.Errorf(subjects.CodeUnavailable, "task %d of %s is stopping", t.ref.Task, t.ref.Job)
	case err != nil:
		res.Error = subjects.Errorf(subjects.CodeInternal, "read state: %v", err)
	default:
		res.Found, res.Value = true, asJSON(v)
	}
	subjects.Reply(msg, &res)
}

// inputEvent is one input event, decoded once where it enters the task (on
// the reader goroutine): everything the apply path needs, so that nothing
// is parsed or hashed twice.
type inputEvent struct {
	key     string // the key token: a substring of subject, not a copy
	subject string // the subject the producer published to
	group   int
	seq     uint64 // stream sequence
	time    time.Time
	data    []byte
	pending uint64 // messages left in the input after this one
	// err is why the event is unusable (a malformed subject, no key, a
	// key filed under the wrong group); what says what was wrong. An
	// event without a group has group -1.
	err  error
	what string
	// in is the index of the event's stream in task.inputs.
	in int
	// gap, when set, is not an event: events of the stream were evicted
	// before this task read them.
	gap *subjects.InputGap
}

// loop applies input events in rounds (whatever the readers queued, at
// most BatchSize) and, between rounds, publishes their outputs and serves
// checkpoint messages, until the task is stopped or fails. State changes wait in the write-back cache and
// are committed (with the applied marks) every FlushInterval, when the cache
// is full, and at every barrier.
func (t *task) loop(in *eventQueue, inputErr <-chan error) error {
	evs := make([]inputEvent, 0, t.w.cfg.BatchSize)
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	armed := false
	wake := time.NewTimer(time.Hour) // the earliest timer is due
	defer wake.Stop()
	for {
		t.armWake(wake)
		select {
		case <-t.ctx.Done():
			return context.Cause(t.ctx)
		case err := <-inputErr:
			return subjects.Errorf(subjects.CodeStorageUnavailable, "input streams %s: %v", t.inputNames(), err)
		case <-t.sink.failed:
			return t.sink.err()
		case <-in.ready:
			t.clock.now = t.w.cfg.Clock.Now()
			evs = in.take(evs)
			for i := range evs {
				if err := t.apply(&evs[i]); err != nil {
					return err
				}
			}
		case <-wake.C:
			t.clock.now = t.w.cfg.Clock.Now()
		case <-flush.C:
			armed = false
			if err := t.commit(); err != nil {
				return err
			}
			continue
		case m := <-t.ctl:
			if err := t.control(m); err != nil {
				return err
			}
			continue
		}
		// After a round of events or a wake-up: fire due timers, then
		// publish, and commit when due.
		if err := t.fireTimers(); err != nil {
			return err
		}
		if t.cache.full() {
			if err := t.commit(); err != nil {
				return err
			}
			continue
		}
		if err := t.publishOutputs(); err != nil {
			return err
		}
		if !armed && t.n > 0 {
			flush.Reset(t.w.cfg.FlushInterval)
			armed = true
		}
	}
}

// timerPoll bounds how long the loop sleeps towards the earliest timer, so
// that a Clock that is not the wall clock (a test's) is read again soon.
const timerPoll = time.Second

// armWake sets wake to fire when the earliest timer is due.
func (t *task) armWake(wake *time.Timer) {
	next, ok := t.timers.next()
	if !ok {
		wake.Stop()
		return
	}
	d := time.Duration(next - t.w.cfg.Clock.Now().UnixNano())
	wake.Reset(min(max(d, 0), timerPoll))
}

// fireTimers calls OnTimer for every timer due at the task's current time,
// earliest first. Each firing removes the timer from its key's state in the
// same commit as OnTimer's changes.
func (t *task) fireTimers() error {
	now := t.clock.now.UnixNano()
	if next, ok := t.timers.next(); !ok || next > now {
		return nil
	}
	op, _ := t.op.(TimerOperator)
	for {
		r, ok := t.timers.due(now)
		if !ok {
			return nil
		}
		t.octx.reset(r.key, r.group, 0)
		t.octx.inTimer, t.octx.timerAt = true, r.at
		removed, err := t.octx.editTimer(r.domain, r.at, false)
		if err != nil {
			return subjects.Errorf(subjects.CodeInternal, "timer of key %q: %v", r.key, err)
		}
		if !removed {
			continue // deleted, or queued twice
		}
		t.n++
		if op == nil {
			continue
		}
		tm := Timer{Key: r.key, Group: r.group, Time: time.Unix(0, r.at).UTC(), Domain: r.domain}
		if err := op.OnTimer(&t.octx, tm); err != nil {
			t.octx.dropEmitted()
			if !errors.Is(err, ErrBadEvent) {
				return subjects.Errorf(subjects.CodeInternal, "operator %s: timer of key %q at %s: %v", t.spec.Operator.Type, r.key, tm.Time.Format(time.RFC3339Nano), err)
			}
			t.log.Warn("timer output dropped", "key", r.key, "at", tm.Time, "err", err)
		}
	}
}

// apply applies one input event: its state changes go to the cache, its
// outputs to t.outs and its group's applied mark to the batch.
func (t *task) apply(ev *inputEvent) error {
	if ev.gap != nil {
		return t.onGap(*ev.gap)
	}
	in := t.inputs[ev.in]
	in.position = max(in.position, ev.seq)
	// lag sums what every input still holds after its last event read
	// (in.pending is set below).
	t.lag = t.lag - in.pending + ev.pending
	if ev.time.After(in.time) {
		in.time = ev.time
	}
	in.pending = ev.pending
	if ev.group < 0 {
		// Every task reading the stream sees the event; the one owning
		// the stream's first group reports it. Its dead letter names that
		// group (-1 for the one stream of an unpartitioned input), so that
		// its id is unique.
		og := -1
		if t.spec.Partitions() > 0 {
			og = in.Groups.Start
		}
		if t.rng.Contains(max(og, 0)) {
			t.bad(ev.what, ev.subject, og, in.Name, ev.seq, ev.data, ev.err)
		}
		return nil
	}
	if !t.rng.Contains(ev.group) {
		return nil // another task's (an unpartitioned input, or a partition shared above the partition count)
	}
	if ev.seq <= t.batch.Applied(ev.group) {
		return nil // applied before: a replay after a restore or a consumer reset
	}
	t.n++
	if ev.err != nil {
		t.bad(ev.what, ev.subject, ev.group, in.Name, ev.seq, ev.data, ev.err)
		return t.setApplied(ev.group, ev.seq)
	}
	t.octx.reset(ev.key, ev.group, ev.seq)
	err := t.op.Process(&t.octx, Event{Key: ev.key, Subject: ev.subject, Data: ev.data, Time: ev.time, Group: ev.group, Seq: ev.seq})
	if err != nil {
		t.octx.dropEmitted()
		if !errors.Is(err, ErrBadEvent) {
			return subjects.Errorf(subjects.CodeInternal, "operator %s at stream %s sequence %d: %v", t.spec.Operator.Type, in.Name, ev.seq, err)
		}
		t.bad("event the operator cannot use", ev.subject, ev.group, in.Name, ev.seq, ev.data, err)
	}
	return t.setApplied(ev.group, ev.seq)
}

func (t *task) setApplied(g int, seq uint64) error {
	if err := t.batch.SetApplied(g, seq); err != nil {
		return subjects.Errorf(subjects.CodeInternal, "%v", err)
	}
	return nil
}

// bad counts a skipped event, logs it sparingly and, if the job has a
// dead-letter subject, queues the event for it with the reason: published
// after the commit that records the skip, like an output. group is -1 when
// the event's group is unknown.
func (t *task) bad(what, subject string, group int, stream string, seq uint64, data []byte, err error) {
	n := t.skipped.Add(1)
	if n <= 10 || n%1000 == 0 {
		t.log.Warn("skipping "+what, "subject", subject, "seq", seq, "err", err, "skipped", n)
	}
	if t.spec.Sink.DeadLetter == "" {
		return
	}
	t.pending = append(t.pending, &nats.Msg{Subject: t.spec.Sink.DeadLetter, Data: data, Header: nats.Header{
		nats.MsgIdHdr:                {subjects.DeadLetterMsgID(t.ref.Job, group, seq)},
		subjects.HdrDeadLetterReason: {what + ": " + err.Error()},
		subjects.HdrSourceSubject:    {subject},
		subjects.HdrSourceSeq:        {strconv.FormatUint(seq, 10)},
		subjects.HdrSourceStream:     {stream},
		subjects.HdrJob:              {t.ref.Job},
	}})
}

// markPosition raises the applied mark of every owned group to the
// position of the stream that stores it. That is sound because each input
// is gapless from the lowest applied mark of its groups on: every event of
// the task's groups up to the position has been applied (or skipped as
// applied before, or reported as a gap). It keeps a group without recent
// events from holding a restore's replay back to its old mark (or, for a
// group that never had an event, to the start of the stream).
func (t *task) markPosition() error {
	for _, in := range t.inputs {
		r, ok := in.Groups.Intersect(t.rng)
		if !ok || in.position == 0 {
			continue
		}
		for g := r.Start; g <= r.End; g++ {
			if t.batch.Applied(g) < in.position {
				if err := t.setApplied(g, in.position); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// publishOutputs hands the outputs and dead letters collected so far to the sink.
//
// Outputs may be published before the state change they report is
// committed to Pebble: the task's Pebble state is never what a later attempt
// starts from (a failed task's next attempt restores from a checkpoint and
// replays the events after it, publishing their outputs again under the
// same ids), and a checkpoint waits until every output published before its
// barrier is confirmed.
func (t *task) publishOutputs() error {
	t.counters.outputs(len(t.outs.recs))
	if err := t.outs.publishAll(t.ctx, t.sink, t.spec.Sink.Subject, t.ref.Job); err != nil {
		return err
	}
	for i, m := range t.pending {
		if err := t.sink.publish(t.ctx, m); err != nil {
			return err
		}
		t.pending[i] = nil
	}
	t.pending = t.pending[:0]
	return nil
}

// commit flushes the state cache into the batch and commits it with the
// groups' applied marks, atomically, then publishes the outputs collected
// since the last round.
func (t *task) commit() error {
	if err := t.cache.flush(); err != nil {
		return subjects.Errorf(subjects.CodeInternal, "flush state: %v", err)
	}
	if err := t.batch.Commit(); err != nil {
		t.cache.reset()
		if statebackend.IsNoSpace(err) {
			return t.noSpace("commit state", err)
		}
		return subjects.Errorf(subjects.CodeInternal, "commit state: %v", err)
	}
	t.cache.committed()
	t.counters.events(t.n, t.lag)
	t.n = 0
	return t.publishOutputs()
}
