package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flotilla-io/flotilla/coordinator/election"
	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// Coordinator is one coordinator process. Any number may run against the
// same NATS and namespace: one leads, holding the leader lease in
// JetStream KV, and the others stand by, answer who leads, and campaign
// when the lease expires. Create it with New, then Run.
//
// The election is decided by a pure machine (coordinator/election); this
// type carries out its actions against the metadata store and starts and
// stops a leader (one per term) as it says. A leader checks that it may
// still act (acting) before each step of its loop and before deleting
// objects; what it started before losing the lease is refused by its term,
// the fencing token, at the metadata store and at the workers.
type Coordinator struct {
	cfg     Config
	ns      subjects.Namespace
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *coordMetrics

	ready     chan struct{}
	readyOnce sync.Once

	// Set by Run's setup, before any leader exists.
	store metastore.Store
	hist  *history
	repl  replicas.Policy

	mu    sync.Mutex
	elect *election.Machine
	cur   *leader // the leader of the current term; nil while standing by
}

// DefaultLeaseTTL is the leader lease's default time to live
// (metastore.DefaultLeaseTTL, which says why).
const DefaultLeaseTTL = metastore.DefaultLeaseTTL

// errNotActing ends a term whose leader may no longer act.
var errNotActing = errors.New("coordinator: the leader lease is no longer held")

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
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = metastore.DefaultLeaseTTL
	}
	if cfg.Name == "" {
		cfg.Name = defaultName()
	}
	if err := subjects.ValidateName("coordinator", cfg.Name); err != nil {
		return nil, err
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	return &Coordinator{cfg: cfg, ns: cfg.Namespace, nc: cfg.Conn, js: js,
		log:     cfg.Logger.With("component", "coordinator", "coordinator", cfg.Name),
		metrics: newCoordMetrics(), ready: make(chan struct{}),
		elect: election.New(election.Config{TTL: cfg.LeaseTTL})}, nil
}

// defaultName is the host name (its first label, made a valid name), the
// process id and a random suffix.
func defaultName() string {
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	host = strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, host)
	if len(host) > 40 {
		host = host[:40]
	}
	if host == "" {
		host = "coordinator"
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), nuid.Next()[16:])
}

// Ready is closed once the coordinator first leads and answers on all its
// subjects. A standby's stays open until it takes over.
func (c *Coordinator) Ready() <-chan struct{} { return c.ready }

// Epoch returns the term this coordinator leads in, 0 while it stands by.
func (c *Coordinator) Epoch() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.epoch
}

// Name returns the coordinator's name in the lease.
func (c *Coordinator) Name() string { return c.cfg.Name }

// Leader says who leads, as this coordinator knows it.
func (c *Coordinator) Leader() subjects.LeaderInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	info := subjects.LeaderInfo{Answered: c.cfg.Name, Leading: c.elect.Acting(time.Now())}
	if l, ok := c.elect.Leader(); ok {
		info.Leader, info.Term = l.Holder, l.Term
	}
	return info
}

// acting reports whether this coordinator leads and may act now, by its
// monotonic clock.
func (c *Coordinator) acting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.elect.Acting(time.Now())
}

// holds reports whether the lease of term is still this coordinator's, by
// its own deadline and by reading the lease: the check before deleting
// anything from the object store.
func (c *Coordinator) holds(ctx context.Context, term uint64) error {
	if !c.acting() {
		return errNotActing
	}
	l, err := c.store.ReadLease(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: reading the lease: %w", err)
	}
	if l.Holder != c.cfg.Name || l.Term != term {
		return fmt.Errorf("%w: %s leads in term %d", errNotActing, l.Holder, l.Term)
	}
	return nil
}

// Run runs the coordinator until ctx is done: it sets up the metadata store
// (retrying until JetStream answers, so start order does not matter), then
// stands by or leads as the election says. On return it has stopped leading
// and given the lease up, so that a standby takes over at once.
func (c *Coordinator) Run(ctx context.Context) error {
	if err := c.setup(ctx); err != nil {
		return err
	}
	c.reportSync(ctx)
	sub, err := c.nc.Subscribe(c.ns.Leader(), func(msg *nats.Msg) {
		info := c.Leader()
		subjects.Reply(msg, &info)
	})
	if err != nil {
		return fmt.Errorf("coordinator: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	c.log.Info("coordinator standing by", "lease_ttl", c.cfg.LeaseTTL, "prefix", c.ns.Prefix())

	var t *term
	defer func() {
		c.mu.Lock()
		acts := c.elect.Resign(time.Now(), "shutting down")
		c.mu.Unlock()
		c.carryOut(context.Background(), acts, &t)
	}()
	tick := time.NewTicker(min(c.cfg.LeaseTTL/20, 100*time.Millisecond))
	defer tick.Stop()
	for {
		c.mu.Lock()
		acts := c.elect.Tick(time.Now())
		c.mu.Unlock()
		c.carryOut(ctx, acts, &t)
		var ended <-chan error
		if t != nil {
			ended = t.ended
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case err := <-ended:
			t.ended = nil // consumed: stop must not wait for it
			c.mu.Lock()
			acts := c.elect.Resign(time.Now(), fmt.Sprintf("the term ended: %v", err))
			c.mu.Unlock()
			c.carryOut(ctx, acts, &t)
		}
	}
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
	n, err := replicas.Resolve(ctx, c.nc, c.js, c.cfg.Replicas, metastore.CoordinatorBucket(c.ns), c.cfg.Placement)
	if err != nil {
		return fmt.Errorf("coordinator: coordinator bucket: %w", err)
	}
	c.repl = replicas.Policy{Replicas: n, Placement: c.cfg.Placement}
	if c.cfg.Replicas == 0 && c.nc.ConnectedClusterName() != "" && n < replicas.AutoReplicas {
		c.log.Warn("the JetStream cluster cannot place 3 replicas now: flotilla's streams and buckets get 1; set --replicas to insist",
			"cluster", c.nc.ConnectedClusterName())
	}
	c.log.Info("JetStream replication", "replicas", n, "cluster", c.nc.ConnectedClusterName())
	store, err := metastore.New(ctx, c.js, c.ns, c.repl, metastore.Options{LeaseTTL: c.cfg.LeaseTTL})
	if err != nil {
		return err
	}
	if _, _, err := replicas.EnsureStream(ctx, c.js, jetstream.StreamConfig{
		Name: metastore.BucketName(c.ns, metastore.StreamEvents), Subjects: []string{c.ns.EventsAll()},
		Storage: jetstream.FileStorage, MaxAge: 7 * 24 * time.Hour, MaxMsgs: 1_000_000,
	}, c.repl, true); err != nil {
		return fmt.Errorf("coordinator: events stream: %w", err)
	}
	hist, err := openHistory(ctx, c.js, c.ns, c.repl, c.cfg.HistoryPerJob, c.cfg.HistoryMaxAge)
	if err != nil {
		return err
	}
	if ttl := store.LeaseTTL(); ttl != c.cfg.LeaseTTL {
		// The lease bucket was created with another TTL, which is the one
		// the servers keep a lease for: act by it.
		c.log.Warn("the leader lease bucket has another TTL than configured; using the bucket's", "lease_ttl", ttl, "configured", c.cfg.LeaseTTL)
		c.mu.Lock()
		c.cfg.LeaseTTL = ttl
		c.elect = election.New(election.Config{TTL: ttl})
		c.mu.Unlock()
	}
	c.store, c.hist = store, hist
	return nil
}

// term is a running leader.
type term struct {
	l      *leader
	cancel context.CancelFunc
	// ended receives the leader's error when it stops by itself; nil once
	// received.
	ended chan error
	done  chan struct{} // closed when the leader has stopped
}

// electionTimeout bounds one lease request: well under the renewal
// interval, so that a lost answer leaves time to retry.
func (c *Coordinator) electionTimeout() time.Duration {
	return max(c.cfg.LeaseTTL/6, 200*time.Millisecond)
}

// carryOut carries out election actions, feeding outcomes back into the
// machine. *t is the running term, if any.
func (c *Coordinator) carryOut(ctx context.Context, acts []election.Action, t **term) {
	for len(acts) > 0 {
		a := acts[0]
		acts = acts[1:]
		var more []election.Action
		switch a := a.(type) {
		case election.Acquire:
			sent := time.Now()
			rctx, cancel := context.WithTimeout(ctx, c.electionTimeout())
			l, err := c.store.Acquire(rctx, c.cfg.Name, c.cfg.Now())
			cancel()
			if err != nil && !errors.Is(err, metastore.ErrLeaseHeld) && ctx.Err() == nil {
				c.log.Debug("campaign", "err", err)
			}
			c.mu.Lock()
			more = c.elect.Acquired(l, err, sent, time.Now())
			c.mu.Unlock()
		case election.Renew:
			sent := time.Now()
			rctx, cancel := context.WithTimeout(ctx, c.electionTimeout())
			l, err := c.store.Renew(rctx, a.Lease)
			cancel()
			if err != nil {
				c.log.Warn("renewing the leader lease", "term", a.Lease.Term, "err", err)
			}
			c.mu.Lock()
			more = c.elect.Renewed(l, err, sent, time.Now())
			c.mu.Unlock()
		case election.Lead:
			c.log.Info("leading", "term", a.Lease.Term)
			*t = c.startTerm(ctx, a.Lease.Term)
		case election.StepDown:
			c.log.Warn("stepping down", "term", a.Lease.Term, "reason", a.Reason)
			c.stopTerm(*t)
			*t = nil
			if a.Release {
				rctx, cancel := context.WithTimeout(context.Background(), c.electionTimeout())
				if err := c.store.Release(rctx, a.Lease); err != nil && !errors.Is(err, metastore.ErrLeaseLost) {
					c.log.Debug("releasing the lease", "err", err)
				}
				cancel()
			}
		}
		acts = append(acts, more...)
	}
}

// startTerm starts the leader of term on its own goroutine: it claims and
// loads every job, then serves until it may no longer act.
func (c *Coordinator) startTerm(ctx context.Context, termID uint64) *term {
	tctx, cancel := context.WithCancel(ctx)
	t := &term{cancel: cancel, ended: make(chan error, 1), done: make(chan struct{})}
	t.l = c.newLeader(termID, t.done)
	c.mu.Lock()
	c.cur = t.l
	c.mu.Unlock()
	go func() {
		err := t.l.setup(tctx)
		if err == nil {
			err = t.l.serve(tctx, func() { c.readyOnce.Do(func() { close(c.ready) }) })
		}
		close(t.done)
		if err != nil && tctx.Err() == nil {
			t.ended <- err
		}
	}()
	return t
}

// stopTerm ends t and waits for its leader to stop (its loop returns at
// once; setup may wait for a request's timeout).
func (c *Coordinator) stopTerm(t *term) {
	if t == nil {
		return
	}
	t.cancel()
	<-t.done
	c.mu.Lock()
	if c.cur == t.l {
		c.cur = nil
	}
	c.mu.Unlock()
}

// current returns the leader of the current term, nil while standing by.
func (c *Coordinator) current() *leader {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}
