package worker

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// BenchmarkTaskThroughput measures how fast two count tasks catch up with a
// backlog of 20,000 events over 1,000 keys, end to end (input consumer,
// Pebble batches, outputs confirmed by the sink stream), with the input in
// partition streams and in one stream that each task reads whole.
//
//	go test -run '^$' -bench TaskThroughput -benchtime 1x ./worker
func BenchmarkTaskThroughput(b *testing.B) {
	for _, layout := range []string{subjects.LayoutPartitioned, subjects.LayoutStream} {
		b.Run("layout="+layout, func(b *testing.B) {
			for b.Loop() {
				benchCatchUp(b, layout, 20000, 1000)
			}
		})
	}
}

func benchCatchUp(b *testing.B, layout string, n, keys int) {
	b.StopTimer()
	opts := testutil.NATSOptions(b.TempDir())
	opts.SyncAlways = false // measure the worker, not the disk
	s := testutil.RunNATSWithOptions(b, opts)
	c := startCoord(b, s, 1)
	w := testWorker(b, s, Config{Slots: 2})
	j := newTestJobIn(b, s, "bench", 2, layout)
	js, err := jetstream.New(j.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := js.PublishAsync("bench.in.k"+strconv.Itoa(i%keys), []byte(`{}`)); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	b.StartTimer()
	start := time.Now()
	for task := range 2 {
		ref := j.deploy(c, w, task, uint64(task+1), nil)
		c.waitStatus(ref, subjects.TaskRunning)
	}
	testutil.CheckFor(b, 5*time.Minute, 20*time.Millisecond, func() error {
		st, err := j.js.Stream(context.Background(), "BENCH_OUT")
		if err != nil {
			return err
		}
		if got := st.CachedInfo().State.Msgs; got < uint64(n) {
			return fmt.Errorf("%d of %d outputs", got, n)
		}
		return nil
	})
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
}
