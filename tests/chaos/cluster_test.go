//go:build unix

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// The cluster's shape and timing.
const (
	numWorkers        = 4
	slotsPerWorker    = 3 // two jobs of 3 tasks still fit with two workers down
	parallelism       = 3
	heartbeatInterval = 300 * time.Millisecond
	heartbeatTimeout  = 2 * time.Second
	numCoordinators   = 2
	leaseTTL          = 3 * time.Second
	checkpointEvery   = 500 * time.Millisecond

	sourceStream   = "CLICKS"
	maxParallelism = 128
	countJob       = "counts"
	windowJob      = "windows"
	countSink      = "COUNTS"
	windowSink     = "WINDOWS"
	// checkpointBucket is the coordinator's KV bucket of checkpoint records
	// for the default subject prefix (docs/DESIGN.md, "Checkpoints, as
	// built").
	checkpointBucket = "FLOTILLA_CHECKPOINTS"
	// eventStream keeps the coordinator's events (README, "Checkpoints and
	// savepoints").
	eventStream = "FLOTILLA_EVENTS"
	storeBucket = "flotilla"
	storePrefix = "chaos"
)

// cluster is the system under test, every part a separate process on
// loopback: nats-server, MinIO, the coordinator and the workers; and the
// harness's own NATS connection, which reconnects forever like theirs.
type cluster struct {
	t      *testing.T
	r      *rand.Rand // the fault schedule's; test goroutine only
	logDir string
	// NATS is one server (nats), or with FLOTILLA_CHAOS_NATS=cluster three
	// (natsCluster); natsURL is what every process connects to.
	nats        *natsServer
	natsCluster *testutil.NATSCluster
	natsURL     string
	// faults are the kinds of fault this run injects.
	kinds []fault
	minio *testutil.MinIO
	// coords are the coordinators (one leads, the other stands by), each
	// connected to NATS through relays of its own, so that the harness can
	// partition it.
	coords  []*coordinator
	workers []*proc
	// workerNames are the workers' identities (-name), by index.
	workerNames []string

	ns  subjects.Namespace
	nc  *nats.Conn
	js  jetstream.JetStream
	api *client.Client
	obs *observer

	faults  int
	zombies []zombie
	// Savepoints requested during failovers: how many completed, the
	// slowest answer, and the failures.
	savepoints       int
	slowestSavepoint time.Duration
	failedSavepoints []string
	problems         []string // failures found while injecting faults
	// Takeovers the harness caused (leader killed, paused or partitioned):
	// how many, the slowest (fault to a checkpoint of the new term committed
	// in both jobs), and the tasks they restarted.
	takeovers        int
	slowestTakeover  time.Duration
	slowestClaim     time.Duration // fault to a newer term claiming both jobs
	takeoverRestarts int
}

// startCluster starts every process and waits until the workers are
// registered.
func startCluster(t *testing.T, r *rand.Rand, clustered bool) *cluster {
	flotillaBin, natsBin := buildBinaries(t)
	logDir, err := os.MkdirTemp("", "flotilla-chaos-logs")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, r: r, logDir: logDir}
	// Registered first, so it runs last: after every process is killed.
	t.Cleanup(func() {
		keep := os.Getenv("FLOTILLA_CHAOS_KEEP_LOGS") != ""
		if !t.Failed() && c.takeoverRestarts == 0 && !keep {
			os.RemoveAll(logDir)
			return
		}
		if !t.Failed() {
			t.Logf("the full logs of every process are kept in %s (takeovers restarted %d tasks)", logDir, c.takeoverRestarts)
			return
		}
		for _, p := range c.procs() {
			t.Logf("---- %s (last 48 KiB of %s)\n%s", p.name, p.log, p.tail(48<<10))
		}
		t.Logf("full logs of every process are kept in %s", logDir)
	})

	if clustered {
		// Every node carries the mapping that partitions the jobs' input,
		// as the single server's config does.
		spec := specs()[0].WithDefaults()
		c.natsCluster = testutil.StartNATSClusterWith(t, natsBin, 3, subjects.MappingConfig(&spec))
		c.natsURL = c.natsCluster.URLs()
		c.kinds = clusterFaults
		t.Cleanup(func() {
			if t.Failed() {
				for i := range c.natsCluster.Nodes {
					t.Logf("---- nats node %d log: %s", i+1, c.natsCluster.LogPath(i))
				}
			}
		})
	} else {
		c.nats = newNATSServer(t, logDir, natsBin, r)
		c.nats.start()
		c.nats.waitReady()
		c.natsURL = c.nats.url
		c.kinds = faults
	}
	c.minio = testutil.RunMinIO(t)
	c.nc, err = nats.Connect(c.natsURL, nats.Name("chaos harness"), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.nc.Close)
	if c.js, err = jetstream.New(c.nc); err != nil {
		t.Fatal(err)
	}
	c.api = client.New(c.nc, c.ns)
	if c.obs, err = observe(c.nc, c.ns); err != nil {
		t.Fatal(err)
	}

	env := []string{"AWS_ACCESS_KEY_ID=" + c.minio.AccessKey, "AWS_SECRET_ACCESS_KEY=" + c.minio.SecretKey}
	store := c.minio.Location(storeBucket, storePrefix)
	for i := 0; i < numCoordinators; i++ {
		co := &coordinator{name: fmt.Sprintf("c%d", i+1)}
		var urls []string
		for _, u := range strings.Split(c.natsURL, ",") {
			r := testutil.StartRelay(t, strings.TrimPrefix(u, "nats://"))
			co.relays = append(co.relays, r)
			urls = append(urls, "nats://"+r.Addr())
		}
		co.proc = newProc(t, logDir, "coordinator "+co.name, flotillaBin, env, "coordinator", "-nats", strings.Join(urls, ","),
			"-store", store, "-name", co.name, "-lease-ttl", leaseTTL.String(),
			"-heartbeat-interval", heartbeatInterval.String(), "-heartbeat-timeout", heartbeatTimeout.String())
		co.start()
		c.coords = append(c.coords, co)
		if i == 0 {
			// The first one creates the streams and buckets and leads; the
			// other then stands by (on a fresh JetStream cluster two creating
			// the same R3 streams at once each waited out request timeouts).
			if _, _, err := c.leading(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < numWorkers; i++ {
		name := fmt.Sprintf("w%d", i+1)
		w := newProc(t, logDir, "worker "+name, flotillaBin, env, "worker", "-nats", c.natsURL, "-store", store,
			"-name", name, "-data", t.TempDir(), "-slots", strconv.Itoa(slotsPerWorker))
		w.start()
		c.workers = append(c.workers, w)
		c.workerNames = append(c.workerNames, name)
	}
	// Registered after the processes', so it runs before they are killed:
	// on failure every worker and coordinator prints its goroutines.
	t.Cleanup(func() {
		if t.Failed() {
			for _, co := range c.coords {
				co.dump()
			}
			for _, w := range c.workers {
				w.dump()
			}
		}
	})
	testutil.CheckFor(t, time.Minute, 100*time.Millisecond, func() error {
		ws, err := c.api.Workers(context.Background())
		if err == nil && len(ws) != numWorkers {
			err = fmt.Errorf("%d of %d workers registered", len(ws), numWorkers)
		}
		return err
	})
	return c
}

// replication is how the sink streams are replicated: R3 on a cluster.
func (c *cluster) replication() replicas.Policy {
	if c.natsCluster != nil {
		return replicas.Policy{Replicas: 3}
	}
	return replicas.Policy{}
}

// procs returns the processes started so far.
func (c *cluster) procs() []*proc {
	var ps []*proc
	if c.nats != nil {
		ps = append(ps, c.nats.proc)
	}
	for _, co := range c.coords {
		ps = append(ps, co.proc)
	}
	return append(ps, c.workers...)
}

// specs returns the two jobs: a count and a 1 s tumbling-window count over
// the same source stream, each with a deduplicating sink stream.
func specs() []subjects.JobSpec {
	base := subjects.JobSpec{Parallelism: parallelism, MaxParallelism: maxParallelism,
		Source:     subjects.SourceSpec{Stream: sourceStream, Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(checkpointEvery), Timeout: subjects.Duration(15 * time.Second), Retained: 3},
		Restart:    subjects.RestartSpec{InitialDelay: subjects.Duration(200 * time.Millisecond), MaxDelay: subjects.Duration(2 * time.Second)},
	}
	count, win := base, base
	count.Name, count.Operator, count.Sink = countJob, subjects.OperatorSpec{Type: "count"}, subjects.SinkSpec{Subject: "out.counts"}
	win.Name = windowJob
	win.Operator = subjects.OperatorSpec{Type: "window", Size: subjects.Duration(windowSize)}
	win.Sink = subjects.SinkSpec{Subject: "out.windows"}
	return []subjects.JobSpec{count, win}
}

// inputStreams returns the partition streams of the jobs' input, checking
// that the coordinator partitioned it: nats.conf carries the mapping.
func (c *cluster) inputStreams() []string {
	spec := specs()[0].WithDefaults()
	spec.Source.Layout = subjects.LayoutPartitioned
	var out []string
	for _, s := range subjects.InputStreamConfigs(&spec) {
		out = append(out, s.Name)
	}
	for _, job := range []string{countJob, windowJob} {
		info, err := c.api.Status(context.Background(), job)
		if err != nil {
			c.t.Fatal(err)
		}
		if info.Input == nil || info.Input.Layout != subjects.LayoutPartitioned || !slices.Equal(info.Input.Streams, out) {
			c.t.Fatalf("job %s input: %+v, want partitioned into %v", job, info.Input, out)
		}
	}
	return out
}

// submitJobs creates the sink streams and submits both jobs. A sink's
// duplicate window outlasts any replay the run can cause.
func (c *cluster) submitJobs() {
	ctx := context.Background()
	for name, subj := range map[string]string{countSink: "out.counts", windowSink: "out.windows"} {
		if _, _, err := replicas.EnsureStream(ctx, c.js, jetstream.StreamConfig{Name: name, Subjects: []string{subj},
			Storage: jetstream.FileStorage, Duplicates: 20 * time.Minute}, c.replication(), false); err != nil {
			c.t.Fatal(err)
		}
	}
	for _, spec := range specs() {
		if _, err := c.api.Submit(ctx, spec, 0, ""); err != nil {
			c.t.Fatalf("submit %s: %v", spec.Name, err)
		}
	}
}

// jobsRunning returns nil once every task of both jobs runs.
func (c *cluster) jobsRunning() error {
	for _, spec := range specs() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := c.api.Status(ctx, spec.Name)
		cancel()
		if err != nil {
			return err
		}
		if info.State != subjects.JobRunning {
			return fmt.Errorf("job %s is %s", spec.Name, info.State)
		}
		for _, task := range info.Tasks {
			if task.State != subjects.TaskRunning {
				return fmt.Errorf("task %d of %s is %s", task.Task, spec.Name, task.State)
			}
		}
	}
	return nil
}

// waitRunning waits until every task of both jobs runs: the cluster has
// recovered from whatever happened.
func (c *cluster) waitRunning(timeout time.Duration) {
	c.t.Helper()
	testutil.CheckFor(c.t, timeout, 100*time.Millisecond, c.jobsRunning)
}

// heal undoes whatever a fault left: a paused process continues, one that
// is not running (it exited by itself: see proc.crashes) starts again.
func (c *cluster) heal() {
	if c.natsCluster != nil {
		c.natsCluster.Heal()
		for i := range c.natsCluster.Nodes {
			c.natsCluster.Start(i)
		}
		c.natsCluster.WaitMetaLeader(2 * time.Minute)
	} else if c.nats.ensureRunning() {
		c.nats.waitReady()
	}
	for _, co := range c.coords {
		co.connect()
		co.ensureRunning()
	}
	for _, p := range c.workers {
		p.ensureRunning()
	}
}

// zombie is a worker that was paused until the coordinator declared it
// lost and failed its tasks over.
type zombie struct {
	worker   string
	pausedAt time.Time
	attempts map[taskKey]bool // what ran on it when it was paused
}

type taskKey struct {
	job     string
	task    int
	attempt uint64
}

// attemptsOn returns the task attempts the coordinator places on worker.
func (c *cluster) attemptsOn(worker string) map[taskKey]bool {
	out := map[taskKey]bool{}
	for _, spec := range specs() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := c.api.Status(ctx, spec.Name)
		cancel()
		if err != nil {
			continue
		}
		for _, task := range info.Tasks {
			if task.Worker == worker && task.Attempt != 0 {
				out[taskKey{spec.Name, task.Task, task.Attempt}] = true
			}
		}
	}
	return out
}

// busyWorker returns the index of a worker the coordinator has placed a
// task of job on (of either job if job is ""), looking from a seeded random
// worker on, and whether it found one (if not, it returns that random one).
func (c *cluster) busyWorker(job string) (int, bool) {
	start := c.r.IntN(len(c.workers))
	busy := map[string]bool{}
	for _, spec := range specs() {
		if job != "" && spec.Name != job {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := c.api.Status(ctx, spec.Name)
		cancel()
		if err != nil {
			continue
		}
		for _, task := range info.Tasks {
			if task.State == subjects.TaskRunning {
				busy[task.Worker] = true
			}
		}
	}
	for i := range c.workers {
		if j := (start + i) % len(c.workers); busy[c.workerNames[j]] {
			return j, true
		}
	}
	return start, false
}

// instanceOf returns worker's registered instance, or "" if the
// coordinator does not list it.
func (c *cluster) instanceOf(worker string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, err := c.api.Workers(ctx)
	if err != nil {
		return "", err
	}
	for _, w := range ws {
		if w.Worker == worker {
			return w.Instance, nil
		}
	}
	return "", nil
}

// observer watches the coordinator's checkpoint records as they are
// written to the KV bucket (a plain subscription on the bucket's subjects
// sees every put while the harness is connected): the records, and the
// commits (moves of a job's latest pointer).
type observer struct {
	mu        sync.Mutex
	records   []observedRecord
	committed map[string]time.Time // "<job> <id>" -> when the latest pointer moved to it
	completed map[string]bool      // "<job> <id>" of every checkpoint (not savepoint) seen committed
	pointers  []observedPointer    // every move of a latest pointer, in order
	bad       []string
	// written receives the key of each record written, if there is room.
	written chan string
	acks    []observedAck
}

// observedPointer is a write of a job's latest pointer: a commit (a new
// id), or a new leader term claiming the job (same id, its term).
type observedPointer struct {
	job      string
	id, term uint64
	at       time.Time
}

type observedAck struct {
	task taskKey
	at   time.Time
}

type observedRecord struct {
	job       string
	id        uint64
	kind      subjects.CheckpointKind
	triggered time.Time
	seen      time.Time // when the harness saw it written
	tasks     []taskKey
}

// manifestAttempt finds the attempt that wrote a handle in its manifest's
// object key: .../task-<index>-<attempt>/... or .../task-<index>-<attempt>.savepoint.
var manifestAttempt = regexp.MustCompile(`/task-(\d+)-(\d+)[/.]`)

func observe(nc *nats.Conn, ns subjects.Namespace) (*observer, error) {
	o := &observer{committed: map[string]time.Time{}, completed: map[string]bool{}, written: make(chan string, 1)}
	prefix := "$KV." + checkpointBucket + "."
	_, err := nc.Subscribe(prefix+">", func(m *nats.Msg) {
		if m.Header.Get("KV-Operation") != "" || len(m.Data) == 0 {
			return // a delete or purge
		}
		key := strings.TrimPrefix(m.Subject, prefix)
		o.mu.Lock()
		defer o.mu.Unlock()
		if strings.HasSuffix(key, ".latest") {
			var p struct {
				ID   uint64                  `json:"id"`
				Kind subjects.CheckpointKind `json:"kind"`
				Term uint64                  `json:"term"`
			}
			if err := json.Unmarshal(m.Data, &p); err != nil {
				o.bad = append(o.bad, fmt.Sprintf("latest pointer %s: %v", key, err))
				return
			}
			job := strings.TrimSuffix(key, ".latest")
			id := job + " " + strconv.FormatUint(p.ID, 10)
			o.committed[id] = time.Now()
			o.pointers = append(o.pointers, observedPointer{job: job, id: p.ID, term: p.Term, at: time.Now()})
			if p.Kind != subjects.KindSavepoint {
				o.completed[id] = true
			}
			return
		}
		var rec subjects.CheckpointRecord
		if err := subjects.Decode(m.Data, &rec); err != nil {
			o.bad = append(o.bad, fmt.Sprintf("record %s: %v", key, err))
			return
		}
		or := observedRecord{job: rec.Job, id: rec.ID, kind: rec.Kind, triggered: rec.Triggered, seen: time.Now()}
		for _, tc := range rec.Tasks {
			sm := manifestAttempt.FindStringSubmatch(tc.Handle.Manifest)
			if sm == nil {
				o.bad = append(o.bad, fmt.Sprintf("record %s: task %d's manifest %q names no attempt", key, tc.Task, tc.Handle.Manifest))
				continue
			}
			idx, _ := strconv.Atoi(sm[1])
			att, _ := strconv.ParseUint(sm[2], 10, 64)
			if idx != tc.Task {
				o.bad = append(o.bad, fmt.Sprintf("record %s: task %d's state was written by task %d", key, tc.Task, idx))
			}
			or.tasks = append(or.tasks, taskKey{rec.Job, tc.Task, att})
		}
		o.records = append(o.records, or)
		select {
		case o.written <- key:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	_, err = nc.Subscribe(ns.JobWildcard("ack"), func(m *nats.Msg) {
		var a subjects.Ack
		if subjects.Decode(m.Data, &a) != nil {
			return
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		o.acks = append(o.acks, observedAck{taskKey{a.Job, a.Task, a.Attempt}, time.Now()})
	})
	return o, err
}

// completedCheckpoints counts the checkpoints (not savepoints) completed
// in the run: those whose commit the observer saw, and those of the
// checkpoint_completed events kept in the coordinator's event stream
// (each source misses some while NATS is away; ids are never reused for
// another completed checkpoint of a job, so their union counts each once).
func (c *cluster) completedCheckpoints() (int, error) {
	c.obs.mu.Lock()
	done := maps.Clone(c.obs.completed)
	c.obs.mu.Unlock()
	err := readStream(context.Background(), c.js, eventStream, func(m jetstream.Msg, _ *jetstream.MsgMetadata) error {
		var ev subjects.Event
		if err := subjects.Decode(m.Data(), &ev); err != nil {
			return fmt.Errorf("%s: %v", eventStream, err)
		}
		if ev.Kind == subjects.EventCheckpointCompleted {
			done[ev.Job+" "+strconv.FormatUint(ev.Checkpoint, 10)] = true
		}
		return nil
	})
	return len(done), err
}

// fencingViolations checks that no zombie completed a checkpoint: a record
// may hold the state of an attempt that ran on a paused worker only if it
// was triggered before the pause (the attempt then acked it before it
// stopped). Any later checkpoint went to the attempts that replaced it.
//
// It also returns how many acks zombie attempts sent after they were
// paused (they come when a zombie resumes): the coordinator must have
// ignored them.
func (o *observer) fencingViolations(zombies []zombie) (violations []string, zombieAcks int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, z := range zombies {
		for _, a := range o.acks {
			if z.attempts[a.task] && a.at.After(z.pausedAt) {
				zombieAcks++
			}
		}
	}
	out := append([]string(nil), o.bad...)
	for _, z := range zombies {
		for _, rec := range o.records {
			for _, tk := range rec.tasks {
				if z.attempts[tk] && !rec.triggered.Before(z.pausedAt) {
					out = append(out, fmt.Sprintf("%s %d of %s (triggered %s) holds task %d attempt %d, which ran on %s, paused at %s and failed over",
						rec.kind, rec.id, rec.job, rec.triggered.Format(time.RFC3339Nano), tk.task, tk.attempt, z.worker, z.pausedAt.Format(time.RFC3339Nano)))
				}
			}
		}
	}
	sort.Strings(out)
	return out, zombieAcks
}

// history says when the harness saw the record of a job's checkpoint id
// written and its latest pointer move to it, for failure messages.
func (o *observer) history(job string, id uint64) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b []string
	for _, r := range o.records {
		if r.job == job && r.id == id {
			b = append(b, "record written at "+r.seen.Format("15:04:05.000"))
		}
	}
	if t, ok := o.committed[job+" "+strconv.FormatUint(id, 10)]; ok {
		b = append(b, "latest pointer moved to it at "+t.Format("15:04:05.000"))
	} else {
		b = append(b, "latest pointer never seen at it")
	}
	return strings.Join(b, ", ")
}
