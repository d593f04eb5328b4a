// Package coordinator runs flotilla's coordinator: the resource manager,
// one job master per job, and the user API, wired to NATS and JetStream.
//
// The protocol logic lives in pure state machines (coordinator/resource,
// coordinator/jobmaster, coordinator/checkpoint, coordinator/election).
// This package is the thin adapter around them. Coordinator runs the
// election (ha.go); while it leads, a leader (one per term) owns every other
// state machine: one goroutine (leader.run) feeds them, NATS callbacks hand
// it closures through the inbox, and it carries out the actions the machines
// return. Requests that wait for an answer (slot requests, deployments) run
// on their own goroutines and feed their outcome back through the inbox.
// Job record writes (persist) still block the loop on a KV round trip.
package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/coordinator/metastore"
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

	// Name names this coordinator in the leader lease and in "who leads"
	// answers (default: host name, process id and a random suffix). Every
	// coordinator of a namespace needs its own.
	Name string
	// LeaseTTL is the leader lease's time to live (default 10 s): a leader
	// that cannot renew stops acting before it ends, and a standby takes
	// over within about LeaseTTL after the leader died. It is the leader
	// bucket's TTL, fixed when the bucket is first created.
	LeaseTTL time.Duration

	// MapInput, if set, adds an account subject mapping to the NATS server
	// (src -> dest), so that a job's input is partitioned on a server the
	// coordinator runs in (flotilla dev, tests). Without it the mapping must
	// be in the server's configuration; see subjects.InputMapping.
	MapInput func(src, dest string) error
}

// leader is the coordinator while it leads, for one term: every state
// machine, the loop that feeds them, and the NATS subscriptions. A new term
// starts from a new leader, rebuilt from the metadata store; nothing of a
// term that ended is reused.
type leader struct {
	co    *Coordinator
	cfg   Config
	ns    subjects.Namespace
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *slog.Logger
	store metastore.Store
	// epoch is the term: the fencing token carried by every deployment,
	// barrier, commit and deletion of this leader.
	epoch uint64
	rm    *resource.Manager
	hist  *history
	jobs  map[string]*jobEntry
	// metrics are observed on the loop; see Collector.
	metrics *coordMetrics
	inbox   chan func(now time.Time)
	// done is closed when the term ends: the loop has stopped, and
	// goroutines of the term must not wait for it.
	done <-chan struct{}

	requests  uint64 // savepoint request ids
	attempts  uint64 // task deployments of this epoch, shared by every job master
	waiters   map[uint64]savepointWaiter
	lastSweep time.Time // of the periodic orphan sweep
	// repl is the resolved replication policy.
	repl replicas.Policy
}

type jobEntry struct {
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
	// continue) in this coordinator's lifetime.
	gaps []subjects.InputGap
}

// newLeader returns the leader of term, not yet set up.
func (co *Coordinator) newLeader(term uint64, done <-chan struct{}) *leader {
	return &leader{co: co, cfg: co.cfg, ns: co.ns, nc: co.nc, js: co.js, log: co.log.With("term", term),
		store: co.store, epoch: term, hist: co.hist, metrics: co.metrics, repl: co.repl, done: done,
		jobs: map[string]*jobEntry{}, inbox: make(chan func(time.Time), 1024), waiters: map[uint64]savepointWaiter{},
		rm: resource.New(resource.Config{Epoch: term, HeartbeatInterval: co.cfg.HeartbeatInterval, HeartbeatTimeout: co.cfg.HeartbeatTimeout})}
}

// setup claims every job that has not ended for the term and resumes it:
// the claim comes first, so that no commit of an earlier term can complete
// once the job's checkpoints are loaded (and leftovers above the latest
// pointer are pruned).
func (c *leader) setup(ctx context.Context) error {
	recs, err := c.store.Jobs(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.State.Terminal() {
			continue
		}
		if err := c.store.Claim(ctx, r.Spec.Name, c.epoch); err != nil {
			return fmt.Errorf("claiming job %s: %w", r.Spec.Name, err)
		}
		cps, err := c.loadCheckpoints(ctx, r)
		if err != nil {
			return err
		}
		c.log.Info("resuming job", "job", r.Spec.Name, "restore_points", len(cps.restore), "latest", cps.latest)
		// Workers report the tasks they still run when they register with
		// this term, which they do at their next heartbeat: within the
		// heartbeat timeout, a worker that has not is lost anyway.
		now := c.cfg.Now()
		c.startJob(r, cps, now.Add(c.rm.HeartbeatTimeout()), now)
	}
	return nil
}

// serve subscribes and runs the loop until ctx ends or the lease is no
// longer held.
func (c *leader) serve(ctx context.Context, started func()) error {
	subs, svc, err := c.subscribe()
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
		if svc != nil {
			stopService(c.nc, svc)
		}
	}()
	if err != nil {
		return err
	}
	c.log.Info("coordinator leading", "epoch", c.epoch, "prefix", c.ns.Prefix(), "store", c.cfg.Store.Location())
	started()
	return c.run(ctx)
}

// stopService stops a term's user API service. micro drains the endpoints'
// subscriptions, and a drain while the connection reconnects leaks them on
// the server: nats.go subscribes them again on reconnecting and then
// forgets them without unsubscribing, so that the server keeps routing a
// share of API requests to a subscription nobody answers. A term that ends
// while NATS is away (a leader that cannot renew its lease, typically)
// therefore stops its service once the connection is back; meanwhile its
// handlers answer not_leader, which clients retry.
func stopService(nc *nats.Conn, svc micro.Service) {
	if nc.IsConnected() || nc.IsClosed() {
		_ = svc.Stop()
		return
	}
	go func() {
		for !nc.IsConnected() && !nc.IsClosed() {
			time.Sleep(20 * time.Millisecond) // bounded by the connection's fate
		}
		_ = svc.Stop()
	}()
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
func (c *leader) loadCheckpoints(ctx context.Context, r subjects.JobRecord) (runCheckpoints, error) {
	var out runCheckpoints
	// Called only while the coordinator starts, before it commits anything:
	// records above the latest pointer are leftovers of a commit that died.
	jc, warnings, err := c.store.Load(ctx, r.Spec.Name, true)
	if err != nil {
		return out, err
	}
	for _, w := range warnings {
		c.log.Warn("checkpoint store", "job", r.Spec.Name, "warning", w)
	}
	out.latest = max(jc.Highest, r.FirstID-1)
	var points []subjects.CheckpointRecord
	for _, cp := range jc.Checkpoints {
		if cp.ID >= r.FirstID {
			out.retained = append(out.retained, cp)
			points = append(points, cp)
		}
	}
	for _, sp := range jc.Savepoints {
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

func (c *leader) run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-c.inbox:
			if !c.co.acting() {
				return errNotActing
			}
			f(c.cfg.Now())
		case <-t.C:
			if !c.co.acting() {
				return errNotActing
			}
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
// slows NATS callbacks down rather than dropping their messages; once the
// term ended it drops f.
func (c *leader) enqueue(f func(now time.Time)) {
	select {
	case c.inbox <- f:
	case <-c.done:
	}
}

// startJob starts run r of a job. A job resumed by a new term (recoverUntil
// set) first adopts the tasks workers still run, until recoverUntil.
func (c *leader) startJob(r subjects.JobRecord, cps runCheckpoints, recoverUntil, now time.Time) {
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
	if recoverUntil.IsZero() {
		c.doJM(r.Spec.Name, jm.Start(now), now)
	} else {
		c.doJM(r.Spec.Name, jm.Recover(recoverUntil, r.FirstAttempt, now), now)
	}
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
func (c *leader) doRM(acts []resource.Action, now time.Time) {
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
func (c *leader) doJM(job string, acts []jobmaster.Action, now time.Time) {
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

// persist writes a job record under the term; job state is advisory for
// restarts, so a failed write is logged, not fatal.
func (c *leader) persist(rec subjects.JobRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	if err := c.store.PutJob(ctx, c.epoch, rec); err != nil {
		c.log.Error("persisting job", "job", rec.Spec.Name, "err", err)
	}
}

// event publishes an event; events are best-effort notifications.
func (c *leader) event(ev subjects.Event, about string) {
	ev.Time = c.cfg.Now().UTC()
	if err := c.nc.Publish(c.ns.Events(ev.Kind, about), subjects.MustEncode(&ev)); err != nil {
		c.log.Debug("publishing event", "err", err)
	}
}

// request sends req on subject and decodes the answer into resp.
func (c *leader) request(subject string, req, resp subjects.Message) error {
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
