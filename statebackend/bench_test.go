package statebackend

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// Benchmarks. Each reports its figure against a baseline measured in the
// same run (metrics ending in "x-..."). The state size of the snapshot and
// savepoint benchmarks is FLOTILLA_BENCH_STATE (default 64MiB), e.g.
//
//	FLOTILLA_BENCH_STATE=1GiB go test -run '^$' -bench . -benchtime 20x ./statebackend
//
// FLOTILLA_BENCH_MEMTABLE overrides Options.MemTableSize, to compare.

func benchSize(tb testing.TB, env string, def int64) int64 {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a size like 64MiB", env, os.Getenv(env))
	}
	return n * mult
}

func benchOptions(tb testing.TB) Options {
	return Options{
		MaxParallelism: keygroup.DefaultMaxParallelism,
		KeyGroups:      keygroup.Range{Start: 0, End: keygroup.DefaultMaxParallelism - 1},
		MemTableSize:   uint64(benchSize(tb, "FLOTILLA_BENCH_MEMTABLE", DefaultMemTableSize)),
	}
}

// fixtures are filled backends shared by the invocations of a benchmark
// function (the framework calls it several times with growing b.N); they are
// removed by TestMain.
var fixtures struct {
	sync.Mutex
	dirs     []string
	backends map[string]*Backend
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, b := range fixtures.backends {
		_ = b.Close()
	}
	for _, d := range fixtures.dirs {
		_ = os.RemoveAll(d)
	}
	os.Exit(code)
}

func fixtureDir(tb testing.TB) string {
	d, err := os.MkdirTemp("", "statebackend-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	fixtures.dirs = append(fixtures.dirs, d)
	return d
}

const benchValueSize = 200

func benchKey(i int) []byte { return fmt.Appendf(nil, "user-%09d", i) }

// filledBackend returns a backend holding about size bytes of value state
// (keys of 14 bytes, random values of benchValueSize bytes) and counters,
// fully compacted.
func filledBackend(tb testing.TB, size int64) *Backend {
	fixtures.Lock()
	defer fixtures.Unlock()
	name := fmt.Sprint(size, "/", benchOptions(tb).MemTableSize)
	if b := fixtures.backends[name]; b != nil {
		return b
	}
	b, err := Open(fixtureDir(tb), benchOptions(tb))
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	val := make([]byte, benchValueSize)
	bt := b.NewBatch()
	n := int(size / (benchValueSize + 14))
	for i := range n {
		for j := 0; j < len(val); j += 8 {
			v := rng.Uint64()
			copy(val[j:], []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24), byte(v >> 32), byte(v >> 40), byte(v >> 48), byte(v >> 56)})
		}
		k := benchKey(i)
		if err := bt.Put("profile", k, val); err != nil {
			tb.Fatal(err)
		}
		if i%4 == 0 {
			if err := bt.Add("clicks", k, int64(i)); err != nil {
				tb.Fatal(err)
			}
		}
		if err := bt.SetApplied(keygroup.Of(k, b.MaxParallelism()), uint64(i+1)); err != nil {
			tb.Fatal(err)
		}
		if i%1000 == 999 || i == n-1 {
			if err := bt.Commit(); err != nil {
				tb.Fatal(err)
			}
		}
	}
	_ = bt.Close()
	if err := b.db.Flush(); err != nil {
		tb.Fatal(err)
	}
	// Settle the LSM, as in a backend that has run for a while: the bulk
	// load above leaves a compaction debt no steady workload would.
	if err := b.db.Compact(context.Background(), []byte{0}, []byte{0xff, 0xff, 0xff}, true); err != nil {
		tb.Fatal(err)
	}
	if fixtures.backends == nil {
		fixtures.backends = map[string]*Backend{}
	}
	fixtures.backends[name] = b
	return b
}

// BenchmarkCounterUpdates: keyed counter updates through Batch.Add, 1000 per
// commit, against raw Pebble batch merges of the same (pre-encoded) keys
// into a DB with the same options. One op = one batch on each DB.
func BenchmarkCounterUpdates(b *testing.B) {
	const perBatch = 1000
	const keys = 100_000
	be, err := Open(b.TempDir(), benchOptions(b))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	rawDir := b.TempDir()
	raw, err := pebble.Open(rawDir, benchOptions(b).pebbleOptions(newBackendFS(rawDir, "", nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	userKeys := make([][]byte, keys)
	rawKeys := make([][]byte, keys)
	for i := range userKeys {
		userKeys[i] = fmt.Appendf(nil, "user-%d", i)
		rawKeys[i] = appendStateKey(nil, keygroup.Of(userKeys[i], be.MaxParallelism()), nsCounter, "clicks", userKeys[i])
	}
	one := encodeInt64(1)
	rng := rand.New(rand.NewPCG(3, 4))
	idx := make([]int, perBatch)
	bt := be.NewBatch()
	defer bt.Close()
	rb := raw.NewBatch()
	var rawTime, beTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range idx {
			idx[j] = rng.IntN(keys)
		}
		t0 := time.Now()
		for _, j := range idx {
			if err := rb.Merge(rawKeys[j], one, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := raw.Apply(rb, pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		rb.Reset()
		t1 := time.Now()
		for _, j := range idx {
			if err := bt.Add("clicks", userKeys[j], 1); err != nil {
				b.Fatal(err)
			}
		}
		if err := bt.Commit(); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		rawTime += t1.Sub(t0)
		beTime += t2.Sub(t1)
	}
	n := float64(b.N * perBatch)
	b.ReportMetric(float64(beTime.Nanoseconds())/n, "ns/update")
	b.ReportMetric(float64(rawTime.Nanoseconds())/n, "raw-ns/update")
	b.ReportMetric(float64(rawTime)/float64(beTime), "x-raw-throughput")
}

// BenchmarkReadModifyWrite: per event, read a value through the batch and
// write it back (1000 events per commit), against a raw Pebble indexed batch
// doing the same. It is what decided Batch's lazy read-your-writes index.
func BenchmarkReadModifyWrite(b *testing.B) {
	const perBatch = 1000
	const keys = 100_000
	be, err := Open(b.TempDir(), benchOptions(b))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	rawDir := b.TempDir()
	raw, err := pebble.Open(rawDir, benchOptions(b).pebbleOptions(newBackendFS(rawDir, "", nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	userKeys := make([][]byte, keys)
	rawKeys := make([][]byte, keys)
	for i := range userKeys {
		userKeys[i] = fmt.Appendf(nil, "user-%d", i)
		rawKeys[i] = appendStateKey(nil, keygroup.Of(userKeys[i], be.MaxParallelism()), nsValue, "last", userKeys[i])
	}
	rng := rand.New(rand.NewPCG(5, 6))
	idx := make([]int, perBatch)
	bt := be.NewBatch()
	defer bt.Close()
	var rawTime, beTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range idx {
			idx[j] = rng.IntN(keys)
		}
		t0 := time.Now()
		rb := raw.NewIndexedBatch()
		for _, j := range idx {
			v, closer, err := rb.Get(rawKeys[j])
			nv := []byte{0}
			if err == nil {
				nv[0] = v[0] + 1
				closer.Close()
			}
			if err := rb.Set(rawKeys[j], nv, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := rb.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		rb.Close()
		t1 := time.Now()
		for _, j := range idx {
			v, err := bt.Get("last", userKeys[j])
			nv := []byte{0}
			if err == nil {
				nv[0] = v[0] + 1
			}
			if err := bt.Put("last", userKeys[j], nv); err != nil {
				b.Fatal(err)
			}
		}
		if err := bt.Commit(); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		rawTime += t1.Sub(t0)
		beTime += t2.Sub(t1)
	}
	n := float64(b.N * perBatch)
	b.ReportMetric(float64(beTime.Nanoseconds())/n, "ns/event")
	b.ReportMetric(float64(rawTime.Nanoseconds())/n, "indexed-ns/event")
	b.ReportMetric(float64(rawTime)/float64(beTime), "x-indexed-throughput")
}

// BenchmarkSnapshotSync: the synchronous part of Snapshot with
// FLOTILLA_BENCH_STATE of state, against the same with a tenth of it, while
// writes continue (4 MiB of updates between snapshots, so the memtable and
// WAL are at every fill level). ns/op is the mean synchronous part at full
// size.
func BenchmarkSnapshotSync(b *testing.B) {
	size := benchSize(b, "FLOTILLA_BENCH_STATE", 64<<20)
	big := filledBackend(b, size)
	small := filledBackend(b, size/10)
	rng := rand.New(rand.NewPCG(7, 8))
	val := make([]byte, benchValueSize)
	churn := func(be *Backend, n int) {
		bt := be.NewBatch()
		defer bt.Close()
		perKey := int64(benchValueSize + 14)
		for i := 0; i < int(4<<20/perKey); i++ {
			k := benchKey(rng.IntN(n))
			val[0]++
			if err := bt.Put("profile", k, val); err != nil {
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
	var id uint64
	snap := func(be *Backend) time.Duration {
		id++
		t0 := time.Now()
		p, err := be.Snapshot(id)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		p.Release()
		return d
	}
	var bigTimes, smallTimes []time.Duration
	for i := 0; i < b.N; i++ {
		churn(big, int(size/(benchValueSize+14)))
		bigTimes = append(bigTimes, snap(big))
		churn(small, int(size/10/(benchValueSize+14)))
		smallTimes = append(smallTimes, snap(small))
	}
	bigMean, smallMean := mean(bigTimes), mean(smallTimes)
	b.ReportMetric(float64(bigMean.Nanoseconds()), "ns/op")
	b.ReportMetric(ms(bigMean), "mean-ms")
	b.ReportMetric(ms(percentile(bigTimes, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(bigTimes, 90)), "p90-ms")
	b.ReportMetric(ms(percentile(bigTimes, 100)), "max-ms")
	b.ReportMetric(ms(smallMean), "tenth-mean-ms")
	b.ReportMetric(ms(percentile(smallTimes, 50)), "tenth-p50-ms")
	b.ReportMetric(float64(bigMean)/float64(smallMean), "x-tenth-mean")
	b.ReportMetric(float64(percentile(bigTimes, 50))/float64(percentile(smallTimes, 50)), "x-tenth-p50")
	b.ReportMetric(float64(size>>20), "MiB-state")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// percentile returns the p-th percentile of ds (p in [0, 100]).
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// benchStores returns the stores the savepoint benchmarks run against: a
// local directory, and MinIO when its binary is installed.
func benchStores(b *testing.B) map[string]func(b *testing.B) objectstore.Store {
	return map[string]func(b *testing.B) objectstore.Store{
		"fs": func(b *testing.B) objectstore.Store {
			s, err := objectstore.NewFS(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Close() })
			return s
		},
		"minio": func(b *testing.B) objectstore.Store {
			if _, err := testutil.FindMinIO(); err != nil {
				b.Skipf("minio: %v", err)
			}
			return testutil.RunMinIO(b).Store(b, "bench", "savepoints")
		},
	}
}

// BenchmarkSavepoint: writing and reading a canonical savepoint of
// FLOTILLA_BENCH_STATE of state, against a plain Put and Get of a blob of
// the same size through the same store. "read" decodes and verifies every
// group; "restore" is a whole Restore (read, build SSTs, ingest);
// "restore-batches" is the same read applied through Pebble batches instead
// of ingested SSTs, for comparison.
func BenchmarkSavepoint(b *testing.B) {
	size := benchSize(b, "FLOTILLA_BENCH_STATE", 64<<20)
	for _, name := range []string{"fs", "minio"} {
		b.Run(name, func(b *testing.B) {
			store := benchStores(b)[name](b)
			be := filledBackend(b, size)
			var write, rawPut, read, rawGet, restore, restoreBatches time.Duration
			var spSize int64
			for i := 0; i < b.N; i++ {
				key := fmt.Sprintf("sp-%d/task-0", i)
				t0 := time.Now()
				h, err := be.WriteSavepoint(ctx, store, key)
				if err != nil {
					b.Fatal(err)
				}
				write += time.Since(t0)
				spSize = h.Size

				blob := make([]byte, h.Size)
				_, _ = rand.NewChaCha8([32]byte{9}).Read(blob)
				t0 = time.Now()
				if err := store.Put(ctx, "raw-"+key, bytes.NewReader(blob), int64(len(blob))); err != nil {
					b.Fatal(err)
				}
				rawPut += time.Since(t0)
				blob = nil

				// Read as Restore does: byte-balanced group ranges decoded in
				// parallel.
				t0 = time.Now()
				f, err := readSavepointFooter(ctx, store, key)
				if err != nil {
					b.Fatal(err)
				}
				var jobs []func(context.Context) error
				for _, r := range f.split(f.rng, max(runtime.GOMAXPROCS(0), 2), restoreUnitMin) {
					jobs = append(jobs, func(ctx context.Context) error {
						return readSavepointGroups(ctx, store, key, f, r, func(k, v []byte) error { return nil })
					})
				}
				if err := runParallel(ctx, len(jobs), jobs); err != nil {
					b.Fatal(err)
				}
				read += time.Since(t0)

				t0 = time.Now()
				rc, err := store.Get(ctx, "raw-"+key, 0, -1)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					b.Fatal(err)
				}
				rc.Close()
				rawGet += time.Since(t0)

				dir := b.TempDir()
				t0 = time.Now()
				rb, err := Restore(ctx, store, dir, be.opts, []Handle{h})
				if err != nil {
					b.Fatal(err)
				}
				restore += time.Since(t0)
				rb.Close()
				_ = os.RemoveAll(dir)

				dir = b.TempDir()
				t0 = time.Now()
				rb, err = Open(dir, be.opts)
				if err != nil {
					b.Fatal(err)
				}
				batch := rb.db.NewBatch()
				err = readSavepointGroups(ctx, store, key, f, f.rng, func(k, v []byte) error {
					if err := batch.Set(k, v, nil); err != nil {
						return err
					}
					if batch.Count() >= 1000 {
						if err := batch.Commit(pebble.NoSync); err != nil {
							return err
						}
						batch.Reset()
					}
					return nil
				})
				if err == nil {
					err = batch.Commit(pebble.NoSync)
				}
				if err == nil {
					err = rb.db.Flush()
				}
				if err != nil {
					b.Fatal(err)
				}
				restoreBatches += time.Since(t0)
				batch.Close()
				rb.Close()
				_ = os.RemoveAll(dir)

				if err := store.Delete(ctx, key, "raw-"+key); err != nil {
					b.Fatal(err)
				}
			}
			mbps := func(d time.Duration) float64 {
				return float64(spSize) * float64(b.N) / d.Seconds() / (1 << 20)
			}
			b.ReportMetric(float64(write.Nanoseconds())/float64(b.N), "ns/op")
			b.ReportMetric(float64(spSize>>20), "MiB-savepoint")
			b.ReportMetric(mbps(write), "write-MiB/s")
			b.ReportMetric(mbps(rawPut), "put-MiB/s")
			b.ReportMetric(float64(rawPut)/float64(write), "x-put-write")
			b.ReportMetric(mbps(read), "read-MiB/s")
			b.ReportMetric(mbps(rawGet), "get-MiB/s")
			b.ReportMetric(float64(rawGet)/float64(read), "x-get-read")
			b.ReportMetric(mbps(restore), "restore-MiB/s")
			b.ReportMetric(mbps(restoreBatches), "restore-batches-MiB/s")
		})
	}
}

// BenchmarkRestoreQuarter: restoring a quarter of the groups of a canonical
// savepoint, with the bytes read against the savepoint's size.
func BenchmarkRestoreQuarter(b *testing.B) {
	size := benchSize(b, "FLOTILLA_BENCH_STATE", 64<<20)
	fs, err := objectstore.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer fs.Close()
	be := filledBackend(b, size)
	h, err := be.WriteSavepoint(context.Background(), fs, "sp/task-0")
	if err != nil {
		b.Fatal(err)
	}
	cs := &countingStore{Store: fs}
	opts := be.opts
	opts.KeyGroups = keygroup.ForTask(1, 4, opts.MaxParallelism)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(b.TempDir(), "restore")
		rb, err := Restore(ctx, cs, dir, opts, []Handle{h})
		if err != nil {
			b.Fatal(err)
		}
		rb.Close()
		_ = os.RemoveAll(dir)
	}
	b.ReportMetric(float64(cs.read.Load())/float64(b.N)/float64(h.Size), "x-savepoint-bytes-read")
	b.ReportMetric(float64(h.Size>>20), "MiB-savepoint")
}
