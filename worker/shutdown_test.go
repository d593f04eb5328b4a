package worker

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// stallProxy relays TCP connections to a NATS server on loopback. While
// stalled it keeps every connection open but delivers no byte either way:
// a server that accepted the connection and then stopped answering, which a
// client only notices through its own timeouts.
type stallProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func startStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target}
	t.Cleanup(p.close)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go p.pipe(out, in)
			go p.pipe(in, out)
		}
	}()
	return p
}

func (p *stallProxy) url() string { return "nats://" + p.ln.Addr().String() }

// pipe copies src to dst; bytes read while stalled are held until the
// stall ends (or forever).
func (p *stallProxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.stalled.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) close() {
	p.stalled.Store(false)
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// runWorker starts w.Run and returns a function that cancels it and
// returns how long Run took to return (failing the test past limit).
func runWorker(t *testing.T, w *Worker, limit time.Duration) func() time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop := func() time.Duration {
		if stopped {
			return 0
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker Run: %v", err)
			}
		case <-time.After(limit):
			t.Fatalf("worker Run did not return within %s of its context's end", limit)
		}
		return time.Since(start)
	}
	t.Cleanup(func() { stop() })
	return stop
}

// Shutdown and task stop are bounded whatever NATS does (issue 9, item 7):
// with the server shut down, stalled behind a proxy that delivers nothing
// (so the input's ordered consumer misses its heartbeats and retries
// recreating itself while holding its lock: its Stop blocks), and
// restarting over and over, a stopped task reports or is abandoned within
// InputStopTimeout and Run returns within ShutdownTimeout.
func TestShutdownBoundedWhateverNATSDoes(t *testing.T) {
	const (
		inputStop = 500 * time.Millisecond
		shutdown  = 2 * time.Second
		// leave (1 s at most) + shutdown, with room for a loaded machine.
		limit = 5 * time.Second
	)
	for _, tc := range []struct {
		name  string
		fault func(t *testing.T, s *server.Server, opts *server.Options, p *stallProxy) (end func())
	}{
		{"down", func(t *testing.T, s *server.Server, _ *server.Options, _ *stallProxy) func() {
			s.Shutdown()
			s.WaitForShutdown()
			return func() {}
		}},
		{"stalled", func(t *testing.T, _ *server.Server, _ *server.Options, p *stallProxy) func() {
			p.stalled.Store(true)
			// Past the input heartbeat: the consumer is being recreated.
			time.Sleep(2 * time.Second)
			return func() {}
		}},
		{"restarting", func(t *testing.T, s *server.Server, opts *server.Options, _ *stallProxy) func() {
			s.Shutdown()
			s.WaitForShutdown()
			quit, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for {
					srv, err := server.NewServer(opts)
					if err != nil {
						t.Error(err)
						return
					}
					go srv.Start()
					srv.ReadyForConnections(5 * time.Second)
					select {
					case <-quit:
					case <-time.After(300 * time.Millisecond):
					}
					srv.Shutdown()
					srv.WaitForShutdown()
					select {
					case <-quit:
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}()
			time.Sleep(time.Second)
			return func() { close(quit); <-done }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testutil.NATSOptions(t.TempDir())
			s := testutil.RunNATSWithOptions(t, opts)
			opts.Port = s.Addr().(*net.TCPAddr).Port
			p := startStallProxy(t, s.Addr().String())
			c := startCoord(t, s, 1)
			nc, err := nats.Connect(p.url(), reconnectFast...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			w, err := New(Config{Conn: nc, Store: objectstore.NewMem(), DataDir: t.TempDir(), Logger: testLogger(t),
				RequestTimeout: time.Second, BatchSize: 16, Slots: 2,
				ShutdownTimeout: shutdown, InputStopTimeout: inputStop, InputHeartbeat: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			stop := runWorker(t, w, limit)
			j := newTestJob(t, s, "stuck", 2)
			refs := []subjects.TaskRef{j.deploy(c, w, 0, 1, nil), j.deploy(c, w, 1, 1, nil)}
			for _, ref := range refs {
				c.waitStatus(ref, subjects.TaskRunning)
			}
			j.publish(t, 200)
			j.waitCount(t, 200)

			end := tc.fault(t, s, opts, p)
			defer end()
			// One task stopped alone (as a cancellation or fencing would)
			// is gone within the input bound.
			w.mu.Lock()
			first := w.tasks[refs[0]]
			w.mu.Unlock()
			start := time.Now()
			w.stopTasks(refs[:1])
			select {
			case <-first.done:
				t.Logf("task stopped in %s", time.Since(start).Round(time.Millisecond))
			case <-time.After(inputStop + 2*time.Second):
				t.Fatalf("a stopped task still runs after %s", time.Since(start))
			}
			took := stop()
			t.Logf("Run returned %s after its context ended", took.Round(time.Millisecond))
		})
	}
}
