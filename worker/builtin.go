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
//	        open window {"start", "end", "count"[, "sum"]}; an event of a later window
//	        emits the closed window and opens a new one. A late event (older than the
//	        open window) counts in the open window.
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
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return fmt.Errorf("count: stored value %q: %w", v, err)
		}
	}
	n++
	b := strconv.AppendInt(nil, n, 10)
	if err := ctx.Put(ValueState, b); err != nil {
		return err
	}
	ctx.Emit(result(ev.Key, b))
	return nil
}

type sumOp struct{ path []string }

func newSum(spec subjects.OperatorSpec) (Operator, error) {
	if spec.Field == "" {
		return nil, errors.New("sum needs field")
	}
	return sumOp{path: strings.Split(spec.Field, ".")}, nil
}

// number returns the JSON number at path in body, or an ErrBadEvent error.
func number(body []byte, path []string) (float64, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return 0, fmt.Errorf("%w: body is not JSON: %v", ErrBadEvent, err)
	}
	for _, p := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			return 0, fmt.Errorf("%w: no object at %q", ErrBadEvent, p)
		}
		if v, ok = obj[p]; !ok {
			return 0, fmt.Errorf("%w: no field %q", ErrBadEvent, strings.Join(path, "."))
		}
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%w: field %q is not a number", ErrBadEvent, strings.Join(path, "."))
	}
	f, err := n.Float64()
	if err != nil {
		return 0, fmt.Errorf("%w: field %q: %v", ErrBadEvent, strings.Join(path, "."), err)
	}
	return f, nil
}

func formatFloat(f float64) []byte {
	b, err := json.Marshal(f)
	if err != nil { // NaN or infinity: cannot come from JSON input sums of finite numbers
		return []byte("null")
	}
	return b
}

func (o sumOp) Process(ctx *Context, ev Event) error {
	x, err := number(ev.Data, o.path)
	if err != nil {
		return err
	}
	var sum float64
	v, found, err := ctx.Get(ValueState)
	if err != nil {
		return err
	}
	if found {
		if sum, err = strconv.ParseFloat(string(v), 64); err != nil {
			return fmt.Errorf("sum: stored value %q: %w", v, err)
		}
	}
	b := formatFloat(sum + x)
	if err := ctx.Put(ValueState, b); err != nil {
		return err
	}
	ctx.Emit(result(ev.Key, b))
	return nil
}

type latestOp struct{}

func (latestOp) Process(ctx *Context, ev Event) error {
	v := asJSON(ev.Data)
	if err := ctx.Put(ValueState, v); err != nil {
		return err
	}
	ctx.Emit(result(ev.Key, v))
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
	ctx.Emit(bytes.Clone(ev.Data))
	return nil
}

type windowOp struct {
	size time.Duration
	sum  []string // nil: count
}

// windowState is a window's value.
type windowState struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Count int64     `json:"count"`
	Sum   *float64  `json:"sum,omitempty"`
}

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

func (o windowOp) Process(ctx *Context, ev Event) error {
	var x float64
	if o.sum != nil {
		var err error
		if x, err = number(ev.Data, o.sum); err != nil {
			return err
		}
	}
	start := windowStart(ev.Time, o.size)
	var w windowState
	v, found, err := ctx.Get(ValueState)
	if err != nil {
		return err
	}
	if found {
		if err := json.Unmarshal(v, &w); err != nil {
			return fmt.Errorf("window: stored value %q: %w", v, err)
		}
	}
	if !found || start.After(w.Start) {
		if found {
			ctx.Emit(result(ev.Key, v))
		}
		w = windowState{Start: start, End: start.Add(o.size)}
		if o.sum != nil {
			w.Sum = new(float64)
		}
	}
	w.Count++
	if o.sum != nil {
		if w.Sum == nil {
			w.Sum = new(float64)
		}
		*w.Sum += x
	}
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("window: %w", err)
	}
	return ctx.Put(ValueState, b)
}
