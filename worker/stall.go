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
	// reader has waited with that count, and what inputStalled suspects.
	lastN     uint64
	idleSince time.Time
	suspect   uint64
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
// in Next, reading nothing, for longer than Config.InputStallTimeout (a
// reader held by a busy task is not waiting): if its stream holds events
// after the last one read at two checks in a row, the input is stalled and
// the task fails. An idle input costs one stream info
// request per check once it has waited that long.
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
		w.lastN, w.idleSince, w.suspect = n, now, 0
		return nil
	}
	if now.Sub(w.idleSince) < t.w.cfg.InputStallTimeout {
		return nil
	}
	read := w.read.Load()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	s, err := js.Stream(sctx, in.Name)
	cancel()
	if err != nil {
		return nil // the stream cannot say: its own trouble, not the consumer's
	}
	st := s.CachedInfo().State
	last := st.LastSeq
	stalled, suspect := inputStalled(read, st.FirstSeq, last, w.suspect)
	w.suspect = suspect
	if !stalled {
		return nil
	}
	waited := now.Sub(w.idleSince).Round(time.Second)
	t.log.Warn("input stalled: its consumer delivers nothing while the stream holds later events; failing the task so that it restarts with new consumers",
		"stream", in.Name, "read", read, "stream_last", last, "waited", waited)
	return subjects.Errorf(subjects.CodeStorageUnavailable,
		"input stream %s stalled: nothing delivered for %s after sequence %d while the stream holds events up to %d", in.Name, waited, read, last)
}

// inputStalled decides from the last sequence read and the stream's first
// and last sequences, given what the previous check found (nextSuspect: 0,
// or the read sequence plus one at which it found later events): an input
// is stalled when two checks in a row find events stored after the same
// read sequence. One check is not enough: an event stored just before it
// may not have been delivered yet.
func inputStalled(read, streamFirst, streamLast, suspect uint64) (stalled bool, nextSuspect uint64) {
	if streamLast < max(read+1, streamFirst) {
		return false, 0 // nothing stored after read (or it was evicted)
	}
	if suspect == read+1 {
		return true, suspect
	}
	return false, read + 1
}
