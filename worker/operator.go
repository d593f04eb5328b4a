package worker

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
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
// a missing value return statebackend.ErrNotFound.
type KeyedState interface {
	Get(state string, key []byte) ([]byte, error)
	Put(state string, key, value []byte) error
	Delete(state string, key []byte) error
	Add(state string, key []byte, delta int64) error
	Int64(state string, key []byte) (int64, error)
}

// Context gives an operator the state of the current event's key and
// collects its outputs. It is valid only during Process.
type Context struct {
	st    KeyedState
	key   []byte
	emits [][]byte
}

// NewContext returns a Context over st for key, for testing operators
// without a task.
func NewContext(st KeyedState, key string) *Context {
	return &Context{st: st, key: []byte(key)}
}

// reset points the context at a new event's key and clears its outputs.
func (c *Context) reset(key []byte) {
	c.key = key
	c.emits = c.emits[:0]
}

// Key returns the current key.
func (c *Context) Key() string { return string(c.key) }

// Get returns the current key's value in value state `state`; found is false
// if it has none. The caller owns the returned slice.
func (c *Context) Get(state string) (value []byte, found bool, err error) {
	v, err := c.st.Get(state, c.key)
	if errors.Is(err, statebackend.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// Put sets the current key's value in value state `state`.
func (c *Context) Put(state string, value []byte) error { return c.st.Put(state, c.key, value) }

// Delete removes the current key's value from value state `state`.
func (c *Context) Delete(state string) error { return c.st.Delete(state, c.key) }

// AddInt64 adds delta to the current key's counter in counter state `state`
// and returns the new value. Counters live apart from value states of the
// same name; a counter never written is 0.
func (c *Context) AddInt64(state string, delta int64) (int64, error) {
	if err := c.st.Add(state, c.key, delta); err != nil {
		return 0, err
	}
	return c.st.Int64(state, c.key)
}

// Int64 returns the current key's counter in counter state `state`.
func (c *Context) Int64(state string) (int64, error) { return c.st.Int64(state, c.key) }

// Emit publishes value to the job's sink once the event's state change is
// committed. Outputs of one event are numbered in Emit order, which is part
// of their message ids. The context keeps value; the caller must not modify
// it afterwards.
func (c *Context) Emit(value []byte) { c.emits = append(c.emits, value) }

// Emitted returns the outputs emitted so far, for tests of operators.
func (c *Context) Emitted() [][]byte { return c.emits }

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
