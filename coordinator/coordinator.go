// Package coordinator runs flotilla's coordinator: the resource manager,
// one job master per job, and the user API, wired to NATS and JetStream.
//
// The protocol logic lives in pure state machines (coordinator/resource,
// coordinator/jobmaster, coordinator/checkpoint, coordinator/election),
// composed for one term into one engine (coordinator/engine). This package
// is the thin adapter around them. Coordinator runs the election (ha.go);
// while it leads, a leader (one per term) owns the engine: one goroutine
// (leader.run) steps it with what NATS callbacks decode and with ticks, and
// carries out the effects it returns without blocking: requests, writes and
// deletions run on their own goroutines (job records on one writer,
// persist.go) and feed their outcomes back as events.
package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/coordinator/engine"
	"github.com/flotilla-io/flotilla/coordinator/metastore"
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
	// LeaseTTL is the leader lease's time to live (default
	// DefaultLeaseTTL, 15 s): a leader that cannot renew stops acting
	// before it ends, and a standby takes over within about LeaseTTL after
	// the leader died. It is the leader bucket's TTL, fixed when the bucket
	// is first created: a coordinator started on an existing bucket acts by
	// the bucket's TTL, whatever it was configured with.
	LeaseTTL time.Duration

	// MapInput, if set, adds an account subject mapping to the NATS server
	// (src -> dest), so that a job's input is partitioned on a server the
	// coordinator runs in (flotilla dev, tests). Without it the mapping must
	// be in the server's configuration; see subjects.InputMapping.
	MapInput func(src, dest string) error
}

// leader is the coordinator while it leads, for one term: the engine (every
// state machine of the term), the loop that steps it, and the NATS
// subscriptions. A new term starts from a new leader, rebuilt from the
// metadata store; nothing of a term that ended is reused.
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
	// eng is stepped, and queried, on the loop only.
	eng     *engine.Engine
	hist    *history
	persist *persister
	// resumes are the jobs setup found, which serve resumes.
	resumes []engine.Resume
	// metrics are observed on the loop; see Collector.
	metrics *coordMetrics
	inbox   chan func(now time.Time)
	// done is closed when the term ends: the loop has stopped, and
	// goroutines of the term must not wait for it.
	done <-chan struct{}
	// repl is the resolved replication policy.
	repl replicas.Policy
}

// newLeader returns the leader of term, not yet set up.
func (co *Coordinator) newLeader(term uint64, done <-chan struct{}) *leader {
	log := co.log.With("term", term)
	c := &leader{co: co, cfg: co.cfg, ns: co.ns, nc: co.nc, js: co.js, log: log,
		store: co.store, epoch: term, hist: co.hist, metrics: co.metrics, repl: co.repl, done: done,
		inbox: make(chan func(time.Time), 1024),
		eng: engine.New(engine.Config{Epoch: term, Namespace: co.ns, StoreLocation: co.cfg.Store.Location(),
			HeartbeatInterval: co.cfg.HeartbeatInterval, HeartbeatTimeout: co.cfg.HeartbeatTimeout,
			SweepInterval: co.cfg.OrphanSweepInterval, SweepGrace: co.cfg.OrphanGrace,
			MapInput: co.cfg.MapInput != nil, Logger: log}),
	}
	c.persist = newPersister(c)
	return c
}

// setup claims every job that has not ended for the term and loads what it
// resumes from: the claim comes first, so that no commit of an earlier term
// can complete once the job's checkpoints are loaded (and leftovers above
// the latest pointer are pruned). serve resumes the jobs.
//
// It gives up after termSetupTimeout: a term that holds the lease without
// serving leaves the fleet without a coordinator, so one that cannot load
// its jobs ends, and gives the lease up, rather than retry forever.
func (c *leader) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, termSetupTimeout)
	defer cancel()
	recs, err := c.store.Jobs(ctx)
	if err != nil {
		return fmt.Errorf("listing jobs: %w", err)
	}
	for _, r := range recs {
		if r.State.Terminal() {
			c.resumes = append(c.resumes, engine.Resume{Record: r}) // known as ended
			continue
		}
		if err := c.store.Claim(ctx, r.Spec.Name, c.epoch); err != nil {
			return fmt.Errorf("claiming job %s: %w", r.Spec.Name, err)
		}
		cps, err := c.loadCheckpoints(ctx, r)
		if err != nil {
			return fmt.Errorf("loading the checkpoints of job %s: %w", r.Spec.Name, err)
		}
		c.resumes = append(c.resumes, engine.Resume{Record: r, Checkpoints: cps})
	}
	return nil
}

// termSetupTimeout bounds a new term's setup (see leader.setup).
const termSetupTimeout = time.Minute

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
	// Workers report the tasks they still run when they register with this
	// term, which they do at their next heartbeat once it answers: within
	// the heartbeat timeout, a worker that has not is lost anyway. So the
	// jobs resume, and their adoption window opens, only now that the
	// term's subscriptions are in place (loading the jobs may have taken
	// longer than the window), and before any registration is stepped.
	now := c.cfg.Now()
	for _, r := range c.resumes {
		c.step(now, r)
	}
	c.resumes = nil
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

// loadCheckpoints reads what run r of a job may restore from: its own
// checkpoints and savepoints (ids from r.FirstID on), and the savepoint it
// was submitted with, so that a resubmitted job never restores another
// run's state.
func (c *leader) loadCheckpoints(ctx context.Context, r subjects.JobRecord) (engine.RunCheckpoints, error) {
	var out engine.RunCheckpoints
	// Called only while the coordinator starts, before it commits anything:
	// records above the latest pointer are leftovers of a commit that died.
	jc, warnings, err := c.store.Load(ctx, r.Spec.Name, true)
	if err != nil {
		return out, err
	}
	for _, w := range warnings {
		c.log.Warn("checkpoint store", "job", r.Spec.Name, "warning", w)
	}
	out.Latest = max(jc.Highest, r.FirstID-1)
	var points []subjects.CheckpointRecord
	for _, cp := range jc.Checkpoints {
		if cp.ID >= r.FirstID {
			out.Retained = append(out.Retained, cp)
			points = append(points, cp)
		}
	}
	for _, sp := range jc.Savepoints {
		if sp.ID >= r.FirstID {
			points = append(points, sp)
			out.Savepoints = append(out.Savepoints, sp)
		}
	}
	if r.FromSavepoint != "" {
		sp, err := c.readMetadata(ctx, r.FromSavepoint)
		if err != nil {
			c.log.Error("the savepoint the job was submitted with is unreadable", "job", r.Spec.Name, "location", r.FromSavepoint, "err", err)
		} else {
			points = append(points, sp)
			out.From = &sp
		}
	}
	out.Restore = engine.RestorePoints(points...)
	if out.From != nil && r.AllowOperatorChange {
		out.Restore[len(out.Restore)-1].AllowOperatorChange = true
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
			c.step(c.cfg.Now(), engine.Tick{})
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

// step feeds ev to the engine at now and carries out the effects. Loop
// only (and setup, before the loop starts).
func (c *leader) step(now time.Time, ev engine.Event) {
	c.carryOut(c.eng.Step(now, ev))
}

// feed hands ev to the loop, which steps the engine with it.
func (c *leader) feed(ev engine.Event) {
	c.enqueue(func(now time.Time) { c.step(now, ev) })
}

// carryOut carries out the engine's effects in order. None blocks the
// loop: requests, writes and deletions run on their own goroutines and
// feed their outcomes back as events. An answer to a user that follows job
// records in the same step is sent once they are written (or the request
// timeout passed): a user told that a job was canceled, stopped or
// submitted finds it so after a takeover. Answers to workers go at once.
func (c *leader) carryOut(effects []engine.Effect) {
	var persisted []string // jobs whose records this step put
	for _, f := range effects {
		switch f := f.(type) {
		case engine.SendSlotRequest:
			req := f.Req
			go func() {
				var resp subjects.SlotResponse
				err := c.request(c.ns.SlotRequest(req.Worker), &req, &resp)
				if err == nil && resp.Error != nil {
					err = resp.Error // refused: no room, or a stale epoch
				}
				c.feed(engine.SlotRequestDone{Req: req, Slot: resp.Slot, Err: err})
			}()
		case engine.Deploy:
			job, req := f.Job, f.Req
			go func() {
				var resp subjects.Response
				err := c.request(c.ns.Deploy(req.Worker), &req, &resp)
				if err == nil {
					err = resp.Err()
				}
				if err != nil {
					c.feed(engine.DeployFailed{Job: job, Task: req.TaskRef, Err: err})
				}
			}()
		case engine.CancelTask:
			job, req := f.Job, f.Req
			go func() {
				var resp subjects.Response
				if err := c.request(c.ns.Cancel(req.Worker), &req, &resp); err != nil {
					c.log.Debug("cancel not confirmed", "job", job, "task", req.Task, "worker", req.Worker, "err", err)
				}
			}()
		case engine.Publish:
			c.publish(f.Subject, f.Msg)
		case engine.Notify:
			c.publish(c.ns.Events(f.Event.Kind, f.About), &f.Event)
		case engine.PersistJob:
			c.persist.put(f.Record)
			persisted = append(persisted, f.Record.Spec.Name)
		case engine.WriteMetadata:
			go c.writeCheckpointMetadata(f.Job, f.Record)
		case engine.Commit:
			go c.commit(f)
		case engine.DeleteCheckpoint:
			go c.deleteCheckpoint(f.Record, f.Files)
		case engine.RecordAttempt:
			c.recordAttempt(f.Attempt)
		case engine.FailedOver:
			c.metrics.failovers.WithLabelValues(f.Job).Add(float64(f.Tasks))
		case engine.MapInput:
			// The mapping is added in process (flotilla dev, tests).
			src, dest, err := subjects.InputMapping(&f.Spec)
			if err == nil {
				err = c.cfg.MapInput(src, dest)
			}
			if err != nil {
				c.log.Error("adding the input mapping", "job", f.Spec.Name, "err", err)
			}
		case engine.Reply:
			if len(persisted) == 0 || !userAnswer(f.Msg) {
				reply(f) // workers' answers never wait: a late one is a lost one
				break
			}
			jobs := slices.Clone(persisted)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
				defer cancel()
				for _, job := range jobs {
					_ = c.persist.flush(ctx, job) // a failed write is logged and retried
				}
				reply(f)
			}()
		case engine.Resubmit:
			go c.resubmit(f)
		case engine.SweepOrphans:
			done, _ := f.Done.(chan<- int)
			go c.sweepOrphans(f, done)
		default:
			panic(fmt.Sprintf("coordinator: unknown effect %T", f))
		}
	}
}

// userAnswer reports whether m answers a user's request about a job.
func userAnswer(m subjects.Message) bool {
	switch m.(type) {
	case *subjects.JobInfo, *subjects.SavepointResult:
		return true
	}
	return false
}

// reply carries out an engine.Reply.
func reply(f engine.Reply) {
	switch to := f.To.(type) {
	case subjects.Responder:
		subjects.Reply(to, f.Msg)
	case chan engine.Reply: // ask's; buffered
		to <- f
	default:
		panic(fmt.Sprintf("coordinator: reply to %T", f.To))
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
