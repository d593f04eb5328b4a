package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// startWorkerWith is startWorker with a hook to adjust the config.
func (f *fleet) startWorkerWith(name string, slots int, adjust func(*worker.Config)) (context.CancelFunc, *nats.Conn) {
	nc := f.conn()
	cfg := worker.Config{Conn: nc, DataDir: f.t.TempDir(), Name: name, Slots: slots, Store: f.store, Logger: logger(f.t)}
	adjust(&cfg)
	w, err := worker.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.run("worker "+name, w.Run, nil), nc
}

// publishLatest publishes n events over keys user-0..user-(keys-1) for a
// "latest" job: each body is the event's number (counting on from
// *next), padded to about 1 KiB so that a few events fill a small memtable,
// and truth gets each key's last number: its state once applied.
func (f *fleet) publishLatest(n, keys int, next *int64, truth map[string]int64) {
	js, err := jetstream.New(f.nc)
	if err != nil {
		f.t.Fatal(err)
	}
	pad := strings.Repeat(" ", 1000)
	for done := 0; done < n; {
		for end := min(done+1000, n); done < end; done++ {
			*next++
			k := fmt.Sprintf("user-%d", *next*7919%int64(keys))
			if _, err := js.PublishAsync("clicks."+k, fmt.Appendf(nil, "%d%s", *next, pad)); err != nil {
				f.t.Fatal(err)
			}
			truth[k] = *next
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			f.t.Fatal("publishing timed out")
		}
	}
}

// keyed returns r with its location turned into a key of the store.
func (f *fleet) keyed(r subjects.CheckpointRecord) subjects.CheckpointRecord {
	f.t.Helper()
	key, err := objectstore.KeyOf(f.store.Location(), r.Location)
	if err != nil {
		f.t.Fatal(err)
	}
	r.Location = key
	return r
}

// sharedFiles returns the objects under the job's shared directory that
// the records name.
func sharedFiles(job string, rs ...subjects.CheckpointRecord) []string {
	var out []string
	for _, r := range rs {
		for _, f := range checkpoint.Files(r) {
			if strings.HasPrefix(f, checkpoint.SharedLocation(job)+"/") {
				out = append(out, f)
			}
		}
	}
	return out
}

// TestNativeSavepointOutlivesRetention: a native savepoint taken while
// checkpoints run stays restorable, exactly, after many more checkpoints
// whose compactions, retention (one retained) and orphan sweeps delete
// every SST the job's early checkpoints uploaded: it owns the files it
// names. A job restored from it relies on it until its first checkpoint,
// so deleting it is refused until then, and afterwards the job fails over
// from its own checkpoint with the savepoint gone.
func TestNativeSavepointOutlivesRetention(t *testing.T) {
	f := minioFleet(t)
	_, co := f.startCoordinatorWith(func(c *coordinator.Config) {
		c.OrphanGrace = 2 * time.Second
		c.OrphanSweepInterval = 500 * time.Millisecond
	})
	// A small memtable: every round flushes SSTs and compacts them (the
	// "latest" job keeps each key's 1 KiB body).
	small := func(c *worker.Config) { c.MemTableSize = 64 << 10 }
	_, nc1 := f.startWorkerWith("w1", 4, small)
	f.waitWorkers(1)
	ctx := context.Background()
	const keys = 300
	if _, err := f.api.Submit(ctx, withCheckpoints(latestSpec("clicks", 2), 100*time.Millisecond, 1), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	var next int64
	f.publishLatest(1500, keys, &next, truth)
	f.checkState("clicks", truth, 60*time.Second)
	last := f.waitCheckpoint("clicks", 0)
	cps, err := f.api.Checkpoints(ctx, "clicks")
	if err != nil || len(cps) == 0 {
		t.Fatalf("checkpoints: %v %v", cps, err)
	}
	start := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }
	phase("first checkpoint")
	early := sharedFiles("clicks", f.keyed(cps[len(cps)-1]))
	if len(early) == 0 {
		t.Fatal("the first checkpoints uploaded no SST")
	}

	res, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks", Format: statebackend.FormatNative})
	if err != nil {
		t.Fatal(err)
	}
	sps, err := f.api.Savepoints(ctx, "clicks")
	if err != nil || len(sps) != 1 {
		t.Fatalf("savepoints: %v %v", sps, err)
	}
	sp := f.keyed(sps[0])
	phase("savepoint")

	// Rounds of updates: flushes, compactions, checkpoints, retention.
	for round := range 6 {
		f.publishLatest(600, keys, &next, truth)
		last = f.waitCheckpoint("clicks", last)
		phase(fmt.Sprintf("round %d: checkpoint %d", round, last))
	}
	f.checkState("clicks", truth, 60*time.Second)
	phase("state after the rounds")
	// Compactions rewrote the early SSTs and retention deleted them.
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		gone := 0
		for _, k := range early {
			if _, err := f.store.Stat(ctx, k); errors.Is(err, objectstore.ErrNotFound) {
				gone++
			}
		}
		if gone == 0 {
			return fmt.Errorf("all %d SSTs of the early checkpoint still stored", len(early))
		}
		return nil
	})
	if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}
	co.SweepOrphans(0)

	// The savepoint names only objects of its own, and they are all there.
	for _, file := range checkpoint.Files(sp) {
		if !strings.HasPrefix(file, sp.Location+"/") {
			t.Errorf("savepoint %s names %s, outside its directory", sp.Location, file)
		}
		if _, err := f.store.Stat(ctx, file); err != nil {
			t.Errorf("savepoint file: %v", err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Restore at another parallelism, under another name: every key exact
	// (the events after the savepoint are replayed onto it once).
	if _, err := f.api.Submit(ctx, latestSpec("restored", 3), 0, res.Location); err != nil {
		t.Fatal(err)
	}
	f.checkState("restored", truth, 60*time.Second)
	phase("restored")
	// Without a checkpoint of its own, the job can restore only from the
	// savepoint: deleting it is refused.
	if err := f.api.DeleteSavepoint(ctx, res.Location); subjects.CodeOf(err) != subjects.CodeSavepointInUse {
		t.Fatalf("deleting the savepoint a running job needs: %v, want %s", err, subjects.CodeSavepointInUse)
	}
	if _, err := f.api.Cancel(ctx, "restored"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.Submit(ctx, withCheckpoints(latestSpec("restored", 3), 100*time.Millisecond, 1), 0, res.Location); err != nil {
		t.Fatal(err)
	}
	f.checkState("restored", truth, 60*time.Second)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		cps, err := f.api.Checkpoints(ctx, "restored")
		if err == nil && len(cps) == 0 {
			err = errors.New("no checkpoint of the restored job yet")
		}
		return err
	})
	phase("restored job checkpointed")
	if err := f.api.DeleteSavepoint(ctx, res.Location); err != nil {
		t.Fatal(err)
	}
	if left := listKeys(t, f.store, sp.Location+"/"); len(left) > 0 {
		t.Fatalf("deleted savepoint left %v", left)
	}
	// The restored job's checkpoints own their files: it fails over to
	// another worker with the savepoint gone.
	f.startWorkerWith("w2", 4, small)
	nc1.Close()
	f.publishLatest(500, keys, &next, truth)
	f.checkState("restored", truth, 60*time.Second)
	phase("failed over")
}

func latestSpec(name string, parallelism int) subjects.JobSpec {
	s := countSpec(name, parallelism)
	s.Operator.Type = "latest"
	return s
}

func listKeys(t *testing.T, store objectstore.Store, prefix string) []string {
	t.Helper()
	objs, err := store.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	return keys
}
