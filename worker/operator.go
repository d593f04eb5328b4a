package worker

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// Operator turns a job's events into keyed state and outputs. A task calls
// Process once per event of its key groups, in stream order, from one
// goroutine; an operator therefore needs no locking, but it must keep all
// its state in the Context (never in its own fields), since only that state
// is checkpointed, restored and queried.
//
// Process must be deterministic: given the same state and event it must make
// the same changes and emit the same outputs, so that replaying an event
// after a restore reproduces them (the outputs' message ids then let
// JetStream drop the duplicates). Use Event.Time, never the wall clock.
type Operator interface {
	// Process applies ev to the state of ev.Key. An error wrapping
	// ErrBadEvent skips the event (it is counted as applied, its outputs are
	// dropped); Process must then not have written anything. Any other error
	// fails the task.
	Process(ctx *Context, ev Event) error
}

// StateVersioner is implemented by an operator whose state format has
// changed over time: StateVersion is the version of the state it writes (an
// operator without it writes version 1). It is recorded with every
// checkpoint and savepoint, so that the state can be told apart from that
// of another operator or format. Raise it when the operator starts writing
// state that its earlier builds would misread.
type StateVersioner interface {
	StateVersion() int
}

// operatorInfo describes the state op writes as the operator of type typ.
func operatorInfo(typ string, op Operator) *subjects.OperatorInfo {
	v := 1
	if sv, ok := op.(StateVersioner); ok {
		v = sv.StateVersion()
	}
	return &subjects.OperatorInfo{Type: typ, StateVersion: v}
}

// checkRestoredOperator refuses a deployment that would restore state
// another operator, or another state version of it, wrote: the operator
// would misread it. The submit may say the change is intended
// (DeployTask.AllowOperatorChange). Records of older builds name no
// operator and pass.
func checkRestoredOperator(d *subjects.DeployTask, op Operator) error {
	from := d.RestoredOperator
	if from == nil || len(d.Restore) == 0 || d.AllowOperatorChange {
		return nil
	}
	have := operatorInfo(d.Spec.Operator.Type, op)
	if *from == *have {
		return nil
	}
	return subjects.Errorf(subjects.CodeOperatorMismatch,
		"task %d of job %s would restore checkpoint %d, which holds state of operator %q in state version %d; this worker's %q writes state version %d and would misread it. If the change is intended, submit from it with --allow-operator-change (allow_operator_change)",
		d.Task, d.Job, d.RestoredFrom, from.Type, from.StateVersion, have.Type, have.StateVersion)
}

// Factory builds an operator for a job from its spec. It is called once per
// task attempt; an error rejects the deployment with CodeInvalidJobSpec.
type Factory func(spec subjects.OperatorSpec) (Operator, error)

// Event is one input event as an operator sees it.
type Event struct {
	// Key is the event's key: the token of its subject named by the job's
	// source.key.subject_token.
	Key string
	// Subject is the subject the event was published to.
	Subject string
	// Data is the event's body. It is valid only during Process.
	Data []byte
	// Time is when JetStream stored the event. It is the clock of
	// time-based operators (windows), so that a replay is deterministic.
	Time time.Time
	// Group is the event's key group and Seq its stream sequence.
	Group int
	Seq   uint64
}

// ErrBadEvent marks an event an operator cannot use, such as a body that is
// not the JSON it expects. Return an error wrapping it from Process to skip
// the event without failing the task.
var ErrBadEvent = errors.New("worker: bad event")

// ValueState is the state name under which every operator keeps, for each
// key, the JSON value that a state query (`flotilla state get`) returns.
// Operators may keep other states under other names.
const ValueState = "value"

// KeyedState is what a Context reads and writes: the state of a task as a
// statebackend.Batch exposes it (reads see the batch's own writes). Reads of
// a missing value return statebackend.ErrNotFound. NewContext takes one, to
// test an operator without a task.
type KeyedState interface {
	Get(state string, key []byte) ([]byte, error)
	Put(state string, key, value []byte) error
	Delete(state string, key []byte) error
	Add(state string, key []byte, delta int64) error
	Int64(state string, key []byte) (int64, error)
}

// Context gives an operator the state of the current event's key and
// collects its outputs. It is valid only during Process.
//
// State is addressed by the key group the task decoded from the event once;
// reads and writes of value states hit the task's write-back cache (see
// DESIGN.md, "The per-event path"), so they cost no Pebble access for a key
// already in it.
type Context struct {
	st    keyedStore
	key   string
	kb    []byte // key as bytes, reused
	group int
	out   *outputs // nil: emits collects copies (NewContext)
	emits [][]byte
	first int // out.recs index of this event's first output
	nEmit int

	// The event the outputs belong to, for their message ids; in OnTimer,
	// inTimer is set and timerAt is the timer's time.
	seq     uint64
	inTimer bool
	timerAt int64

	clock  *taskClock
	timers *timerQueue // nil: timers are only stored (NewContext)

	scratch []byte // for built-in operators
	tbuf    []byte // for timer lists
}

// taskClock is the time a task's operators see.
type taskClock struct {
	now time.Time // processing time, read from the Clock once per round
	// input returns the input time of a key group (see task.inputTime);
	// nil in a Context made for testing without a task, whose input time
	// is fixed.
	input func(group int) (time.Time, bool)
	fixed time.Time
}

// NewContext returns a Context over st for key, for testing operators
// without a task; NewContextAt with the zero time.
func NewContext(st KeyedState, key string) *Context { return NewContextAt(st, key, time.Time{}) }

// NewContextAt returns a Context over st for key whose processing time (and
// input time) is now, for testing operators without a task. Timers it
// registers are stored in st under TimerState; nothing fires them.
func NewContextAt(st KeyedState, key string, now time.Time) *Context {
	c := &Context{st: storeAdapter{st}, clock: &taskClock{now: now, fixed: now}}
	c.reset(key, 0, 0)
	return c
}

// reset points the context at a new event and clears its outputs.
func (c *Context) reset(key string, group int, seq uint64) {
	c.key, c.group, c.seq = key, group, seq
	c.inTimer = false
	c.kb = append(c.kb[:0], key...)
	c.emits = c.emits[:0]
	c.nEmit = 0
	if c.out != nil {
		c.first = len(c.out.recs)
	}
}

// Key returns the current key.
func (c *Context) Key() string { return c.key }

// Get returns the current key's value in value state `state`; found is false
// if it has none. The returned slice is valid until the next call on the
// Context that reads or writes state; copy it to keep it. State names
// starting with '$' are reserved.
func (c *Context) Get(state string) (value []byte, found bool, err error) {
	if reservedState(state) {
		return nil, false, errReservedState
	}
	return c.st.get(c.group, state, c.kb)
}

// Put sets the current key's value in value state `state`. The Context
// copies value.
func (c *Context) Put(state string, value []byte) error {
	if reservedState(state) {
		return errReservedState
	}
	return c.st.put(c.group, state, c.kb, value)
}

// Delete removes the current key's value from value state `state`.
func (c *Context) Delete(state string) error {
	if reservedState(state) {
		return errReservedState
	}
	return c.st.del(c.group, state, c.kb)
}

// Now returns the task's processing time: its Clock, read once per round
// of events and once before due timers fire.
func (c *Context) Now() time.Time { return c.clock.now }

// InputTime returns how far the input of the current key has progressed,
// in JetStream time: the timestamp of the newest event read from the stream
// that holds the key's group. Every event of that stream stamped before it
// has been read, since a stream's timestamps grow with its sequence, so an
// operator that assigns events to windows by Event.Time can close a window
// ending at t once InputTime is past t, and what it emits then depends on
// the input alone: a replay, or a fenced attempt that still publishes,
// emits the same window under the same id. InputTime never moves with the
// processing clock: a stream that receives nothing holds it still (closing
// on an idle input needs the server to confirm that nothing is unread,
// which is not built yet).
func (c *Context) InputTime() time.Time {
	if c.clock.input != nil {
		if t, ok := c.clock.input(c.group); ok {
			return t
		}
	}
	return c.clock.fixed
}

// RegisterTimer registers a processing-time timer for the current key at
// at: OnTimer (the operator must be a TimerOperator) is called for the key
// once the task's clock reaches at. A key has at most one timer per time;
// registering it again changes nothing.
func (c *Context) RegisterTimer(at time.Time) error {
	_, err := c.editTimer(ProcessingTime, at.UnixNano(), true)
	return err
}

// DeleteTimer deletes the current key's processing-time timer at at, if
// any.
func (c *Context) DeleteTimer(at time.Time) error {
	_, err := c.editTimer(ProcessingTime, at.UnixNano(), false)
	return err
}

// editTimer adds or removes the current key's timer (d, at) and reports
// whether that changed anything.
func (c *Context) editTimer(d TimeDomain, at int64, add bool) (bool, error) {
	v, _, err := c.st.get(c.group, TimerState, c.kb)
	if err != nil {
		return false, err
	}
	nv, changed, err := editTimers(c.tbuf, v, d, at, add)
	if err != nil || !changed {
		return false, err
	}
	c.tbuf = nv
	if len(nv) == 1 {
		err = c.st.del(c.group, TimerState, c.kb)
	} else {
		err = c.st.put(c.group, TimerState, c.kb, nv)
	}
	if err != nil {
		return false, err
	}
	if add && c.timers != nil {
		c.timers.add(timerRef{at: at, domain: d, group: c.group, key: c.key})
	}
	return true, nil
}

// AddInt64 adds delta to the current key's counter in counter state `state`
// and returns the new value. Counters live apart from value states of the
// same name; a counter never written is 0.
func (c *Context) AddInt64(state string, delta int64) (int64, error) {
	if err := c.st.add(c.group, state, c.kb, delta); err != nil {
		return 0, err
	}
	return c.st.int64(c.group, state, c.kb)
}

// Int64 returns the current key's counter in counter state `state`.
func (c *Context) Int64(state string) (int64, error) { return c.st.int64(c.group, state, c.kb) }

// Emit publishes value to the job's sink. Outputs of one event are numbered
// in Emit order, which is part of their message ids. The Context copies
// value.
func (c *Context) Emit(value []byte) {
	if c.out == nil {
		c.emits = append(c.emits, bytes.Clone(value))
		c.nEmit++
		return
	}
	c.out.add(c.outID(c.nEmit), value)
	c.nEmit++
}

// EmitAt is Emit under the id of an output of the current key's
// processing-time timer at `at` (subjects.TimerOutputMsgID with index 0),
// whether or not such a timer fires. It is for an output that may be
// produced either early, by an event, or on time, by a timer: a replay
// that takes the other path publishes the same id. Use it at most once per
// key and time.
func (c *Context) EmitAt(at time.Time, value []byte) {
	if c.out == nil {
		c.Emit(value)
		return
	}
	c.out.add(outID{group: c.group, key: c.key, timer: true, seq: uint64(at.UnixNano())}, value)
}

// outID returns the id parts of output n of the current event or timer.
func (c *Context) outID(n int) outID {
	if c.inTimer {
		return outID{group: c.group, key: c.key, timer: true, seq: uint64(c.timerAt), n: n}
	}
	return outID{group: c.group, seq: c.seq, n: n}
}

// emitResult emits {"key": <key>, "value": <v>} (v is JSON), building it in
// the output buffer.
func (c *Context) emitResult(v []byte) {
	if c.out == nil {
		c.Emit(result(c.key, v))
		return
	}
	c.out.addResult(c.outID(c.nEmit), c.key, v)
	c.nEmit++
}

// emitResultAt is emitResult under EmitAt's id.
func (c *Context) emitResultAt(at time.Time, v []byte) {
	if c.out == nil {
		c.Emit(result(c.key, v))
		return
	}
	c.out.addResult(outID{group: c.group, key: c.key, timer: true, seq: uint64(at.UnixNano())}, c.key, v)
}

// dropEmitted discards this event's outputs (a skipped event).
func (c *Context) dropEmitted() {
	c.emits = c.emits[:0]
	c.nEmit = 0
	if c.out != nil {
		c.out.truncate(c.first)
	}
}

// Emitted returns the outputs emitted so far for the current event.
func (c *Context) Emitted() [][]byte {
	if c.out == nil {
		return c.emits
	}
	var out [][]byte
	for _, r := range c.out.recs[c.first:] {
		out = append(out, c.out.data(r))
	}
	return out
}

var registry = struct {
	sync.RWMutex
	m map[string]Factory
}{m: map[string]Factory{}}

// Register makes an operator available under name to every worker of this
// process, as the type of a job's operator spec. Call it from an init
// function or before New. It panics if name is not a valid name (see
// subjects.ValidateName), is registered already, or f is nil.
func Register(name string, f Factory) {
	if err := subjects.ValidateName("operator", name); err != nil {
		panic(fmt.Sprintf("worker: Register: %v", err))
	}
	if f == nil {
		panic("worker: Register: nil factory for operator " + name)
	}
	registry.Lock()
	defer registry.Unlock()
	if _, ok := registry.m[name]; ok {
		panic("worker: Register: operator " + name + " registered twice")
	}
	registry.m[name] = f
}

// Operators returns the names of the registered operators, sorted.
func Operators() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.m))
	for n := range registry.m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func lookupOperator(name string) (Factory, bool) {
	registry.RLock()
	defer registry.RUnlock()
	f, ok := registry.m[name]
	return f, ok
}

// newOperator builds the operator of spec, with coded errors.
func newOperator(spec subjects.OperatorSpec) (Operator, error) {
	f, ok := lookupOperator(spec.Type)
	if !ok {
		return nil, subjects.Errorf(subjects.CodeUnknownOperator, "operator %q is not registered in this worker (have: %v)", spec.Type, Operators())
	}
	op, err := f(spec)
	if err != nil {
		return nil, subjects.Errorf(subjects.CodeInvalidJobSpec, "operator %q: %v", spec.Type, err)
	}
	if op == nil {
		return nil, subjects.Errorf(subjects.CodeInternal, "operator %q: factory returned nil", spec.Type)
	}
	return op, nil
}
