package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/coordinator/election"
	"github.com/flotilla-io/flotilla/coordinator/engine"
	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/coordinator/metastore/metastoretest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// newTestLeader returns the leader of coordinator "c2", holding the lease
// of an in-memory metadata store whose clock the test moves.
func newTestLeader(t *testing.T, ttl time.Duration) (*leader, metastore.Store, *objectstore.Mem, *testutil.Clock) {
	t.Helper()
	clock := testutil.NewClock(time.Unix(1_000_000, 0))
	ms := metastore.NewMem(metastore.Options{LeaseTTL: ttl}, clock.Now)
	store := objectstore.NewMem()
	co := &Coordinator{cfg: Config{Name: "c2", Store: store, RequestTimeout: time.Second, TickInterval: 10 * time.Millisecond, Now: time.Now},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), store: ms, metrics: newCoordMetrics(),
		elect: election.New(election.Config{TTL: ttl})}
	co.elect.Tick(time.Now())
	lease, err := ms.Acquire(context.Background(), "c2", clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if acts := co.elect.Acquired(lease, nil, time.Now(), time.Now()); len(acts) != 1 {
		t.Fatalf("not leading: %v", acts)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return co.newLeader(lease.Term, done), ms, store, clock
}

// staleLeader returns a leader of "c2" whose election machine still says
// it acts (its deadline, on the process's clock, is close to a TTL away),
// while on the metadata store, whose clock has moved on, its lease expired
// and "c1" took over in a newer term: a leader paused past its lease, at
// the first instant after it woke.
func staleLeader(t *testing.T) (*leader, metastore.Store, *objectstore.Mem, uint64) {
	t.Helper()
	const ttl = time.Minute
	l, ms, store, clock := newTestLeader(t, ttl)
	co, lease := l.co, metastore.Lease{Term: l.epoch}
	ctx := context.Background()
	if err := ms.Commit(ctx, lease.Term, metastoretest.Record(subjects.KindCheckpoint, 1)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(ttl + time.Second)
	newer, err := ms.Acquire(ctx, "c1", clock.Now())
	if err != nil || newer.Term <= lease.Term {
		t.Fatalf("the new leader: %+v %v", newer, err)
	}
	if !co.acting() {
		t.Fatal("the stale leader does not think it acts")
	}
	for _, k := range []string{"clicks/chk-1/task-0-1/snapshot.json", "clicks/shared/new.sst"} {
		if err := store.Put(ctx, k, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	return l, ms, store, newer.Term
}

func objects(t *testing.T, s objectstore.Store) int {
	t.Helper()
	objs, err := s.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return len(objs)
}

// TestStaleLeaderDeletesNoObjects: a leader whose lease another coordinator
// took deletes nothing from the object store, even at the instant it still
// believes it acts: its retention re-reads the lease first. Whether the
// record removal is refused depends on whether the new leader already
// claimed the job; the files are kept either way.
func TestStaleLeaderDeletesNoObjects(t *testing.T) {
	for _, claimed := range []bool{false, true} {
		l, ms, store, newTerm := staleLeader(t)
		if claimed {
			if err := ms.Claim(context.Background(), "clicks", newTerm); err != nil {
				t.Fatal(err)
			}
		}
		l.deleteCheckpoint(metastoretest.Record(subjects.KindCheckpoint, 1), []string{"clicks/chk-1/task-0-1/snapshot.json", "clicks/shared/new.sst"})
		if n := objects(t, store); n != 2 {
			t.Errorf("claimed %v: the stale leader's retention deleted files: %d of 2 left", claimed, n)
		}
		jc, _, err := ms.Load(context.Background(), "clicks", false)
		if err != nil {
			t.Fatal(err)
		}
		if claimed && len(jc.Checkpoints) != 1 {
			t.Errorf("the stale leader removed the record of a job the new leader claimed")
		}
		err = l.co.holds(context.Background(), l.epoch)
		if !errors.Is(err, errNotActing) || !strings.Contains(err.Error(), "c1") {
			t.Errorf("holds: %v, want errNotActing naming c1", err)
		}
	}
}

// TestLoopStopsPastDeadline: a leader's loop ends at its first step once
// the election says it may no longer act.
func TestLoopStopsPastDeadline(t *testing.T) {
	l, _, _, _ := staleLeader(t)
	l.co.mu.Lock()
	l.co.elect.Resign(time.Now(), "test")
	l.co.mu.Unlock()
	ran := make(chan error, 1)
	go func() { ran <- l.run(context.Background()) }()
	select {
	case err := <-ran:
		if !errors.Is(err, errNotActing) {
			t.Fatalf("the loop ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the loop of a leader that may not act kept running")
	}
}

// TestSweepKeepsFilesOfStoredRecords: the orphan sweep keeps the files of
// every checkpoint record still in the metadata store, even one the
// coordinator no longer retains (its removal failed): the record must not
// name deleted files.
func TestSweepKeepsFilesOfStoredRecords(t *testing.T) {
	l, ms, store, _ := newTestLeader(t, time.Minute)
	ctx := context.Background()
	kept := metastoretest.Record(subjects.KindCheckpoint, 1)
	if err := ms.Commit(ctx, l.epoch, kept); err != nil {
		t.Fatal(err)
	}
	orphan := "clicks/chk-2/task-0-1/snapshot.json" // of no record
	for _, k := range append(checkpoint.Files(kept), orphan) {
		if err := store.Put(ctx, k, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	// The coordinator's view retains nothing.
	done := make(chan int, 1)
	l.sweepOrphans(engine.SweepOrphans{Jobs: []engine.SweepJob{{Job: "clicks", Referenced: map[string]bool{}}},
		Cutoff: time.Now().Add(time.Hour - time.Minute)}, done)
	if n := <-done; n != 1 {
		t.Errorf("swept %d objects, want 1 (the orphan)", n)
	}
	for _, k := range checkpoint.Files(kept) {
		if _, err := store.Stat(ctx, k); err != nil {
			t.Errorf("file %s of a stored record was swept: %v", k, err)
		}
	}
}

// slowLoad is a metadata store whose Load of one job takes delay.
type slowLoad struct {
	metastore.Store
	job   string
	delay time.Duration
}

func (s slowLoad) Load(ctx context.Context, job string, prune bool) (metastore.JobCheckpoints, []error, error) {
	if job == s.job {
		time.Sleep(s.delay)
	}
	return s.Store.Load(ctx, job, prune)
}

// TestAdoptionWindowOpensWhenServing: a new term adopts the tasks a worker
// reports at once, even when loading the jobs took longer than the
// adoption window (the heartbeat timeout): the window opens when the term
// answers workers, not when a job was loaded. Job "b" loads slowly; the
// worker runs task 0 of job "a", which was loaded first.
func TestAdoptionWindowOpensWhenServing(t *testing.T) {
	const hbTimeout = 500 * time.Millisecond
	ctx := context.Background()
	mem, _, clock := storeWithJobs(t, "a", "b")
	clock.Advance(time.Minute + time.Second) // term 1's lease expired
	lease, err := mem.Acquire(ctx, "c2", clock.Now())
	if err != nil || lease.Term < 2 {
		t.Fatalf("c2's lease: %+v %v", lease, err)
	}
	nc, co := serveLeader(t, slowLoad{Store: mem, job: "b", delay: 3 * hbTimeout}, lease, hbTimeout)

	// The worker of term 1: it heartbeats until the new term answers, then
	// registers with what it runs, well within the window once the term
	// answers.
	ns := subjects.Namespace{}
	rng := keygroup.ForTask(0, 1, 8)
	running := subjects.SlotReport{Slot: 0, Allocation: "a1-1", Job: "a", Task: 0, Attempt: 1<<20 | 1, State: subjects.TaskRunning, Range: &rng}
	var resp subjects.RegisterResponse
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var hb subjects.HeartbeatResponse
		msg, err := nc.Request(ns.Heartbeat("w1"), subjects.MustEncode(&subjects.Heartbeat{Worker: "w1", Instance: "old", Epoch: 1}), time.Second)
		if err != nil {
			return err
		}
		if err := subjects.Decode(msg.Data, &hb); err != nil {
			return err
		}
		if subjects.CodeOf(hb.Error) != subjects.CodeUnknownWorker {
			return fmt.Errorf("heartbeat answered %+v", hb)
		}
		return nil
	})
	// A worker registers at its next heartbeat.
	time.Sleep(co.cfg.HeartbeatInterval)
	msg, err := nc.Request(ns.Register(), subjects.MustEncode(&subjects.RegisterRequest{Worker: "w1", Slots: 1, Operators: []string{"count"},
		Epoch: 1, Running: []subjects.SlotReport{running}}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := subjects.Decode(msg.Data, &resp); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(resp.Adopted, "a1-1") {
		t.Fatalf("registered with task 0 of job a running: adopted %v, want a1-1 (error %v)", resp.Adopted, resp.Error)
	}
}

// TestPersisterLandsLatestRecord: job records written off the loop land,
// the newest last, through a metadata store that loses requests and
// answers; flush waits until they have.
func TestPersisterLandsLatestRecord(t *testing.T) {
	l, ms, _, _ := newTestLeader(t, time.Minute)
	l.store = metastore.WithFaults(ms, metastore.RandomFaults(7, 0.3))
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 1, MaxParallelism: 8,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "count"}}.WithDefaults()
	for i := uint64(1); i <= 50; i++ {
		l.persist.put(subjects.JobRecord{Spec: spec, State: subjects.JobRunning, FirstID: i})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.persist.flush(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}
	recs, err := ms.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].FirstID != 50 {
		t.Fatalf("stored %+v, want the 50th record", recs)
	}
}

// storeWithJobs returns an in-memory metadata store (lease TTL a minute,
// on a clock the test moves) whose lease "c1" holds in term 1, with a
// running one-task count job of each name.
func storeWithJobs(t *testing.T, names ...string) (metastore.Store, metastore.Lease, *testutil.Clock) {
	t.Helper()
	ctx := context.Background()
	clock := testutil.NewClock(time.Unix(1_000_000, 0))
	mem := metastore.NewMem(metastore.Options{LeaseTTL: time.Minute}, clock.Now)
	lease, err := mem.Acquire(ctx, "c1", clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		spec := subjects.JobSpec{Name: name, Parallelism: 1, MaxParallelism: 8,
			Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
			Operator: subjects.OperatorSpec{Type: "count"}}.WithDefaults()
		if err := mem.PutJob(ctx, lease.Term, subjects.JobRecord{Spec: spec, State: subjects.JobRunning, FirstID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	return mem, lease, clock
}

// serveLeader runs, on an in-process NATS server, the leader of the term
// of lease (held in store) until the test ends, with heartbeats every
// hbTimeout/5.
func serveLeader(t *testing.T, store metastore.Store, lease metastore.Lease, hbTimeout time.Duration) (*nats.Conn, *Coordinator) {
	t.Helper()
	nc := testutil.Connect(t, testutil.RunNATS(t))
	ttl := store.LeaseTTL()
	co := &Coordinator{cfg: Config{Name: lease.Holder, Conn: nc, Store: objectstore.NewMem(), RequestTimeout: time.Second,
		TickInterval: 10 * time.Millisecond, Now: time.Now, HeartbeatInterval: hbTimeout / 5, HeartbeatTimeout: hbTimeout,
		OrphanSweepInterval: time.Hour, OrphanGrace: time.Hour},
		nc: nc, log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newCoordMetrics(),
		store: store, elect: election.New(election.Config{TTL: ttl})}
	co.elect.Tick(time.Now())
	if acts := co.elect.Acquired(lease, nil, time.Now(), time.Now()); len(acts) != 1 {
		t.Fatalf("not leading: %v", acts)
	}
	done := make(chan struct{})
	ctx, stop := context.WithCancel(context.Background())
	l := co.newLeader(lease.Term, done)
	served := make(chan error, 1)
	go func() {
		err := l.setup(ctx)
		if err == nil {
			err = l.serve(ctx, func() {})
		}
		served <- err
	}()
	t.Cleanup(func() {
		stop()
		<-served
		close(done)
	})
	return nc, co
}

// slowPuts is a metadata store whose job record writes take delay.
type slowPuts struct {
	metastore.Store
	delay time.Duration
}

func (s slowPuts) PutJob(ctx context.Context, term uint64, r subjects.JobRecord) error {
	time.Sleep(s.delay)
	return s.Store.PutJob(ctx, term, r)
}

// TestCancelAnsweredOnceRecorded: job records are written off the loop,
// but a user told that a job was canceled finds it canceled in the
// metadata store, which a new leader resumes from.
func TestCancelAnsweredOnceRecorded(t *testing.T) {
	mem, lease, _ := storeWithJobs(t, "a")
	nc, _ := serveLeader(t, slowPuts{Store: mem, delay: 300 * time.Millisecond}, lease, 500*time.Millisecond)
	api := client.New(nc, subjects.Namespace{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := api.Status(ctx, "a")
		return err
	})
	info, err := api.Cancel(ctx, "a")
	if err != nil || info.State != subjects.JobCanceled {
		t.Fatalf("cancel: %+v %v", info, err)
	}
	recs, err := mem.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].State != subjects.JobCanceled {
		t.Fatalf("answered canceled, but the store holds %+v", recs)
	}
}
