package bench

import (
	"bytes"
	"context"
	"fmt"
	"maps"
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
	if os.Getenv(partitionerEnv) != "" {
		os.Exit(partitionerMain())
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

// jobRun is one timed run of a job.
type jobRun struct {
	wall time.Duration
	rate float64 // events per second
	amp  float64 // read amplification
	// cpu is the CPU time (user and system) the worker processes used
	// during the run; share is, per worker, that time over the run's wall
	// time (1.0: one CPU all along).
	cpu   time.Duration
	share []float64
	// server is the CPU share (as share) of this process, which runs the
	// NATS server, during the run.
	server float64
	// throttled is the number of quota periods in which the workers' cgroups
	// were throttled during the run (capped workers only).
	throttled int64
}

// cpuPerEvent is the workers' CPU time per event.
func (r jobRun) cpuPerEvent(n int) time.Duration { return r.cpu / time.Duration(n) }

// runJob runs a count job of parallelism p over the backlog on the worker
// processes ws and times it. The job is canceled afterwards.
//
// The run ends when every partition's last event is applied and committed
// (its key's final count is visible to a state query). State queries cost
// the workers CPU, and under a CPU cap they would slow the figure they
// measure, more so with one worker than with four; so the benchmark first
// waits, at no cost to the workers, until the server has sent the workers at
// least as many messages as there are events, and queries only then.
func (bl *backlog) runJob(name string, p int, ws []*workerProc) jobRun {
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
	cpu0, thr0 := workersCPU(e.b, ws)
	self0 := selfCPU()
	testutil.CheckFor(e.b, 10*time.Minute, 20*time.Millisecond, func() error {
		if sent := e.workerOutMsgs() - before; sent < int64(bl.n) {
			return fmt.Errorf("%d of %d events sent to the workers", sent, bl.n)
		}
		return nil
	})
	pending := slices.Collect(maps.Keys(bl.last))
	testutil.CheckFor(e.b, 10*time.Minute, 2*time.Millisecond, func() error {
		done := make([]bool, len(pending))
		var wg sync.WaitGroup
		for i, stream := range pending {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lk := bl.last[stream]
				res, err := e.api.State(ctx, name, lk.key)
				done[i] = err == nil && string(res.Value) == strconv.Itoa(lk.count)
			}()
		}
		wg.Wait()
		left := pending[:0]
		for i, stream := range pending {
			if !done[i] {
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
	cpu1, thr1 := workersCPU(e.b, ws)
	run := jobRun{wall: elapsed, rate: float64(bl.n) / elapsed.Seconds(), amp: float64(e.workerOutMsgs()-before) / float64(bl.n), throttled: thr1 - thr0,
		server: (selfCPU() - self0).Seconds() / elapsed.Seconds()}
	for i := range ws {
		d := cpu1[i] - cpu0[i]
		run.cpu += d
		run.share = append(run.share, d.Seconds()/elapsed.Seconds())
	}
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
	return run
}

// workersCPU returns the CPU time each worker process has used so far
// (user and system, from /proc/<pid>/stat), and the number of periods in
// which their cgroups were throttled.
func workersCPU(b *testing.B, ws []*workerProc) (cpu []time.Duration, throttled int64) {
	for _, w := range ws {
		cpu = append(cpu, procCPU(b, w.cmd.Process.Pid))
		if w.cgroup != "" {
			throttled += cgroupStat(b, w.cgroup, "nr_throttled")
		}
	}
	return cpu, throttled
}

// procCPU returns the user and system CPU time process pid has used.
func procCPU(b *testing.B, pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name (which may hold spaces) in
	// parentheses: utime and stime are fields 14 and 15, in clock ticks.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat times:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cgroupStat returns one counter of a cgroup's cpu.stat.
func cgroupStat(b *testing.B, dir, name string) int64 {
	stat, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(stat)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatalf("%s/cpu.stat has no %s", dir, name)
	return 0
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
// same CPU share by a cgroup cpu quota (FLOTILLA_BENCH_CPU, default 0.05),
// one task each, over the same backlog: events/s at p=4 against p=1
// (target >= 3.2x), with the read amplification of each. It fails if a
// worker used more CPU than its quota allows, and logs what each used: a
// worker given less than its share (the machine is busy) makes the round
// a measure of the machine, not of the job. The default share is small so
// that four capped workers and the server fit on a shared 2-core machine.
func BenchmarkScaleOutCPUCapped(b *testing.B) {
	cpu := 0.05
	if v, err := strconv.ParseFloat(os.Getenv("FLOTILLA_BENCH_CPU"), 64); err == nil && v > 0 {
		cpu = v
	}
	e := newEnv(b)
	e.coordinator()
	bl := newBacklog(e, "SCALE", events())
	var r1, r4 series
	var a1, a4 float64
	for round := 0; round < rounds(); round++ {
		for _, p := range []int{1, 4} {
			ws := e.startWorkers(p, 1, cpu)
			run := bl.runJob(fmt.Sprintf("s%d-%d", p, round), p, ws)
			e.stopWorkers(ws)
			if p == 1 {
				r1.add(run.rate)
				a1 = run.amp
			} else {
				r4.add(run.rate)
				a4 = run.amp
			}
			b.Logf("round %d p=%d: %.0f events/s, read amplification %.2f, worker CPU %.2f us/event, each worker's CPU use %s of %.2f allowed, %d throttled periods; server process %.2f CPU, load average %s",
				round, p, run.rate, run.amp, float64(run.cpuPerEvent(bl.n).Nanoseconds())/1000, shares(run.share), cpu, run.throttled, run.server, loadAvg())
			for i, sh := range run.share {
				// CPU times are counted in ticks; allow two.
				if sh > cpu*1.05+2.0/clockTicks/run.wall.Seconds() {
					b.Errorf("round %d p=%d: worker %d used %.2f CPU, above its quota of %.2f: the cap is not in force", round, p, i, sh, cpu)
				}
				if sh < cpu*0.8 {
					b.Logf("round %d p=%d: worker %d got %.2f CPU of its %.2f: the machine is too busy for this round to measure the job", round, p, i, sh, cpu)
				}
			}
		}
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

// loadAvg returns the one-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

func shares(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return strings.Join(parts, ", ")
}

// BenchmarkParallelism: one uncapped worker process with 32 slots runs the
// same backlog at p = 1, 2, 4, 8, 16, 32: events/s at every p against p=1
// (target >= 0.8), with the read amplification of each.
func BenchmarkParallelism(b *testing.B) {
	e := newEnv(b)
	e.coordinator()
	bl := newBacklog(e, "PAR", events())
	ws := e.startWorkers(1, 32, 0)
	ps := []int{1, 2, 4, 8, 16, 32}
	rates := make([]series, len(ps))
	amps := make([]float64, len(ps))
	cpus := make([]series, len(ps))
	for round := 0; round < rounds(); round++ {
		for i, p := range ps {
			run := bl.runJob(fmt.Sprintf("par%d-%d", p, round), p, ws)
			rates[i].add(run.rate)
			amps[i] = run.amp
			cpus[i].add(float64(run.cpuPerEvent(bl.n).Nanoseconds()) / 1000)
		}
	}
	base := rates[0].median()
	worst := 1.0
	for i, p := range ps {
		ratio := rates[i].median() / base
		worst = min(worst, ratio)
		b.Logf("p=%d: %s events/s, %.2fx p=1, read amplification %.2f, worker CPU median %.2f us/event", p, &rates[i], ratio, amps[i], cpus[i].median())
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
	ws := e.startWorkers(1, 1, 0)
	var job, rawParts, rawOne, jobCPU, rawPartsCPU, rawOneCPU series
	for round := 0; round < rounds(); round++ {
		rate, cpu := e.rawRead(bl.streams)
		rawParts.add(rate)
		rawPartsCPU.add(cpu)
		rate, cpu = e.rawRead([]string{"RAW"})
		rawOne.add(rate)
		rawOneCPU.add(cpu)
		run := bl.runJob(fmt.Sprintf("cj-%d", round), 1, ws)
		job.add(run.rate)
		jobCPU.add(float64(run.cpuPerEvent(n).Nanoseconds()) / 1000)
		b.Logf("round %d: raw read of the partitions %.0f events/s, of one stream %.0f, job %.0f (%.2f of the faster)",
			round, rawParts.xs[round], rawOne.xs[round], run.rate, run.rate/max(rawParts.xs[round], rawOne.xs[round]))
	}
	raw := max(rawParts.median(), rawOne.median())
	b.ReportMetric(job.median(), "job-events/s")
	b.ReportMetric(raw, "raw-events/s")
	b.ReportMetric(job.median()/raw, "ratio")
	b.Logf("raw read of the %d partition streams: %s events/s, reader CPU median %.2f us/event", len(bl.streams), &rawParts, rawPartsCPU.median())
	b.Logf("raw read of one stream: %s events/s, reader CPU median %.2f us/event", &rawOne, rawOneCPU.median())
	b.Logf("one-task count job: %s events/s, worker CPU median %.2f us/event", &job, jobCPU.median())
	b.Logf("job / fastest raw read = %.2f (target >= 0.8)", job.median()/raw)
}

// rawRead runs the raw reader process over streams and returns the events/s
// it measured and the CPU time it used per event (microseconds).
func (e *env) rawRead(streams []string) (rate, cpu float64) {
	return e.helperProcess("raw reader", rawReaderEnv+"=1", "RAW_STREAMS="+strings.Join(streams, ","))
}

// helperProcess runs this test binary as the helper process the
// environment settings env select, connected to the benchmark's server,
// and returns the events/s and CPU time per event (microseconds) it
// printed last.
func (e *env) helperProcess(what string, env ...string) (rate, cpu float64) {
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(append(os.Environ(), "RAW_URL="+e.srv.ClientURL()), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.b.Fatalf("%s: %v\n%s", what, err, out)
	}
	if _, err := fmt.Sscanf(lastLine(string(out)), "raw-events/s %f cpu-us/event %f", &rate, &cpu); err != nil {
		e.b.Fatalf("%s output %q: %v", what, out, err)
	}
	return rate, cpu
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
	start, cpu0 := time.Now(), selfCPU()
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
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	for _, it := range its {
		it.Stop()
	}
	select {
	case err := <-errs:
		fmt.Println(err)
		return 1
	default:
	}
	fmt.Printf("raw-events/s %f cpu-us/event %f\n", float64(total)/elapsed.Seconds(), float64(cpu.Nanoseconds())/1000/float64(total))
	return 0
}

// selfCPU returns the user and system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
