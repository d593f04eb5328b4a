package client

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestReadsGetPastAPausedLeader: a leader paused with SIGSTOP keeps its
// subscription in the API's queue group, and the requests routed to it
// are never answered. A read is sent again when an attempt times out, and
// reaches the leader that answers (without, about half the reads would
// wait out their whole timeout).
func TestReadsGetPastAPausedLeader(t *testing.T) {
	srv := testutil.RunNATS(t)
	ns := subjects.Namespace{}
	subject := ns.API(subjects.APIJobStatus)

	leader := testutil.Connect(t, srv)
	svc, err := micro.AddService(leader, micro.Config{Name: "leader", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) {
		_ = r.Respond(subjects.MustEncode(&subjects.JobInfo{Job: "clicks", State: subjects.JobRunning}))
	}), micro.WithEndpointSubject(subject)); err != nil {
		t.Fatal(err)
	}
	paused := testutil.Connect(t, srv)
	if _, err := paused.QueueSubscribe(subject, micro.DefaultQueueGroup, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := paused.Flush(); err != nil {
		t.Fatal(err)
	}

	api := New(testutil.Connect(t, srv), ns)
	for i := 0; i < 4; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		info, err := api.Status(ctx, "clicks")
		cancel()
		if err != nil || info.Job != "clicks" {
			t.Fatalf("status %d: %+v, %v", i, info, err)
		}
	}
}

// TestMutatingRequestsGetPastAPausedLeader: a request that changes
// something, swallowed by a paused leader, is sent again with the same
// request id when the attempt times out, and the leader that answers
// carries it out once. The live leader subscribes only once the paused
// one holds the first attempt, so that the first attempt is always lost.
func TestMutatingRequestsGetPastAPausedLeader(t *testing.T) {
	srv := testutil.RunNATS(t)
	ns := subjects.Namespace{}
	cases := []struct {
		endpoint string
		call     func(context.Context, *Client) error
		answer   subjects.Message
	}{
		{subjects.APIJobCancel, func(ctx context.Context, c *Client) error {
			_, err := c.Cancel(ctx, "clicks")
			return err
		}, &subjects.JobInfo{Job: "clicks", State: subjects.JobCanceled}},
		{subjects.APIJobStop, func(ctx context.Context, c *Client) error {
			_, err := c.Stop(ctx, "clicks")
			return err
		}, &subjects.SavepointResult{Job: "clicks", Checkpoint: 7, Location: "sp-7"}},
		{subjects.APISavepointDelete, func(ctx context.Context, c *Client) error {
			return c.DeleteSavepoint(ctx, "sp-7")
		}, &subjects.Response{}},
	}
	for _, tc := range cases {
		t.Run(tc.endpoint, func(t *testing.T) {
			subject := ns.API(tc.endpoint)
			// idOf reads the request id of any of the requests above.
			idOf := func(b []byte) string {
				var r struct {
					RequestID string `json:"request_id"`
				}
				if err := json.Unmarshal(b, &r); err != nil {
					t.Errorf("request %s: %v", b, err)
				}
				return r.RequestID
			}
			swallowed := make(chan string, 100)
			paused := testutil.Connect(t, srv)
			if _, err := paused.QueueSubscribe(subject, micro.DefaultQueueGroup, func(m *nats.Msg) { swallowed <- idOf(m.Data) }); err != nil {
				t.Fatal(err)
			}
			if err := paused.Flush(); err != nil {
				t.Fatal(err)
			}

			api := New(testutil.Connect(t, srv), ns)
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				done <- tc.call(ctx, api)
			}()
			var id string
			select {
			case id = <-swallowed:
			case <-time.After(10 * time.Second):
				t.Fatal("the paused leader got no request")
			}
			if id == "" {
				t.Fatal("the request carries no request id")
			}

			var mu sync.Mutex
			served := map[string]int{} // request id -> attempts the live leader got
			leader := testutil.Connect(t, srv)
			svc, err := micro.AddService(leader, micro.Config{Name: "leader", Version: "0.0.1"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = svc.Stop() })
			if err := svc.AddEndpoint("ep", micro.HandlerFunc(func(r micro.Request) {
				mu.Lock()
				served[idOf(r.Data())]++
				mu.Unlock()
				_ = r.Respond(subjects.MustEncode(tc.answer))
			}), micro.WithEndpointSubject(subject)); err != nil {
				t.Fatal(err)
			}

			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("after %v: %v", time.Since(start), err)
				}
			case <-time.After(time.Minute):
				t.Fatal("no answer")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(served) != 1 || served[id] != 1 {
				t.Errorf("the live leader got %v, want request %s once", served, id)
			}
			n := 1
			for more := true; more; {
				select {
				case other := <-swallowed:
					n++
					if other != id {
						t.Errorf("an attempt carried request id %s, the first %s", other, id)
					}
				default:
					more = false
				}
			}
			t.Logf("answered after %v; the paused leader swallowed %d attempt(s)", time.Since(start).Round(time.Millisecond), n)
		})
	}
}

// TestLeaderPrefersTheLeadersAnswer: every coordinator answers who leads,
// and a standby's view may lag a takeover. The leader's own answer wins
// even when a standby answers first; with no leader answering, the
// standby's answer naming the highest term does.
func TestLeaderPrefersTheLeadersAnswer(t *testing.T) {
	srv := testutil.RunNATS(t)
	ns := subjects.Namespace{}
	answer := func(info subjects.LeaderInfo, delay time.Duration) *nats.Subscription {
		sub, err := testutil.Connect(t, srv).Subscribe(ns.Leader(), func(m *nats.Msg) {
			time.Sleep(delay)
			_ = m.Respond(subjects.MustEncode(&info))
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	answer(subjects.LeaderInfo{Leader: "c1", Term: 3, Answered: "c1"}, 0) // a leader that stepped down
	answer(subjects.LeaderInfo{Leader: "c1", Term: 2, Answered: "c3"}, 0) // a standby further behind
	leader := answer(subjects.LeaderInfo{Leader: "c2", Term: 4, Answered: "c2", Leading: true}, 50*time.Millisecond)
	c := New(testutil.Connect(t, srv), ns)
	info, err := c.Leader(context.Background())
	if err != nil || info.Leader != "c2" || info.Term != 4 {
		t.Fatalf("who leads: %+v %v, want c2's own answer (term 4)", info, err)
	}
	_ = leader.Unsubscribe()
	info, err = c.Leader(context.Background())
	if err != nil || info.Leader != "c1" || info.Term != 3 {
		t.Fatalf("who leads, no leader answering: %+v %v, want the highest term (3)", info, err)
	}
}
