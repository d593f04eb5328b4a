package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// partitionerEnv set: this process is the partitioner stage.
const partitionerEnv = "FLOTILLA_BENCH_PARTITIONER"

// BenchmarkPartitionerVsMapping measures the alternative to the
// publish-time subject mapping that issue 10 considered: a partitioner
// stage, a separate process that reads the plain input stream and
// republishes every event into the partition streams (async publishes
// with a Nats-Msg-Id each, so that a restarted partitioner would not store
// an event twice). Per round, in one run:
//
//   - ingest of the backlog into one plain stream, into the partition
//     streams through the mapping (what the mapping costs a producer), and
//     into the partition streams by a producer that computes each event's
//     group (what the 32 streams cost, without the mapping);
//   - a raw read of the plain stream (the raw reader process);
//   - the partitioner process moving the plain stream into the partition
//     streams, timed from its consumer's creation to the last publish ack.
//
// The partitioner's events/s is the ceiling of a job fed by it: it is
// reported with its ratio to the raw read and its CPU time per event.
func BenchmarkPartitionerVsMapping(b *testing.B) {
	e := newEnv(b)
	n := events()
	ctx := context.Background()
	// The mapped input and its partition streams (MAPPED.* -> $FK.<g>.MAPPED.*).
	mapped := spec("mapped", "MAPPED", 1, 0)
	mappedStreams := e.input(mapped)
	// The plain stream, and the partition streams the partitioner fills
	// ($FK.<g>.PLAIN.*): no mapping for PLAIN.*.
	plain := spec("plain", "PLAIN", 1, 0).WithDefaults()
	plain.Source.Layout = subjects.LayoutPartitioned
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "PLAIN", Subjects: []string{"PLAIN.*"}}); err != nil {
		b.Fatal(err)
	}
	partStreams := e.partitionStreams(plain, "PART")
	// Partition streams a producer fills itself, computing each event's
	// group ($FK.<g>.DIRECT.*): the 32 streams without the mapping.
	direct := spec("direct", "DIRECT", 1, 0).WithDefaults()
	direct.Source.Layout = subjects.LayoutPartitioned
	directStreams := e.partitionStreams(direct, "")
	purge := func(names ...string) {
		for _, s := range names {
			st, err := e.js.Stream(ctx, s)
			if err == nil {
				err = st.Purge(ctx)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	timed := func(f func()) float64 {
		start := time.Now()
		f()
		return float64(n) / time.Since(start).Seconds()
	}
	var ingPlain, ingMapped, ingDirect, raw, part, partCPU series
	for round := range rounds() {
		purge(append(append(append([]string{"PLAIN"}, mappedStreams...), partStreams...), directStreams...)...)
		ingPlain.add(timed(func() { e.publish("PLAIN", n, benchKeys) }))
		ingMapped.add(timed(func() { e.publish("MAPPED", n, benchKeys) }))
		ingDirect.add(timed(func() {
			e.publishTo(n, func(i int) string {
				key := "k" + strconv.Itoa(i%benchKeys)
				return subjects.KeyedPrefix + "." + strconv.Itoa(keygroup.Of([]byte(key), direct.MaxParallelism)) + ".DIRECT." + key
			})
		}))
		rate, _ := e.rawRead([]string{"PLAIN"})
		raw.add(rate)
		rate, cpu := e.partition("PLAIN", round, plain.MaxParallelism)
		part.add(rate)
		partCPU.add(cpu)
		var stored uint64
		for _, s := range partStreams {
			st, err := e.js.Stream(ctx, s)
			if err != nil {
				b.Fatal(err)
			}
			stored += st.CachedInfo().State.Msgs
		}
		if stored != uint64(n) {
			b.Fatalf("round %d: the partitioner stored %d events, want %d", round, stored, n)
		}
		b.Logf("round %d: ingest plain %.0f events/s, mapped %.0f, partitioned by the producer %.0f; raw read %.0f; partitioner %.0f (%.2f of the raw read)",
			round, ingPlain.xs[round], ingMapped.xs[round], ingDirect.xs[round], raw.xs[round], rate, rate/raw.xs[round])
	}
	b.ReportMetric(part.median(), "partitioner-events/s")
	b.ReportMetric(part.median()/raw.median(), "partitioner/raw")
	b.ReportMetric(ingMapped.median()/ingPlain.median(), "mapped/plain-ingest")
	b.Logf("%d events over %d keys, %d partitions", n, benchKeys, len(partStreams))
	b.Logf("ingest into one plain stream: %s events/s", &ingPlain)
	b.Logf("ingest through the mapping into the partition streams: %s events/s (%.2f of plain)", &ingMapped, ingMapped.median()/ingPlain.median())
	b.Logf("ingest into the partition streams, the producer computing each event's group: %s events/s (%.2f of plain)", &ingDirect, ingDirect.median()/ingPlain.median())
	b.Logf("raw read of the plain stream: %s events/s", &raw)
	b.Logf("partitioner stage, plain stream -> partition streams: %s events/s (%.2f of the raw read), CPU median %.2f us/event",
		&part, part.median()/raw.median(), partCPU.median())
}

// partitionStreams creates the partition streams of spec's input, their
// names prefixed with prefix, and returns their names.
func (e *env) partitionStreams(s subjects.JobSpec, prefix string) []string {
	var names []string
	for _, c := range subjects.InputStreamConfigs(&s) {
		c.Name = prefix + c.Name
		if _, err := e.js.CreateStream(context.Background(), c); err != nil {
			e.b.Fatal(err)
		}
		names = append(names, c.Name)
	}
	return names
}

// partition runs the partitioner process over stream and returns the
// events/s it measured and its CPU time per event (microseconds).
func (e *env) partition(stream string, round, m int) (rate, cpu float64) {
	return e.helperProcess("partitioner", partitionerEnv+"=1", "RAW_STREAMS="+stream, "PART_ROUND="+strconv.Itoa(round), "PART_M="+strconv.Itoa(m))
}

// partitionerMain reads every message of the stream RAW_STREAMS (a pull
// consumer, ack none, Messages with PullMaxMessages 10,000) and publishes
// it to $FK.<group>.<subject>, the group that of the subject's second
// token, asynchronously with at most 4,096 publishes unacknowledged, each
// with a Nats-Msg-Id naming the round and the source sequence. It prints
// its rate, timed from the consumer's creation to the last publish ack.
func partitionerMain() int {
	fail := func(err error) int { fmt.Println(err); return 1 }
	nc, err := nats.Connect(os.Getenv("RAW_URL"))
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return fail(err)
	}
	m, _ := strconv.Atoi(os.Getenv("PART_M"))
	round := os.Getenv("PART_ROUND")
	ctx := context.Background()
	st, err := js.Stream(ctx, os.Getenv("RAW_STREAMS"))
	if err != nil {
		return fail(err)
	}
	total := st.CachedInfo().State.Msgs
	start, cpu0 := time.Now(), selfCPU()
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: time.Minute})
	if err != nil {
		return fail(err)
	}
	it, err := c.Messages(jetstream.PullMaxMessages(10000))
	if err != nil {
		return fail(err)
	}
	defer it.Stop()
	for range total {
		msg, err := it.Next()
		if err != nil {
			return fail(err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fail(err)
		}
		key, err := subjects.KeyToken(msg.Subject(), 2)
		if err != nil {
			return fail(err)
		}
		out := &nats.Msg{
			Subject: subjects.KeyedPrefix + "." + strconv.Itoa(keygroup.Of([]byte(key), m)) + "." + msg.Subject(),
			Data:    msg.Data(),
			Header:  nats.Header{nats.MsgIdHdr: {round + "." + strconv.FormatUint(meta.Sequence.Stream, 10)}},
		}
		if _, err := js.PublishMsgAsync(out); err != nil {
			return fail(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return fail(fmt.Errorf("%d publishes unacknowledged after a minute", js.PublishAsyncPending()))
	}
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	fmt.Printf("raw-events/s %f cpu-us/event %f\n", float64(total)/elapsed.Seconds(), float64(cpu.Nanoseconds())/1000/float64(total))
	return 0
}
