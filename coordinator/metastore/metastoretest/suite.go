// Package metastoretest is the conformance suite of metastore.Store: the
// JetStream store and its in-memory twin both run it, so that code tested
// against the twin holds against JetStream.
//
//	func TestMem(t *testing.T) {
//		metastoretest.Run(t, func(t *testing.T, o metastore.Options) metastoretest.Target {
//			clock := ...
//			return metastoretest.Target{Store: metastore.NewMem(o, clock.Now), Sleep: clock.Advance}
//		})
//	}
package metastoretest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// Target is a store under test.
type Target struct {
	Store metastore.Store
	// Sleep lets d pass on the store's clock (a real sleep for a store on
	// a server, a fake clock's advance for the twin).
	Sleep func(d time.Duration)
}

// LeaseTTL is the lease TTL the suite opens stores with.
const LeaseTTL = time.Second

// Run runs the suite. open must return a new, empty store with the given
// options each time it is called, from the subtest's goroutine.
func Run(t *testing.T, open func(t *testing.T, o metastore.Options) Target) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(metastore.Options) Target)
	}{
		{"Lease", testLease},
		{"LeaseExpires", testLeaseExpires},
		{"LeaseOneWinner", testLeaseOneWinner},
		{"Jobs", testJobs},
		{"CommitAndLoad", testCommitAndLoad},
		{"ListingDuringCommit", testListingDuringCommit},
		{"PruneLeftovers", testPruneLeftovers},
		{"Fencing", testFencing},
		{"Conflict", testConflict},
		{"SavepointByLocation", testSavepointByLocation},
		{"Faults", testFaults},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, func(o metastore.Options) Target {
				if o.LeaseTTL == 0 {
					o.LeaseTTL = LeaseTTL
				}
				return open(t, o)
			})
		})
	}
}

// Record returns a valid checkpoint record of job clicks.
func Record(kind subjects.CheckpointKind, id uint64) subjects.CheckpointRecord {
	loc := fmt.Sprintf("clicks/chk-%d", id)
	if kind == subjects.KindSavepoint {
		loc = fmt.Sprintf("savepoints/clicks/sp-%d", id)
	}
	file := loc + "/task-0-1/snapshot.json"
	return subjects.CheckpointRecord{Job: "clicks", ID: id, Kind: kind, Format: statebackend.FormatCanonical, Location: loc,
		Parallelism: 1, MaxParallelism: 8, Tasks: []subjects.TaskCheckpoint{{Task: 0, Worker: "w1",
			Handle: statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatCanonical,
				Manifest: file, Files: []string{file}, Range: keygroup.Range{Start: 0, End: 7}}}}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ids(rs []subjects.CheckpointRecord) []uint64 {
	out := []uint64{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func load(t *testing.T, s metastore.Store, prune bool) metastore.JobCheckpoints {
	t.Helper()
	jc, _, err := s.Load(ctx(t), "clicks", prune)
	must(t, err)
	return jc
}

func testLease(t *testing.T, open func(metastore.Options) Target) {
	s, c := open(metastore.Options{}).Store, ctx(t)
	if _, err := s.ReadLease(c); !errors.Is(err, metastore.ErrNoLease) {
		t.Fatalf("read before any lease: %v, want ErrNoLease", err)
	}
	a, err := s.Acquire(c, "a", time.Now())
	must(t, err)
	if a.Term == 0 || a.Holder != "a" {
		t.Fatalf("acquired %+v", a)
	}
	held, err := s.Acquire(c, "b", time.Now())
	if !errors.Is(err, metastore.ErrLeaseHeld) || held.Holder != "a" || held.Term != a.Term {
		t.Fatalf("second acquire: %+v %v, want ErrLeaseHeld naming a", held, err)
	}
	read, err := s.ReadLease(c)
	must(t, err)
	if read.Holder != "a" || read.Term != a.Term || read.Revision != a.Revision {
		t.Fatalf("read %+v, want %+v", read, a)
	}
	renewed, err := s.Renew(c, a)
	must(t, err)
	if renewed.Term != a.Term || renewed.Revision <= a.Revision {
		t.Fatalf("renewed %+v from %+v", renewed, a)
	}
	if _, err := s.Renew(c, a); !errors.Is(err, metastore.ErrLeaseLost) {
		t.Fatalf("renew of a superseded revision: %v, want ErrLeaseLost", err)
	}
	must(t, s.Release(c, renewed))
	b, err := s.Acquire(c, "b", time.Now())
	must(t, err)
	if b.Term <= a.Term {
		t.Fatalf("term of the next holder %d, not above %d", b.Term, a.Term)
	}
	if _, err := s.Renew(c, renewed); !errors.Is(err, metastore.ErrLeaseLost) {
		t.Fatalf("renew after release: %v, want ErrLeaseLost", err)
	}
}

func testLeaseExpires(t *testing.T, open func(metastore.Options) Target) {
	tg := open(metastore.Options{})
	s, c := tg.Store, ctx(t)
	a, err := s.Acquire(c, "a", time.Now())
	must(t, err)
	// Renewed within the TTL, it lives on.
	for i := 0; i < 3; i++ {
		tg.Sleep(LeaseTTL / 3)
		a, err = s.Renew(c, a)
		must(t, err)
	}
	tg.Sleep(LeaseTTL + LeaseTTL/2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.ReadLease(c)
		if errors.Is(err, metastore.ErrNoLease) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease did not expire: %v", err)
		}
		tg.Sleep(100 * time.Millisecond)
	}
	if _, err := s.Renew(c, a); !errors.Is(err, metastore.ErrLeaseLost) {
		t.Fatalf("renew after expiry: %v, want ErrLeaseLost", err)
	}
	b, err := s.Acquire(c, "b", time.Now())
	must(t, err)
	if b.Term <= a.Term {
		t.Fatalf("term after expiry %d, not above %d", b.Term, a.Term)
	}
}

func testLeaseOneWinner(t *testing.T, open func(metastore.Options) Target) {
	s, c := open(metastore.Options{}).Store, ctx(t)
	var mu sync.Mutex
	var won []metastore.Lease
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := s.Acquire(c, fmt.Sprintf("c%d", i), time.Now())
			if err == nil {
				mu.Lock()
				won = append(won, l)
				mu.Unlock()
			} else if !errors.Is(err, metastore.ErrLeaseHeld) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d winners: %+v", len(won), won)
	}
}

func testJobs(t *testing.T, open func(metastore.Options) Target) {
	s, c := open(metastore.Options{}).Store, ctx(t)
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 2}
	must(t, s.PutJob(c, 3, subjects.JobRecord{Spec: spec, State: subjects.JobRunning, FirstID: 1}))
	must(t, s.PutJob(c, 3, subjects.JobRecord{Spec: spec, State: subjects.JobRunning, FirstID: 2}))
	must(t, s.PutJob(c, 4, subjects.JobRecord{Spec: spec, State: subjects.JobFailed, FirstID: 2}))
	if err := s.PutJob(c, 3, subjects.JobRecord{Spec: spec, State: subjects.JobCanceled}); !errors.Is(err, metastore.ErrFenced) {
		t.Fatalf("put of an older term: %v, want ErrFenced", err)
	}
	must(t, s.PutJob(c, 1, subjects.JobRecord{Spec: subjects.JobSpec{Name: "other"}, State: subjects.JobCreated}))
	jobs, err := s.Jobs(c)
	must(t, err)
	if len(jobs) != 2 || jobs[0].Spec.Name != "clicks" || jobs[0].State != subjects.JobFailed || jobs[0].Term != 4 || jobs[0].FirstID != 2 {
		t.Fatalf("jobs %+v", jobs)
	}
}

func testCommitAndLoad(t *testing.T, open func(metastore.Options) Target) {
	s, c := open(metastore.Options{}).Store, ctx(t)
	if jc := load(t, s, false); jc.Latest != 0 || len(jc.Checkpoints)+len(jc.Savepoints) != 0 {
		t.Fatalf("empty store: %+v", jc)
	}
	for _, r := range []subjects.CheckpointRecord{Record(subjects.KindCheckpoint, 1), Record(subjects.KindSavepoint, 2),
		Record(subjects.KindCheckpoint, 4), Record(subjects.KindCheckpoint, 3)} {
		must(t, s.Commit(c, 1, r))
	}
	// 3 committed after 4: it completed without moving the pointer.
	jc := load(t, s, false)
	if jc.Latest != 4 || jc.Highest != 4 || fmt.Sprint(ids(jc.Checkpoints)) != "[1 3 4]" || fmt.Sprint(ids(jc.Savepoints)) != "[2]" {
		t.Fatalf("loaded %+v", jc)
	}
	// A commit is idempotent: the same record again is done.
	must(t, s.Commit(c, 1, Record(subjects.KindCheckpoint, 4)))
	must(t, s.Remove(c, 1, Record(subjects.KindCheckpoint, 1)))
	must(t, s.Remove(c, 1, Record(subjects.KindCheckpoint, 1)))
	if jc := load(t, s, false); fmt.Sprint(ids(jc.Checkpoints)) != "[3 4]" {
		t.Fatalf("after remove: %v", ids(jc.Checkpoints))
	}
}

// testListingDuringCommit is the race behind a savepoint that completed but
// never appeared: a listing that read the latest pointer just before a
// commit moved it took the freshly stored record for a leftover and deleted
// it, and the commit then completed without a record.
func testListingDuringCommit(t *testing.T, open func(metastore.Options) Target) {
	var s metastore.Store
	var during []uint64
	s = open(metastore.Options{AfterPut: func(r subjects.CheckpointRecord) error {
		if r.ID == 2 {
			during = ids(load(t, s, false).Savepoints)
		}
		return nil
	}}).Store
	c := ctx(t)
	must(t, s.Commit(c, 1, Record(subjects.KindSavepoint, 1)))
	must(t, s.Commit(c, 1, Record(subjects.KindSavepoint, 2)))
	if fmt.Sprint(during) != "[1]" {
		t.Errorf("listing inside the commit window: %v, want only the committed [1]", during)
	}
	if jc := load(t, s, false); fmt.Sprint(ids(jc.Savepoints)) != "[1 2]" || jc.Latest != 2 || jc.Highest != 2 {
		t.Fatalf("after the commit: %+v", jc)
	}
}

var errCrash = errors.New("crashed between put and pointer")

// testPruneLeftovers: a record stored by a commit that never moved the
// latest pointer is skipped by every reader, counted in Highest (so a new
// run never reuses its id), and removed only by a pruning load.
func testPruneLeftovers(t *testing.T, open func(metastore.Options) Target) {
	s := open(metastore.Options{AfterPut: func(r subjects.CheckpointRecord) error {
		if r.ID == 2 {
			return errCrash
		}
		return nil
	}}).Store
	c := ctx(t)
	must(t, s.Commit(c, 1, Record(subjects.KindSavepoint, 1)))
	if err := s.Commit(c, 1, Record(subjects.KindSavepoint, 2)); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	jc, warnings, err := s.Load(c, "clicks", false)
	if err != nil || len(jc.Savepoints) != 1 || jc.Latest != 1 || jc.Highest != 2 || len(warnings) != 0 {
		t.Fatalf("read-only load: %+v %v %v", jc, warnings, err)
	}
	if _, warnings, err = s.Load(c, "clicks", true); err != nil || len(warnings) != 1 {
		t.Fatalf("pruning load: %v %v", warnings, err)
	}
	if jc := load(t, s, false); jc.Highest != 1 {
		t.Fatalf("the pruning load kept the leftover: %+v", jc)
	}
}

// testFencing: once a newer term claimed the job, an older term's commits
// and removals are refused, and a refused commit leaves no record behind.
func testFencing(t *testing.T, open func(metastore.Options) Target) {
	tg := open(metastore.Options{})
	s, c := tg.Store, ctx(t)
	must(t, s.Commit(c, 1, Record(subjects.KindCheckpoint, 1)))
	must(t, s.Claim(c, "clicks", 2))
	must(t, s.Claim(c, "clicks", 2))
	if err := s.Claim(c, "clicks", 1); !errors.Is(err, metastore.ErrFenced) {
		t.Fatalf("claim of an older term: %v", err)
	}
	if jc := load(t, s, false); jc.Latest != 1 {
		t.Fatalf("a claim moved the pointer: %+v", jc)
	}
	// The old leader's commit that already landed still reads as done.
	must(t, s.Commit(c, 1, Record(subjects.KindCheckpoint, 1)))
	for _, id := range []uint64{2, 0} {
		r := Record(subjects.KindCheckpoint, 7)
		if id == 0 {
			r = Record(subjects.KindSavepoint, 8)
		}
		if err := s.Commit(c, 1, r); !errors.Is(err, metastore.ErrFenced) {
			t.Fatalf("commit of an older term: %v, want ErrFenced", err)
		}
	}
	if err := s.Remove(c, 1, Record(subjects.KindCheckpoint, 1)); !errors.Is(err, metastore.ErrFenced) {
		t.Fatalf("remove of an older term: %v, want ErrFenced", err)
	}
	// The refused records are forgotten (in the background).
	deadline := time.Now().Add(10 * time.Second)
	for load(t, s, false).Highest != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("refused commits left records: %+v", load(t, s, false))
		}
		tg.Sleep(50 * time.Millisecond)
	}
	must(t, s.Commit(c, 2, Record(subjects.KindCheckpoint, 9)))
	if jc := load(t, s, false); jc.Latest != 9 || fmt.Sprint(ids(jc.Checkpoints)) != "[1 9]" {
		t.Fatalf("after the new term's commit: %+v", jc)
	}
	// A job nobody committed can be claimed too.
	must(t, s.Claim(c, "fresh", 5))
	fresh := Record(subjects.KindCheckpoint, 1)
	fresh.Job = "fresh"
	if err := s.Commit(c, 4, fresh); !errors.Is(err, metastore.ErrFenced) {
		t.Fatalf("commit to a claimed fresh job: %v", err)
	}
}

// testConflict: a record is never overwritten by another of the same id.
func testConflict(t *testing.T, open func(metastore.Options) Target) {
	s := open(metastore.Options{AfterPut: func(r subjects.CheckpointRecord) error {
		if r.Location == "elsewhere" {
			return errCrash
		}
		return nil
	}}).Store
	c := ctx(t)
	other := Record(subjects.KindCheckpoint, 3)
	other.Location = "elsewhere"
	if err := s.Commit(c, 1, other); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	if err := s.Commit(c, 2, Record(subjects.KindCheckpoint, 3)); !errors.Is(err, metastore.ErrConflict) {
		t.Fatalf("commit over another record of the same id: %v, want ErrConflict", err)
	}
	must(t, s.Commit(c, 2, Record(subjects.KindCheckpoint, 4)))
}

func testSavepointByLocation(t *testing.T, open func(metastore.Options) Target) {
	s, c := open(metastore.Options{}).Store, ctx(t)
	must(t, s.Commit(c, 1, Record(subjects.KindSavepoint, 5)))
	r, ok, err := s.SavepointByLocation(c, "savepoints/clicks/sp-5")
	if err != nil || !ok || r.ID != 5 {
		t.Fatalf("found %v %v %v", r.ID, ok, err)
	}
	if _, ok, err := s.SavepointByLocation(c, "savepoints/clicks/sp-6"); ok || err != nil {
		t.Fatalf("found an absent savepoint: %v %v", ok, err)
	}
}

// testFaults commits through a store whose calls fail at random, before or
// after taking effect, retrying as the coordinator does across checkpoints:
// whatever the faults, the pointer only grows, it names a readable record,
// every commit that reported success is loadable, and no record above the
// pointer is ever read.
func testFaults(t *testing.T, open func(metastore.Options) Target) {
	s := metastore.WithFaults(open(metastore.Options{}).Store, metastore.RandomFaults(42, 0.2))
	c := ctx(t)
	var ok []uint64
	var latest uint64
	for id := uint64(1); id <= 30; id++ {
		if err := s.Commit(c, 1, Record(subjects.KindCheckpoint, id)); err == nil {
			ok = append(ok, id)
		} else if !metastore.Transient(err) {
			t.Fatalf("commit %d: %v", id, err)
		}
		jc, _, err := s.Load(c, "clicks", false)
		if err != nil {
			continue
		}
		if jc.Latest < latest {
			t.Fatalf("the pointer went back from %d to %d", latest, jc.Latest)
		}
		latest = jc.Latest
		if n := len(jc.Checkpoints); n > 0 && jc.Checkpoints[n-1].ID != jc.Latest {
			t.Fatalf("newest record %d, pointer %d", jc.Checkpoints[n-1].ID, jc.Latest)
		}
	}
	if len(ok) == 0 {
		t.Fatal("no commit succeeded")
	}
	var jc metastore.JobCheckpoints
	var err error
	for i := 0; i < 100; i++ {
		if jc, _, err = s.Load(c, "clicks", false); err == nil {
			break
		}
	}
	must(t, err)
	have := map[uint64]bool{}
	for _, r := range jc.Checkpoints {
		have[r.ID] = true
	}
	for _, id := range ok {
		if !have[id] {
			t.Errorf("commit %d reported success but is not loadable (have %v)", id, ids(jc.Checkpoints))
		}
	}
}
