package replicas_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
)

func TestPlan(t *testing.T) {
	east := &jetstream.Placement{Cluster: "east", Tags: []string{"ssd"}}
	for _, tc := range []struct {
		name      string
		existing  *jetstream.StreamConfig
		p         replicas.Policy
		replicas  int
		change    replicas.Change
		placement *jetstream.Placement
	}{
		{"missing, default", nil, replicas.Policy{}, 1, replicas.Create, nil},
		{"missing, R3 placed", nil, replicas.Policy{Replicas: 3, Placement: east}, 3, replicas.Create, east},
		{"an operator's R3 is never lowered", &jetstream.StreamConfig{Replicas: 3}, replicas.Policy{Replicas: 1}, 3, replicas.Keep, nil},
		{"an R1 is raised", &jetstream.StreamConfig{Replicas: 1}, replicas.Policy{Replicas: 3}, 3, replicas.Raise, nil},
		{"existing placement kept", &jetstream.StreamConfig{Replicas: 3, Placement: east}, replicas.Policy{Replicas: 3}, 3, replicas.Keep, east},
		{"R5 kept at R3 asked", &jetstream.StreamConfig{Replicas: 5}, replicas.Policy{Replicas: 3}, 5, replicas.Keep, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, change := replicas.Plan(tc.existing, jetstream.StreamConfig{Name: "S"}, tc.p)
			if got.Replicas != tc.replicas || change != tc.change || got.Placement != tc.placement {
				t.Fatalf("Plan = replicas %d, %v, placement %v; want %d, %v, %v", got.Replicas, change, got.Placement, tc.replicas, tc.change, tc.placement)
			}
		})
	}
	if err := (replicas.Policy{Replicas: 6}).Check(); err == nil {
		t.Fatal("6 replicas accepted")
	}
}

// TestSingleServer: on a server that is not clustered the automatic count
// is 1, and an explicit 3 is refused with an error naming the stream.
func TestSingleServer(t *testing.T) {
	s := testutil.RunNATS(t)
	nc := testutil.Connect(t, s)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := replicas.Resolve(ctx, nc, js, 0, jetstream.KeyValueConfig{Bucket: "PROBE"}, nil)
	if err != nil || n != 1 {
		t.Fatalf("Resolve = %d, %v; want 1", n, err)
	}
	_, _, err = replicas.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"src.>"}}, replicas.Policy{Replicas: 3}, false)
	if !errors.Is(err, replicas.ErrReplicas) {
		t.Fatalf("R3 on one server: %v; want ErrReplicas", err)
	}
	t.Log(err)
}

// TestCluster runs against three nats-server processes: the automatic
// count is 3, an operator's R3 bucket stays R3 when asked for 1, and an R1
// stream is raised to R3.
func TestCluster(t *testing.T) {
	c := testutil.StartNATSCluster(t, 3)
	nc := c.Connect()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	n, err := replicas.Resolve(ctx, nc, js, 0, jetstream.KeyValueConfig{Bucket: "PROBE"}, nil)
	if err != nil || n != 3 {
		t.Fatalf("Resolve = %d, %v; want 3", n, err)
	}
	var resent bool
	err = answered(ctx, &resent, true, func(ctx context.Context) error {
		_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "OPS", Replicas: 3})
		if resent && errors.Is(err, jetstream.ErrBucketExists) {
			return nil // the unanswered attempt created it
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var kv jetstream.KeyValue
	var change replicas.Change
	err = answered(ctx, nil, false, func(ctx context.Context) (err error) {
		kv, change, err = replicas.EnsureKV(ctx, js, jetstream.KeyValueConfig{Bucket: "OPS", History: 1}, replicas.Policy{Replicas: 1})
		return err
	})
	if err != nil || change != replicas.Keep {
		t.Fatalf("EnsureKV = %v, %v", change, err)
	}
	st, err := kv.Status(ctx)
	if err != nil || st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas != 3 {
		t.Fatalf("the operator's R3 bucket was changed: %v", err)
	}

	resent = false
	err = answered(ctx, &resent, true, func(ctx context.Context) error {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"src.>"}, Replicas: 1})
		if resent && errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var s jetstream.Stream
	resent = false
	err = answered(ctx, &resent, true, func(ctx context.Context) (err error) {
		s, change, err = replicas.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"src.>"}}, replicas.Policy{Replicas: 3}, false)
		return err
	})
	// An update whose answer was lost may have raised the replicas: sent
	// again, it finds nothing to change.
	if err != nil || (change != replicas.Raise && !(resent && change == replicas.Keep)) || s.CachedInfo().Config.Replicas != 3 {
		t.Fatalf("EnsureStream = %v, %v", change, err)
	}
	// Placement passes through: a cluster name that does not exist cannot
	// be placed, and the error says so.
	err = answered(ctx, nil, false, func(ctx context.Context) error {
		_, _, err := replicas.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "ELSEWHERE", Subjects: []string{"else.>"}},
			replicas.Policy{Replicas: 3, Placement: &jetstream.Placement{Cluster: "nowhere"}}, false)
		return err
	})
	if err == nil {
		t.Fatal("a stream placed in an unknown cluster was created")
	}
	t.Log(err)
}

// answered runs call with 5 s per attempt, as often as an attempt gets no
// answer or (with peers) finds a peer offline, until ctx ends: on a cluster
// that has just formed, on a loaded machine, a JetStream API request is now
// and then left unanswered (its meta leader changed under it), and a peer
// is now and then counted offline for a moment. *resent (if not nil) says
// whether an attempt was sent again.
func answered(ctx context.Context, resent *bool, peers bool, call func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := call(actx)
		again := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		var apiErr *jetstream.APIError
		offline := errors.Is(err, replicas.ErrReplicas) || (errors.As(err, &apiErr) && apiErr.ErrorCode == 10005)
		if peers && offline && ctx.Err() == nil {
			again = true // no suitable peers for placement, peer offline
			time.Sleep(200 * time.Millisecond)
		}
		if !again {
			return err
		}
		if resent != nil {
			*resent = true
		}
	}
}
