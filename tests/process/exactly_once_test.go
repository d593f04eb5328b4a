package process

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestExactlyOnceUnderKills runs a count job over a known event stream
// while worker processes, and then the coordinator process, are killed
// with SIGKILL at seeded random moments (while processing and while
// uploading checkpoints every 300 ms) and restarted. At the end every
// key's count equals the ground truth, and the deduplicating sink stream
// holds exactly one output per event.
//
// FLOTILLA_CHAOS_SEED picks another schedule.
func TestExactlyOnceUnderKills(t *testing.T) {
	seed := uint64(1)
	if s := os.Getenv("FLOTILLA_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 99))

	srv := testutil.RunNATS(t)
	m := testutil.RunMinIO(t)
	env := []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}
	store := m.Location("flotilla", "chaos")
	url := srv.ClientURL()

	coord := startProc(t, "coordinator", env, "coordinator", "-nats", url, "-store", store, "-log-level", "warn",
		"-heartbeat-interval", "200ms", "-heartbeat-timeout", "1s")
	var workers []*proc
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("p%d", i)
		workers = append(workers, startProc(t, "worker "+name, env, "worker", "-nats", url, "-store", store,
			"-name", name, "-data", t.TempDir(), "-slots", "2", "-log-level", "warn"))
	}
	nc := testutil.Connect(t, srv)
	api := client.New(nc, subjects.Namespace{})
	ctx := context.Background()
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ws, err := api.Workers(ctx)
		if err == nil && len(ws) != 3 {
			err = fmt.Errorf("%d workers", len(ws))
		}
		return err
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	submitSinkCount(t, ctx, api, js, 3)

	// The publisher: a steady stream of events with a known ground truth.
	const events = 12000
	published := publishSteadily(t, js, seed, events, 200, 200, 40*time.Millisecond)

	// The faults: workers killed and restarted (same name, same data dir),
	// then the coordinator.
	faults := 0
	for round := 0; round < 6; round++ {
		time.Sleep(time.Duration(300+r.IntN(900)) * time.Millisecond)
		w := workers[r.IntN(len(workers))]
		t.Logf("kill -9 %s", w.name)
		w.kill()
		faults++
		time.Sleep(time.Duration(r.IntN(1500)) * time.Millisecond)
		w.start()
	}
	time.Sleep(time.Duration(200+r.IntN(800)) * time.Millisecond)
	t.Log("kill -9 coordinator")
	coord.kill()
	faults++
	time.Sleep(time.Duration(r.IntN(1000)) * time.Millisecond)
	coord.start()
	time.Sleep(time.Duration(500+r.IntN(1000)) * time.Millisecond)
	w := workers[r.IntN(len(workers))]
	t.Logf("kill -9 %s", w.name)
	w.kill()
	faults++
	w.start()
	truth := published()

	fleettest.WaitCounts(t, api, "clicks", truth, 2*time.Minute)
	waitSinkExact(t, ctx, js, events)
	info, err := api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("faults injected %d, latest checkpoint %d, keys checked %d, lost 0, duplicated 0", faults, info.LatestCheckpoint, len(truth))
}
