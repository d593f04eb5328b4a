// Command customop is a flotilla worker with one operator of its own,
// "maxlen": for each key, the length of the longest event body seen. Run it
// with the flags of `flotilla worker`, then submit a job whose operator
// type is "maxlen":
//
//	cd examples/customop
//	go run . -store file:///var/lib/flotilla/store -slots 2
//
// It is a module of its own, as a worker of yours would be: its go.mod
// requires github.com/flotilla-io/flotilla (and, inside this repository
// only, replaces it with the checkout around it).
package main

import (
	"os"
	"strconv"

	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

func main() {
	worker.Register("maxlen", func(subjects.OperatorSpec) (worker.Operator, error) { return maxLen{}, nil })
	os.Exit(worker.Main(os.Args[1:]))
}

// maxLen keeps each key's longest body length under worker.ValueState, as
// a JSON number, and emits it whenever it grows.
type maxLen struct{}

func (maxLen) Process(ctx *worker.Context, ev worker.Event) error {
	v, found, err := ctx.Get(worker.ValueState)
	if err != nil {
		return err
	}
	longest := 0
	if found {
		if longest, err = strconv.Atoi(string(v)); err != nil {
			return err
		}
	}
	if !found || len(ev.Data) > longest {
		b := strconv.AppendInt(nil, int64(len(ev.Data)), 10)
		if err := ctx.Put(worker.ValueState, b); err != nil {
			return err
		}
		ctx.Emit(b)
	}
	return nil
}
