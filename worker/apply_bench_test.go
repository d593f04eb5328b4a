package worker

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// applyFlushEvery is how many events the apply benchmark lets pass between
// two state commits: what FlushInterval (100 ms) lets through at 100k
// events/s, the rate of one task on the 2-core machines measured. Faster
// tasks combine more.
const applyFlushEvery = 10_000

// BenchmarkApply measures a count task's per-event apply path, from an event
// decoded at the input edge to its output collected for the sink (the sink
// itself, which publishes, is not included): the operator, the write-back
// state cache, the applied marks and the amortized Pebble commits, in rounds
// of DefaultBatchSize events with a commit every applyFlushEvery events.
// Keys are drawn uniformly from 1,000 and from 1,000,000. The baseline
// (pebble-put) is one Pebble batch write per event, committed every round:
// what the apply path cost before it combined writes.
//
//	go test -run '^$' -bench Apply -benchmem ./worker
func BenchmarkApply(b *testing.B) {
	for _, keys := range []int{1_000, 1_000_000} {
		b.Run(fmt.Sprintf("count/keys=%d", keys), func(b *testing.B) { benchApply(b, keys, false) })
		b.Run(fmt.Sprintf("pebble-put/keys=%d", keys), func(b *testing.B) { benchApply(b, keys, true) })
	}
}

// newLocalTask returns a task over a fresh backend for groups rng (or the
// backend be, if not nil) that applies events and fires timers without NATS:
// its outputs are dropped by a sink without subjects.
func newLocalTask(tb testing.TB, op Operator, m int, rng keygroup.Range, be *statebackend.Backend) *task {
	tb.Helper()
	if be == nil {
		var err error
		if be, err = statebackend.Open(tb.TempDir(), statebackend.Options{MaxParallelism: m, KeyGroups: rng}); err != nil {
			tb.Fatal(err)
		}
	}
	t := &task{
		spec: subjects.JobSpec{Name: "local", Operator: subjects.OperatorSpec{Type: "local"}},
		rng:  rng, m: m, op: op, be: be, log: slog.New(slog.DiscardHandler),
		sink: &sink{stored: map[string]bool{}},
	}
	t.inputs = []*input{{InputStream: subjects.InputStream{Name: "local", Groups: keygroup.Range{Start: 0, End: m - 1}}}}
	t.batch = be.NewBatch()
	t.cache = newStateCache(t.batch, DefaultStateCacheEntries, DefaultStateCacheBytes)
	t.octx.st, t.octx.out = t.cache, &t.outs
	t.clock.input = t.inputTime
	t.octx.clock, t.octx.timers = &t.clock, &t.timers
	if err := loadTimers(&t.timers, be); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = t.batch.Close()
		_ = be.Close()
	})
	return t
}

func benchApply(b *testing.B, keys int, baseline bool) {
	const m = keygroup.DefaultMaxParallelism
	t := newLocalTask(b, countOp{}, m, keygroup.Range{Start: 0, End: m - 1}, nil)
	// Events as the reader goroutine decodes them.
	r := rand.New(rand.NewPCG(1, 2))
	evs := make([]inputEvent, 1<<16)
	now := time.Now()
	for i := range evs {
		k := "user-" + strconv.Itoa(r.IntN(keys))
		evs[i] = inputEvent{key: k, subject: "clicks." + k, group: keygroup.Of([]byte(k), m), time: now, data: []byte(`{}`)}
	}
	val := []byte("1")
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := range b.N {
		ev := &evs[i%len(evs)]
		ev.seq = uint64(i + 1)
		if baseline {
			if err := t.batch.PutIn(ev.group, ValueState, []byte(ev.key), val); err != nil {
				b.Fatal(err)
			}
			if (i+1)%DefaultBatchSize == 0 {
				if err := t.batch.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			continue
		}
		if err := t.apply(ev); err != nil {
			b.Fatal(err)
		}
		if (i+1)%DefaultBatchSize == 0 {
			if err := t.publishOutputs(); err != nil {
				b.Fatal(err)
			}
		}
		if (i+1)%applyFlushEvery == 0 || t.cache.full() {
			if err := t.commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if !baseline {
		if err := t.commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// CPU time (of the whole process: Pebble's flushes and compactions
	// included) per event, which a machine shared with other work inflates
	// far less than wall time.
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-us/event")
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
