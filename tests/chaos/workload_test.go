//go:build unix

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/subjects"
)

// publisher publishes the event stream: event i goes to clicks.<key> with
// Nats-Msg-Id ev-<i>, in batches, and every batch is published again
// (same ids) until JetStream has acknowledged all of it. The source
// stream's duplicate window makes the retries harmless, so the stream ends
// up holding events 0 .. acked-1, each once, however often NATS went away.
type publisher struct {
	js    jetstream.JetStream
	r     *rand.Rand
	keys  int
	batch int
	every time.Duration // one batch per every

	acked atomic.Int64
}

// publishTimeout bounds how long one batch may take to be acknowledged,
// outages included.
const publishTimeout = 3 * time.Minute

// run publishes until ctx is done, then finishes the batch in progress.
func (p *publisher) run(ctx context.Context) error {
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for i := 0; ; {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		msgs := make([]*nats.Msg, p.batch)
		for j := range msgs {
			key := "k" + strconv.Itoa(p.r.IntN(p.keys))
			msgs[j] = &nats.Msg{Subject: "clicks." + key, Data: []byte(`{"i":` + strconv.Itoa(i) + `}`),
				Header: nats.Header{nats.MsgIdHdr: []string{"ev-" + strconv.Itoa(i)}}}
			i++
		}
		if err := p.publishAll(msgs); err != nil {
			return err
		}
		p.acked.Add(int64(len(msgs)))
	}
}

// publishAll publishes msgs until each is acknowledged.
func (p *publisher) publishAll(msgs []*nats.Msg) error {
	deadline := time.Now().Add(publishTimeout)
	var lastErr error
	for backoff := 20 * time.Millisecond; len(msgs) > 0; backoff = min(2*backoff, time.Second) {
		var futures []jetstream.PubAckFuture
		var again []*nats.Msg
		for _, m := range msgs {
			f, err := p.js.PublishMsgAsync(m)
			if err != nil {
				lastErr = err
				again = append(again, m)
				continue
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				lastErr = err
				again = append(again, f.Msg())
			}
		}
		if len(again) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("publisher: %d events not acknowledged after %v: %v", len(again), publishTimeout, lastErr)
		}
		time.Sleep(backoff) // retry backoff while NATS is away
		msgs = again
	}
	return nil
}

// readStream calls fn with every message of stream up to its last sequence
// at the time of the call, in stream order.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, fn func(jetstream.Msg, *jetstream.MsgMetadata) error) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 {
		return nil
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil && transientRead(err) && ctx.Err() == nil {
			// On a cluster, a consumer just created (or recreated by the
			// ordered consumer) may not answer yet: ask again, bounded by
			// ctx.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			if err := fn(m, meta); err != nil {
				return err
			}
			if meta.Sequence.Stream >= last {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !transientRead(err) {
			return fmt.Errorf("reading %s: %w", stream, err)
		}
		if n == 0 && ctx.Err() != nil {
			return fmt.Errorf("reading %s: %w before sequence %d", stream, ctx.Err(), last)
		}
	}
}

// transientRead reports whether a read error means "ask again".
func transientRead(err error) bool {
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoHeartbeat)
}

// windowSize is the window job's tumbling window.
const windowSize = time.Second

// window mirrors the window operator's value (worker/builtin.go): the open
// window of a key and its event count.
type window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Count int64     `json:"count"`
}

func (w window) String() string {
	return fmt.Sprintf("[%s, %s) count %d", w.Start.Format("15:04:05.000"), w.End.Format("15:04:05.000"), w.Count)
}

func (w window) equal(o window) bool {
	return w.Start.Equal(o.Start) && w.End.Equal(o.End) && w.Count == o.Count
}

// truth is what the jobs must compute from the source stream as stored.
type truth struct {
	events int
	// count is each key's number of events: the count job's state.
	count map[string]int64
	// open is each key's window holding its last event: the window job's
	// state. closed is the windows it closed, in order: its outputs.
	open   map[string]window
	closed map[string][]window
}

// groundTruth reads the source stream back and derives every key's
// expected state. The window clock is each message's JetStream timestamp,
// so the window job's truth is an independent replay of the window
// operator's rule over the stored stream: in stream order, an event whose
// window (aligned to the Unix epoch) starts after the key's open window
// closes it and opens its own; any other event, late ones included, counts
// in the open window. A key's last window is closed too (by its timer) when
// the stream that holds the key has an event of any key stamped at or after
// its end: a task reads each stream in timestamp order, and the key's input
// time passes the window's end with that event.
//
// It also checks the harness's own premise: the stream holds exactly the
// events the publisher had acknowledged, each once (JetStream with
// sync_interval: always loses no acknowledged write across kill -9, and its
// duplicate window drops the publisher's retries).
func groundTruth(ctx context.Context, js jetstream.JetStream, streams []string, acked int) (truth, error) {
	tr := truth{count: map[string]int64{}, open: map[string]window{}, closed: map[string][]window{}}
	seen := make([]bool, acked)
	var dups, unknown int
	// read applies one event to the truth and returns its key.
	read := func(m jetstream.Msg, meta *jetstream.MsgMetadata) (string, error) {
		_, key, _, err := subjects.ParseInputSubject(m.Subject(), 2, maxParallelism)
		if err != nil {
			return "", err
		}
		id := m.Headers().Get(nats.MsgIdHdr)
		i, err := strconv.Atoi(id[len("ev-"):])
		switch {
		case err != nil || i < 0 || i >= acked:
			unknown++
		case seen[i]:
			dups++
		default:
			seen[i] = true
		}
		tr.events++
		tr.count[key]++
		ns := meta.Timestamp.UnixNano()
		start := time.Unix(0, ns-ns%int64(windowSize)).UTC() // timestamps are after 1970: ns >= 0
		w, ok := tr.open[key]
		if !ok || start.After(w.Start) {
			if ok {
				tr.closed[key] = append(tr.closed[key], w)
			}
			w = window{Start: start, End: start.Add(windowSize)}
		}
		w.Count++
		tr.open[key] = w
		return key, nil
	}
	// A key's events are all in one partition stream, in order.
	lasts := make([]time.Time, len(streams)) // each stream's newest timestamp
	streamOf := map[string]int{}             // the stream holding each key
	for i, stream := range streams {
		err := readStream(ctx, js, stream, func(m jetstream.Msg, meta *jetstream.MsgMetadata) error {
			key, err := read(m, meta)
			if err != nil {
				return err
			}
			streamOf[key] = i
			if meta.Timestamp.After(lasts[i]) {
				lasts[i] = meta.Timestamp
			}
			return nil
		})
		if err != nil {
			return tr, err
		}
	}
	for key, w := range tr.open {
		if !lasts[streamOf[key]].Before(w.End) {
			tr.closed[key] = append(tr.closed[key], w)
		}
	}
	missing := 0
	for _, s := range seen {
		if !s {
			missing++
		}
	}
	if missing+dups+unknown > 0 {
		return tr, fmt.Errorf("the source stream does not hold exactly the %d acknowledged events: %d missing, %d twice, %d unknown",
			acked, missing, dups, unknown)
	}
	return tr, nil
}

// decodeWindow parses a window value as the window operator stores it.
func decodeWindow(b []byte) (window, error) {
	var w window
	err := json.Unmarshal(b, &w)
	return w, err
}
