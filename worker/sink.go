package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/subjects"
)

// sink publishes a task's outputs (to the job's sink subject) and dead
// letters (to its dead-letter subject), each with its deterministic
// Nats-Msg-Id.
//
// To a subject a JetStream stream captures, messages are published
// asynchronously with at most max unconfirmed. A message JetStream does not
// confirm is published again (same Msg-Id) until it is, for a while; then,
// or at once if the stream refuses it, the task fails (and restarts from its
// last checkpoint, publishing the outputs of the replayed events again; the
// stream's duplicate window drops the ones it has). To a subject without a
// stream, messages are plain NATS messages: at most once, since nothing
// confirms them.
//
// publish and published are called by the task goroutine only; waitConfirmed
// and err from any goroutine.
type sink struct {
	nc      *nats.Conn
	js      jetstream.JetStream // nil: no subject is captured by a stream
	stored  map[string]bool     // subject -> captured by a stream
	sem     chan struct{}       // one token per unconfirmed message
	futures chan jetstream.PubAckFuture
	quit    chan struct{} // closed by close: stop retrying

	count uint64 // messages handed to JetStream (task goroutine)
	plain bool   // some subject is plain NATS: waitConfirmed flushes

	mu        sync.Mutex
	confirmed uint64
	waiters   []sinkWaiter
	failure   error
	failed    chan struct{} // closed on the first failure
}

type sinkWaiter struct {
	n  uint64
	ch chan struct{}
}

// publishAckTimeout bounds how long JetStream may take to confirm an output
// before it is published again; sinkRetryFor bounds the retries, after which
// the task fails.
const (
	publishAckTimeout = 5 * time.Second
	sinkRetryFor      = 2 * time.Minute
)

// newSink prepares publishing to the given subjects; empty ones are
// skipped, and a message to a subject not prepared is dropped.
func newSink(ctx context.Context, nc *nats.Conn, subs []string, max int, log *slog.Logger) (*sink, error) {
	s := &sink{nc: nc, stored: map[string]bool{}, failed: make(chan struct{}), quit: make(chan struct{})}
	var js jetstream.JetStream
	for _, subject := range subs {
		if subject == "" {
			continue
		}
		if js == nil {
			var err error
			js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(max+1), jetstream.WithPublishAsyncTimeout(publishAckTimeout))
			if err != nil {
				return nil, err
			}
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		stream, err := js.StreamNameBySubject(lctx, subject)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			log.Warn("no JetStream stream captures this subject: messages to it are plain NATS messages, published at most once", "subject", subject)
			s.stored[subject] = false
			s.plain = true
			continue
		case err != nil:
			return nil, subjects.Errorf(subjects.CodeStorageUnavailable, "sink %s: looking up its stream: %v", subject, err)
		}
		log.Debug("sink stream", "subject", subject, "stream", stream)
		s.stored[subject] = true
		s.js = js
	}
	if s.js != nil {
		s.sem = make(chan struct{}, max)
		s.futures = make(chan jetstream.PubAckFuture, max)
		go s.drain()
	}
	return s, nil
}

// publish publishes m (which must carry its Nats-Msg-Id), blocking while max
// messages are unconfirmed. The sink keeps m.
func (s *sink) publish(ctx context.Context, m *nats.Msg) error {
	stored, ok := s.stored[m.Subject]
	if !ok {
		return nil
	}
	if !stored {
		if err := s.nc.PublishMsg(m); err != nil {
			return subjects.Errorf(subjects.CodeStorageUnavailable, "sink %s: %v", m.Subject, err)
		}
		return nil
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-s.failed:
		return s.err()
	}
	f, err := s.js.PublishMsgAsync(m)
	if err != nil {
		<-s.sem
		return subjects.Errorf(subjects.CodeStorageUnavailable, "sink %s: %v", m.Subject, err)
	}
	s.count++
	s.futures <- f // never blocks: sem bounds it
	return nil
}

// published returns how many messages publish has handed to JetStream.
func (s *sink) published() uint64 { return s.count }

// drain confirms outputs in publish order.
func (s *sink) drain() {
	for f := range s.futures {
		if err := s.confirm(f); err != nil {
			s.fail(fmt.Errorf("output %s not confirmed: %w", f.Msg().Header.Get(nats.MsgIdHdr), err))
		}
		<-s.sem
		s.mu.Lock()
		s.confirmed++
		kept := s.waiters[:0]
		for _, w := range s.waiters {
			if w.n <= s.confirmed {
				close(w.ch)
			} else {
				kept = append(kept, w)
			}
		}
		s.waiters = kept
		s.mu.Unlock()
	}
}

// confirm waits for JetStream to confirm f. An unconfirmed output (a
// timeout, or a reconnect, which fails every pending ack) is published
// again with the same Msg-Id, which the stream's duplicate window makes
// harmless, for up to sinkRetryFor; an error answer of the stream itself
// (an API error such as a limit) is final, unless it says to ask again
// (pubRetryable).
func (s *sink) confirm(f jetstream.PubAckFuture) error {
	deadline := time.Now().Add(sinkRetryFor)
	backoff := 20 * time.Millisecond
	for {
		var err error
		select {
		case <-f.Ok():
			return nil
		case err = <-f.Err():
		}
		var api *jetstream.APIError
		if (errors.As(err, &api) && !pubRetryable(api)) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-s.quit:
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		m := f.Msg()
		f, err = s.js.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Data: m.Data, Header: m.Header})
		if err != nil {
			if time.Now().After(deadline) {
				return err
			}
			f = failedFuture{m: m, err: err}
		}
	}
}

// pubRetryable reports whether a stream's error answer to a publish means
// "not now" rather than "never": the stream has no quorum for the moment
// (503), or it is still storing an earlier publish of the same Msg-Id
// (10158, "duplicate message id is in process": a publish sent again while
// the first waits for its replicas). Asked again, the stream stores the
// message or, once the first is stored, acknowledges it as a duplicate.
// Seen in the chaos run: during a partition of one NATS node, an output
// sent again got 10158, and its task failed and restarted.
func pubRetryable(api *jetstream.APIError) bool {
	return api.Code == 503 || api.ErrorCode == errCodeDuplicateInProcess
}

// errCodeDuplicateInProcess is nats-server's JSStreamDuplicateMessageConflict.
const errCodeDuplicateInProcess jetstream.ErrorCode = 10158

// failedFuture stands for a publish that could not even be sent, so that
// confirm retries it like an unconfirmed one.
type failedFuture struct {
	jetstream.PubAckFuture
	m   *nats.Msg
	err error
}

func (f failedFuture) Ok() <-chan *jetstream.PubAck { return nil }
func (f failedFuture) Msg() *nats.Msg               { return f.m }
func (f failedFuture) Err() <-chan error {
	ch := make(chan error, 1)
	ch <- f.err
	return ch
}

func (s *sink) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failure == nil {
		s.failure = subjects.Errorf(subjects.CodeStorageUnavailable, "sink: %v", err)
		close(s.failed)
	}
}

// err returns the sink's failure, if any.
func (s *sink) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure
}

// waitConfirmed waits until the first n messages handed to JetStream are
// confirmed and, if some subject is plain NATS, the connection is flushed to
// the server. It fails if the sink failed or ctx is done.
func (s *sink) waitConfirmed(ctx context.Context, n uint64) error {
	if s.plain {
		// FlushWithContext requires a deadline; the checkpoint's own
		// context may have none.
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.nc.FlushWithContext(fctx)
		cancel()
		if err != nil {
			return subjects.Errorf(subjects.CodeStorageUnavailable, "sink: flush: %v", err)
		}
	}
	if s.js == nil {
		return nil
	}
	s.mu.Lock()
	if s.failure != nil || s.confirmed >= n {
		err := s.failure
		s.mu.Unlock()
		return err
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, sinkWaiter{n: n, ch: ch})
	s.mu.Unlock()
	select {
	case <-ch:
		return s.err()
	case <-s.failed:
		return s.err()
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// close stops confirming outputs once those in flight are settled. Call it
// after the last publish.
func (s *sink) close() {
	close(s.quit)
	if s.futures != nil {
		close(s.futures)
	}
	if s.js != nil {
		// The JetStream context's async publisher holds a reply
		// subscription and a goroutine until the connection closes: one
		// per task attempt on a worker that lives for months.
		s.js.CleanupPublisher()
	}
}

// outputs collects a task's outputs between two publishing rounds in one
// reused buffer, with the key group, event sequence and index that make up
// each one's message id: building an output costs no allocation. Owned by
// the task goroutine.
type outputs struct {
	buf  []byte
	recs []outRec
	// latest, when set (SinkSpec.Emit "latest"), maps a key to its last
	// value-change output of the round: an earlier one is dropped.
	latest map[string]int
}

// outID is what an output's message id is made of: the event's group,
// stream sequence and output index, or for a timer's output its group,
// key, time (seq) and index.
type outID struct {
	group int
	seq   uint64
	n     int
	timer bool
	key   string
}

func (id outID) msgID(job string) string {
	if id.timer {
		return subjects.TimerOutputMsgID(job, id.group, id.key, int64(id.seq), id.n)
	}
	return subjects.OutputMsgID(job, id.group, id.seq, id.n)
}

type outRec struct {
	outID
	off, end int
	dropped  bool // superseded by a later value of the same key
	prev     int  // with combining: 1 + the index of the output this one superseded (0: none)
}

func (o *outputs) add(id outID, v []byte) {
	off := len(o.buf)
	o.buf = append(o.buf, v...)
	o.recs = append(o.recs, outRec{outID: id, off: off, end: len(o.buf)})
}

// addResult adds {"key": key, "value": v}, v being JSON: a value change of
// key, which replaces the key's previous one of the round when o combines.
func (o *outputs) addResult(id outID, key string, v []byte) {
	prev := 0
	if o.latest != nil && !id.timer {
		id.key = key // not part of the id of an event's output
		if i, ok := o.latest[key]; ok {
			o.recs[i].dropped = true
			prev = i + 1
		}
		o.latest[key] = len(o.recs)
	}
	off := len(o.buf)
	o.buf = append(o.buf, `{"key":`...)
	o.buf = appendJSONString(o.buf, key)
	o.buf = append(o.buf, `,"value":`...)
	o.buf = append(o.buf, v...)
	o.buf = append(o.buf, '}')
	o.recs = append(o.recs, outRec{outID: id, off: off, end: len(o.buf), prev: prev})
}

// truncate drops the outputs from index i on, and with combining brings
// back the ones they superseded.
func (o *outputs) truncate(i int) {
	if o.latest != nil {
		for j := len(o.recs) - 1; j >= i; j-- {
			r := o.recs[j]
			if at, ok := o.latest[r.key]; !ok || at != j || r.timer {
				continue
			}
			if r.prev > 0 {
				o.recs[r.prev-1].dropped = false
				o.latest[r.key] = r.prev - 1
			} else {
				delete(o.latest, r.key)
			}
		}
	}
	if i < len(o.recs) {
		o.buf = o.buf[:o.recs[i].off]
		o.recs = o.recs[:i]
	}
}

func (o *outputs) data(r outRec) []byte { return o.buf[r.off:r.end:r.end] }

func (o *outputs) reset() {
	o.buf = o.buf[:0]
	o.recs = o.recs[:0]
	clear(o.latest)
}

// publishAll hands every collected output to the sink, under subject with
// the ids of job, and empties o. The sink keeps the messages until they are
// confirmed, so their bodies are slices of one copy of the buffer made per
// round, not of the reused buffer.
func (o *outputs) publishAll(ctx context.Context, s *sink, subject, job string) error {
	if len(o.recs) == 0 {
		return nil
	}
	if _, ok := s.stored[subject]; !ok {
		o.reset()
		return nil
	}
	bodies := bytes.Clone(o.buf)
	for _, r := range o.recs {
		if r.dropped {
			continue
		}
		m := &nats.Msg{Subject: subject, Data: bodies[r.off:r.end:r.end],
			Header: nats.Header{nats.MsgIdHdr: []string{r.msgID(job)}}}
		if err := s.publish(ctx, m); err != nil {
			return err
		}
	}
	o.reset()
	return nil
}

// appendJSONString appends s as a JSON string, as encoding/json writes it.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // rare: let encoding/json escape it
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
