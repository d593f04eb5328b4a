package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// testCoord is a small stand-in for the coordinator, speaking the control
// and checkpoint protocol over real NATS: it answers registrations and
// heartbeats, accepts slot offers, and records task statuses, acks and
// declines. Tests drive slot requests, deployments, cancellations and
// barriers through it.
type testCoord struct {
	t        testing.TB
	nc       *nats.Conn
	ns       subjects.Namespace
	interval time.Duration

	mu            sync.Mutex
	epoch         uint64
	instances     map[string]string // worker -> current instance
	seq           int
	registrations []subjects.RegisterRequest
	heartbeats    []subjects.Heartbeat
	offers        []subjects.SlotOffer
	rejectOffers  bool
	silent        bool // answer nothing (a coordinator that hangs)
	// adopt, if set, picks the allocations of a registration's running
	// attempts the coordinator adopts.
	adopt    func(req subjects.RegisterRequest) []string
	statuses []subjects.TaskStatus
	acks     []subjects.Ack
	declines []subjects.Decline
	subs     []*nats.Subscription
}

// startCoord starts a test coordinator with epoch on its own connection to s.
func startCoord(t testing.TB, s *server.Server, epoch uint64) *testCoord {
	t.Helper()
	c := &testCoord{t: t, nc: testutil.Connect(t, s, reconnectFast...), interval: 50 * time.Millisecond, epoch: epoch, instances: map[string]string{}}
	sub := func(subject string, h nats.MsgHandler) {
		s, err := c.nc.Subscribe(subject, h)
		if err != nil {
			t.Fatal(err)
		}
		c.subs = append(c.subs, s)
	}
	sub(c.ns.Register(), c.onRegister)
	sub(c.ns.HeartbeatAll(), c.onHeartbeat)
	sub(c.ns.JobWildcard("offer"), c.onOffer)
	sub(c.ns.JobWildcard("status"), func(m *nats.Msg) { record(c, m, &c.statuses) })
	sub(c.ns.JobWildcard("ack"), func(m *nats.Msg) { record(c, m, &c.acks) })
	sub(c.ns.JobWildcard("decline"), func(m *nats.Msg) { record(c, m, &c.declines) })
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	return c
}

func record[T any, P interface {
	*T
	subjects.Message
}](c *testCoord, m *nats.Msg, into *[]T) {
	var v T
	if err := subjects.Decode(m.Data, P(&v)); err != nil {
		c.t.Errorf("test coordinator: bad %s: %v", m.Subject, err)
		return
	}
	c.mu.Lock()
	*into = append(*into, v)
	c.mu.Unlock()
}

// stop makes the coordinator vanish.
func (c *testCoord) stop() {
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
	c.subs = nil
}

func (c *testCoord) reply(m *nats.Msg, r subjects.Message) {
	if err := m.Respond(subjects.MustEncode(r)); err != nil {
		c.t.Logf("test coordinator: respond: %v", err)
	}
}

func (c *testCoord) onRegister(m *nats.Msg) {
	var req subjects.RegisterRequest
	if err := subjects.Decode(m.Data, &req); err != nil {
		c.reply(m, &subjects.RegisterResponse{Error: subjects.AsError(err)})
		return
	}
	c.mu.Lock()
	if c.silent {
		c.mu.Unlock()
		return
	}
	c.seq++
	inst := fmt.Sprintf("%d-%d", c.epoch, c.seq)
	c.instances[req.Worker] = inst
	c.registrations = append(c.registrations, req)
	resp := subjects.RegisterResponse{Instance: inst, Epoch: c.epoch,
		HeartbeatInterval: subjects.Duration(c.interval), HeartbeatTimeout: subjects.Duration(10 * c.interval)}
	if c.adopt != nil {
		resp.Adopted = c.adopt(req)
	}
	c.mu.Unlock()
	c.reply(m, &resp)
}

func (c *testCoord) onHeartbeat(m *nats.Msg) {
	var hb subjects.Heartbeat
	if err := subjects.Decode(m.Data, &hb); err != nil {
		c.reply(m, &subjects.HeartbeatResponse{Error: subjects.AsError(err)})
		return
	}
	c.mu.Lock()
	if c.silent {
		c.mu.Unlock()
		return
	}
	resp := subjects.HeartbeatResponse{Epoch: c.epoch}
	if c.instances[hb.Worker] != hb.Instance {
		resp.Error = subjects.Errorf(subjects.CodeUnknownWorker, "worker %s instance %s is not registered", hb.Worker, hb.Instance)
	} else {
		c.heartbeats = append(c.heartbeats, hb)
	}
	c.mu.Unlock()
	c.reply(m, &resp)
}

func (c *testCoord) onOffer(m *nats.Msg) {
	var o subjects.SlotOffer
	if err := subjects.Decode(m.Data, &o); err != nil {
		c.reply(m, &subjects.OfferResponse{Error: subjects.AsError(err)})
		return
	}
	c.mu.Lock()
	c.offers = append(c.offers, o)
	resp := subjects.OfferResponse{Accepted: []string{}}
	if !c.rejectOffers {
		for _, s := range o.Slots {
			resp.Accepted = append(resp.Accepted, s.Allocation)
		}
	}
	c.mu.Unlock()
	c.reply(m, &resp)
}

// restart simulates a coordinator restart: a higher epoch, no workers known.
func (c *testCoord) restart(epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch = epoch
	c.instances = map[string]string{}
}

// forget makes the coordinator declare worker lost.
func (c *testCoord) forget(worker string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.instances, worker)
}

func (c *testCoord) setSilent(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.silent = v
}

func (c *testCoord) numRegistrations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.registrations)
}

func (c *testCoord) numHeartbeats() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.heartbeats)
}

func (c *testCoord) curEpoch() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

func (c *testCoord) request(subject string, req, resp subjects.Message) error {
	b, err := subjects.Encode(req)
	if err != nil {
		return err
	}
	m, err := c.nc.Request(subject, b, 10*time.Second)
	if err != nil {
		return err
	}
	return subjects.Decode(m.Data, resp)
}

// allocate requests a slot of worker for job and waits until the worker
// has offered it and the offer was answered.
func (c *testCoord) allocate(worker, job, alloc string) (int, error) {
	c.t.Helper()
	var resp subjects.SlotResponse
	if err := c.request(c.ns.SlotRequest(worker), &subjects.SlotRequest{Epoch: c.curEpoch(), Worker: worker, Allocation: alloc, Job: job}, &resp); err != nil {
		return -1, err
	}
	if resp.Error != nil {
		return -1, resp.Error
	}
	return resp.Slot, nil
}

// deploy sends a deployment and returns the worker's answer.
func (c *testCoord) deploy(d subjects.DeployTask) error {
	var resp subjects.Response
	if err := c.request(c.ns.Deploy(d.Worker), &d, &resp); err != nil {
		return err
	}
	return resp.Err()
}

func (c *testCoord) cancel(ct subjects.CancelTask) error {
	var resp subjects.Response
	if err := c.request(c.ns.Cancel(ct.Worker), &ct, &resp); err != nil {
		return err
	}
	return resp.Err()
}

func (c *testCoord) publish(subject string, m subjects.Message) {
	c.t.Helper()
	if err := c.nc.Publish(subject, subjects.MustEncode(m)); err != nil {
		c.t.Fatal(err)
	}
}

// lastStatus returns the last reported state of ref (TaskUnknown if none).
func (c *testCoord) lastStatus(ref subjects.TaskRef) (subjects.TaskState, *subjects.Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.statuses) - 1; i >= 0; i-- {
		if c.statuses[i].TaskRef == ref {
			return c.statuses[i].State, c.statuses[i].Error
		}
	}
	return subjects.TaskUnknown, nil
}

func (c *testCoord) waitStatus(ref subjects.TaskRef, want subjects.TaskState) {
	c.t.Helper()
	testutil.CheckFor(c.t, 20*time.Second, 10*time.Millisecond, func() error {
		if st, err := c.lastStatus(ref); st != want {
			return fmt.Errorf("task %+v is %s (%v), want %s", ref, st, err, want)
		}
		return nil
	})
}

// waitAck waits for the ack or decline of checkpoint id by ref.
func (c *testCoord) waitAck(ref subjects.TaskRef, id uint64) (*subjects.Ack, *subjects.Decline) {
	c.t.Helper()
	var ack *subjects.Ack
	var dec *subjects.Decline
	testutil.CheckFor(c.t, 20*time.Second, 10*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range c.acks {
			if c.acks[i].TaskRef == ref && c.acks[i].Checkpoint == id {
				ack = &c.acks[i]
				return nil
			}
		}
		for i := range c.declines {
			if c.declines[i].TaskRef == ref && c.declines[i].Checkpoint == id {
				dec = &c.declines[i]
				return nil
			}
		}
		return fmt.Errorf("no ack or decline of checkpoint %d by %+v", id, ref)
	})
	return ack, dec
}

// reconnectFast makes a test connection survive a server restart quickly.
var reconnectFast = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}

// testWorker starts a worker on its own connection to s and stops it when
// the test ends. cfg's Conn, Store, DataDir and Logger default to test
// values.
func testWorker(t testing.TB, s *server.Server, cfg Config) *Worker {
	t.Helper()
	if cfg.Conn == nil {
		cfg.Conn = testutil.Connect(t, s, reconnectFast...)
	}
	if cfg.Store == nil {
		cfg.Store = objectstore.NewMem()
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = time.Second
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("worker did not stop")
		}
	})
	return w
}

// testLogger logs through t when -v is given, and nowhere otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
