package fleet

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestPartitionedInput: with the mapping, a job's input is partition
// streams and each is read by exactly one task (read amplification 1).
func TestPartitionedInput(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 3)
	f.waitWorkers(1)
	ctx := context.Background()
	info, err := f.api.Submit(ctx, countSpec("clicks", 3), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Input == nil || info.Input.Layout != subjects.LayoutPartitioned || info.Input.Partitions != 32 || len(info.Input.Streams) != 32 || len(info.Warnings) != 0 {
		t.Fatalf("input %+v, warnings %q", info.Input, info.Warnings)
	}
	truth := map[string]int64{}
	f.publish(3000, 200, 5, truth)
	f.checkState("clicks", truth, 30*time.Second)
	// One consumer per partition stream, each holding only its groups' events.
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(0)
	for _, name := range info.Input.Streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		st := s.CachedInfo().State
		total += st.Msgs
		if st.Consumers != 1 {
			t.Errorf("stream %s has %d consumers, want 1", name, st.Consumers)
		}
	}
	if total != 3000 {
		t.Errorf("partition streams hold %d events, want 3000", total)
	}
}

// TestInputWithoutMapping: on a server without the mapping a job runs
// correctly on one stream, says so on submit and in its status with the
// exact mapping to add, and keeps every event when the mapping is added
// while it runs. A job that demands partitions is refused with the mapping.
func TestInputWithoutMapping(t *testing.T) {
	f := newFleet(t)
	f.startCoordinatorWith(func(c *coordinator.Config) { c.MapInput = nil })
	f.startWorker("w1", 4)
	f.waitWorkers(1)
	ctx := context.Background()
	spec := countSpec("plain", 3)
	mapping := `mappings { "clicks.*": "$FK.{{partition(128,1)}}.clicks.{{wildcard(1)}}" }`

	strict := spec
	strict.Name, strict.Source.Layout = "strict", subjects.LayoutPartitioned
	if _, err := f.api.Submit(ctx, strict, 0, ""); subjects.CodeOf(err) != subjects.CodeInvalidJobSpec || !strings.Contains(err.Error(), mapping) {
		t.Fatalf("partitioned layout without the mapping: %v", err)
	}

	info, err := f.api.Submit(ctx, spec, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Warnings) == 0 || !strings.Contains(info.Warnings[0], "not partitioned") || !strings.Contains(info.Warnings[0], mapping) {
		t.Errorf("submit warnings %q", info.Warnings)
	}
	truth := map[string]int64{}
	f.publish(2000, 100, 7, truth)
	f.checkState("plain", truth, 30*time.Second)
	st, err := f.api.Status(ctx, "plain")
	if err != nil || st.Input == nil || st.Input.Layout != subjects.LayoutStream || !strings.Contains(st.Input.Note, mapping) ||
		len(st.Input.Streams) != 1 || st.Input.Streams[0] != "CLICKS" {
		t.Fatalf("status input %+v: %v", st.Input, err)
	}

	// The mapping appears while the job runs: events now arrive mapped,
	// in the same stream, and are all counted.
	resolved := spec.WithDefaults()
	src, dest, err := subjects.InputMapping(&resolved)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.GlobalAccount().AddMapping(src, dest); err != nil {
		t.Fatal(err)
	}
	f.publish(1000, 100, 8, truth)
	f.checkState("plain", truth, 30*time.Second)
	// Another job on the same subject cannot be partitioned while the
	// unpartitioned stream captures the mapped subjects: refused, saying why.
	other := spec
	other.Name = "other"
	if _, err := f.api.Submit(ctx, other, 0, ""); subjects.CodeOf(err) != subjects.CodeInvalidJobSpec || !strings.Contains(err.Error(), "CLICKS") {
		t.Fatalf("partitioned job over an unpartitioned stream's subjects: %v", err)
	}
}

// TestInputLimits: the spec's limits reach every input stream, submit warns
// when they can evict events newer than the oldest retained checkpoint, and
// a bad on_gap is refused.
func TestInputLimits(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	ctx := context.Background()
	spec := countSpec("limited", 1)
	spec.Source.MaxAge = subjects.Duration(5 * time.Second)
	spec.Source.MaxMsgs = 5000
	spec.Checkpoint = subjects.CheckpointSpec{Interval: subjects.Duration(10 * time.Second), Retained: 3}
	info, err := f.api.Submit(ctx, spec, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(info.Warnings, "\n")
	for _, want := range []string{"source.max_age 5s can evict events newer than the oldest retained checkpoint", "source.max_msgs 5000"} {
		if !strings.Contains(joined, want) {
			t.Errorf("submit warnings %q do not say %q", info.Warnings, want)
		}
	}
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range info.Input.Streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if c := s.CachedInfo().Config; c.MaxAge != 5*time.Second || c.MaxMsgs != 5000 {
			t.Fatalf("stream %s: max_age %s, max_msgs %d", name, c.MaxAge, c.MaxMsgs)
		}
	}
	bad := countSpec("bad", 1)
	bad.Source.OnGap = "skip"
	if _, err := f.api.Submit(ctx, bad, 0, ""); subjects.CodeOf(err) != subjects.CodeInvalidJobSpec || !strings.Contains(err.Error(), "on_gap") {
		t.Errorf("on_gap skip: %v", err)
	}
}
