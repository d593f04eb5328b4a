package worker

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/subjects"
)

// A stalled input is one whose consumer delivers nothing while its stream
// holds events after the last one read. The ordered consumer recreates
// itself after a reconnect or missed heartbeats, but the new consumer can be
// assigned to a server that has just died and that the cluster does not yet
// know is gone: creating it then times out, and the library retries the
// same assignment until that server returns, however long that is (seen in
// the compose cluster test: a task's inputs read nothing for minutes after
// the server its worker was connected to was killed, while the job showed
// running with no lag). The watchdog turns that into a task failure: the
// task restarts from its last checkpoint with new consumers, placed anew.

// inputWatch is what the watchdog knows of one input's reader. The reader
// pays two atomic stores and an add per event; no clock reads.
type inputWatch struct {
	inNext atomic.Bool   // the reader waits in the consumer's Next
	n      atomic.Uint64 // events read
	read   atomic.Uint64 // stream sequence of the last event read

	// The watchdog's own: the count at its last check, since when the
	// reader has waited with that count, and what the checks of that wait
	// found in the stream.
	lastN     uint64
	idleSince time.Time
	suspect   suspicion
}

// waiting records that the reader waits for the next event.
func (w *inputWatch) waiting() { w.inNext.Store(true) }

// got records that the reader's wait is over, with the event at seq (0:
// none, the read failed).
func (w *inputWatch) got(seq uint64) {
	w.inNext.Store(false)
	if seq > 0 {
		w.read.Store(seq)
		w.n.Add(1)
	}
}

// stallCheck is how often the watchdog looks at the task's inputs.
const stallCheck = 5 * time.Second

// watchInputs checks, every stallCheck, each input whose reader has waited
// in Next, reading nothing, since the previous check (a reader held by a
// busy task is not waiting): if its stream has held events after the last
// one read for Config.InputStallTimeout, counted from the first check that
// found them, the input is stalled and the task fails. An idle input costs
// one stream info request per check.
//
// The time counts from when the stream is found holding later events, not
// from the reader's last event: a sparse input (one of 32 partition
// streams, say) may legitimately get nothing for minutes, and its
// consumer, recreated after a server was lost, must get the same
// InputStallTimeout to deliver the next event as a busy input's.
func (t *task) watchInputs(ctx context.Context, js jetstream.JetStream, errc chan<- error) {
	tick := time.NewTicker(stallCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, in := range t.inputs {
			if err := t.checkStall(ctx, js, in, time.Now()); err != nil {
				select {
				case errc <- err:
				case <-ctx.Done():
				}
				return
			}
		}
	}
}

// checkStall checks one input at now; it returns the task's error when the
// input is stalled.
func (t *task) checkStall(ctx context.Context, js jetstream.JetStream, in *input, now time.Time) error {
	w := &in.watch
	if n := w.n.Load(); !w.inNext.Load() || n != w.lastN || w.idleSince.IsZero() {
		w.lastN, w.idleSince, w.suspect = n, now, suspicion{}
		return nil
	}
	read := w.read.Load()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	s, err := js.Stream(sctx, in.Name)
	cancel()
	if err != nil {
		// The stream cannot say: its own trouble, not the consumer's,
		// which cannot deliver either. The consumer's time starts again
		// once the stream answers (after a loss of quorum, say).
		w.suspect = suspicion{}
		return nil
	}
	st := s.CachedInfo().State
	if !w.suspect.check(read, st.FirstSeq, st.LastSeq, now, t.w.cfg.InputStallTimeout) {
		return nil
	}
	held, waited := now.Sub(w.suspect.since).Round(time.Second), now.Sub(w.idleSince).Round(time.Second)
	t.log.Warn("input stalled: its consumer delivers nothing while the stream holds later events; failing the task so that it restarts with new consumers",
		"stream", in.Name, "read", read, "stream_last", st.LastSeq, "held", held, "waited", waited)
	return subjects.Errorf(subjects.CodeStorageUnavailable,
		"input stream %s stalled: it has held events after sequence %d (up to %d) for %s, and its consumer delivered none",
		in.Name, read, st.LastSeq, held)
}

// suspicion is what the checks of one wait of a reader found: since when
// the stream has held events after the last one read (next: that sequence
// read plus one; 0: not found).
type suspicion struct {
	next  uint64
	since time.Time
}

// check records what a check at now found, given the last sequence read
// and the stream's first and last sequences, and reports whether the input
// is stalled: the stream has held events after read for timeout, at every
// check since the first that found them. One check is never enough: an
// event stored just before it may not have been delivered yet.
func (s *suspicion) check(read, streamFirst, streamLast uint64, now time.Time, timeout time.Duration) bool {
	if streamLast < max(read+1, streamFirst) {
		*s = suspicion{} // nothing stored after read (or it was evicted)
		return false
	}
	if s.next != read+1 {
		*s = suspicion{next: read + 1, since: now}
		return false
	}
	return now.Sub(s.since) >= timeout
}
