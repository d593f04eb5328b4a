package worker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// testJob is a job's streams and ground truth: its input streams created the
// way the coordinator does (subjects.InputStreamConfigs, with the account
// mapping for a partitioned layout), a sink stream with a duplicate window,
// and what the test published.
type testJob struct {
	spec subjects.JobSpec
	nc   *nats.Conn
	js   jetstream.JetStream
	ns   subjects.Namespace

	mu     sync.Mutex
	counts map[string]int    // published events per key
	seqs   map[seqKey]string // stream and sequence -> key
	next   int
}

const testM = 8

type seqKey struct {
	stream string
	seq    uint64
}

func newTestJob(t testing.TB, s *server.Server, name string, parallelism int) *testJob {
	t.Helper()
	return newTestJobIn(t, s, name, parallelism, subjects.LayoutPartitioned)
}

// newTestJobIn is newTestJob with the given input layout.
func newTestJobIn(t testing.TB, s *server.Server, name string, parallelism int, layout string, adjust ...func(*subjects.JobSpec)) *testJob {
	t.Helper()
	spec := subjects.JobSpec{
		Name: name, Parallelism: parallelism, MaxParallelism: testM,
		Source:   subjects.SourceSpec{Stream: strings.ToUpper(name) + "_IN", Subjects: []string{name + ".in.*"}, Key: subjects.KeySpec{SubjectToken: 3}},
		Operator: subjects.OperatorSpec{Type: "count"},
		Sink:     subjects.SinkSpec{Subject: name + ".out"},
	}.WithDefaults()
	spec.Source.Layout = layout
	for _, f := range adjust {
		f(&spec)
	}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	nc := testutil.Connect(t, s, reconnectFast...)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	j := &testJob{spec: spec, nc: nc, js: js, counts: map[string]int{}, seqs: map[seqKey]string{}}
	if layout == subjects.LayoutPartitioned {
		j.mapInput(t, s)
	}
	for _, c := range subjects.InputStreamConfigs(&spec) {
		if _, err := js.CreateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: strings.ToUpper(name) + "_OUT", Subjects: []string{spec.Sink.Subject}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	return j
}

// lastSeqs returns the last sequence of each of the job's input streams.
func (j *testJob) lastSeqs(t testing.TB) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, c := range subjects.InputStreamConfigs(&j.spec) {
		st, err := j.js.Stream(context.Background(), c.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[c.Name] = st.CachedInfo().State.LastSeq
	}
	return out
}

// mapInput adds the job's input mapping to s (again, after a restart).
func (j *testJob) mapInput(t testing.TB, s *server.Server) {
	t.Helper()
	src, dest, err := subjects.InputMapping(&j.spec)
	if err == nil {
		err = s.GlobalAccount().AddMapping(src, dest)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (j *testJob) rangeOf(task int) keygroup.Range {
	return subjects.TaskRange(&j.spec, task, j.spec.Parallelism)
}

// deploy allocates a slot of w and deploys attempt of task into it.
func (j *testJob) deploy(c *testCoord, w *Worker, task int, attempt uint64, restore []statebackend.Handle) subjects.TaskRef {
	c.t.Helper()
	testutil.CheckFor(c.t, waitLong, 10*time.Millisecond, func() error {
		if w.Instance() == "" {
			return fmt.Errorf("worker %s is not registered", w.Name())
		}
		return nil
	})
	alloc := fmt.Sprintf("%s-t%d-a%d", j.spec.Name, task, attempt)
	if _, err := c.allocate(w.Name(), j.spec.Name, alloc); err != nil {
		c.t.Fatal(err)
	}
	ref := subjects.TaskRef{Job: j.spec.Name, Task: task, Attempt: attempt}
	err := c.deploy(subjects.DeployTask{Epoch: c.curEpoch(), Worker: w.Name(), Allocation: alloc, TaskRef: ref,
		Parallelism: j.spec.Parallelism, Range: j.rangeOf(task), Spec: j.spec, Restore: restore})
	if err != nil {
		c.t.Fatal(err)
	}
	return ref
}

// publish publishes n events spread over 20 keys.
func (j *testJob) publish(t testing.TB, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		j.mu.Lock()
		key := "user-" + strconv.Itoa(j.next*7%20)
		j.next++
		j.mu.Unlock()
		ack, err := j.js.Publish(ctx, strings.Replace(j.spec.Source.Subjects[0], "*", key, 1), []byte(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		j.mu.Lock()
		j.counts[key]++
		j.seqs[seqKey{ack.Stream, ack.Sequence}] = key
		j.mu.Unlock()
	}
}

func (j *testJob) query(t testing.TB, key string) subjects.StateResult {
	t.Helper()
	g := keygroup.Of([]byte(key), j.spec.MaxParallelism)
	var res subjects.StateResult
	m, err := j.nc.Request(j.ns.StateQuery(j.spec.Name, g), subjects.MustEncode(&subjects.StateQuery{Job: j.spec.Name, Key: key}), 5*time.Second)
	if err != nil {
		res.Error = subjects.Errorf(subjects.CodeTimeout, "%v", err)
		return res
	}
	if err := subjects.Decode(m.Data, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// ownedBy reports whether key's group is in r.
func (j *testJob) ownedBy(key string, r keygroup.Range) bool {
	return r.Contains(keygroup.Of([]byte(key), j.spec.MaxParallelism))
}

// checkCounts checks that every key of r was counted exactly as published.
func (j *testJob) checkCounts(t testing.TB, r keygroup.Range) error {
	j.mu.Lock()
	want := map[string]int{}
	for k, n := range j.counts {
		if j.ownedBy(k, r) {
			want[k] = n
		}
	}
	j.mu.Unlock()
	for k, n := range want {
		res := j.query(t, k)
		if res.Error != nil {
			return fmt.Errorf("key %s: %v", k, res.Error)
		}
		if !res.Found || string(res.Value) != strconv.Itoa(n) {
			return fmt.Errorf("key %s: count %s (found %v), want %d", k, res.Value, res.Found, n)
		}
	}
	return nil
}

// waitCount waits until every published event is counted (all groups).
func (j *testJob) waitCount(t testing.TB, total int) {
	t.Helper()
	all := keygroup.Range{Start: 0, End: j.spec.MaxParallelism - 1}
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		j.mu.Lock()
		n := 0
		for _, c := range j.counts {
			n += c
		}
		j.mu.Unlock()
		if n != total {
			t.Fatalf("published %d events, expected %d", n, total)
		}
		return j.checkCounts(t, all)
	})
}

// outputs returns every message of the sink stream: Msg-Id -> body.
func (j *testJob) outputs(t testing.TB) map[string]string {
	t.Helper()
	ctx := context.Background()
	cons, err := j.js.OrderedConsumer(ctx, strings.ToUpper(j.spec.Name)+"_OUT", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := j.js.Stream(ctx, strings.ToUpper(j.spec.Name)+"_OUT")
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.CachedInfo().State.Msgs)
	out := map[string]string{}
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			id := m.Headers().Get(nats.MsgIdHdr)
			if _, dup := out[id]; dup {
				t.Errorf("sink stream holds Msg-Id %s twice", id)
			}
			out[id] = string(m.Data())
			got++
		}
		if got == 0 {
			t.Fatalf("sink stream: read %d of %d messages", len(out), n)
		}
	}
	return out
}

// wantOutputs returns the Msg-Ids the count operator must have published for
// the events of groups r: one per event, "<job>.<group>.<seq>".
func (j *testJob) wantOutputs(r keygroup.Range) map[string]string {
	j.mu.Lock()
	defer j.mu.Unlock()
	want := map[string]string{}
	for sk, key := range j.seqs {
		g := keygroup.Of([]byte(key), j.spec.MaxParallelism)
		if r.Contains(g) {
			want[subjects.OutputMsgID(j.spec.Name, g, sk.seq, 0)] = key
		}
	}
	return want
}

// checkOutputs checks that the sink holds exactly one output per event of
// groups r, with the right Msg-Id, and that the last output of each key
// carries its final count.
func (j *testJob) checkOutputs(t testing.TB, r keygroup.Range) {
	t.Helper()
	want := j.wantOutputs(r)
	var got map[string]string
	testutil.CheckFor(t, waitLong, 20*time.Millisecond, func() error {
		got = j.outputs(t)
		if len(got) != len(want) {
			return fmt.Errorf("sink holds %d outputs, want %d", len(got), len(want))
		}
		return nil
	})
	final := map[string]int{}
	for id, body := range got {
		key, ok := want[id]
		if !ok {
			t.Fatalf("unexpected output Msg-Id %q: %s", id, body)
		}
		var n int
		if _, err := fmt.Sscanf(body, `{"key":"`+key+`","value":%d}`, &n); err != nil {
			t.Fatalf("output %s: %q: %v", id, body, err)
		}
		final[key] = max(final[key], n)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for k, n := range j.counts {
		if j.ownedBy(k, r) && final[k] != n {
			t.Errorf("key %s: highest output count %d, want %d", k, final[k], n)
		}
	}
}

// consumerOf returns the configuration of the input consumer of attempt ref.
func (j *testJob) consumerOf(t testing.TB, ref subjects.TaskRef, stream string) jetstream.ConsumerConfig {
	t.Helper()
	st, err := j.js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("flotilla_%s_%d_%d_", ref.Job, ref.Task, ref.Attempt)
	l := st.ListConsumers(context.Background())
	for ci := range l.Info() {
		if strings.HasPrefix(ci.Name, prefix) {
			return ci.Config
		}
	}
	t.Fatalf("no consumer named %s*: %v", prefix, l.Err())
	return jetstream.ConsumerConfig{}
}
