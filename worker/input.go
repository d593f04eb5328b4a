package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// input is one stream a task reads, and the stream sequence of the last
// event of it handed to the batch.
type input struct {
	subjects.InputStream
	position uint64
	pending  uint64    // messages left in the stream after the last event
	time     time.Time // the newest JetStream timestamp of its events read
	watch    inputWatch
}

// inputTime returns the input time of group g: the newest timestamp read
// from the one stream that holds g. Each stream's timestamps grow with its
// sequence, so every event of g stamped before it has been read; the
// streams of a task are read concurrently, so one stream's time says
// nothing of another's.
func (t *task) inputTime(g int) (time.Time, bool) {
	for _, in := range t.inputs {
		if in.Groups.Contains(g) {
			return in.time, true
		}
	}
	return time.Time{}, false
}

// inputs returns the streams the task reads: the partition streams of its
// groups, or the job's one stream.
func (t *task) openInputs() {
	t.inputs, t.lag = t.inputs[:0], 0
	for _, s := range subjects.InputStreams(&t.spec, t.rng) {
		t.inputs = append(t.inputs, &input{InputStream: s})
	}
	if t.spec.Partitions() == 0 {
		t.log.Warn("job input is not partitioned", "note", subjects.UnpartitionedNote(&t.spec))
	}
}

// startSeq returns the sequence of stream in to consume from: the lowest
// applied mark of the task's groups stored in it plus one, or 0 if one of
// them has none (consume everything).
func (t *task) startSeq(in *input) uint64 {
	r, _ := in.Groups.Intersect(t.rng)
	start := uint64(0)
	for g := r.Start; g <= r.End; g++ {
		a := t.be.Applied(g)
		if a == 0 {
			return 0
		}
		if start == 0 || a+1 < start {
			start = a + 1
		}
	}
	return start
}

// checkEvicted compares the applied marks of the task's groups in stream in
// with the stream's first sequence: a restored group whose next event is
// below it lost events to the stream's limits.
func (t *task) checkEvicted(ctx context.Context, js jetstream.JetStream, in *input) (*subjects.InputGap, error) {
	s, err := js.Stream(ctx, in.Name)
	if err != nil {
		return nil, err
	}
	first := s.CachedInfo().State.FirstSeq
	r, _ := in.Groups.Intersect(t.rng)
	if len(t.restore) == 0 {
		if first > 1 {
			t.log.Info("starting a fresh task on a stream whose first events are gone", "stream", in.Name, "first_seq", first)
		}
		return nil, nil
	}
	var gap *subjects.InputGap
	for g := r.Start; g <= r.End; g++ {
		next := t.be.Applied(g) + 1
		if next >= first {
			continue
		}
		if gap == nil {
			gap = &subjects.InputGap{Stream: in.Name, Groups: keygroup.Range{Start: g, End: g}, First: next, Last: first - 1}
		}
		gap.Groups.Start, gap.Groups.End = min(gap.Groups.Start, g), max(gap.Groups.End, g)
		gap.First = min(gap.First, next)
	}
	return gap, nil
}

// consume starts an ordered consumer of each input stream, unfiltered, and
// a reader goroutine per stream that decodes its messages and hands them to
// the task goroutine in stream order.
//
// The ordered consumer is what keeps each input gapless: it checks every
// delivery's consumer sequence and, on a gap, a missed heartbeat or a
// reconnect, recreates itself from the stream sequence after the last
// message it handed over. Messages handed over are in the task's memory
// (the event queue, then the batch), so nothing is skipped; and whatever is
// delivered twice (after a restore) is skipped by the applied marks. Events
// the stream evicted before they were read arrive as a gap record.
func (t *task) consume() (*eventQueue, <-chan error, func(), error) {
	js, err := jetstream.New(t.w.nc)
	if err != nil {
		return nil, nil, nil, subjects.Errorf(subjects.CodeInternal, "jetstream: %v", err)
	}
	t.openInputs()
	errc := make(chan error, len(t.inputs)+1)
	rctx, rcancel := context.WithCancel(t.ctx)
	q := newEventQueue(t.w.cfg.BatchSize, rctx.Done())
	var readers sync.WaitGroup
	var stops []func()
	// stopAll stops the consumers and waits for the readers, for at most
	// InputStopTimeout: a consumer's Stop and a reader's Next may block for
	// as long as NATS does not answer (the ordered consumer holds its lock
	// while it retries recreating itself), and a task must stop whatever
	// NATS does. What is still stuck then is abandoned: a reader sends
	// nothing after rctx is done, so it only holds memory until NATS
	// answers or the process exits.
	stopAll := func() {
		rcancel()
		stopped := make(chan struct{})
		go func() {
			for _, s := range stops {
				s()
			}
			readers.Wait()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(t.w.cfg.InputStopTimeout):
			t.log.Error("input consumers did not stop in time (NATS unreachable or stalled); abandoning them",
				"inputs", t.inputNames(), "waited", t.w.cfg.InputStopTimeout)
		}
	}
	cctx, cancel := context.WithTimeout(t.ctx, 30*time.Second)
	defer cancel()
	for i, in := range t.inputs {
		it, stop, err := t.openInput(cctx, js, in)
		if err != nil {
			stopAll()
			return nil, nil, nil, err
		}
		stops = append(stops, stop)
		gap, err := t.checkEvicted(cctx, js, in)
		if err != nil {
			stopAll()
			return nil, nil, nil, subjects.Errorf(subjects.CodeStorageUnavailable, "input stream %q: %v", in.Name, err)
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			t.read(rctx, js, i, in, it, gap, q, errc)
		}()
	}
	readers.Add(1)
	go func() {
		defer readers.Done()
		t.watchInputs(rctx, js, errc)
	}()
	return q, errc, stopAll, nil
}

// openInput starts the ordered consumer of one input stream.
func (t *task) openInput(ctx context.Context, js jetstream.JetStream, in *input) (jetstream.MessagesContext, func(), error) {
	cfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		NamePrefix:    fmt.Sprintf("flotilla_%s_%d_%d_%d", t.ref.Job, t.ref.Task, t.ref.Attempt, in.Part),
	}
	if seq := t.startSeq(in); seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq
		in.watch.read.Store(seq - 1)
	}
	var cons jetstream.Consumer
	var it jetstream.MessagesContext
	var err error
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		cons, err = js.OrderedConsumer(ctx, in.Name, cfg)
		if err == nil {
			it, err = cons.Messages(t.pullOpts()...)
		}
		if err == nil || errors.Is(err, jetstream.ErrStreamNotFound) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
			continue
		}
		break
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, nil, subjects.Errorf(subjects.CodeUnknownJob, "input stream %q of job %s does not exist", in.Name, t.ref.Job)
		}
		if cause := context.Cause(t.ctx); cause != nil {
			return nil, nil, cause
		}
		return nil, nil, subjects.Errorf(subjects.CodeStorageUnavailable, "consume stream %q: %v", in.Name, err)
	}
	stop := func() {
		it.Stop()
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = js.DeleteConsumer(dctx, in.Name, info.Name)
			cancel()
		}
	}
	return it, stop, nil
}

// Input pulls. Each input stream's consumer keeps up to pullMessages
// messages requested from the server (asking for more when half are read),
// but no more than its share of taskPullBytes. Pulls of 1,024 messages kept
// a one-task job reading 32 partition streams stalling between pulls: it
// read at 0.7 of a raw read of one stream, at 1.6 us of worker CPU per
// event; with 8,192 at 1.0, at 1.3 us (BenchmarkCountJobVsRawRead).
const (
	pullMessages  = 8192
	taskPullBytes = 64 << 20
)

// pullOpts are the options of each input's pull: pullMessages messages
// kept requested, bounded in bytes (pullBytes), and, with
// Config.InputHeartbeat, how long the server may stay silent before the
// consumer counts as gone and is recreated.
func (t *task) pullOpts() []jetstream.PullMessagesOpt {
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessagesWithBytesLimit(t.pullMessages(), t.pullBytes())}
	if hb := t.w.cfg.InputHeartbeat; hb > 0 {
		opts = append(opts, jetstream.PullHeartbeat(hb), jetstream.PullExpiry(max(4*hb, time.Second)))
	}
	return opts
}

// pullMessages is the number of messages each input consumer keeps
// requested.
func (t *task) pullMessages() int { return max(pullMessages, 2*t.w.cfg.BatchSize) }

// pullBytes bounds the bytes each input consumer keeps requested: the
// task's share over its streams, and never below twice the largest message
// the server accepts, since a pull whose byte limit is below the next
// message's size would never deliver it.
func (t *task) pullBytes() int {
	return max(taskPullBytes/max(len(t.inputs), 1), 2*int(t.w.nc.MaxPayload()))
}

// read decodes the messages of input i and hands them over until the task
// stops. A jump in stream sequences past the stream's first sequence means
// events were evicted before they were read: it hands over a gap.
func (t *task) read(ctx context.Context, js jetstream.JetStream, i int, in *input, it jetstream.MessagesContext,
	gap *subjects.InputGap, q *eventQueue, errc chan<- error) {
	if gap != nil && !q.put(inputEvent{in: i, gap: gap, group: -1}) {
		return
	}
	var last uint64
	tok, m := t.spec.Source.Key.SubjectToken, t.m
	for {
		in.watch.waiting()
		msg, err := it.Next()
		if err != nil {
			in.watch.got(0)
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				errc <- err
			}
			return
		}
		seq, ts, pending, ok := ackMetadata(msg.Reply())
		in.watch.got(seq)
		if !ok {
			errc <- fmt.Errorf("input message without JetStream metadata (reply subject %q)", msg.Reply())
			return
		}
		if last > 0 && seq > last+1 {
			if g := t.evictedBetween(ctx, js, in, last, seq); g != nil && !q.put(inputEvent{in: i, gap: g, group: -1}) {
				return
			}
		}
		last = seq
		ev := inputEvent{in: i, data: msg.Data(), time: time.Unix(0, ts), seq: seq, pending: pending}
		ev.group, ev.key, ev.subject, ev.err = subjects.ParseInputSubject(msg.Subject(), tok, m)
		if ev.err != nil {
			ev.group, ev.subject, ev.what = -1, msg.Subject(), "event with a malformed subject"
		}
		if !q.put(ev) {
			return
		}
	}
}

// ackMetadata returns the stream sequence, timestamp (Unix nanoseconds) and
// pending count of a JetStream delivery from its reply subject, without
// allocating: "$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>"
// (9 tokens), or, from newer servers, with "<domain>.<account hash>" after
// "$JS.ACK" and possibly a last random token (11 or more tokens). It is the
// reading of nats.go's Msg.Metadata, which the input path would otherwise
// parse a second time (the ordered consumer parses it once) into an
// allocated record.
func ackMetadata(reply string) (seq uint64, ts int64, pending uint64, ok bool) {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	if !ok {
		return 0, 0, 0, false
	}
	// The tokens after the prefix: 7 in the old format, 9 or more in the
	// new one, whose first two are the domain and the account hash.
	var toks [9]string
	n := 0
	for n < len(toks) {
		tok, next, more := strings.Cut(rest, ".")
		toks[n], rest = tok, next
		n++
		if !more {
			break
		}
	}
	var base int
	switch {
	case n == 7:
		base = 0
	case n == 9:
		base = 2
	default:
		return 0, 0, 0, false
	}
	seq, okS := parseDigits(toks[base+3])
	t, okT := parseDigits(toks[base+5])
	pending, okP := parseDigits(toks[base+6])
	return seq, int64(t), pending, okS && okT && okP
}

// parseDigits parses a non-empty decimal number.
func parseDigits(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// eventQueue hands decoded input events from the readers (one goroutine per
// input stream) to the task goroutine, in each stream's order. A reader
// appends one event at a time; the task takes everything queued at once.
// That costs a reader one uncontended lock per event where a channel send
// cost a select over two channels, and the task one lock per round instead
// of one receive per event.
type eventQueue struct {
	mu  sync.Mutex
	buf []inputEvent
	max int
	// ready holds a token while events are queued; space holds one when a
	// reader waiting for room may append again. Each is buffered (1).
	ready chan struct{}
	space chan struct{}
	done  <-chan struct{}
}

func newEventQueue(max int, done <-chan struct{}) *eventQueue {
	return &eventQueue{buf: make([]inputEvent, 0, max), max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1), done: done}
}

// put queues ev, waiting while max events are queued. It returns false,
// queuing nothing, once done is closed.
func (q *eventQueue) put(ev inputEvent) bool {
	q.mu.Lock()
	for len(q.buf) >= q.max {
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-q.done:
			return false
		}
		q.mu.Lock()
	}
	q.buf = append(q.buf, ev)
	room := len(q.buf) < q.max
	q.mu.Unlock()
	if room {
		// Another reader may be waiting for the room this one was given.
		select {
		case q.space <- struct{}{}:
		default:
		}
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// take returns the queued events, oldest first, and queues into spare (the
// slice an earlier take returned, whose events the caller is done with).
// Only the task goroutine may call it, after a token from ready.
func (q *eventQueue) take(spare []inputEvent) []inputEvent {
	clear(spare)
	q.mu.Lock()
	evs := q.buf
	q.buf = spare[:0]
	q.mu.Unlock()
	select {
	case q.space <- struct{}{}:
	default:
	}
	return evs
}

// evictedBetween returns the gap between two delivered sequences of an
// unfiltered read that the stream's limits evicted, or nil when the
// messages in between were deleted otherwise (or the stream cannot say).
func (t *task) evictedBetween(ctx context.Context, js jetstream.JetStream, in *input, last, seq uint64) *subjects.InputGap {
	s, err := js.Stream(ctx, in.Name)
	if err != nil {
		t.log.Warn("input sequence jump: cannot read the stream's first sequence", "stream", in.Name, "after", last, "next", seq, "err", err)
		return nil
	}
	first := s.CachedInfo().State.FirstSeq
	if first <= last+1 {
		return nil
	}
	r, _ := in.Groups.Intersect(t.rng)
	return &subjects.InputGap{Stream: in.Name, Groups: r, First: last + 1, Last: min(seq, first) - 1}
}

// onGap handles events evicted before they were applied: the task fails
// with data_loss, or, with source.on_gap continue, records the gap and goes
// on.
func (t *task) onGap(g subjects.InputGap) error {
	g.Time = time.Now().UTC()
	what := fmt.Sprintf("job %s: events of key groups %s in input stream %s, sequences %d-%d, were evicted by the stream's limits before they were applied",
		t.ref.Job, g.Groups, g.Stream, g.First, g.Last)
	if t.spec.Source.OnGap != subjects.OnGapContinue {
		return subjects.Errorf(subjects.CodeDataLoss, "%s; the job fails rather than skip them (source.on_gap %q: resubmit with on_gap \"continue\" to go on past them, or raise the stream's max_msgs/max_age)",
			what, t.spec.Source.OnGap)
	}
	t.log.Error("input gap: continuing past lost events (source.on_gap continue)", "gap", g.String(), "note", what)
	t.w.reportGap(t, g)
	return nil
}

// inputNames lists the task's input streams for logs.
func (t *task) inputNames() string {
	names := make([]string, len(t.inputs))
	for i, in := range t.inputs {
		names[i] = in.Name
	}
	return strings.Join(names, ",")
}
