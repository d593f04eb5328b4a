package worker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// Events evicted from an input stream (max_msgs, max_age) after a
// checkpoint and before the restored task read them are data loss: the
// restored task fails with data_loss naming the job, the key groups, the
// stream and the missing sequences; with on_gap continue it reports the gap
// and goes on, counting every event still in the streams exactly once.
func TestEvictedEvents(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit func(*subjects.JobSpec)
		onGap string
	}{
		{"max_msgs", func(s *subjects.JobSpec) { s.Source.MaxMsgs = 20 }, subjects.OnGapFail},
		{"max_age", func(s *subjects.JobSpec) { s.Source.MaxAge = subjects.Duration(time.Second) }, subjects.OnGapFail},
		{"max_msgs_continue", func(s *subjects.JobSpec) { s.Source.MaxMsgs = 20 }, subjects.OnGapContinue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testutil.RunNATS(t)
			c := startCoord(t, s, 1)
			w := testWorker(t, s, Config{Slots: 1, Store: objectstore.NewMem(), BatchSize: 16})
			j := newTestJobIn(t, s, "evict", 1, subjects.LayoutPartitioned, tc.limit, func(s *subjects.JobSpec) { s.Source.OnGap = tc.onGap })
			ref1 := j.deploy(c, w, 0, 1, nil)
			c.waitStatus(ref1, subjects.TaskRunning)
			j.publish(t, 40) // 5 per partition: within max_msgs
			j.waitCount(t, 40)
			atCheckpoint := j.lastSeqs(t)
			c.publish(c.ns.Barrier(j.spec.Name), &subjects.Barrier{Epoch: 1, Job: j.spec.Name, Checkpoint: 1,
				Kind: subjects.KindCheckpoint, Format: statebackend.FormatNative, Target: "evict/chk-1", Shared: "evict/shared", Timestamp: time.Now()})
			ack, dec := c.waitAck(ref1, 1)
			if dec != nil {
				t.Fatalf("declined: %+v", dec.Reason)
			}
			c.publish(c.ns.Complete(j.spec.Name), &subjects.Complete{Epoch: 1, Job: j.spec.Name, Checkpoint: 1, Kind: subjects.KindCheckpoint})
			if err := c.cancel(subjects.CancelTask{Epoch: 1, Worker: w.Name(), TaskRef: ref1, Release: true}); err != nil {
				t.Fatal(err)
			}
			c.waitStatus(ref1, subjects.TaskCanceled)

			// The task is down; the streams evict events it never applied.
			j.publish(t, 400) // about 50 per partition
			// Wait for the limits to act: max_msgs at once, max_age once
			// every stream is empty. gaps are the streams whose first
			// sequence passed the checkpoint's position.
			first := map[string]uint64{}
			gapped := map[string]bool{}
			testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
				for stream, mark := range atCheckpoint {
					st, err := j.js.Stream(context.Background(), stream)
					if err != nil {
						return err
					}
					state := st.CachedInfo().State
					if tc.name == "max_age" && state.Msgs > 0 {
						return fmt.Errorf("stream %s still holds %d events", stream, state.Msgs)
					}
					first[stream] = state.FirstSeq
					gapped[stream] = state.FirstSeq > mark+1
				}
				return nil
			})
			if !slices.Contains(slices.Collect(maps.Values(gapped)), true) {
				t.Fatal("no stream evicted unapplied events")
			}

			ref2 := j.deploy(c, w, 0, 2, []statebackend.Handle{ack.Handle})
			if tc.onGap == subjects.OnGapFail {
				c.waitStatus(ref2, subjects.TaskFailed)
				_, err := c.lastStatus(ref2)
				if err == nil || err.Code != subjects.CodeDataLoss {
					t.Fatalf("restored task failed with %v, want %s", err, subjects.CodeDataLoss)
				}
				for _, want := range []string{"job evict", "key groups [", "EVICT_IN-p", "sequences ", "on_gap"} {
					if !strings.Contains(err.Message, want) {
						t.Errorf("data_loss message %q does not name %q", err.Message, want)
					}
				}
				return
			}
			// on_gap continue: every partition's gap is reported, and each
			// key counts exactly the events before the checkpoint and those
			// still in the streams.
			c.waitStatus(ref2, subjects.TaskRunning)
			testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
				gaps := map[string]subjects.InputGap{}
				c.mu.Lock()
				for _, st := range c.statuses {
					if st.TaskRef == ref2 && st.Gap != nil {
						gaps[st.Gap.Stream] = *st.Gap
					}
				}
				c.mu.Unlock()
				for stream, mark := range atCheckpoint {
					g, ok := gaps[stream]
					if ok != gapped[stream] || ok && (g.First != mark+1 || g.Last != first[stream]-1) {
						return fmt.Errorf("stream %s (checkpoint at %d, first sequence %d): gap %v %+v", stream, mark, first[stream], ok, g)
					}
				}
				return nil
			})
			want := map[string]int{}
			j.mu.Lock()
			for sk, key := range j.seqs {
				if sk.seq <= atCheckpoint[sk.stream] || sk.seq >= first[sk.stream] {
					want[key]++
				}
			}
			j.mu.Unlock()
			testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
				for k, n := range want {
					res := j.query(t, k)
					if res.Error != nil || string(res.Value) != strconv.Itoa(n) {
						return fmt.Errorf("key %s: %s %v, want %d", k, res.Value, res.Error, n)
					}
				}
				return nil
			})
		})
	}
}
