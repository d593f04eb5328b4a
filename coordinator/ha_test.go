package coordinator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/election"
	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/coordinator/metastore/metastoretest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
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
	l.jobs["clicks"] = &jobEntry{cc: checkpoint.New(checkpoint.Config{Job: "clicks", Parallelism: 1, MaxParallelism: 8}, nil, 0)}
	done := make(chan int, 1)
	l.sweepOrphans(time.Now().Add(time.Hour), time.Minute, done)
	if n := <-done; n != 1 {
		t.Errorf("swept %d objects, want 1 (the orphan)", n)
	}
	for _, k := range checkpoint.Files(kept) {
		if _, err := store.Stat(ctx, k); err != nil {
			t.Errorf("file %s of a stored record was swept: %v", k, err)
		}
	}
}
