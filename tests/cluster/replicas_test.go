package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
)

// TestReplicas: on a three-node cluster every stream and bucket the
// coordinator creates is R3 by default, a job spec may ask for more for its
// own streams, and a coordinator restarted with --replicas 1 lowers none of
// them: an operator's R3 bucket stays R3.
func TestReplicas(t *testing.T) {
	f := newFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The operator created the jobs bucket as R3 before flotilla ran.
	if _, err := f.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "FLOTILLA_JOBS", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	stop := f.startCoordinator(nil)
	f.startWorker("w1", 2)
	spec := countSpec("clicks", 2)
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	all := []string{"KV_FLOTILLA_COORDINATOR", "KV_FLOTILLA_JOBS", "KV_" + checkpointBucket, "FLOTILLA_EVENTS", sourceStream}
	for _, s := range all {
		if n := f.replicas(s); n != 3 {
			t.Errorf("%s: %d replicas, want 3", s, n)
		}
	}
	stop()

	f.startCoordinator(func(c *coordinator.Config) { c.Replicas = 1 })
	for _, s := range all {
		if n := f.replicas(s); n != 3 {
			t.Errorf("after a restart with replicas 1, %s has %d replicas, want 3", s, n)
		}
	}
}
