// Package coordinator runs flotilla's coordinator: the resource manager,
// one job master per job, and the user API, wired to NATS and JetStream.
//
// The protocol logic lives in pure state machines (coordinator/resource,
// coordinator/jobmaster). This package is the thin adapter around them: one
// goroutine (run) owns every state machine; NATS callbacks hand it closures
// through the inbox, and it carries out the actions the machines return.
// Requests that wait for an answer (slot requests, deployments) run on their
// own goroutines and feed their outcome back through the inbox, so the loop
// never blocks on the network.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/coordinator/resource"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// Config configures a coordinator.
type Config struct {
	// Conn is the NATS connection; the coordinator does not close it.
	Conn      *nats.Conn
	Namespace subjects.Namespace
	// Store holds checkpoints and savepoints.
	Store  objectstore.Store
	Logger *slog.Logger
	// HeartbeatInterval and HeartbeatTimeout are handed to workers
	// (defaults 2 s and 10 s).
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// TickInterval is how often timers are evaluated (default 100 ms).
	TickInterval time.Duration
	// RequestTimeout bounds each request to a worker (default 5 s).
	RequestTimeout time.Duration
	// Now is the clock; tests may replace it. Default time.Now.
	Now func() time.Time
	// OrphanGrace is how old an unreferenced object under a job's prefix
	// must be before the orphan sweep deletes it (default 1 h): long enough
	// for any upload in flight to be acked or aborted.
	OrphanGrace time.Duration
	// OrphanSweepInterval is how often the sweep runs (default 10 min).
	OrphanSweepInterval time.Duration
	// HistoryPerJob and HistoryMaxAge bound the checkpoint history: at most
	// this many attempts per job (default 1000), none older than this
	// (default 30 days).
	HistoryPerJob int
	HistoryMaxAge time.Duration

	// Replicas is the replica count of every JetStream stream and KV bucket
	// the coordinator creates (its buckets, its events stream, jobs' source
	// streams unless a spec says otherwise). 0: 3 when the server is in a
	// cluster that can place 3 replicas, else 1. Existing streams are never
	// lowered (internal/replicas).
	Replicas int
	// Placement, if set, places those streams (cluster, tags).
	Placement *jetstream.Placement

	// BeforeCommit, if set, is called before each checkpoint record is
	// committed to JetStream; an error skips the commit as if it had failed.
	// It exists for fault-injection tests (e.g. a coordinator that dies
	// between "all acked" and "committed").
	BeforeCommit func(subjects.CheckpointRecord) error

	// MapInput, if set, adds an account subject mapping to the NATS server
	// (src -> dest), so that a job's input is partitioned on a server the
	// coordinator runs in (flotilla dev, tests). Without it the mapping must
	// be in the server's configuration; see subjects.InputMapping.
	MapInput func(src, dest string) error
}

// Coordinator is a running coordinator. Create it with New, then Run.
type Coordinator struct {
	cfg   Config
	ns    subjects.Namespace
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *slog.Logger
	meta  *meta
	epoch uint64
	rm    *resource.Manager
	ckpts *ckptStore
	hist  *history
	jobs  map[string]*jobEntry
	// metrics are observed on the loop; see Collector.
	metrics *coordMetrics
	inbox   chan func(now time.Time)
	ready   chan struct{}

	requests  uint64 // savepoint request ids
	attempts  uint64 // task deployments of this epoch, shared by every job master
	waiters   map[uint64]savepointWaiter
	lastSweep time.Time // of the periodic orphan sweep
	// repl is the resolved replication policy (setup).
	repl replicas.Policy
}

type jobEntry struct {
	jm  *jobmaster.Master
	cc  *checkpoint.Coordinator
	rec jobRecord
	// from is the savepoint or checkpoint the run was submitted with: its
	// files stay referenced for the run's lifetime.
	from *subjects.CheckpointRecord
	// figures are the current attempts' figures, from heartbeats;
	// lastCompleted is when the newest checkpoint or savepoint completed.
	figures       map[int]taskFigures
	lastCompleted time.Time
	// gaps are the input gaps tasks continued past (source.on_gap
	// continue) in this coordinator's lifetime.
	gaps []subjects.InputGap
}

// New checks cfg and returns a coordinator that is not yet running.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Conn == nil || cfg.Store == nil {
		return nil, errors.New("coordinator: Conn and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = 100 * time.Millisecond
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OrphanGrace <= 0 {
		cfg.OrphanGrace = time.Hour
	}
	if cfg.OrphanSweepInterval <= 0 {
		cfg.OrphanSweepInterval = 10 * time.Minute
	}
	if err := (replicas.Policy{Replicas: cfg.Replicas}).Check(); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.HistoryPerJob <= 0 {
		cfg.HistoryPerJob = DefaultHistoryPerJob
	}
	if cfg.HistoryMaxAge <= 0 {
		cfg.HistoryMaxAge = DefaultHistoryMaxAge
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	return &Coordinator{cfg: cfg, ns: cfg.Namespace, nc: cfg.Conn, js: js, log: cfg.Logger.With("component", "coordinator"),
		jobs: map[string]*jobEntry{}, inbox: make(chan func(time.Time), 1024), ready: make(chan struct{}),
		waiters: map[uint64]savepointWaiter{}, metrics: newCoordMetrics()}, nil
}

// Ready is closed once the coordinator answers on all its subjects.
func (c *Coordinator) Ready() <-chan struct{} { return c.ready }

// Epoch returns the coordinator's epoch; valid after Ready.
func (c *Coordinator) Epoch() uint64 { return c.epoch }

// Run starts the coordinator and blocks until ctx is done. It retries its
// JetStream setup until the server answers, so start order does not matter.
func (c *Coordinator) Run(ctx context.Context) error {
	if err := c.setup(ctx); err != nil {
		return err
	}
	c.reportSync(ctx)
	subs, svc, err := c.subscribe()
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		if svc != nil {
			_ = svc.Stop()
		}
	}()
	if err != nil {
		return err
	}
	c.log.Info("coordinator running", "epoch", c.epoch, "prefix", c.ns.Prefix(), "store", c.cfg.Store.Location())
	close(c.ready)
	return c.run(ctx)
}

func (c *Coordinator) setup(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := c.trySetup(ctx)
		if err == nil {
			return nil
		}
		c.log.Warn("waiting for JetStream", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (c *Coordinator) trySetup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := replicas.Resolve(ctx, c.nc, c.js, c.cfg.Replicas, coordinatorBucket(c.ns), c.cfg.Placement)
	if err != nil {
		return fmt.Errorf("coordinator: coordinator bucket: %w", err)
	}
	c.repl = replicas.Policy{Replicas: n, Placement: c.cfg.Placement}
	if c.cfg.Replicas == 0 && c.nc.ConnectedClusterName() != "" && n < replicas.AutoReplicas {
		c.log.Warn("the JetStream cluster cannot place 3 replicas now: flotilla's streams and buckets get 1; set --replicas to insist",
			"cluster", c.nc.ConnectedClusterName())
	}
	c.log.Info("JetStream replication", "replicas", n, "cluster", c.nc.ConnectedClusterName())
	m, err := openMeta(ctx, c.js, c.ns, c.repl)
	if err != nil {
		return err
	}
	if _, _, err := replicas.EnsureStream(ctx, c.js, jetstream.StreamConfig{
		Name: bucketName(c.ns, "EVENTS"), Subjects: []string{c.ns.EventsAll()},
		Storage: jetstream.FileStorage, MaxAge: 7 * 24 * time.Hour, MaxMsgs: 1_000_000,
	}, c.repl, true); err != nil {
		return fmt.Errorf("coordinator: events stream: %w", err)
	}
	ckpts, err := openCkptStore(ctx, c.js, c.ns, c.repl)
	if err != nil {
		return err
	}
	hist, err := openHistory(ctx, c.js, c.ns, c.repl, c.cfg.HistoryPerJob, c.cfg.HistoryMaxAge)
	if err != nil {
		return err
	}
	epoch, err := m.nextEpoch(ctx)
	if err != nil {
		return err
	}
	recs, err := m.loadJobs(ctx)
	if err != nil {
		return err
	}
	c.meta, c.ckpts, c.hist, c.epoch = m, ckpts, hist, epoch
	c.rm = resource.New(resource.Config{Epoch: epoch, HeartbeatInterval: c.cfg.HeartbeatInterval, HeartbeatTimeout: c.cfg.HeartbeatTimeout})
	for _, r := range recs {
		if r.State.Terminal() {
			continue
		}
		cps, err := c.loadCheckpoints(ctx, r)
		if err != nil {
			return err
		}
		c.log.Info("resuming job", "job", r.Spec.Name, "restore_points", len(cps.restore), "latest", cps.latest)
		c.startJob(r, cps, c.cfg.Now())
	}
	return nil
}

// reportSync logs whether the JetStream servers sync every write, which
// the durability of committed checkpoints rests on, and warns with the
// line to add when one does not.
func (c *Coordinator) reportSync(ctx context.Context) {
	r, err := replicas.CheckSync(ctx, c.nc, time.Second)
	if err != nil {
		c.log.Warn("could not ask the JetStream servers how they sync writes", "err", err)
		return
	}
	line, warn := r.Verdict()
	if warn {
		c.log.Warn(line)
	} else {
		c.log.Info(line)
	}
}

// runCheckpoints is what a job run restores from.
type runCheckpoints struct {
	latest   uint64                      // highest checkpoint id the job name used, any run: ids continue above it
	retained []subjects.CheckpointRecord // this run's retained checkpoints
	restore  []jobmaster.RestorePoint    // this run's checkpoints and savepoints, and its initial savepoint
	from     *subjects.CheckpointRecord  // the initial savepoint, if any
}

// loadCheckpoints reads what run r of a job may restore from: its own
// checkpoints and savepoints (ids from r.FirstID on), and the savepoint it
// was submitted with, so that a resubmitted job never restores another
// run's state.
func (c *Coordinator) loadCheckpoints(ctx context.Context, r jobRecord) (runCheckpoints, error) {
	var out runCheckpoints
	// Called only while the coordinator starts, before it commits anything:
	// records above the latest pointer are leftovers of a commit that died.
	jc, warnings, err := c.ckpts.load(ctx, r.Spec.Name, true)
	if err != nil {
		return out, err
	}
	for _, w := range warnings {
		c.log.Warn("checkpoint store", "job", r.Spec.Name, "warning", w)
	}
	out.latest = max(jc.highest, r.FirstID-1)
	var points []subjects.CheckpointRecord
	for _, cp := range jc.checkpoints {
		if cp.ID >= r.FirstID {
			out.retained = append(out.retained, cp)
			points = append(points, cp)
		}
	}
	for _, sp := range jc.savepoints {
		if sp.ID >= r.FirstID {
			points = append(points, sp)
		}
	}
	if r.FromSavepoint != "" {
		sp, err := c.readMetadata(ctx, r.FromSavepoint)
		if err != nil {
			c.log.Error("the savepoint the job was submitted with is unreadable", "job", r.Spec.Name, "location", r.FromSavepoint, "err", err)
		} else {
			points = append(points, sp)
			out.from = &sp
		}
	}
	out.restore = restorePoints(points...)
	if out.from != nil && r.AllowOperatorChange {
		out.restore[len(out.restore)-1].AllowOperatorChange = true
	}
	return out, nil
}

func (c *Coordinator) run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-c.inbox:
			f(c.cfg.Now())
		case <-t.C:
			now := c.cfg.Now()
			c.doRM(c.rm.Tick(now), now)
			for _, name := range sortedKeys(c.jobs) {
				e := c.jobs[name]
				c.doJM(name, e.jm.Tick(now), now)
				if e.cc != nil && !e.jm.State().Terminal() {
					c.doCC(name, e.cc.Tick(now, checkpointTasks(e.jm)), now)
				}
			}
			if now.Sub(c.lastSweep) >= c.cfg.OrphanSweepInterval {
				c.lastSweep = now
				c.sweepOrphans(now, c.cfg.OrphanGrace, nil)
			}
		}
	}
}

// enqueue hands f to the loop. It blocks while the inbox is full, which
// slows NATS callbacks down rather than dropping their messages.
func (c *Coordinator) enqueue(f func(now time.Time)) { c.inbox <- f }

func (c *Coordinator) startJob(r jobRecord, cps runCheckpoints, now time.Time) {
	r.State = subjects.JobCreated
	if r.Spec.Partitions() > 0 && c.cfg.MapInput != nil {
		// A server the coordinator maps at runtime forgets the mapping when
		// it restarts: add it again for every job that runs.
		src, dest, err := subjects.InputMapping(&r.Spec)
		if err == nil {
			err = c.cfg.MapInput(src, dest)
		}
		if err != nil {
			c.log.Error("adding the input mapping", "job", r.Spec.Name, "err", err)
		}
	}
	jm := jobmaster.New(c.epoch, r.Spec, cps.restore, &c.attempts)
	cc := checkpoint.New(checkpoint.Config{Job: r.Spec.Name, Epoch: c.epoch, Spec: r.Spec.Checkpoint,
		Parallelism: r.Spec.Parallelism, MaxParallelism: r.Spec.MaxParallelism,
		Partitions: r.Spec.Partitions(), Input: subjects.InputID(&r.Spec)}, cps.retained, cps.latest)
	e := &jobEntry{jm: jm, cc: cc, rec: r, from: cps.from}
	for _, cp := range cps.retained {
		if cp.Completed.After(e.lastCompleted) {
			e.lastCompleted = cp.Completed
		}
	}
	c.jobs[r.Spec.Name] = e
	c.doJM(r.Spec.Name, jm.Start(now), now)
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

// doRM carries out resource-manager actions.
func (c *Coordinator) doRM(acts []resource.Action, now time.Time) {
	for _, a := range acts {
		switch a := a.(type) {
		case resource.SendSlotRequest:
			req := a.Req
			go func() {
				var resp subjects.SlotResponse
				err := c.request(c.ns.SlotRequest(req.Worker), &req, &resp)
				if err == nil && resp.Error != nil {
					err = resp.Error // refused: no room, or a stale epoch
				}
				c.enqueue(func(now time.Time) {
					if err != nil {
						c.log.Warn("slot request failed", "worker", req.Worker, "job", req.Job, "err", err)
						c.doRM(c.rm.SlotRequestFailed(req.Allocation, now), now)
						return
					}
					c.rm.SlotRequestAnswered(req.Allocation, resp.Slot)
				})
			}()
		case resource.SlotsShort:
			if e := c.jobs[a.Job]; e != nil {
				c.doJM(a.Job, e.jm.SlotsShort(a.Shortage, now), now)
			}
		case resource.SlotsMet:
			if e := c.jobs[a.Job]; e != nil {
				c.doJM(a.Job, e.jm.SlotsMet(now), now)
			}
		case resource.WorkerJoined:
			c.log.Info("worker joined", "worker", a.Info.Worker, "instance", a.Info.Instance, "slots", a.Info.Slots)
			c.event(subjects.Event{Kind: subjects.EventWorkerJoined, Worker: a.Info.Worker, Message: fmt.Sprintf("%d slots", a.Info.Slots)}, a.Info.Worker)
		case resource.WorkerLost:
			c.log.Warn("worker lost", "worker", a.Worker, "instance", a.Instance, "reason", a.Reason)
			c.event(subjects.Event{Kind: subjects.EventWorkerLost, Worker: a.Worker, Message: a.Reason}, a.Worker)
			byJob := map[string][]string{}
			for _, al := range a.Allocations {
				byJob[al.Job] = append(byJob[al.Job], al.ID)
			}
			for job, ids := range byJob {
				if e := c.jobs[job]; e != nil {
					c.metrics.failovers.WithLabelValues(job).Add(float64(len(ids)))
					c.doJM(job, e.jm.WorkerLost(a.Worker, ids, now), now)
				}
			}
		default:
			panic(fmt.Sprintf("coordinator: unknown resource action %T", a))
		}
	}
}

// doJM carries out job-master actions of job.
func (c *Coordinator) doJM(job string, acts []jobmaster.Action, now time.Time) {
	for _, a := range acts {
		switch a := a.(type) {
		case jobmaster.Demand:
			c.doRM(c.rm.SetDemand(job, a.Slots, a.Operator, now), now)
		case jobmaster.Deploy:
			req := a.Req
			c.log.Info("deploying task", "job", job, "task", req.Task, "attempt", req.Attempt, "worker", req.Worker, "range", req.Range.String(), "restore", req.RestoredFrom)
			go func() {
				var resp subjects.Response
				err := c.request(c.ns.Deploy(req.Worker), &req, &resp)
				if err == nil {
					err = resp.Err()
				}
				if err == nil {
					return
				}
				c.enqueue(func(now time.Time) {
					if e := c.jobs[job]; e != nil {
						c.doJM(job, e.jm.DeployFailed(req.TaskRef, subjects.AsError(err), now), now)
					}
				})
			}()
		case jobmaster.Cancel:
			req := a.Req
			go func() {
				var resp subjects.Response
				if err := c.request(c.ns.Cancel(req.Worker), &req, &resp); err != nil {
					c.log.Debug("cancel not confirmed", "job", job, "task", req.Task, "worker", req.Worker, "err", err)
				}
			}()
		case jobmaster.ReleaseSlot:
			c.doRM(c.rm.Release(a.Allocation, now), now)
		case jobmaster.AvoidWorker:
			c.log.Warn("worker's local storage is full; placing tasks elsewhere", "job", job, "worker", a.Worker, "err", a.Err)
			c.rm.StorageFailed(a.Worker, now)
		case jobmaster.StateChanged:
			c.log.Info("job state", "job", job, "state", a.State.String(), "reason", a.Reason)
			e := c.jobs[job]
			e.rec.State = a.State
			rec := e.rec
			c.persist(rec)
			c.event(subjects.Event{Kind: subjects.EventJobStateChanged, Job: job, State: a.State, Message: a.Reason}, job)
		case jobmaster.RestoreFallback:
			c.log.Warn("restore point unreadable, falling back to the previous one", "job", job, "task", a.Task, "checkpoint", a.Bad, "err", a.Err)
			c.event(subjects.Event{Kind: subjects.EventTaskFailed, Job: job, Checkpoint: a.Bad, Error: a.Err,
				Message: fmt.Sprintf("task %d cannot restore checkpoint %d; falling back to the previous one", a.Task, a.Bad)}, job)
		case jobmaster.JobFailed:
			c.log.Error("job failed", "job", job, "err", a.Err)
			if e := c.jobs[job]; e != nil {
				c.doCC(job, e.cc.Cancel("job failed", now), now)
			}
		case jobmaster.TaskFailed:
			if e := c.jobs[job]; e != nil {
				c.doCC(job, e.cc.TaskFailed(a.Task.Task, now), now)
			}
			c.log.Warn("task failed", "job", job, "task", a.Task.Task, "attempt", a.Task.Attempt, "worker", a.Worker, "err", a.Err, "restart_in", a.Delay)
			msg := fmt.Sprintf("task %d restarts in %s", a.Task.Task, a.Delay)
			if a.Err.Code == subjects.CodeDataLoss {
				msg = fmt.Sprintf("task %d lost input events; the job fails (source.on_gap continue goes on past them)", a.Task.Task)
			}
			c.event(subjects.Event{Kind: subjects.EventTaskFailed, Job: job, Worker: a.Worker, Error: a.Err, Message: msg}, job)
		default:
			panic(fmt.Sprintf("coordinator: unknown job master action %T", a))
		}
	}
}

// persist writes a job record; job state is advisory for restarts, so a
// failed write is logged, not fatal.
func (c *Coordinator) persist(rec jobRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	if err := c.meta.putJob(ctx, rec); err != nil {
		c.log.Error("persisting job", "job", rec.Spec.Name, "err", err)
	}
}

// event publishes an event; events are best-effort notifications.
func (c *Coordinator) event(ev subjects.Event, about string) {
	ev.Time = c.cfg.Now().UTC()
	if err := c.nc.Publish(c.ns.Events(ev.Kind, about), subjects.MustEncode(&ev)); err != nil {
		c.log.Debug("publishing event", "err", err)
	}
}

// request sends req on subject and decodes the answer into resp.
func (c *Coordinator) request(subject string, req, resp subjects.Message) error {
	b, err := subjects.Encode(req)
	if err != nil {
		return err
	}
	msg, err := c.nc.Request(subject, b, c.cfg.RequestTimeout)
	if err != nil {
		return subjects.Errorf(subjects.CodeTimeout, "%s: %v", subject, err)
	}
	return subjects.Decode(msg.Data, resp)
}
