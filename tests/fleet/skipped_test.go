package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// Events a sum job cannot use (not JSON, no field, an int64 overflow) are
// counted per task, the count reaches `job status` through the workers'
// heartbeats, and each is published to the spec's dead-letter subject with
// its body, the reason and its source sequence, under a deterministic id.
func TestSkippedEventsAreCountedAndDeadLettered(t *testing.T) {
	f := newFleet(t)
	f.startWorker("w1", 2)
	f.startCoordinator()
	f.waitWorkers(1)
	ctx := context.Background()
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DEAD", Subjects: []string{"dead.sums"}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	spec := subjects.JobSpec{Name: "sums", Parallelism: 2,
		Source:   subjects.SourceSpec{Stream: "ORDERS", Subjects: []string{"orders.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "sum", Field: "n"},
		Sink:     subjects.SinkSpec{Subject: "sums.out", DeadLetter: "dead.sums"}}
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	bodies := []string{`{"n":9007199254740993}`, `not json`, `{"n":1}`, `{"m":1}`, `{"n":9223372036854775807}`, `{"n":"x"}`}
	type at struct {
		stream string
		seq    uint64
	}
	bad := map[at]string{} // input stream and sequence -> body
	for i := range 60 {
		body := bodies[i%len(bodies)]
		ack, err := js.Publish(ctx, "orders.k"+strconv.Itoa(i%2), []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if i%len(bodies) != 0 && i%len(bodies) != 2 {
			bad[at{ack.Stream, ack.Sequence}] = body
		}
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "sums")
		if err != nil {
			return err
		}
		var n uint64
		for _, task := range info.Tasks {
			n += task.Skipped
		}
		if n != uint64(len(bad)) {
			return fmt.Errorf("job status shows %d skipped events, want %d", n, len(bad))
		}
		return nil
	})
	// k0 sums 10 x (9007199254740993 + 1) exactly; its int64 max events
	// overflow and are skipped. k1 gets only events sum cannot use.
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		res, err := f.api.State(ctx, "sums", "k0")
		if err == nil && string(res.Value) != "90071992547409940" {
			err = fmt.Errorf("sum of k0 is %s, want 90071992547409940", res.Value)
		}
		return err
	})
	var ids []string
	cons, err := js.OrderedConsumer(ctx, "DEAD", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[at]bool{}
	for len(seen) < len(bad) {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("%d of %d dead letters: %v", len(seen), len(bad), err)
		}
		h := m.Headers()
		n, err := strconv.ParseUint(h.Get(subjects.HdrSourceSeq), 10, 64)
		if err != nil {
			t.Fatalf("dead letter without a source sequence: %v", h)
		}
		seq := at{h.Get(subjects.HdrSourceStream), n}
		body, ok := bad[seq]
		switch {
		case !ok:
			t.Errorf("dead letter of good event %v (%s)", seq, m.Data())
		case string(m.Data()) != body:
			t.Errorf("dead letter of %v carries %q, want %q", seq, m.Data(), body)
		case h.Get(subjects.HdrDeadLetterReason) == "", !strings.HasPrefix(h.Get(subjects.HdrSourceSubject), "orders.k"), h.Get(subjects.HdrJob) != "sums":
			t.Errorf("dead letter headers %v", h)
		case body == `{"n":9223372036854775807}` && !strings.Contains(h.Get(subjects.HdrDeadLetterReason), "overflow"):
			t.Errorf("overflow reason %q", h.Get(subjects.HdrDeadLetterReason))
		}
		if seen[seq] {
			t.Errorf("dead letter of %v twice", seq)
		}
		seen[seq] = true
		ids = append(ids, h.Get(nats.MsgIdHdr))
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "sums.") || !strings.HasSuffix(id, ".dead") {
			t.Errorf("dead letter id %q", id)
		}
	}
}
