package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// recoveryBound is how soon after a fault ends (a node restarted, a
// partition healed, quorum back) checkpoints must complete again. The
// README states the measured times.
const recoveryBound = 30 * time.Second

// faultLength is how long each fault lasts before it ends.
const faultLength = 5 * time.Second

// TestNodeFaults runs a count job on R3 metadata and an R3 source stream
// while the cluster suffers, one after another: kill -9 of the meta leader,
// of the checkpoint bucket's leader in the middle of a checkpoint commit, and
// of the leader of one of the job's partition streams; a partition that isolates one node, then
// heals; and two of the three nodes down at once (no quorum). Events are
// published throughout. After each fault checkpoints complete again within
// recoveryBound; one node's loss fails no task over; no checkpoint announced
// completed is lost; and every key is exact at the end.
func TestNodeFaults(t *testing.T) {
	spec := countSpec("clicks", 3)
	spec.Checkpoint.Timeout = subjects.Duration(20 * time.Second)
	// Every node maps the input into partition streams, as in production.
	mapped := spec.WithDefaults()
	f := newFleet(t, subjects.MappingConfig(&mapped))
	var armed atomic.Bool
	var midCommit atomic.Uint64 // the checkpoint whose commit met the kill
	commits := make(chan chan struct{})
	f.startCoordinator(func(c *coordinator.Config) {
		// The leader renews its lease in an R3 bucket whose own leader
		// may be on a killed node: under -race on a loaded machine that
		// election has outlasted the 8 s a 10 s lease allows, and the
		// leader stepped down (the next term adopts the tasks, but aborts
		// the checkpoint in flight, which this test requires to
		// complete). What a step-down does is tested elsewhere
		// (TestCoordinatorFailover, the chaos harness); here the lease
		// outlasts the elections.
		c.LeaseTTL = 30 * time.Second
		// Mid-checkpoint: when armed, the next commit waits until the test
		// has killed the checkpoint bucket's leader, then goes ahead.
		c.BeforeCommit = func(r subjects.CheckpointRecord) error {
			if armed.CompareAndSwap(true, false) {
				midCommit.Store(r.ID)
				done := make(chan struct{})
				select {
				case commits <- done:
					<-done
				case <-time.After(10 * time.Second):
				}
			}
			return nil
		}
	})
	for _, w := range []string{"w1", "w2", "w3"} {
		f.startWorker(w, 2)
	}
	ctx := context.Background()
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	if info.Input == nil || info.Input.Layout != subjects.LayoutPartitioned || len(info.Input.Streams) == 0 {
		t.Fatalf("input %+v, want partitioned", info.Input)
	}
	partition := info.Input.Streams[0]
	watch := f.watchCompleted("clicks")

	// Events flow throughout, in small batches, from their own goroutine.
	pub := f.publisher(1)
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	var pubMu sync.Mutex
	go func() {
		defer close(pubDone)
		for i := 0; i < 10_000; i++ { // bounded: about 25 events/s for minutes
			select {
			case <-stopPub:
				return
			case <-time.After(20 * time.Millisecond):
			}
			pubMu.Lock()
			pub.publish(1, 50)
			pubMu.Unlock()
		}
	}()
	stopPublishing := func() {
		select {
		case <-stopPub:
		default:
			close(stopPub)
		}
		<-pubDone
	}
	defer stopPublishing()

	f.waitCheckpoint(watch, "start")
	attempts := f.attempts("clicks")

	type fault struct {
		name   string
		inject func() (heal func())
		// oneNode: one server of three is lost, so no task may fail over.
		oneNode bool
	}
	faults := []fault{
		{"kill -9 of the meta leader", func() func() {
			i := f.nats.WaitMetaLeader(time.Minute)
			f.nats.Kill(i)
			return func() { f.nats.Start(i) }
		}, true},
		{"kill -9 of the checkpoint bucket's leader mid-commit", func() func() {
			armed.Store(true)
			var done chan struct{}
			select {
			case done = <-commits:
			case <-time.After(30 * time.Second):
				t.Fatal("no checkpoint commit within 30s")
			}
			i := f.streamLeader("KV_" + checkpointBucket)
			f.nats.Kill(i)
			close(done)
			return func() { f.nats.Start(i) }
		}, true},
		{"kill -9 of a partition stream's leader", func() func() {
			i := f.streamLeader(partition)
			f.nats.Kill(i)
			return func() { f.nats.Start(i) }
		}, true},
		{"partition isolating the checkpoint bucket's leader", func() func() {
			i := f.streamLeader("KV_" + checkpointBucket)
			f.nats.Isolate(i)
			return f.nats.Heal
		}, true},
		{"two of three nodes down (no quorum)", func() func() {
			leader := f.nats.WaitMetaLeader(time.Minute)
			a, b := (leader+1)%3, (leader+2)%3
			f.nats.Kill(leader)
			f.nats.Kill(a)
			return func() {
				f.nats.Start(leader)
				f.nats.Start(a)
				_ = b
			}
		}, false},
	}
	for _, fl := range faults {
		before := watch.max()
		heal := fl.inject()
		// The fault lasts faultLength: events keep coming (or wait, without
		// quorum), checkpoints may or may not complete meanwhile.
		<-time.After(faultLength)
		heal()
		healed := time.Now()
		f.nats.WaitMetaLeader(2 * time.Minute)
		after := f.waitCheckpointAfter(watch, max(before, watch.max()), fl.name)
		t.Logf("%s: checkpoints %d -> %d; a checkpoint completed %s after the fault ended",
			fl.name, before, after, time.Since(healed).Round(100*time.Millisecond))
		if fl.oneNode {
			if now := f.attempts("clicks"); !slices.Equal(now, attempts) {
				t.Errorf("%s: tasks failed over (attempts %v -> %v)", fl.name, attempts, now)
			}
		}
		attempts = f.attempts("clicks")
	}

	// The commit that met the checkpoint bucket leader's death rode out
	// the election and completed.
	if id := midCommit.Load(); !watch.has(id) {
		t.Errorf("checkpoint %d, committed while its bucket's leader was killed, did not complete", id)
	}

	stopPublishing()
	pubMu.Lock()
	truth := pub.truth
	pubMu.Unlock()
	f.checkState("clicks", truth, time.Minute)
	// No completed checkpoint lost: the newest one announced is the
	// store's latest or older than it. Checkpoints go on meanwhile, so the
	// announcement is read first: the store's latest only grows, and a
	// commit precedes its announcement.
	announced := watch.max()
	if latest := f.latest("clicks"); latest < announced {
		t.Errorf("checkpoint %d was announced completed, but the latest in the store is %d", announced, latest)
	}
	n := 0
	for _, v := range truth {
		n += int(v)
	}
	t.Logf("%d events over %d keys exact; %d checkpoints announced completed", n, len(truth), watch.count())
}

// completions records the checkpoints announced completed to the tasks.
type completions struct {
	mu  sync.Mutex
	ids map[uint64]bool
	top uint64
	ch  chan struct{}
}

func (c *completions) max() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.top
}

func (c *completions) has(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id]
}

func (c *completions) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (f *fleet) watchCompleted(job string) *completions {
	c := &completions{ids: map[uint64]bool{}, ch: make(chan struct{}, 1)}
	sub, err := f.nc.Subscribe(subjects.Namespace{}.Complete(job), func(m *nats.Msg) {
		var done subjects.Complete
		if subjects.Decode(m.Data, &done) != nil || done.Kind != subjects.KindCheckpoint {
			return
		}
		c.mu.Lock()
		c.ids[done.Checkpoint] = true
		c.top = max(c.top, done.Checkpoint)
		c.mu.Unlock()
		select {
		case c.ch <- struct{}{}:
		default:
		}
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

func (f *fleet) waitCheckpoint(c *completions, what string) uint64 {
	return f.waitCheckpointAfter(c, 0, what)
}

// waitCheckpointAfter waits up to recoveryBound for a checkpoint above id
// to be announced completed, and returns the newest.
func (f *fleet) waitCheckpointAfter(c *completions, id uint64, what string) uint64 {
	f.t.Helper()
	deadline := time.After(recoveryBound)
	for {
		if top := c.max(); top > id {
			return top
		}
		select {
		case <-c.ch:
		case <-deadline:
			f.t.Logf("%s: %s", what, f.diagnose("clicks"))
			f.t.Fatalf("%s: no checkpoint above %d completed within %s", what, id, recoveryBound)
		}
	}
}

// diagnose says, best effort, why no checkpoint completes: how the
// coordinator sees the job's tasks (checkpoints are triggered only while
// all run) and how the last checkpoint attempts ended (which tasks acked,
// and why they failed), for the failure message, since the fleet log's
// tail holds no debug lines.
func (f *fleet) diagnose(job string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	if info, err := f.api.Status(ctx, job); err != nil {
		fmt.Fprintf(&b, "job status: %v", err)
	} else {
		fmt.Fprintf(&b, "job %s, latest checkpoint %d, restarts %d; tasks:", info.State, info.LatestCheckpoint, info.Restarts)
		for _, t := range info.Tasks {
			fmt.Fprintf(&b, " %d/%d on %s %s;", t.Task, t.Attempt, t.Worker, t.State)
		}
	}
	h, err := f.api.History(ctx, job, 5)
	if err != nil {
		fmt.Fprintf(&b, " checkpoint history: %v", err)
		return b.String()
	}
	for _, a := range h.Attempts {
		var acked []int
		for _, t := range a.Tasks {
			if t.Acked {
				acked = append(acked, t.Task)
			}
		}
		fmt.Fprintf(&b, "\n  checkpoint %d %s, triggered %s, %s, acked by tasks %v", a.ID, a.Outcome,
			a.Triggered.Format("15:04:05.000"), a.Duration.D().Round(time.Millisecond), acked)
		if a.Failure != nil {
			fmt.Fprintf(&b, ": %s", a.Failure.Message)
		}
	}
	return b.String()
}

// attempts returns each task's attempt number.
func (f *fleet) attempts(job string) []uint64 {
	f.t.Helper()
	var out []uint64
	testutil.CheckFor(f.t, time.Minute, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := f.api.Status(ctx, job)
		if err != nil {
			return err
		}
		out = out[:0]
		for _, task := range info.Tasks {
			if task.State != subjects.TaskRunning {
				return fmt.Errorf("task %d is %s", task.Task, task.State)
			}
			out = append(out, task.Attempt)
		}
		return nil
	})
	return out
}

// streamLeader returns the index of the node leading stream name.
func (f *fleet) streamLeader(name string) int {
	f.t.Helper()
	i := -1
	testutil.CheckFor(f.t, time.Minute, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		i, err = f.nats.StreamLeader(ctx, f.js, name)
		if err == nil && !f.nats.Running(i) {
			err = errors.New("leader not running")
		}
		return err
	})
	return i
}
