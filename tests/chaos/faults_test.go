//go:build unix

package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/testutil"
)

// fault is one kind of fault the harness injects. run injects it, waits
// its seeded random time, and undoes it (restarts, resumes), so that the
// faults of a run follow each other rather than pile up; the cluster is
// not given time to recover in between unless the schedule says so.
type fault struct {
	name string
	run  func(c *cluster)
}

// faults are the kinds of fault, each injected at least once per run (a
// run starts with a seeded permutation of them).
var faults = []fault{
	{"kill -9 a worker", (*cluster).killWorkers},
	{"kill -9 the leading coordinator", (*cluster).killLeader},
	{"SIGSTOP the leading coordinator past its lease, then SIGCONT", (*cluster).pauseLeader},
	{"partition the leading coordinator from NATS past its lease, then heal", (*cluster).partitionLeader},
	{"kill -9 nats-server", (*cluster).killNATS},
	{"kill -9 nats-server during a checkpoint commit", (*cluster).killNATSDuringCommit},
	{"kill -9 MinIO", (*cluster).killMinIO},
	{"MinIO down during checkpoint uploads", (*cluster).storeOutageDuringUpload},
	{"zombie worker (SIGSTOP past its heartbeat timeout, then SIGCONT)", (*cluster).zombieWorker},
	{"savepoint during a failover", (*cluster).savepointDuringFailover},
	{"worker restarted while MinIO is down", (*cluster).workerStartsWithoutStore},
}

// clusterFaults are the kinds of fault of a run on a three-node NATS
// cluster: those of faults with the single server's two replaced by the
// NATS-node faults.
var clusterFaults = slices.Concat(faults[:4], []fault{
	{"kill -9 a NATS node (the meta leader half the time)", (*cluster).killNATSNode},
	{"kill -9 the checkpoint bucket's leader during a commit", (*cluster).killBucketLeaderDuringCommit},
	{"partition isolating a NATS node, then heal", (*cluster).partitionNATSNode},
	{"two of three NATS nodes down", (*cluster).twoNATSNodesDown},
}, faults[6:])

// killNATSNode kills one node of the NATS cluster, the meta leader half the
// time, and restarts it.
func (c *cluster) killNATSNode() {
	n := c.natsCluster
	i := c.r.IntN(len(n.Nodes))
	what := "a follower or leader at random"
	if c.r.IntN(2) == 0 {
		if l, err := n.MetaLeader(); err == nil {
			i, what = l, "the meta leader"
		}
	}
	c.faults++
	hold := c.between(500*time.Millisecond, 5*time.Second)
	c.logf("kill -9 NATS node %s (%s) for %v", n.Nodes[i].Name, what, hold)
	n.Kill(i)
	time.Sleep(hold)
	n.Start(i)
}

// killBucketLeaderDuringCommit kills the checkpoint bucket's leader as soon
// as the coordinator has written a checkpoint record (its commit is next):
// the commit must ride out the election.
func (c *cluster) killBucketLeaderDuringCommit() {
	key := c.awaitRecordWritten()
	n := c.natsCluster
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	i, err := n.StreamLeader(ctx, c.js, "KV_"+checkpointBucket)
	cancel()
	if err != nil {
		i = c.r.IntN(len(n.Nodes))
	}
	n.Kill(i)
	c.faults++
	hold := c.between(time.Second, 6*time.Second)
	c.logf("kill -9 NATS node %s (the checkpoint bucket's leader: %v) for %v, right after checkpoint record %q was written",
		n.Nodes[i].Name, err == nil, hold, key)
	time.Sleep(hold)
	n.Start(i)
}

// partitionNATSNode cuts one node off from the others and from its clients
// (the checkpoint bucket's leader half the time), then heals.
func (c *cluster) partitionNATSNode() {
	n := c.natsCluster
	i := c.r.IntN(len(n.Nodes))
	what := "at random"
	if c.r.IntN(2) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if l, err := n.StreamLeader(ctx, c.js, "KV_"+checkpointBucket); err == nil {
			i, what = l, "the checkpoint bucket's leader"
		}
		cancel()
	}
	c.faults++
	hold := c.between(time.Second, 8*time.Second)
	c.logf("partition isolating NATS node %s (%s) for %v", n.Nodes[i].Name, what, hold)
	n.Isolate(i)
	time.Sleep(hold)
	n.Heal()
}

// twoNATSNodesDown kills two of the three nodes (no quorum: JetStream
// stops) for a while, then restarts them: processing may pause, nothing
// completed may be lost, and it must resume by itself.
func (c *cluster) twoNATSNodesDown() {
	n := c.natsCluster
	perm := c.r.Perm(len(n.Nodes))[:2]
	c.faults += 2
	hold := c.between(2*time.Second, 8*time.Second)
	c.logf("kill -9 NATS nodes %s and %s for %v (no quorum)", n.Nodes[perm[0]].Name, n.Nodes[perm[1]].Name, hold)
	for _, i := range perm {
		n.Kill(i)
	}
	time.Sleep(hold)
	for _, i := range perm {
		n.Start(i)
	}
}

// awaitRecordWritten waits (up to 15 s) until the coordinator writes a
// checkpoint record, whose commit comes next, and returns its key ("" if
// none came).
func (c *cluster) awaitRecordWritten() string {
	for len(c.obs.written) > 0 {
		<-c.obs.written // a stale one
	}
	select {
	case key := <-c.obs.written:
		return key
	case <-time.After(15 * time.Second):
		return ""
	}
}

// between returns a seeded random duration in [lo, hi).
func (c *cluster) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.r.Int64N(int64(hi-lo)))
}

// hold lets a fault last: it sleeps a seeded random duration. It is the
// schedule, not synchronisation.
func (c *cluster) hold(lo, hi time.Duration) { time.Sleep(c.between(lo, hi)) }

func (c *cluster) logf(format string, args ...any) {
	c.t.Logf("fault %d: "+format, append([]any{c.faults}, args...)...)
}

// killWorkers kills one worker, or two at once, and restarts them.
func (c *cluster) killWorkers() {
	n := 1 + c.r.IntN(2)
	perm := c.r.Perm(len(c.workers))[:n]
	for _, i := range perm {
		c.faults++
		c.logf("kill -9 %s", c.workers[i].name)
		c.workers[i].kill()
	}
	c.hold(0, 2*time.Second)
	for _, i := range perm {
		c.workers[i].start()
	}
}

// killNATS kills nats-server and restarts it on the same port and store
// directory; everyone must reconnect, and JetStream recover its streams.
func (c *cluster) killNATS() {
	c.faults++
	c.logf("kill -9 nats-server")
	c.nats.kill()
	c.hold(200*time.Millisecond, 3*time.Second)
	c.nats.start()
	c.nats.waitReady()
}

// killNATSDuringCommit kills nats-server as soon as the coordinator has
// written a checkpoint record (its commit, the compare-and-set of the
// latest pointer, is next) and keeps it down longer than the coordinator's
// request timeout, so that the commit fails for want of an answer and the
// checkpoint is aborted.
func (c *cluster) killNATSDuringCommit() {
	key := c.awaitRecordWritten()
	c.nats.kill()
	c.faults++
	hold := c.between(6*time.Second, 9*time.Second)
	c.logf("kill -9 nats-server for %v, right after checkpoint record %q was written", hold, key)
	time.Sleep(hold)
	c.nats.start()
	c.nats.waitReady()
}

func (c *cluster) killMinIO() {
	c.faults++
	c.logf("kill -9 MinIO")
	c.minio.Kill()
	c.hold(500*time.Millisecond, 4*time.Second)
	c.minio.Restart()
}

// storeOutageDuringUpload waits for a barrier of one job (its tasks are
// about to upload) and kills MinIO at once, for a few seconds.
func (c *cluster) storeOutageDuringUpload() {
	job := specs()[c.r.IntN(2)].Name
	hold := c.between(2*time.Second, 5*time.Second)
	sub, err := c.nc.SubscribeSync(c.ns.Barrier(job))
	if err != nil {
		c.t.Fatal(err)
	}
	_, err = sub.NextMsg(15 * time.Second)
	_ = sub.Unsubscribe()
	c.faults++
	if err != nil {
		c.logf("kill -9 MinIO for %v (no barrier of %s seen: %v)", hold, job, err)
	} else {
		c.logf("kill -9 MinIO for %v, right after a barrier of %s", hold, job)
	}
	c.minio.Kill()
	time.Sleep(hold)
	c.minio.Restart()
}

// zombieWorker pauses a worker until the coordinator has declared it lost
// (and failed its tasks over), then lets it continue: its old attempts
// must be fenced. They may publish outputs (same message ids: dropped by
// the sink) and ack barriers, but must neither change the state others
// read nor complete a checkpoint (checked by observer.fencingViolations).
func (c *cluster) zombieWorker() {
	i, _ := c.busyWorker("")
	w, name := c.workers[i], c.workerNames[i]
	var instance string
	testutil.CheckFor(c.t, time.Minute, 100*time.Millisecond, func() error {
		var err error
		if instance, err = c.instanceOf(name); err == nil && instance == "" {
			err = fmt.Errorf("%s is not registered", name)
		}
		return err
	})
	attempts := c.attemptsOn(name)
	c.faults++
	c.logf("SIGSTOP %s (instance %s, %d task attempts)", w.name, instance, len(attempts))
	pausedAt := time.Now()
	w.pause()
	testutil.CheckFor(c.t, time.Minute, 100*time.Millisecond, func() error {
		now, err := c.instanceOf(name)
		if err == nil && now == instance {
			err = fmt.Errorf("coordinator still lists %s instance %s, paused %v ago", name, instance, time.Since(pausedAt).Round(time.Millisecond))
		}
		return err
	})
	c.hold(0, 2*time.Second)
	c.logf("SIGCONT %s after %v", w.name, time.Since(pausedAt).Round(time.Millisecond))
	w.resume()
	c.zombies = append(c.zombies, zombie{worker: name, pausedAt: pausedAt, attempts: attempts})
}

// savepointDuringFailover kills a worker running a task of a job and
// requests a savepoint of the job on the trigger subject, either at once (the coordinator does not know
// yet, so the first attempt's barrier reaches a dead task) or once the
// coordinator has noticed (tasks are being redeployed). It waits for the
// answer: a savepoint request must always be answered.
func (c *cluster) savepointDuringFailover() {
	job := specs()[c.r.IntN(2)].Name
	i, busy := c.busyWorker(job)
	w := c.workers[i]
	noticed := c.r.IntN(2) == 0 && busy
	c.faults++
	c.logf("kill -9 %s, then savepoint %s (once the coordinator noticed: %v)", w.name, job, noticed)
	w.kill()
	if noticed {
		testutil.CheckFor(c.t, time.Minute, 50*time.Millisecond, func() error {
			if c.jobsRunning() == nil {
				return fmt.Errorf("the coordinator has not noticed yet")
			}
			return nil
		})
	}
	type outcome struct {
		location string
		err      error
	}
	done := make(chan outcome, 1)
	started := time.Now()
	go func() {
		res, err := c.triggerSavepoint(job, 3*time.Minute)
		done <- outcome{res.Location, err}
	}()
	c.hold(0, time.Second)
	w.start()
	o := <-done
	took := time.Since(started).Round(time.Millisecond)
	if errors.Is(o.err, nats.ErrTimeout) {
		c.problems = append(c.problems, fmt.Sprintf("a savepoint of %s requested during a failover got no answer in %v", job, took))
	}
	if o.err != nil {
		c.logf("savepoint of %s during failover: %v after %v", job, o.err, took)
		c.failedSavepoints = append(c.failedSavepoints, fmt.Sprintf("%s after %v: %v", job, took, o.err))
		return
	}
	c.logf("savepoint of %s during failover: %s after %v", job, o.location, took)
	c.savepoints++
	c.slowestSavepoint = max(c.slowestSavepoint, took)
}

// workerStartsWithoutStore restarts a worker while MinIO is down. Start
// order must not matter: the worker must wait for the store rather than
// give up.
func (c *cluster) workerStartsWithoutStore() {
	w := c.workers[c.r.IntN(len(c.workers))]
	c.faults += 2
	c.logf("kill -9 MinIO and %s, restart %s while MinIO is down", w.name, w.name)
	c.minio.Kill()
	w.kill()
	w.start()
	c.hold(time.Second, 4*time.Second)
	c.minio.Restart()
}
