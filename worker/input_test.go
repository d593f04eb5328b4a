package worker

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestAckMetadataMatchesNATS: ackMetadata reads what nats.go's Metadata
// reads from both reply subject formats, and refuses what it refuses.
func TestAckMetadataMatchesNATS(t *testing.T) {
	for _, reply := range []string{
		"$JS.ACK.IN-p3.flotilla_j_0_1_3.1.4711.4711.1764470000123456789.99",
		"$JS.ACK._.ACCHASH.IN-p3.cons.2.18446744073709551615.12.1764470000123456789.0.rand0m",
		"$JS.ACK.dom.ACCHASH.IN.cons.1.5.5.1.7",
	} {
		want, err := (&nats.Msg{Reply: reply, Sub: &nats.Subscription{}}).Metadata()
		if err != nil {
			t.Fatalf("%s: nats.go: %v", reply, err)
		}
		seq, ts, pending, ok := ackMetadata(reply)
		if !ok || seq != want.Sequence.Stream || ts != want.Timestamp.UnixNano() || pending != want.NumPending {
			t.Errorf("%s: got seq %d ts %d pending %d ok %v, want %d %d %d", reply, seq, ts, pending, ok, want.Sequence.Stream, want.Timestamp.UnixNano(), want.NumPending)
		}
	}
	for _, reply := range []string{"", "_INBOX.x", "$JS.ACK.S.C.1.2.3.4", "$JS.ACK.d.h.S.C.1.2.3.4", "$JS.ACK.S.C.1.x.3.4.5", "$JS.ACK.S.C.1..3.4.5"} {
		if _, _, _, ok := ackMetadata(reply); ok {
			t.Errorf("%q: accepted", reply)
		}
	}
}

// TestEventQueueKeepsOrderAndBound: readers' events reach the taker in each
// reader's order, none lost, never more than max queued; a reader waiting
// for room gives up once done is closed.
func TestEventQueueKeepsOrderAndBound(t *testing.T) {
	const readers, per, max = 8, 5000, 64
	done := make(chan struct{})
	q := newEventQueue(max, done)
	var wg sync.WaitGroup
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				if !q.put(inputEvent{in: r, seq: uint64(i + 1)}) {
					t.Errorf("reader %d: put refused", r)
					return
				}
			}
		}()
	}
	next := make([]uint64, readers)
	var evs []inputEvent
	for got := 0; got < readers*per; {
		select {
		case <-q.ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled after %d events", got)
		}
		evs = q.take(evs)
		if len(evs) > max {
			t.Fatalf("%d events queued, max %d", len(evs), max)
		}
		for _, ev := range evs {
			if ev.seq != next[ev.in]+1 {
				t.Fatalf("reader %d: event %d after %d", ev.in, ev.seq, next[ev.in])
			}
			next[ev.in] = ev.seq
		}
		got += len(evs)
	}
	wg.Wait()
	for range max {
		q.put(inputEvent{})
	}
	stopped := make(chan bool)
	go func() { stopped <- q.put(inputEvent{}) }()
	close(done)
	select {
	case ok := <-stopped:
		if ok {
			t.Fatal("put into a full queue succeeded after done")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("put into a full queue did not return after done")
	}
}
