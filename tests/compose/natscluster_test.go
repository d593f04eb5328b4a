package compose

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"testing"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestComposeNATSCluster runs the fleet on the three-node NATS cluster of
// compose/docker-compose.cluster.yml: every stream and bucket flotilla
// creates is R3, and docker kill of the checkpoint bucket's leader neither
// stops checkpoints nor changes a key.
func TestComposeNATSCluster(t *testing.T) {
	c := newCluster(t, "docker-compose.yml", "docker-compose.cluster.yml")
	c.compose("up", "-d", "--no-build", "--scale", "worker=3")
	c.connect()
	c.waitWorkers(3, nil)

	spec := subjects.JobSpec{Name: job, Parallelism: 3,
		Source:     subjects.SourceSpec{Stream: stream, Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(time.Second)},
	}
	if _, err := c.api.Submit(c.ctx, spec, 0, ""); err != nil {
		t.Fatalf("submit: %v", err)
	}
	c.waitRunning(3, nil)
	c.publish(300)
	c.waitState()

	t.Log("every stream and bucket flotilla created is R3")
	// The buckets, the events stream and the job's input: its partition
	// streams, or its one stream when the cluster lacks the mapping.
	want := map[string]bool{"KV_FLOTILLA_COORDINATOR": true, "KV_FLOTILLA_LEADER": true, "KV_FLOTILLA_JOBS": true, "KV_FLOTILLA_CHECKPOINTS": true, "FLOTILLA_EVENTS": true}
	inputs := 0
	names := c.js.StreamNames(c.ctx)
	for name := range names.Name() {
		s, err := c.js.Stream(c.ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if n := s.CachedInfo().Config.Replicas; n != 3 {
			t.Errorf("%s has %d replicas, want 3", name, n)
		}
		delete(want, name)
		if strings.HasPrefix(name, stream) {
			inputs++
		}
	}
	if err := names.Err(); err != nil {
		t.Fatalf("listing streams: %v", err)
	}
	if len(want) > 0 || inputs == 0 {
		t.Fatalf("streams missing: %v, input streams %d", want, inputs)
	}
	t.Logf("%d input streams", inputs)

	t.Log("docker kill of the checkpoint bucket's leader")
	// The host is connected to nats-1 (the only published server): move
	// the leadership off it first, so that the host keeps watching.
	const bucket = "KV_FLOTILLA_CHECKPOINTS"
	var leader string
	testutil.CheckFor(t, time.Minute, time.Second, func() error {
		s, err := c.js.Stream(c.ctx, bucket)
		if err != nil {
			return err
		}
		ci := s.CachedInfo().Cluster
		if ci == nil || ci.Leader == "" {
			return errors.New("no leader")
		}
		leader = ci.Leader
		if leader == "nats-1" {
			_, _ = c.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+bucket, nil, 5*time.Second)
			return errors.New("leader on nats-1: stepped down")
		}
		return nil
	})
	service := leader
	before := c.latestCheckpoint()
	killed := time.Now()
	c.docker("kill", strings.TrimSpace(c.compose("ps", "-q", service)))
	c.publish(300)
	testutil.CheckFor(t, time.Minute, 250*time.Millisecond, func() error {
		if got := c.latestCheckpoint(); got < before+2 {
			return fmt.Errorf("latest checkpoint %d, want %d or later with %s down", got, before+2, leader)
		}
		return nil
	})
	t.Logf("%s killed: two more checkpoints completed %s later", leader, time.Since(killed).Round(100*time.Millisecond))
	c.waitState()
	t.Logf("every key exact %s after the kill; tasks failed for a stalled input: %d", time.Since(killed).Round(100*time.Millisecond),
		strings.Count(c.compose("logs", "--no-color", "worker"), "input stalled"))

	t.Log("the killed server comes back")
	c.compose("up", "-d", "--no-build", "--no-deps", service)
	c.publish(100)
	c.waitState()
	info, err := c.api.Status(c.ctx, job)
	if err != nil || !slices.ContainsFunc(info.Tasks, func(ti subjects.TaskInfo) bool { return ti.State == subjects.TaskRunning }) {
		t.Fatalf("status: %+v %v", info, err)
	}
}

// latestCheckpoint returns the job's newest completed checkpoint id.
func (c *cluster) latestCheckpoint() uint64 {
	c.t.Helper()
	cps, err := c.api.Checkpoints(c.ctx, job)
	if err != nil {
		return 0
	}
	var id uint64
	for _, cp := range cps {
		id = max(id, cp.ID)
	}
	return id
}
