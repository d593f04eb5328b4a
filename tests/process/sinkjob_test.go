package process

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// submitSinkCount creates the sink stream COUNTS (its duplicate window
// outlasts any replay of the test) and submits "clicks": a count of 3
// tasks over clicks.<key>, outputs on counts.clicks, a checkpoint every
// 300 ms with retained kept.
func submitSinkCount(t *testing.T, ctx context.Context, api *client.Client, js jetstream.JetStream, retained int) {
	t.Helper()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "COUNTS", Subjects: []string{"counts.>"},
		Duplicates: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 3,
		Source:     subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Sink:       subjects.SinkSpec{Subject: "counts.clicks"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(300 * time.Millisecond), Retained: retained},
		Restart:    subjects.RestartSpec{InitialDelay: subjects.Duration(200 * time.Millisecond), MaxDelay: subjects.Duration(2 * time.Second)}}
	if _, err := api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
}

// publishSteadily publishes events events over keys keys (chosen by
// seed) from its own goroutine, pausing for pause after every batch
// acknowledged. wait returns once all are acknowledged, with the ground
// truth: events per key.
func publishSteadily(t *testing.T, js jetstream.JetStream, seed uint64, events, keys, batch int, pause time.Duration) (wait func() map[string]int64) {
	truth := map[string]int64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pr := rand.New(rand.NewPCG(seed, 1))
		for i := 0; i < events; i++ {
			k := "k" + strconv.Itoa(pr.IntN(keys))
			truth[k]++
			if _, err := js.PublishAsync("clicks."+k, []byte(`{}`)); err != nil {
				t.Error(err)
				return
			}
			if i%batch == batch-1 {
				<-js.PublishAsyncComplete()
				time.Sleep(pause)
			}
		}
		<-js.PublishAsyncComplete()
	}()
	return func() map[string]int64 {
		<-done
		return truth
	}
}

// waitSinkExact waits until the sink stream COUNTS holds exactly events
// outputs: one per event, none lost, none twice.
func waitSinkExact(t *testing.T, ctx context.Context, js jetstream.JetStream, events int) {
	t.Helper()
	testutil.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		st, err := js.Stream(ctx, "COUNTS")
		if err != nil {
			return err
		}
		if got := st.CachedInfo().State.Msgs; got != uint64(events) {
			return fmt.Errorf("sink holds %d outputs, want exactly %d", got, events)
		}
		return nil
	})
}
