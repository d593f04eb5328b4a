package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// The scale-out benchmarks run workers as separate processes (the flotilla
// binary, built once) against the benchmark's in-process nats-server, over
// a backlog published once into the jobs' partitioned input. A job is timed
// from the moment all its tasks run until the last event of every
// partition stream is applied (its key's count is final). Each figure is
// measured FLOTILLA_BENCH_ROUNDS times (default 3); the median is reported
// and the range logged.
//
// Read amplification is the number of messages the server sent to the
// workers' connections during the run, divided by the number of events.

const (
	rawReaderEnv = "FLOTILLA_BENCH_RAW_READER" // set: this process is the raw reader
	benchKeys    = 1000
)

func TestMain(m *testing.M) {
	if os.Getenv(rawReaderEnv) != "" {
		os.Exit(rawReaderMain())
	}
	os.Exit(m.Run())
}

func rounds() int {
	if n, err := strconv.Atoi(os.Getenv("FLOTILLA_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// backlog is a partitioned input filled once: n events over benchKeys keys,
// key "k<i % keys>" for event i.
type backlog struct {
	e       *env
	stream  string
	n       int
	streams []string
	// last is, per partition stream, the key of its last event and that
	// key's final count.
	last map[string]lastKey
}

type lastKey struct {
	key   string
	count int
}

func newBacklog(e *env, stream string, n int) *backlog {
	s := spec("probe", stream, 1, 0)
	bl := &backlog{e: e, stream: stream, n: n, streams: e.input(s), last: map[string]lastKey{}}
	e.publish(stream, n, benchKeys)
	ctx := context.Background()
	for _, name := range bl.streams {
		st, err := e.js.Stream(ctx, name)
		if err != nil {
			e.b.Fatal(err)
		}
		info := st.CachedInfo()
		if info.State.Msgs == 0 {
			continue
		}
		m, err := st.GetMsg(ctx, info.State.LastSeq)
		if err != nil {
			e.b.Fatal(err)
		}
		_, key, _, err := subjects.ParseInputSubject(m.Subject, 2, 128)
		if err != nil {
			e.b.Fatal(err)
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(key, "k"))
		count := n / benchKeys
		if i < n%benchKeys {
			count++
		}
		bl.last[name] = lastKey{key, count}
	}
	return bl
}

// workerProc is a flotilla worker process, optionally held to a CPU share.
type workerProc struct {
	name   string
	cmd    *exec.Cmd
	out    bytes.Buffer
	cgroup string
}

// startWorkers starts n worker processes with slots slots each, each held
// to cpu CPUs by its own cgroup (v1 cpu controller) when cpu > 0, and waits
// until they are registered. They are stopped when the benchmark ends.
func (e *env) startWorkers(n, slots int, cpu float64) []*workerProc {
	bin := testutil.FlotillaBinary(e.b)
	var ws []*workerProc
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("bw%d-%d", time.Now().UnixNano()%1e6, i)
		w := &workerProc{name: name}
		w.cmd = exec.Command(bin, "worker", "-nats", e.srv.ClientURL(), "-store", "file://"+e.storeDir, "-name", name,
			"-data", e.b.TempDir(), "-slots", strconv.Itoa(slots), "-log-level", "warn")
		w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
		if err := w.cmd.Start(); err != nil {
			e.b.Fatal(err)
		}
		ws = append(ws, w)
		e.b.Cleanup(func() {
			_ = w.cmd.Process.Signal(syscall.SIGKILL)
			_ = w.cmd.Wait()
			if w.cgroup != "" {
				_ = os.Remove(w.cgroup)
			}
			if e.b.Failed() {
				e.b.Logf("worker %s output:\n%s", name, w.out.String())
			}
		})
		if cpu > 0 {
			w.cgroup = cpuCap(e.b, name, cpu, w.cmd.Process.Pid)
		}
	}
	want := n
	waitFor(e.b, 30*time.Second, func() error {
		got, err := e.api.Workers(context.Background())
		if err == nil && len(got) < want {
			err = fmt.Errorf("%d of %d workers registered", len(got), want)
		}
		return err
	})
	return ws
}

// stopWorkers kills the processes and waits until the coordinator has
// declared them lost, so that no task of the next job is placed there.
func (e *env) stopWorkers(ws []*workerProc) {
	names := map[string]bool{}
	for _, w := range ws {
		names[w.name] = true
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		_ = w.cmd.Wait()
		if w.cgroup != "" {
			_ = os.Remove(w.cgroup)
			w.cgroup = ""
		}
	}
	waitFor(e.b, 30*time.Second, func() error {
		got, err := e.api.Workers(context.Background())
		for _, w := range got {
			if names[w.Worker] {
				return fmt.Errorf("worker %s still registered", w.Worker)
			}
		}
		return err
	})
}

// cpuCap puts pid into a new cgroup of the v1 cpu controller limited to cpu
// CPUs and returns the cgroup's directory.
func cpuCap(b *testing.B, name string, cpu float64, pid int) string {
	root := "/sys/fs/cgroup/cpu"
	if v := os.Getenv("FLOTILLA_BENCH_CGROUP"); v != "" {
		root = v // where the cpu controller is mounted
	}
	dir := filepath.Join(root, "flotilla-bench-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatalf("CPU cap needs the cgroup v1 cpu controller at /sys/fs/cgroup/cpu, writable: %v", err)
	}
	write := func(file, v string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0o644); err != nil {
			b.Fatalf("cgroup %s: %v", file, err)
		}
	}
	write("cpu.cfs_period_us", "100000")
	write("cpu.cfs_quota_us", strconv.Itoa(int(cpu*100000)))
	write("cgroup.procs", strconv.Itoa(pid))
	return dir
}

func waitFor(b *testing.B, timeout time.Duration, f func() error) {
	b.Helper()
	testutil.CheckFor(b, timeout, 20*time.Millisecond, f)
}

// workerOutMsgs is the number of messages the server has sent to worker
// connections.
func (e *env) workerOutMsgs() int64 {
	cz, err := e.srv.Connz(&server.ConnzOptions{Limit: 1 << 16})
	if err != nil {
		e.b.Fatal(err)
	}
	var n int64
	for _, c := range cz.Conns {
		if c.Name == "flotilla worker" {
			n += c.OutMsgs
		}
	}
	return n
}

// runJob runs a count job of parallelism p over the backlog and returns its
// events/s and read amplification. The job is canceled afterwards.
func (bl *backlog) runJob(name string, p int) (rate, amp float64) {
	e, ctx := bl.e, context.Background()
	s := spec(name, bl.stream, p, 0)
	before := e.workerOutMsgs()
	if _, err := e.api.Submit(ctx, s, 0, ""); err != nil {
		e.b.Fatal(err)
	}
	// The clock starts when the first task runs: a task may finish its
	// partitions before the last one is deployed.
	waitFor(e.b, time.Minute, func() error {
		info, err := e.api.Status(ctx, name)
		if err != nil {
			return err
		}
		for _, t := range info.Tasks {
			if t.State == subjects.TaskRunning {
				return nil
			}
		}
		return fmt.Errorf("no task of %s runs", name)
	})
	start := time.Now()
	pending := slices.Collect(func(yield func(string) bool) {
		for s := range bl.last {
			if !yield(s) {
				return
			}
		}
	})
	waitFor(e.b, 10*time.Minute, func() error {
		left := pending[:0]
		for _, stream := range pending {
			lk := bl.last[stream]
			res, err := e.api.State(ctx, name, lk.key)
			if err != nil || string(res.Value) != strconv.Itoa(lk.count) {
				left = append(left, stream)
			}
		}
		pending = left
		if len(pending) > 0 {
			return fmt.Errorf("%d partitions not done", len(pending))
		}
		return nil
	})
	elapsed := time.Since(start)
	amp = float64(e.workerOutMsgs()-before) / float64(bl.n)
	if _, err := e.api.Cancel(ctx, name); err != nil {
		e.b.Fatal(err)
	}
	waitFor(e.b, time.Minute, func() error {
		ws, err := e.api.Workers(ctx)
		if err != nil {
			return err
		}
		for _, w := range ws {
			if w.FreeSlots != w.Slots {
				return fmt.Errorf("worker %s: %d of %d slots free", w.Worker, w.FreeSlots, w.Slots)
			}
		}
		return nil
	})
	return float64(bl.n) / elapsed.Seconds(), amp
}

type series struct{ xs []float64 }

func (s *series) add(x float64) { s.xs = append(s.xs, x) }
func (s *series) median() float64 {
	return median(s.xs)
}
func (s *series) String() string {
	lo, hi := slices.Min(s.xs), slices.Max(s.xs)
	return fmt.Sprintf("median %.0f (range %.0f-%.0f over %d)", s.median(), lo, hi, len(s.xs))
}

// BenchmarkScaleOutCPUCapped: 1 and 4 worker processes, each held to the
// same CPU share by a cgroup cpu quota (FLOTILLA_BENCH_CPU, default 0.25),
// one task each, over the same backlog: events/s at p=4 against p=1
// (target >= 3.2x), with the read amplification of each.
func BenchmarkScaleOutCPUCapped(b *testing.B) {
	cpu := 0.25
	if v, err := strconv.ParseFloat(os.Getenv("FLOTILLA_BENCH_CPU"), 64); err == nil && v > 0 {
		cpu = v
	}
	e := newEnv(b)
	e.coordinator()
	bl := newBacklog(e, "SCALE", events())
	var r1, r4 series
	var a1, a4 float64
	for round := 0; round < rounds(); round++ {
		ws := e.startWorkers(1, 1, cpu)
		rate, amp := bl.runJob(fmt.Sprintf("s1-%d", round), 1)
		r1.add(rate)
		a1 = amp
		e.stopWorkers(ws)
		ws = e.startWorkers(4, 1, cpu)
		rate, amp = bl.runJob(fmt.Sprintf("s4-%d", round), 4)
		r4.add(rate)
		a4 = amp
		e.stopWorkers(ws)
		b.Logf("round %d: p=1 %.0f events/s, p=4 %.0f events/s", round, r1.xs[round], r4.xs[round])
	}
	ratio := r4.median() / r1.median()
	b.ReportMetric(r1.median(), "p1-events/s")
	b.ReportMetric(r4.median(), "p4-events/s")
	b.ReportMetric(ratio, "ratio")
	b.Logf("workers held to %.2f CPU each, %d events over %d keys in %d partitions", cpu, bl.n, benchKeys, len(bl.streams))
	b.Logf("p=1: %s events/s, read amplification %.2f", &r1, a1)
	b.Logf("p=4: %s events/s, read amplification %.2f", &r4, a4)
	b.Logf("p=4 / p=1 = %.2f (target >= 3.2)", ratio)
}

// BenchmarkParallelism: one uncapped worker process with 32 slots runs the
// same backlog at p = 1, 2, 4, 8, 16, 32: events/s at every p against p=1
// (target >= 0.8), with the read amplification of each.
func BenchmarkParallelism(b *testing.B) {
	e := newEnv(b)
	e.coordinator()
	bl := newBacklog(e, "PAR", events())
	e.startWorkers(1, 32, 0)
	ps := []int{1, 2, 4, 8, 16, 32}
	rates := make([]series, len(ps))
	amps := make([]float64, len(ps))
	for round := 0; round < rounds(); round++ {
		for i, p := range ps {
			rate, amp := bl.runJob(fmt.Sprintf("par%d-%d", p, round), p)
			rates[i].add(rate)
			amps[i] = amp
		}
	}
	base := rates[0].median()
	worst := 1.0
	for i, p := range ps {
		ratio := rates[i].median() / base
		worst = min(worst, ratio)
		b.Logf("p=%d: %s events/s, %.2fx p=1, read amplification %.2f", p, &rates[i], ratio, amps[i])
	}
	b.ReportMetric(base, "p1-events/s")
	b.ReportMetric(worst, "worst-ratio")
	b.Logf("lowest ratio to p=1: %.2f (target >= 0.8)", worst)
}

// BenchmarkCountJobVsRawRead: a one-task count job in a worker process
// against a raw JetStream read of the same events by another process with
// the fastest nats.go method (a pull consumer, ack none, streamed pulls via
// Messages with a large PullMaxMessages): of the job's partition streams,
// all read at once, and of one stream holding the same events. The ratio is
// against the faster of the two (target >= 0.8).
func BenchmarkCountJobVsRawRead(b *testing.B) {
	e := newEnv(b)
	e.coordinator()
	n := events()
	bl := newBacklog(e, "CJ", n)
	if _, err := e.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "RAW", Subjects: []string{"RAW.*"}}); err != nil {
		b.Fatal(err)
	}
	e.publish("RAW", n, benchKeys)
	e.startWorkers(1, 1, 0)
	var job, rawParts, rawOne series
	for round := 0; round < rounds(); round++ {
		rawParts.add(e.rawRead(bl.streams))
		rawOne.add(e.rawRead([]string{"RAW"}))
		rate, _ := bl.runJob(fmt.Sprintf("cj-%d", round), 1)
		job.add(rate)
	}
	raw := max(rawParts.median(), rawOne.median())
	b.ReportMetric(job.median(), "job-events/s")
	b.ReportMetric(raw, "raw-events/s")
	b.ReportMetric(job.median()/raw, "ratio")
	b.Logf("raw read of the %d partition streams: %s events/s", len(bl.streams), &rawParts)
	b.Logf("raw read of one stream: %s events/s", &rawOne)
	b.Logf("one-task count job: %s events/s", &job)
	b.Logf("job / fastest raw read = %.2f (target >= 0.8)", job.median()/raw)
}

// rawRead runs the raw reader process over streams and returns the events/s
// it measured.
func (e *env) rawRead(streams []string) float64 {
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), rawReaderEnv+"=1", "RAW_URL="+e.srv.ClientURL(),
		"RAW_STREAMS="+strings.Join(streams, ","))
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.b.Fatalf("raw reader: %v\n%s", err, out)
	}
	var rate float64
	if _, err := fmt.Sscanf(lastLine(string(out)), "raw-events/s %f", &rate); err != nil {
		e.b.Fatalf("raw reader output %q: %v", out, err)
	}
	return rate
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// rawReaderMain reads every message of the streams RAW_STREAMS with a pull
// consumer each (ack none, Messages with PullMaxMessages 10,000), all at
// once, and prints the rate, timed from when every consumer exists.
func rawReaderMain() int {
	nc, err := nats.Connect(os.Getenv("RAW_URL"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx := context.Background()
	var its []jetstream.MessagesContext
	var want []uint64
	total := uint64(0)
	for _, s := range strings.Split(os.Getenv("RAW_STREAMS"), ",") {
		st, err := js.Stream(ctx, s)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		want = append(want, st.CachedInfo().State.Msgs)
		total += st.CachedInfo().State.Msgs
		c, err := js.CreateConsumer(ctx, s, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: time.Minute})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		it, err := c.Messages(jetstream.PullMaxMessages(10000))
		if err != nil {
			fmt.Println(err)
			return 1
		}
		its = append(its, it)
	}
	// Each reader reads its stream's messages to the end, counting alone.
	start := time.Now()
	var readers sync.WaitGroup
	errs := make(chan error, len(its))
	for i, it := range its {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range want[i] {
				if _, err := it.Next(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	readers.Wait()
	elapsed := time.Since(start)
	for _, it := range its {
		it.Stop()
	}
	select {
	case err := <-errs:
		fmt.Println(err)
		return 1
	default:
	}
	fmt.Printf("raw-events/s %f\n", float64(total)/elapsed.Seconds())
	return 0
}
