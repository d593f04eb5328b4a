// Package fleettest holds helpers shared by the tests that run a whole
// fleet (tests/...): checking keyed state against a ground truth through
// the user API, and a buffer for the logs of processes under test.
package fleettest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/testutil"
)

// Counts returns nil if every key of truth has exactly its count as job's
// state (a JSON number, as the count operator keeps it), and otherwise an
// error naming the first keys that differ.
func Counts(ctx context.Context, api *client.Client, job string, truth map[string]int64) error {
	keys := make([]string, 0, len(truth))
	for k := range truth {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		res, err := api.State(ctx, job, k)
		if err != nil {
			return err
		}
		var got int64
		if err := json.Unmarshal(res.Value, &got); err != nil || got != truth[k] {
			return fmt.Errorf("key %s: state %s, want %d", k, res.Value, truth[k])
		}
	}
	return nil
}

// WaitCounts waits, up to timeout, until Counts holds.
func WaitCounts(tb testing.TB, api *client.Client, job string, truth map[string]int64, timeout time.Duration) {
	tb.Helper()
	testutil.CheckFor(tb, timeout, 100*time.Millisecond, func() error {
		return Counts(context.Background(), api, job, truth)
	})
}

// Buffer is a bytes.Buffer safe for concurrent writers (a process's output,
// a slog handler) and the test's reads.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Run runs a fleet part (a coordinator's or worker's Run) on its own
// goroutine until the returned stop is called or the test ends; an error it
// returns while not stopped fails the test. With ready set, Run waits up to
// wait for it to be closed. The context is the part's.
func Run(tb testing.TB, what string, run func(context.Context) error, ready <-chan struct{}, wait time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil && ctx.Err() == nil {
			tb.Errorf("%s: %v", what, err)
		}
	}()
	stop := func() { cancel(); <-done }
	tb.Cleanup(stop)
	if ready != nil {
		select {
		case <-ready:
		case <-time.After(wait):
			tb.Fatalf("%s not ready", what)
		}
	}
	return ctx, stop
}

// WaitWorkers waits until exactly n workers are registered.
func WaitWorkers(tb testing.TB, api *client.Client, n int) {
	tb.Helper()
	testutil.CheckFor(tb, 10*time.Second, 50*time.Millisecond, func() error {
		ws, err := api.Workers(context.Background())
		if err == nil && len(ws) != n {
			err = fmt.Errorf("%d workers registered, want %d", len(ws), n)
		}
		return err
	})
}
