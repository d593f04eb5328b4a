package coordinator

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

func testCkptStore(t *testing.T) *ckptStore {
	t.Helper()
	srv := testutil.RunNATS(t)
	js, err := jetstream.New(testutil.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := openCkptStore(ctx, js, subjects.Namespace{}, replicas.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func savepointRecord(id uint64) subjects.CheckpointRecord {
	loc := fmt.Sprintf("savepoints/clicks/sp-%d", id)
	file := loc + "/task-0-1.savepoint"
	return subjects.CheckpointRecord{Job: "clicks", ID: id, Kind: subjects.KindSavepoint, Format: statebackend.FormatCanonical, Location: loc,
		Parallelism: 1, MaxParallelism: 8, Tasks: []subjects.TaskCheckpoint{{Task: 0, Worker: "w1",
			Handle: statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatCanonical,
				Manifest: file, Files: []string{file}, Range: keygroup.Range{Start: 0, End: 7}}}}}
}

func savepointIDs(t *testing.T, s *ckptStore, prune bool) []uint64 {
	t.Helper()
	jc, _, err := s.load(context.Background(), "clicks", prune)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, r := range jc.savepoints {
		ids = append(ids, r.ID)
	}
	return ids
}

// TestListingDuringCommitKeepsTheRecord is the race behind a savepoint that
// completed but never appeared: a listing that read the latest pointer just
// before a commit moved it took the freshly stored record for a leftover and
// deleted it, and the commit then completed without a record.
func TestListingDuringCommitKeepsTheRecord(t *testing.T) {
	s := testCkptStore(t)
	ctx := context.Background()
	if err := s.commit(ctx, savepointRecord(1)); err != nil {
		t.Fatal(err)
	}
	var during []uint64
	s.afterPut = func(subjects.CheckpointRecord) { during = savepointIDs(t, s, false) }
	if err := s.commit(ctx, savepointRecord(2)); err != nil {
		t.Fatal(err)
	}
	s.afterPut = nil
	if len(during) != 1 || during[0] != 1 {
		t.Errorf("listing inside the commit window: %v, want only the committed [1]", during)
	}
	if got := savepointIDs(t, s, false); len(got) != 2 || got[1] != 2 {
		t.Fatalf("after the commit: savepoints %v, want [1 2]", got)
	}
	jc, _, err := s.load(ctx, "clicks", false)
	if err != nil || jc.latest != 2 || jc.highest != 2 {
		t.Fatalf("latest %d highest %d (%v), want 2 and 2", jc.latest, jc.highest, err)
	}
}

// TestStartupPrunesLeftovers: a record stored by a commit that never moved
// the latest pointer is skipped by every reader, counted in highest (so a
// new run never reuses its id), and removed only by the pruning load a
// starting coordinator does.
func TestStartupPrunesLeftovers(t *testing.T) {
	s := testCkptStore(t)
	ctx := context.Background()
	if err := s.commit(ctx, savepointRecord(1)); err != nil {
		t.Fatal(err)
	}
	leftover := savepointRecord(2)
	if _, err := s.kv.Put(ctx, recordKey(leftover), subjects.MustEncode(&leftover)); err != nil {
		t.Fatal(err)
	}
	jc, warnings, err := s.load(ctx, "clicks", false)
	if err != nil || len(jc.savepoints) != 1 || jc.latest != 1 || jc.highest != 2 || len(warnings) != 0 {
		t.Fatalf("read-only load: %+v %v %v", jc, warnings, err)
	}
	if _, err := s.kv.Get(ctx, recordKey(leftover)); err != nil {
		t.Fatalf("a read-only load removed the record: %v", err)
	}
	if _, warnings, err = s.load(ctx, "clicks", true); err != nil || len(warnings) != 1 {
		t.Fatalf("pruning load: %v %v", warnings, err)
	}
	if _, err := s.kv.Get(ctx, recordKey(leftover)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the pruning load kept the leftover: %v", err)
	}
}
