package client

import (
	"context"
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
