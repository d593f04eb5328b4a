package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// BenchmarkCommitVerify measures what checking a checkpoint's objects
// before its commit adds to the commit, on real MinIO and nats-server
// (synced writes): a record of 4 tasks with 30 objects each (a native
// checkpoint of about 1.5 GiB per task in 64 MiB SSTs, its private files
// and its manifest; the shared directory holds 100 more objects of older
// checkpoints), verified with verifyObjects, against the same run's
// baseline of the commit without it: the metadata write and the JetStream
// commit.
//
//	go test ./coordinator -run '^$' -bench CommitVerify -benchtime 50x
func BenchmarkCommitVerify(b *testing.B) {
	const tasks, files = 4, 30
	m := testutil.RunMinIO(b)
	store := m.Store(b, "flotilla", "ckpt")
	srv := testutil.RunNATS(b)
	js, err := jetstream.New(testutil.Connect(b, srv))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ckpts, err := metastore.New(ctx, js, subjects.Namespace{}, replicas.Policy{Replicas: 1}, metastore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	c := &leader{cfg: Config{Store: store, RequestTimeout: 30 * time.Second}, store: ckpts,
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r := subjects.CheckpointRecord{Job: "bench", Kind: subjects.KindCheckpoint, Format: statebackend.FormatNative,
		Location: "bench/chk-1", Parallelism: tasks, MaxParallelism: 128}
	put := func(key string, size int) {
		data := bytes.Repeat([]byte{'x'}, size)
		if err := store.Put(ctx, key, bytes.NewReader(data), int64(size)); err != nil {
			b.Fatal(err)
		}
	}
	// SSTs of earlier checkpoints, which the shared directory holds too.
	for j := range 100 {
		put(fmt.Sprintf("bench/shared/older%d-1-%06d.sst", j%4, j), 100)
	}
	for i := range tasks {
		h := statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatNative,
			Range: keygroup.ForTask(i, tasks, 128)}
		add := func(key string, size int) {
			put(key, size)
			h.Files = append(h.Files, key)
			h.Sizes = append(h.Sizes, int64(size))
			h.Size += int64(size)
		}
		for j := range files - 5 {
			add(fmt.Sprintf("bench/shared/inst%d-1-%06d.sst", i, j), 1024+j)
		}
		for _, name := range []string{"MANIFEST-000001", "OPTIONS-000002", "000003.log", "marker.format-version.000001.024"} {
			add(fmt.Sprintf("bench/chk-1/task-%d-1/inst-%d/%s", i, i, name), 200)
		}
		h.Manifest = fmt.Sprintf("bench/chk-1/task-%d-1/snapshot.json", i)
		add(h.Manifest, 500)
		r.Tasks = append(r.Tasks, subjects.TaskCheckpoint{Task: i, Handle: h})
	}
	// Alternate the baseline (metadata write, then commit) and the
	// verified commit (metadata write and verification in parallel, as
	// the coordinator runs them, then commit), so that both see the same
	// load.
	var base, verified, verify time.Duration
	b.ResetTimer()
	for i := range b.N {
		r.ID = uint64(2*i + 1)
		start := time.Now()
		if err := c.writeMetadata(r); err != nil {
			b.Fatal(err)
		}
		if err := ckpts.Commit(ctx, 1, r); err != nil {
			b.Fatal(err)
		}
		base += time.Since(start)

		r.ID++
		start = time.Now()
		done := make(chan error, 1)
		go func() {
			t := time.Now()
			done <- c.verifyObjects(r)
			verify += time.Since(t)
		}()
		if err := c.writeMetadata(r); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if err := ckpts.Commit(ctx, 1, r); err != nil {
			b.Fatal(err)
		}
		verified += time.Since(start)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(base), "commit-ms")
	b.ReportMetric(ms(verified), "verified-commit-ms")
	b.ReportMetric(ms(verify), "verify-ms")
	b.ReportMetric(ms(verified)/ms(base), "ratio")
	b.Logf("%d objects: commit %.2f ms, with verification %.2f ms (verification alone %.2f ms): ratio %.2f",
		tasks*files, ms(base), ms(verified), ms(verify), ms(verified)/ms(base))
}
