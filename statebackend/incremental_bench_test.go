package statebackend

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// BenchmarkIncrementalCheckpoint: the bytes a native checkpoint uploads
// after 1% of the keys changed, against the full state size (the first
// checkpoint's upload), in the same run. State size: FLOTILLA_BENCH_STATE
// (default 64MiB).
func BenchmarkIncrementalCheckpoint(b *testing.B) {
	size := benchSize(b, "FLOTILLA_BENCH_STATE", 64<<20)
	const valueSize = 100
	n := int(size / (valueSize + 14))
	be, err := Open(b.TempDir(), benchOptions(b))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	val := make([]byte, valueSize)
	write := func(keys []int) {
		bt := be.NewBatch()
		defer bt.Close()
		for i, k := range keys {
			for j := range val {
				val[j] = byte(rng.Uint32())
			}
			key := benchKey(k)
			if err := bt.Put("profile", key, val); err != nil {
				b.Fatal(err)
			}
			if err := bt.SetApplied(keygroup.Of(key, be.MaxParallelism()), uint64(i+1)); err != nil {
				b.Fatal(err)
			}
			if i%1000 == 999 {
				if err := bt.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := bt.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	write(all)
	store := objectstore.NewMem()
	ctx := context.Background()
	target := Target{SharedPrefix: "job/shared"}
	checkpoint := func(id uint64) Handle {
		ps, err := be.Snapshot(id)
		if err != nil {
			b.Fatal(err)
		}
		target.PrivatePrefix = "job/chk-" + strconv.FormatUint(id, 10) + "/task-0"
		h, err := ps.Upload(ctx, store, target)
		if err != nil {
			b.Fatal(err)
		}
		be.SnapshotCompleted(id)
		return h
	}
	full := checkpoint(1)
	b.ResetTimer()
	var inc Handle
	for i := 0; i < b.N; i++ {
		changed := make([]int, n/100)
		for j := range changed {
			changed[j] = rng.IntN(n)
		}
		write(changed)
		inc = checkpoint(uint64(2 + i%7))
	}
	b.ReportMetric(float64(full.Uploaded>>10), "full-KiB")
	b.ReportMetric(float64(inc.Uploaded>>10), "incremental-KiB")
	b.ReportMetric(float64(inc.Uploaded)/float64(full.Size), "x-full")
	b.Logf("after a 1%% update of %d MiB of state, a checkpoint uploaded %d KiB: %.3f of the full %d KiB (size referenced %d KiB)",
		size>>20, inc.Uploaded>>10, float64(inc.Uploaded)/float64(full.Size), full.Size>>10, inc.Size>>10)
}
