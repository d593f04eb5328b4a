package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestForgedMessagesDoNotWedge: numbers far ahead of what the receiver
// knows, and a registered worker that never answers, must not wedge the
// fleet. A forged slot request with epoch 2^40 is refused and the worker
// still obeys the real coordinator; a forged barrier with checkpoint id
// 2^40 does not stop checkpoints; a forged "ghost" worker with 1,024 slots
// that never answers slot requests neither floods the coordinator nor
// delays a failover.
func TestForgedMessagesDoNotWedge(t *testing.T) {
	f := newFleet(t)
	logs := &fleettest.Buffer{}
	_, coord := f.startCoordinatorWith(func(c *coordinator.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := subjects.Namespace{}

	// The ghost registers with 1,024 slots and keeps heartbeating, but
	// nothing answers its slot requests.
	msg, err := f.nc.Request(ns.Register(), subjects.MustEncode(&subjects.RegisterRequest{Worker: "ghost", Slots: 1024,
		Operators: []string{"count"}}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reg subjects.RegisterResponse
	if err := subjects.Decode(msg.Data, &reg); err != nil || reg.Error != nil {
		t.Fatalf("ghost registration: %s (%v)", msg.Data, err)
	}
	ghostDone := make(chan struct{})
	go func() {
		defer close(ghostDone)
		hb := subjects.MustEncode(&subjects.Heartbeat{Worker: "ghost", Instance: reg.Instance, Epoch: reg.Epoch})
		for ctx.Err() == nil {
			_, _ = f.nc.Request(ns.Heartbeat("ghost"), hb, time.Second)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	defer func() { cancel(); <-ghostDone }()

	_, w1 := f.startWorker("w1", 2)
	f.startWorker("w2", 2)
	f.startWorker("w3", 2)
	f.waitWorkers(4)
	spec := countSpec("clicks", 2)
	spec.Checkpoint.Interval = subjects.Duration(200 * time.Millisecond)
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(1000, 20, 11, truth)
	f.checkState("clicks", truth, 30*time.Second)

	// A forged slot request of epoch 2^40 is refused and changes nothing.
	forged := subjects.MustEncode(&subjects.SlotRequest{Epoch: 1 << 40, Worker: "w2", Allocation: "forged", Job: "clicks"})
	msg, err = f.nc.Request(ns.SlotRequest("w2"), forged, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sr subjects.SlotResponse
	if err := subjects.Decode(msg.Data, &sr); err != nil || sr.Error == nil || sr.Error.Code != subjects.CodeEpochAhead {
		t.Fatalf("forged slot request: %s (%v)", msg.Data, err)
	}

	// A forged barrier of checkpoint 2^40, with the coordinator's epoch.
	before := latestCheckpoint(t, f, "clicks")
	barrier := subjects.MustEncode(&subjects.Barrier{Epoch: coord.Epoch(), Job: "clicks", Checkpoint: 1 << 40,
		Kind: subjects.KindCheckpoint, Format: statebackend.FormatNative, Target: "clicks/chk-forged", Timestamp: time.Now()})
	if err := f.nc.Publish(ns.Barrier("clicks"), barrier); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if got := latestCheckpoint(t, f, "clicks"); got < before+3 {
			return fmt.Errorf("latest checkpoint %d, want at least %d after the forged barrier", got, before+3)
		}
		return nil
	})

	// A worker dies (its connection cut): its tasks move within the
	// heartbeat timeout plus a restart, not behind the ghost's requests.
	info, err := f.api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	onW1 := false
	for _, task := range info.Tasks {
		onW1 = onW1 || task.Worker == "w1"
	}
	if !onW1 {
		t.Fatalf("no task on w1 to fail over: %+v", info.Tasks)
	}
	start := time.Now()
	w1.Close()
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "clicks")
		if err != nil {
			return err
		}
		for _, task := range info.Tasks {
			if task.Worker == "w1" || task.Worker == "ghost" || task.State != subjects.TaskRunning {
				return fmt.Errorf("task %d on %q is %s", task.Task, task.Worker, task.State)
			}
		}
		return nil
	})
	failover := time.Since(start)
	f.publish(500, 20, 12, truth)
	f.checkState("clicks", truth, 30*time.Second)
	failed := strings.Count(logs.String(), "slot request failed")
	t.Logf("failover in %s (heartbeat timeout 1s); %d failed slot requests logged", failover.Round(time.Millisecond), failed)
	// Without backoff the coordinator asked the ghost in a busy loop
	// (hundreds of thousands of times a minute); with it, a few dozen.
	if failed > 200 {
		t.Errorf("%d failed slot requests logged", failed)
	}
	if failover > 10*time.Second {
		t.Errorf("failover took %s", failover)
	}
}

func latestCheckpoint(t *testing.T, f *fleet, job string) uint64 {
	cps, err := f.api.Checkpoints(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	var id uint64
	for _, c := range cps {
		id = max(id, c.ID)
	}
	return id
}
