package worker

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
)

// Timers, after Flink's timer service. An operator registers a timer for
// the current key and a time; once the task's clock reaches that time the
// task calls the operator's OnTimer for that key, between two rounds of
// events, on the task goroutine. A timer fires once: firing removes it, in
// the same commit as the state changes OnTimer makes.
//
// Timers are keyed state: each key's timers are one value of the reserved
// state TimerState, in the key's key group, so they are committed with the
// applied marks, checkpointed, restored and rescaled with their group like
// any other state. The task keeps an in-memory queue of them, rebuilt from
// that state when it starts.
//
// Outputs emitted in OnTimer get ids built from the key and the timer's time
// (subjects.TimerOutputMsgID), so a timer that fires again after a restore
// publishes under the same ids and the sink drops the copies.
//
// Only processing-time timers exist today. The domain is part of every
// stored timer, so that event-time timers (fired as the input's watermark
// passes them) can be added without a new state format.

// TimeDomain is the clock a timer follows. Its values are persisted:
// append-only.
type TimeDomain byte

const (
	// ProcessingTime timers follow the task's clock (Config.Clock).
	ProcessingTime TimeDomain = 1
	// Value 2 is reserved for event-time timers.
)

func (d TimeDomain) String() string {
	switch d {
	case ProcessingTime:
		return "processing_time"
	}
	return fmt.Sprintf("time_domain(%d)", byte(d))
}

// Timer is a due timer, as OnTimer receives it.
type Timer struct {
	Key    string
	Group  int
	Time   time.Time
	Domain TimeDomain
}

// TimerOperator is an Operator that uses timers. OnTimer follows Process's
// rules: it must be deterministic given the state and the timer, an error
// wrapping ErrBadEvent drops its outputs (the timer is still removed), and
// any other error fails the task.
type TimerOperator interface {
	Operator
	OnTimer(ctx *Context, tm Timer) error
}

// Clock gives a task its processing time. Config.Clock injects one; tests
// use a fake they advance.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// TimerState is the reserved value state that holds each key's timers.
// State names starting with '$' are reserved for flotilla.
const TimerState = "$timers"

// errReservedState refuses an operator's access to a reserved state.
var errReservedState = errors.New("worker: state names starting with '$' are reserved")

func reservedState(state string) bool { return len(state) > 0 && state[0] == '$' }

// The stored form of a key's timers: a version byte, then each timer as
// [domain:1][unix nanoseconds:8, big-endian], sorted, without duplicates.
const (
	timersVersion = 1
	timerLen      = 9
)

// timerEntries returns the entries of a stored timer list.
func timerEntries(v []byte) ([]byte, error) {
	if len(v) == 0 || v[0] != timersVersion || (len(v)-1)%timerLen != 0 {
		return nil, fmt.Errorf("%w: timer list of %d bytes", statebackend.ErrCorrupt, len(v))
	}
	return v[1:], nil
}

func timerAt(e []byte, i int) (TimeDomain, int64) {
	return TimeDomain(e[i*timerLen]), int64(binary.BigEndian.Uint64(e[i*timerLen+1:]))
}

// timerLess orders timers by time, then domain.
func timerLess(d1 TimeDomain, t1 int64, d2 TimeDomain, t2 int64) bool {
	return t1 < t2 || t1 == t2 && d1 < d2
}

// editTimers returns the list v (nil: empty) with (d, at) added or removed,
// in dst, and whether it changed.
func editTimers(dst, v []byte, d TimeDomain, at int64, add bool) ([]byte, bool, error) {
	var e []byte
	if len(v) > 0 {
		var err error
		if e, err = timerEntries(v); err != nil {
			return nil, false, err
		}
	}
	n := len(e) / timerLen
	i := 0
	for i < n {
		di, ti := timerAt(e, i)
		if !timerLess(di, ti, d, at) {
			break
		}
		i++
	}
	exists := false
	if i < n {
		di, ti := timerAt(e, i)
		exists = di == d && ti == at
	}
	if exists == add {
		return v, false, nil
	}
	dst = append(dst[:0], timersVersion)
	dst = append(dst, e[:i*timerLen]...)
	if add {
		dst = append(dst, byte(d))
		dst = binary.BigEndian.AppendUint64(dst, uint64(at))
		dst = append(dst, e[i*timerLen:]...)
	} else {
		dst = append(dst, e[(i+1)*timerLen:]...)
	}
	return dst, true, nil
}

// timerRef is one timer in a task's queue.
type timerRef struct {
	at     int64
	domain TimeDomain
	group  int
	key    string
}

// timerQueue is a task's in-memory queue of timers, earliest first. It may
// hold timers deleted since they were queued, and a timer twice: the stored
// list decides, when one is due.
type timerQueue []timerRef

func (q timerQueue) Len() int           { return len(q) }
func (q timerQueue) Less(i, j int) bool { return timerLess(q[i].domain, q[i].at, q[j].domain, q[j].at) }
func (q timerQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *timerQueue) Push(x any)        { *q = append(*q, x.(timerRef)) }
func (q *timerQueue) Pop() any {
	old := *q
	r := old[len(old)-1]
	*q = old[:len(old)-1]
	return r
}

func (q *timerQueue) add(r timerRef) { heap.Push(q, r) }

// due pops the earliest timer if it is due at now.
func (q *timerQueue) due(now int64) (timerRef, bool) {
	if len(*q) == 0 || (*q)[0].at > now {
		return timerRef{}, false
	}
	return heap.Pop(q).(timerRef), true
}

// next returns the earliest queued time.
func (q timerQueue) next() (int64, bool) {
	if len(q) == 0 {
		return 0, false
	}
	return q[0].at, true
}

// loadTimers fills q with the timers stored in be for groups r.
func loadTimers(q *timerQueue, be *statebackend.Backend) error {
	it, err := be.Scan(TimerState, be.Range())
	if err != nil {
		return err
	}
	defer it.Close()
	for it.Next() {
		e, err := timerEntries(it.Value())
		if err != nil {
			return fmt.Errorf("timers of key %q: %w", it.Key(), err)
		}
		key := string(it.Key())
		for i := range len(e) / timerLen {
			d, at := timerAt(e, i)
			*q = append(*q, timerRef{at: at, domain: d, group: it.Group(), key: key})
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	heap.Init(q)
	return nil
}
