//go:build unix

// Package chaos is flotilla's chaos harness: a cluster of separate
// processes on loopback (nats-server with JetStream on file storage, built
// at go.mod's version; MinIO; two coordinators, one leading, and four
// workers) runs a count job and a tumbling-window job over a known event
// stream while the harness injects faults at seeded random moments: kill -9
// and restart of workers, nats-server and MinIO; the leading coordinator
// killed, SIGSTOPped past its lease or partitioned from NATS (the other
// takes over, and must restart no task); MinIO down while checkpoints
// upload; nats-server down while a checkpoint commits; a worker paused with
// SIGSTOP past its heartbeat timeout and resumed (a zombie that must be
// fenced); a savepoint requested during a failover; a worker restarted
// while MinIO is down.
//
// TestChaosCluster runs the same on a three-node JetStream cluster
// (testutil.NATSCluster: every connection through relays the harness
// controls), every stream R3, with NATS-node faults instead of the single
// server's: kill -9 of a node (the meta leader half the time), of the
// checkpoint bucket's leader right after a checkpoint record was written,
// a partition isolating a node, and two of three nodes down.
//
// At the end every key's state in both jobs is compared with the ground
// truth derived from the source stream as stored, the sink streams with
// the outputs that truth implies, and the run prints one line:
//
//	faults injected N, checkpoints completed C, keys checked K, lost L, duplicated D
//
// It fails unless L and D are 0, no process exited by itself, no zombie
// completed a checkpoint, every checkpoint JetStream holds as completed is
// one the coordinator completed and its objects exist, no takeover
// restarted a task, and a savepoint taken at the end restores (at another
// parallelism) to the same state. It also prints the takeovers, the slowest
// and the task restarts they caused.
//
// Settings (environment):
//
//	FLOTILLA_CHAOS_SEED      the fault schedule's and the events' seed (default 1)
//	FLOTILLA_CHAOS_DURATION  how long to inject faults (default 60s when ROUNDS is unset;
//	                         at least until each kind of fault was injected once)
//	FLOTILLA_CHAOS_ROUNDS    how many rounds of faults to inject at most
//
// The default is the short run of `go test ./...`; see the README's "Chaos
// testing" for long runs.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/subjects"
)

// settings are a run's parameters.
type settings struct {
	seed     uint64
	duration time.Duration // 0: no time bound
	rounds   int           // 0: no bound on rounds
}

const defaultDuration = 60 * time.Second

func chaosSettings(t *testing.T) settings {
	s := settings{seed: 1}
	if v := os.Getenv("FLOTILLA_CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FLOTILLA_CHAOS_SEED=%q: %v", v, err)
		}
		s.seed = n
	}
	if v := os.Getenv("FLOTILLA_CHAOS_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FLOTILLA_CHAOS_ROUNDS=%q: want a positive number", v)
		}
		s.rounds = n
	}
	if v := os.Getenv("FLOTILLA_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("FLOTILLA_CHAOS_DURATION=%q: want a positive duration such as 30m", v)
		}
		s.duration = d
	} else if s.rounds == 0 {
		s.duration = defaultDuration
	}
	// Setting up, recovering and verifying take a few minutes on top.
	if dl, ok := t.Deadline(); ok && s.duration > 0 && time.Until(dl) < s.duration+8*time.Minute {
		t.Fatalf("FLOTILLA_CHAOS_DURATION=%v needs a test timeout of at least %v (go test -timeout)", s.duration, s.duration+8*time.Minute)
	}
	return s
}

func (s settings) String() string {
	var b []string
	if s.duration > 0 {
		b = append(b, "faults for "+s.duration.String())
	}
	if s.rounds > 0 {
		b = append(b, "at most "+strconv.Itoa(s.rounds)+" rounds")
	}
	return fmt.Sprintf("seed %d, %s", s.seed, strings.Join(b, ", "))
}

// The event stream: keys k0..k<numKeys-1>, eventsPerBatch events every
// batchEvery (about 1,000 events/s).
const (
	numKeys        = 300
	eventsPerBatch = 50
	batchEvery     = 50 * time.Millisecond
)

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func TestChaos(t *testing.T) { runChaos(t, false) }

// TestChaosCluster is the chaos run on a three-node JetStream cluster (R3
// metadata, source and sink streams), with NATS-node faults among the
// kinds: kill -9 of a node (sometimes the meta leader), of the checkpoint
// bucket's leader during a commit, a partition isolating a node, and two of
// three nodes down (no quorum).
func TestChaosCluster(t *testing.T) { runChaos(t, true) }

func runChaos(t *testing.T, clustered bool) {
	if testing.Short() {
		t.Skip("chaos: several minutes of processes being killed; not in -short mode")
	}
	s := chaosSettings(t)
	t.Logf("chaos: %s, NATS cluster %v (FLOTILLA_CHAOS_SEED reproduces the schedule)", s, clustered)
	r := rand.New(rand.NewPCG(s.seed, 0xc4a05))
	c := startCluster(t, r, clustered)
	faults := c.kinds
	c.submitJobs()
	c.waitRunning(2 * time.Minute)

	// The publisher has its own connection, reconnecting forever.
	pnc, err := nats.Connect(c.natsURL, nats.Name("chaos publisher"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pnc.Close)
	pjs, err := jetstream.New(pnc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: pjs, r: rand.New(rand.NewPCG(s.seed, 1)), keys: numKeys, batch: eventsPerBatch, every: batchEvery}
	pctx, stopPublishing := context.WithCancel(context.Background())
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.run(pctx) }()
	published := false
	t.Cleanup(func() {
		if !published {
			stopPublishing()
			<-pubDone
		}
	})

	// The faults: first each kind once, in a seeded order (a run bounded by
	// time alone goes on until each was injected), then seeded random
	// kinds, with seeded random gaps. After half the rounds, chosen at
	// random, the harness waits until both jobs run again: the cluster must
	// recover from every fault, within bounds.
	start := time.Now()
	order := r.Perm(len(faults))
	byKind := map[string]int{}
	more := func(round int) bool {
		if s.rounds > 0 {
			return round < s.rounds && (s.duration == 0 || time.Since(start) < s.duration)
		}
		return round < len(order) || time.Since(start) < s.duration
	}
	for round := 0; more(round); round++ {
		c.hold(300*time.Millisecond, 2*time.Second)
		f := faults[r.IntN(len(faults))]
		if round < len(order) {
			f = faults[order[round]]
		}
		f.run(c)
		byKind[f.name]++
		c.heal()
		if r.IntN(2) == 0 {
			c.waitRunning(2 * time.Minute)
		}
		select {
		case err := <-pubDone:
			t.Fatalf("publisher stopped: %v", err)
		default:
		}
	}
	injected := time.Since(start)
	c.heal()
	stopPublishing()
	published = true
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	acked := int(pub.acked.Load())
	var kinds []string
	for _, f := range faults {
		kinds = append(kinds, fmt.Sprintf("%s: %d", f.name, byKind[f.name]))
	}
	t.Logf("chaos: %d faults in %v (rounds by kind: %s); %d events published; waiting for the jobs to catch up",
		c.faults, injected.Round(time.Second), strings.Join(kinds, ", "), acked)
	c.waitRunning(3 * time.Minute)

	// The truth is read from the source streams, which a cluster that just
	// healed may not serve yet (a stream without a leader answers 503):
	// read it again, boundedly.
	var tr truth
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if tr, err = groundTruth(context.Background(), c.js, c.inputStreams(), acked); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		t.Logf("reading the ground truth (again in 2s): %v", err)
		time.Sleep(2 * time.Second)
	}
	// Every key's state must converge to the truth: poll, boundedly.
	var res tally
	deadline := time.Now().Add(3 * time.Minute)
	for {
		res, err = c.checkStates(tr)
		if (err == nil && res.lost+res.duplicated == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond) // polling, bounded by deadline
	}
	if err != nil {
		t.Fatalf("state queries still failing after 3m: %v", err)
	}
	c.waitSinks(tr, time.Minute)
	if err := c.checkSinks(tr, &res); err != nil {
		t.Fatal(err)
	}
	checkpoints, err := c.completedCheckpoints()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("faults injected %d, checkpoints completed %d, keys checked %d, lost %d, duplicated %d",
		c.faults, checkpoints, res.keys, res.lost, res.duplicated)
	if res.lost+res.duplicated > 0 {
		var b strings.Builder
		for _, w := range res.wrong {
			fmt.Fprintf(&b, "\n  %s", w)
		}
		t.Fatalf("state or outputs differ from the ground truth (seed %d, %d events): lost %d, duplicated %d; first differences:%s",
			s.seed, tr.events, res.lost, res.duplicated, b.String())
	}

	// The other properties.
	problems := append([]string(nil), c.problems...)
	for _, p := range c.procs() {
		problems = append(problems, p.crashes()...)
	}
	violations, zombieAcks := c.obs.fencingViolations(c.zombies)
	problems = append(problems, violations...)
	if len(violations) == 0 {
		t.Logf("chaos: %d zombie workers sent %d checkpoint acks after they were paused; no checkpoint holds their state", len(c.zombies), zombieAcks)
	}
	problems = append(problems, c.checkRecordsMatchCoordinator()...)
	if n, err := c.checkStoredCheckpoints(); err != nil {
		problems = append(problems, err.Error())
	} else {
		t.Logf("chaos: %d completed checkpoints and savepoints in JetStream reference only existing objects", n)
	}
	t.Logf("chaos: savepoints requested during failovers: %d completed (slowest answer %v), %d failed %v",
		c.savepoints, c.slowestSavepoint, len(c.failedSavepoints), c.failedSavepoints)
	t.Logf("chaos: coordinator takeovers %d, slowest %v (fault to a checkpoint of the new term committed in both jobs; to both jobs claimed: %v; lease TTL %v), task restarts caused by takeovers %d",
		c.takeovers, c.slowestTakeover, c.slowestClaim, leaseTTL, c.takeoverRestarts)
	if err := c.restoreFinalSavepoint(tr); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		t.Fatalf("chaos (seed %d): %d problems:\n  %s", s.seed, len(problems), strings.Join(problems, "\n  "))
	}
}

// restoreFinalSavepoint takes a savepoint of the count job now that every
// event is applied, submits a copy of the job from it at another
// parallelism, and checks that the copy holds the same counts.
func (c *cluster) restoreFinalSavepoint(tr truth) error {
	res, err := c.triggerSavepoint(countJob, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("savepoint of %s after the faults: %v", countJob, err)
	}
	spec := specs()[0]
	spec.Name, spec.Sink = "counts-restored", subjects.SinkSpec{}
	ctx := context.Background()
	if _, err := c.api.Submit(ctx, spec, 2, res.Location); err != nil {
		return fmt.Errorf("submitting %s from %s: %v", spec.Name, res.Location, err)
	}
	var last error
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if last = c.compareCounts(spec.Name, tr); last == nil {
			c.t.Logf("chaos: savepoint %s restored at parallelism 2 holds every count", res.Location)
			return nil
		}
		time.Sleep(250 * time.Millisecond) // polling, bounded by deadline
	}
	return fmt.Errorf("%s, restored from %s: %v", spec.Name, res.Location, last)
}

func (c *cluster) compareCounts(job string, tr truth) error {
	for k, want := range tr.count {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := c.api.State(ctx, job, k)
		cancel()
		if err != nil && !errors.Is(err, subjects.CodeKeyNotFound) {
			return err
		}
		var n int64
		if res.Found {
			if err := json.Unmarshal(res.Value, &n); err != nil {
				return err
			}
		}
		if n != want {
			return fmt.Errorf("key %s: %d, want %d", k, n, want)
		}
	}
	return nil
}
