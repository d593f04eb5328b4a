package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// The built-in operators. Each keeps the value a state query returns under
// ValueState, as JSON, and (except dedupe) emits {"key": <key>, "value":
// <value>} whenever that value changes (window: when a window closes).
//
//	count   number of events of the key
//	sum     sum of the JSON number at the spec's field (dotted path) of each event
//	latest  the key's newest event body (JSON as is, anything else as a JSON string)
//	dedupe  the key's first event body; emits that first event unchanged, and nothing for later ones
//	window  tumbling windows of the spec's size on the events' JetStream timestamps: the
//	        latest window {"start", "end", "count"[, "sum"][, "closed"]}; a window is
//	        closed and emitted by a processing-time timer at its end once the input has
//	        passed it (an event of any key stamped at or after its end was applied), or
//	        earlier by an event of a later window. An event of a closed window is late:
//	        skipped (ErrLateEvent).
func init() {
	Register("count", func(subjects.OperatorSpec) (Operator, error) { return countOp{}, nil })
	Register("sum", newSum)
	Register("latest", func(subjects.OperatorSpec) (Operator, error) { return latestOp{}, nil })
	Register("dedupe", func(subjects.OperatorSpec) (Operator, error) { return dedupeOp{}, nil })
	Register("window", newWindow)
}

// result encodes a built-in's output for key with JSON value v.
func result(key string, v json.RawMessage) []byte {
	b, err := json.Marshal(struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	}{key, v})
	if err != nil {
		panic(fmt.Sprintf("worker: encoding an output: %v", err)) // v is valid JSON by construction
	}
	return b
}

// asJSON returns data if it is valid JSON and data as a JSON string
// otherwise.
func asJSON(data []byte) json.RawMessage {
	if json.Valid(data) {
		return bytes.Clone(data)
	}
	b, _ := json.Marshal(string(data))
	return b
}

type countOp struct{}

func (countOp) Process(ctx *Context, ev Event) error {
	var n int64
	v, found, err := ctx.Get(ValueState)
	if err != nil {
		return err
	}
	if found {
		var ok bool
		if n, ok = parseCount(v); !ok {
			return fmt.Errorf("count: stored value %q is not a count", v)
		}
	}
	n++
	ctx.scratch = strconv.AppendInt(ctx.scratch[:0], n, 10)
	if err := ctx.Put(ValueState, ctx.scratch); err != nil {
		return err
	}
	ctx.emitResult(ctx.scratch)
	return nil
}

// parseCount parses a non-negative decimal int64 without allocating.
func parseCount(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, n >= 0
}

type sumOp struct{ path []string }

func newSum(spec subjects.OperatorSpec) (Operator, error) {
	if spec.Field == "" {
		return nil, errors.New("sum needs field")
	}
	return sumOp{path: strings.Split(spec.Field, ".")}, nil
}

// number returns the JSON number at path in body, or an ErrBadEvent error
// (which also wraps ErrOverflow for an integer outside int64).
func number(body []byte, path []string) (num, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return num{}, fmt.Errorf("%w: body is not JSON: %v", ErrBadEvent, err)
	}
	for _, p := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			return num{}, fmt.Errorf("%w: no object at %q", ErrBadEvent, p)
		}
		if v, ok = obj[p]; !ok {
			return num{}, fmt.Errorf("%w: no field %q", ErrBadEvent, strings.Join(path, "."))
		}
	}
	n, ok := v.(json.Number)
	if !ok {
		return num{}, fmt.Errorf("%w: field %q is not a number", ErrBadEvent, strings.Join(path, "."))
	}
	x, err := parseNum(n.String())
	if err != nil {
		return num{}, fmt.Errorf("%w: field %q: %w", ErrBadEvent, strings.Join(path, "."), err)
	}
	return x, nil
}

// addTo adds x to the stored sum v (a JSON number; nil: 0) and returns the
// new sum. An overflow is a bad event: the sum keeps its value.
func addTo(v []byte, x num) ([]byte, error) {
	var sum num
	if v != nil {
		var err error
		if sum, err = parseNum(string(v)); err != nil {
			return nil, fmt.Errorf("stored sum %q: %w", v, err)
		}
	}
	s, err := sum.add(x)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	return s.appendJSON(nil), nil
}

func (o sumOp) Process(ctx *Context, ev Event) error {
	x, err := number(ev.Data, o.path)
	if err != nil {
		return err
	}
	v, _, err := ctx.Get(ValueState)
	if err != nil {
		return err
	}
	b, err := addTo(v, x)
	if err != nil {
		return fmt.Errorf("sum: %w", err)
	}
	if err := ctx.Put(ValueState, b); err != nil {
		return err
	}
	ctx.emitResult(b)
	return nil
}

type latestOp struct{}

func (latestOp) Process(ctx *Context, ev Event) error {
	v := ev.Data // Put and emitResult copy it
	if !json.Valid(v) {
		v = asJSON(v)
	}
	if err := ctx.Put(ValueState, v); err != nil {
		return err
	}
	ctx.emitResult(v)
	return nil
}

type dedupeOp struct{}

func (dedupeOp) Process(ctx *Context, ev Event) error {
	_, found, err := ctx.Get(ValueState)
	if err != nil || found {
		return err
	}
	if err := ctx.Put(ValueState, asJSON(ev.Data)); err != nil {
		return err
	}
	ctx.Emit(ev.Data)
	return nil
}

type windowOp struct {
	size time.Duration
	sum  []string // nil: count
}

// windowState is a key's latest window: the open one, or the last closed.
type windowState struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Count int64     `json:"count"`
	// Sum is the exact sum (see sumOp) for aggregate "sum".
	Sum json.Number `json:"sum,omitempty"`
	// Closed is set once the window has been emitted.
	Closed bool `json:"closed,omitempty"`
}

// ErrLateEvent marks an event whose window has closed already (it also
// wraps ErrBadEvent: the event is skipped, counted and dead-lettered).
var ErrLateEvent = errors.New("worker: late event")

func newWindow(spec subjects.OperatorSpec) (Operator, error) {
	if spec.Size <= 0 {
		return nil, errors.New("window needs size")
	}
	o := windowOp{size: spec.Size.D()}
	switch spec.Aggregate {
	case "", "count":
	case "sum":
		if spec.Field == "" {
			return nil, errors.New("window with aggregate sum needs field")
		}
		o.sum = strings.Split(spec.Field, ".")
	default:
		return nil, fmt.Errorf("window aggregate %q: want count or sum", spec.Aggregate)
	}
	return o, nil
}

// windowStart returns the start of the window of size d holding t, aligned
// to the Unix epoch.
func windowStart(t time.Time, d time.Duration) time.Time {
	ns := t.UnixNano()
	m := ns % int64(d)
	if m < 0 {
		m += int64(d)
	}
	return time.Unix(0, ns-m).UTC()
}

// window returns the key's latest window, if any.
func (o windowOp) window(ctx *Context) (w windowState, found bool, err error) {
	v, found, err := ctx.Get(ValueState)
	if err != nil || !found {
		return w, false, err
	}
	if err := json.Unmarshal(v, &w); err != nil {
		return w, false, fmt.Errorf("window: stored value %q: %w", v, err)
	}
	return w, true, nil
}

// close stores w as closed and emits it, under the id of the key's timer at
// the window's end, whether the timer or a later event closes it.
func (o windowOp) close(ctx *Context, w windowState) error {
	w.Closed = true
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("window: %w", err)
	}
	if err := ctx.Put(ValueState, b); err != nil {
		return err
	}
	ctx.emitResultAt(w.End, b)
	return nil
}

func (o windowOp) Process(ctx *Context, ev Event) error {
	var x num
	if o.sum != nil {
		var err error
		if x, err = number(ev.Data, o.sum); err != nil {
			return err
		}
	}
	start := windowStart(ev.Time, o.size)
	w, found, err := o.window(ctx)
	if err != nil {
		return err
	}
	switch {
	case found && (start.Before(w.Start) || w.Closed && start.Equal(w.Start)):
		return fmt.Errorf("%w: %w: its window [%s, %s) has closed", ErrBadEvent, ErrLateEvent,
			start.Format(time.RFC3339Nano), start.Add(o.size).Format(time.RFC3339Nano))
	case !found || start.After(w.Start):
		if found && !w.Closed {
			if err := ctx.DeleteTimer(w.End); err != nil {
				return err
			}
			if err := o.close(ctx, w); err != nil {
				return err
			}
		}
		w = windowState{Start: start, End: start.Add(o.size)}
		if err := ctx.RegisterTimer(w.End); err != nil {
			return err
		}
	}
	if o.sum != nil {
		var sum []byte
		if w.Sum != "" {
			sum = []byte(w.Sum)
		}
		b, err := addTo(sum, x)
		if err != nil {
			return fmt.Errorf("window: %w", err)
		}
		w.Sum = json.Number(b)
	}
	w.Count++
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("window: %w", err)
	}
	return ctx.Put(ValueState, b)
}

// OnTimer closes the key's open window once the task's input has passed its
// end: windows close on time even when the key goes quiet, as long as the
// input moves, and hold exactly the events stamped before their end. A timer that
// finds the input behind the window's end (a task catching up on a backlog)
// tries again a little later.
func (o windowOp) OnTimer(ctx *Context, tm Timer) error {
	w, found, err := o.window(ctx)
	if err != nil || !found || w.Closed || tm.Time.Before(w.End) {
		return err
	}
	if ctx.InputTime().Before(w.End) {
		return ctx.RegisterTimer(ctx.Now().Add(min(o.size, time.Second)))
	}
	return o.close(ctx, w)
}
