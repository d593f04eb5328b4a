package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/subjects"
)

// Worker is a flotilla worker: a number of slots that run tasks for the
// coordinator. Create it with New and start it with Run.
//
// All protocol decisions about slots and epochs are made by a slotTable
// (pure, see slots.go) under mu; the Worker carries them out over NATS and
// runs the tasks. NATS callbacks never block on the network: requests that
// wait for an answer (slot offers) and waits for a task to stop run on
// their own goroutines.
type Worker struct {
	cfg  Config
	name string
	ns   subjects.Namespace
	nc   *nats.Conn
	log  *slog.Logger
	ops  []string

	mu       sync.Mutex
	table    *slotTable
	instance string // of the current registration; "" before the first
	tasks    map[subjects.TaskRef]*task
	base     context.Context // parent of every task's context; nil unless running
	closing  bool
	started  bool

	taskWG sync.WaitGroup
}

// New checks cfg, settles the worker's identity (creating DataDir and the
// identity file if needed) and returns a worker that is not yet running.
func New(cfg Config) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("worker: data dir: %w", err)
	}
	name, err := identity(cfg.DataDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	return &Worker{
		cfg:   cfg,
		name:  name,
		ns:    cfg.Namespace,
		nc:    cfg.Conn,
		log:   cfg.Logger.With("component", "worker", "worker", name),
		ops:   Operators(),
		table: newSlotTable(cfg.Slots),
		tasks: map[subjects.TaskRef]*task{},
	}, nil
}

// Name returns the worker's identity.
func (w *Worker) Name() string { return w.name }

// Instance returns the instance id of the current registration, or "" if
// the worker has not registered yet.
func (w *Worker) Instance() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.instance
}

// Epoch returns the highest coordinator epoch the worker has seen.
func (w *Worker) Epoch() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.table.epoch
}

// Slots returns a snapshot of the worker's slots.
func (w *Worker) Slots() []SlotInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.table.view()
}

// tasksDir is where tasks keep their state.
func (w *Worker) tasksDir() string { return filepath.Join(w.cfg.DataDir, "tasks") }

// Run registers the worker, heartbeats, and serves slot requests,
// deployments and cancellations until ctx is done. It then stops every task
// (each reports canceled), waits for them and returns nil. Run may be called
// once.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("worker: Run called twice")
	}
	w.started = true
	w.mu.Unlock()
	// One process per data directory: two workers sharing one would be the
	// same worker, and each would delete the other's task state.
	lock, err := lockDataDir(w.cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	base, cancelTasks := context.WithCancel(context.Background())
	defer cancelTasks()
	w.mu.Lock()
	w.base = base
	w.mu.Unlock()

	// Task directories left by an earlier process belong to attempts that
	// are gone: their tasks were failed over.
	if err := os.RemoveAll(w.tasksDir()); err != nil {
		return fmt.Errorf("worker: clean tasks dir: %w", err)
	}
	if err := os.MkdirAll(w.tasksDir(), 0o755); err != nil {
		return fmt.Errorf("worker: tasks dir: %w", err)
	}

	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		w.shutdown()
		w.log.Info("worker stopped")
	}()
	for _, s := range []struct {
		subject string
		h       nats.MsgHandler
	}{
		{w.ns.SlotRequest(w.name), w.onSlotRequest},
		{w.ns.Deploy(w.name), w.onDeploy},
		{w.ns.Cancel(w.name), w.onCancel},
	} {
		sub, err := w.nc.Subscribe(s.subject, s.h)
		if err != nil {
			return fmt.Errorf("worker: subscribe %s: %w", s.subject, err)
		}
		subs = append(subs, sub)
	}
	w.log.Info("worker starting", "slots", w.cfg.Slots, "operators", w.ops, "prefix", w.ns.Prefix())
	defer w.leave()

	for ctx.Err() == nil && !w.nc.IsClosed() {
		resp, ok := w.register(ctx)
		if !ok {
			break
		}
		w.heartbeat(ctx, resp.HeartbeatInterval.D())
	}
	if ctx.Err() == nil {
		// A closed connection never comes back (an open one reconnects by
		// itself): stop the tasks, which can no longer be reached.
		w.log.Error("NATS connection closed; stopping tasks and waiting to be stopped")
		w.shutdown()
		<-ctx.Done()
	}
	return nil
}

// leave tells the coordinator, best effort, that this worker is going, so
// that its tasks move now rather than after the heartbeat timeout. It runs
// before the tasks stop: nothing new can be deployed to a worker the
// coordinator has let go.
func (w *Worker) leave() {
	w.mu.Lock()
	hb := subjects.Heartbeat{Worker: w.name, Instance: w.instance, Epoch: w.table.epoch, Slots: w.slotReport(), Leaving: true}
	w.mu.Unlock()
	if hb.Instance == "" || w.nc.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var resp subjects.HeartbeatResponse
	if err := w.request(ctx, w.ns.Heartbeat(w.name), &hb, &resp, time.Second); err != nil {
		w.log.Debug("leaving: coordinator not told", "err", err)
	}
}

// shutdown stops every task and waits for them, for at most
// ShutdownTimeout: a task stuck in a call that never returns (NATS or a disk
// that does not answer) is named in an error log and abandoned, so that the
// process can exit. It may be called more than once.
func (w *Worker) shutdown() {
	w.mu.Lock()
	w.closing = true
	stop := w.table.stopAll()
	w.mu.Unlock()
	w.stopTasks(stop)
	stopped := make(chan struct{})
	go func() {
		w.taskWG.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.mu.Lock()
		var stuck []string
		for ref := range w.tasks {
			stuck = append(stuck, fmt.Sprintf("%s/%d/%d", ref.Job, ref.Task, ref.Attempt))
		}
		w.mu.Unlock()
		w.log.Error("tasks did not stop within the shutdown timeout; abandoning them", "tasks", stuck, "timeout", w.cfg.ShutdownTimeout)
	}
}

// request sends req on subject and decodes the answer into resp. A missing
// answer is a CodeTimeout error.
func (w *Worker) request(ctx context.Context, subject string, req, resp subjects.Message, timeout time.Duration) error {
	b, err := subjects.Encode(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := w.nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return subjects.Errorf(subjects.CodeTimeout, "%s: %v", subject, err)
	}
	return subjects.Decode(msg.Data, resp)
}

// register requests registration, retrying with capped, jittered
// exponential backoff until the coordinator accepts it or ctx is done.
func (w *Worker) register(ctx context.Context) (subjects.RegisterResponse, bool) {
	backoff := minRegisterBackoff
	for attempt := 1; ; attempt++ {
		w.mu.Lock()
		gen := w.table.nextGen()
		req := subjects.RegisterRequest{Worker: w.name, Slots: w.cfg.Slots, Operators: w.ops, Host: w.cfg.Host, Epoch: w.table.epoch}
		for _, s := range w.slotReport() {
			if t := w.tasks[subjects.TaskRef{Job: s.Job, Task: s.Task, Attempt: s.Attempt}]; t != nil && s.Attempt != 0 {
				r := t.rng
				s.Range = &r
				req.Running = append(req.Running, s)
			}
		}
		w.mu.Unlock()
		var resp subjects.RegisterResponse
		err := w.request(ctx, w.ns.Register(), &req, &resp, w.cfg.RequestTimeout)
		if err == nil && resp.Error != nil {
			err = resp.Error
		}
		if err == nil {
			w.mu.Lock()
			stop, kept, rerr := w.table.registered(resp.Epoch, gen, resp.Adopted)
			if rerr == nil {
				w.instance = resp.Instance
			}
			for _, ref := range kept {
				if t := w.tasks[ref]; t != nil {
					t.adopt(resp.Epoch)
				}
			}
			w.mu.Unlock()
			w.stopTasks(stop)
			if rerr == nil {
				w.log.Info("registered", "instance", resp.Instance, "epoch", resp.Epoch,
					"heartbeat", resp.HeartbeatInterval.D(), "fenced_tasks", len(stop), "adopted_tasks", len(kept))
				return resp, true
			}
			err = rerr
		}
		if ctx.Err() != nil || w.nc.IsClosed() {
			return resp, false
		}
		// Jitter in [backoff/2, backoff) spreads a fleet's retries.
		d := backoff/2 + rand.N(backoff/2)
		if attempt == 1 || attempt%10 == 0 {
			w.log.Warn("registration not answered; retrying", "attempt", attempt, "err", err, "in", d)
		}
		select {
		case <-ctx.Done():
			return resp, false
		case <-time.After(d):
		}
		backoff = min(2*backoff, maxRegisterBackoff)
	}
}

// slotReport returns the slot report of a heartbeat, with each running
// attempt's count of skipped events. The caller holds w.mu.
func (w *Worker) slotReport() []subjects.SlotReport {
	r := w.table.report()
	for i := range r {
		if r[i].Attempt == 0 {
			continue
		}
		if t := w.tasks[subjects.TaskRef{Job: r[i].Job, Task: r[i].Task, Attempt: r[i].Attempt}]; t != nil {
			r[i].Skipped = t.skipped.Load()
			r[i].Checkpoint = t.lastBarrier.Load()
		}
	}
	return r
}

// heartbeat sends a heartbeat with the slot report every interval until
// ctx is done or the coordinator answers CodeUnknownWorker. A missing answer
// changes nothing: the worker keeps its tasks and keeps trying.
func (w *Worker) heartbeat(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	missed := 0
	health := "" // the last heartbeat's Unhealthy
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		slots := w.statsReport(time.Now())
		sick := w.unhealthy()
		if sick != health {
			if sick != "" {
				w.log.Error("worker unhealthy: no new tasks", "reason", sick)
			} else {
				w.log.Info("worker healthy again: takes new tasks", "was", health)
			}
			health = sick
		}
		w.mu.Lock()
		hb := subjects.Heartbeat{Worker: w.name, Instance: w.instance, Epoch: w.table.epoch, Slots: slots, Unhealthy: sick}
		w.mu.Unlock()
		var resp subjects.HeartbeatResponse
		err := w.request(ctx, w.ns.Heartbeat(w.name), &hb, &resp, interval)
		if err != nil {
			if ctx.Err() != nil || w.nc.IsClosed() {
				return
			}
			missed++
			if missed == 1 || missed%10 == 0 {
				w.log.Warn("heartbeat not answered; keeping tasks and retrying", "missed", missed, "err", err)
			}
			continue
		}
		missed = 0
		if len(resp.Release) > 0 {
			w.mu.Lock()
			stop := w.table.release(resp.Release)
			w.mu.Unlock()
			w.log.Info("freeing slots the coordinator no longer allocates", "allocations", resp.Release, "stopping", len(stop))
			w.stopTasks(stop)
		}
		if resp.Error != nil {
			if resp.Error.Code == subjects.CodeUnknownWorker {
				w.log.Info("coordinator does not know this worker; registering again", "epoch", resp.Epoch)
				return
			}
			w.log.Warn("heartbeat refused", "err", resp.Error)
		}
	}
}

func (w *Worker) notMe(what, worker string) error {
	if worker != w.name {
		return subjects.Errorf(subjects.CodeInvalidArgument, "%s for worker %q reached worker %q", what, worker, w.name)
	}
	return nil
}

func (w *Worker) onSlotRequest(msg *nats.Msg) {
	var req subjects.SlotRequest
	err := subjects.Decode(msg.Data, &req)
	if err == nil {
		err = w.notMe("slot request", req.Worker)
	}
	if err != nil {
		subjects.Reply(msg, &subjects.SlotResponse{Slot: -1, Error: subjects.AsError(err)})
		return
	}
	w.mu.Lock()
	idx, offer, stop, err := w.table.reserve(&req)
	instance := w.instance
	w.mu.Unlock()
	w.stopTasks(stop)
	if err != nil {
		w.log.Info("slot request refused", "job", req.Job, "allocation", req.Allocation, "err", err)
		subjects.Reply(msg, &subjects.SlotResponse{Slot: -1, Error: subjects.AsError(err)})
		return
	}
	subjects.Reply(msg, &subjects.SlotResponse{Slot: idx})
	if offer {
		go w.offer(req, idx, instance)
	}
}

// offer offers reserved slot idx to the job master and records its answer;
// no answer frees the slot.
func (w *Worker) offer(req subjects.SlotRequest, idx int, instance string) {
	o := subjects.SlotOffer{Epoch: req.Epoch, Worker: w.name, Instance: instance, Job: req.Job,
		Slots: []subjects.OfferedSlot{{Slot: idx, Allocation: req.Allocation}}}
	var resp subjects.OfferResponse
	err := w.request(context.Background(), w.ns.Offer(req.Job, w.name), &o, &resp, w.cfg.RequestTimeout)
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	accepted := false
	if err == nil {
		for _, a := range resp.Accepted {
			accepted = accepted || a == req.Allocation
		}
	}
	w.mu.Lock()
	w.table.offered(idx, req.Allocation, accepted)
	w.mu.Unlock()
	w.log.Debug("slot offered", "slot", idx, "job", req.Job, "allocation", req.Allocation, "accepted", accepted, "err", err)
}

func (w *Worker) onDeploy(msg *nats.Msg) {
	var d subjects.DeployTask
	err := subjects.Decode(msg.Data, &d)
	if err == nil {
		err = w.notMe("deployment", d.Worker)
	}
	var op Operator
	if err == nil {
		op, err = newOperator(d.Spec.Operator)
	}
	if err == nil {
		err = checkRestoredOperator(&d, op)
	}
	if err != nil {
		w.log.Warn("deployment refused", "job", d.Job, "task", d.Task, "attempt", d.Attempt, "err", err)
		subjects.Reply(msg, &subjects.Response{Error: subjects.AsError(err)})
		return
	}
	w.mu.Lock()
	if w.closing || w.base == nil {
		w.mu.Unlock()
		subjects.Reply(msg, &subjects.Response{Error: subjects.Errorf(subjects.CodeUnavailable, "worker %s is shutting down", w.name)})
		return
	}
	stop, dup, err := w.table.deploy(&d)
	var t *task
	if err == nil && !dup {
		var older []*task
		for _, ref := range stop {
			if o := w.tasks[ref]; o != nil {
				older = append(older, o)
			}
		}
		t = newTask(w, &d, op, older)
		w.tasks[d.TaskRef] = t
		w.taskWG.Add(1)
	}
	w.mu.Unlock()
	w.stopTasks(stop)
	if err != nil {
		w.log.Warn("deployment refused", "job", d.Job, "task", d.Task, "attempt", d.Attempt, "err", err)
		subjects.Reply(msg, &subjects.Response{Error: subjects.AsError(err)})
		return
	}
	if t != nil {
		w.log.Info("deploying task", "job", d.Job, "task", d.Task, "attempt", d.Attempt, "range", d.Range.String(), "restore", len(d.Restore))
		w.publishStatus(d.TaskRef, subjects.TaskDeploying, nil)
	}
	subjects.Reply(msg, &subjects.Response{})
	if t != nil {
		go func() {
			defer w.taskWG.Done()
			t.run()
		}()
	}
}

// cancelWait bounds how long a cancellation waits for the attempt to stop
// before it is answered (within the coordinator's request timeout);
// supersedeWait how long a new attempt waits for the attempts it supersedes
// to release their resources before it starts anyway.
const (
	cancelWait    = 3 * time.Second
	supersedeWait = 10 * time.Second
)

func (w *Worker) onCancel(msg *nats.Msg) {
	var c subjects.CancelTask
	err := subjects.Decode(msg.Data, &c)
	if err == nil {
		err = w.notMe("cancellation", c.Worker)
	}
	if err != nil {
		subjects.Reply(msg, &subjects.Response{Error: subjects.AsError(err)})
		return
	}
	w.mu.Lock()
	stop, err := w.table.cancel(&c)
	var stopping []*task
	for _, ref := range stop {
		if t := w.tasks[ref]; t != nil {
			stopping = append(stopping, t)
		}
	}
	w.mu.Unlock()
	w.stopTasks(stop)
	if err != nil {
		subjects.Reply(msg, &subjects.Response{Error: subjects.AsError(err)})
		return
	}
	go func() {
		timeout := time.After(cancelWait)
		for _, t := range stopping {
			select {
			case <-t.done:
			case <-timeout:
			}
		}
		subjects.Reply(msg, &subjects.Response{})
	}()
}

// stopTasks stops the given attempts; each reports canceled when it is
// gone.
func (w *Worker) stopTasks(refs []subjects.TaskRef) {
	if len(refs) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ref := range refs {
		if t := w.tasks[ref]; t != nil {
			w.log.Info("stopping task", "job", ref.Job, "task", ref.Task, "attempt", ref.Attempt)
			t.stop()
		}
	}
}

// taskStateChanged records and reports a task's state change.
func (w *Worker) taskStateChanged(t *task, st subjects.TaskState, cause *subjects.Error) {
	w.mu.Lock()
	w.table.taskState(t.ref, st)
	if st.Terminal() && w.tasks[t.ref] == t {
		delete(w.tasks, t.ref)
	}
	w.mu.Unlock()
	w.publishStatus(t.ref, st, cause)
}

// reportGap tells the coordinator that a running task continued past an
// input gap.
func (w *Worker) reportGap(t *task, g subjects.InputGap) {
	w.publish(subjects.TaskStatus{Worker: w.name, TaskRef: t.ref, State: subjects.TaskRunning, Gap: &g})
}

func (w *Worker) publishStatus(ref subjects.TaskRef, st subjects.TaskState, cause *subjects.Error) {
	w.publish(subjects.TaskStatus{Worker: w.name, TaskRef: ref, State: st, Error: cause})
}

func (w *Worker) publish(m subjects.TaskStatus) {
	ref, st := m.TaskRef, m.State
	if err := w.nc.Publish(w.ns.TaskStatus(ref.Job, w.name), subjects.MustEncode(&m)); err != nil {
		w.log.Warn("publishing task status", "job", ref.Job, "task", ref.Task, "state", st.String(), "err", err)
	}
}
