package metastore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/coordinator/metastore/metastoretest"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

func TestJetStream(t *testing.T) {
	metastoretest.Run(t, func(t *testing.T, o metastore.Options) metastoretest.Target {
		return metastoretest.Target{Store: openJetStream(t, o), Sleep: time.Sleep}
	})
}

func TestMem(t *testing.T) {
	metastoretest.Run(t, func(t *testing.T, o metastore.Options) metastoretest.Target {
		c := testutil.NewClock(time.Unix(1_000_000, 0))
		return metastoretest.Target{Store: metastore.NewMem(o, c.Now), Sleep: func(d time.Duration) {
			c.Advance(d)
			time.Sleep(time.Millisecond) // let background work (forget) run
		}}
	})
}

func openJetStream(t *testing.T, o metastore.Options) metastore.Store {
	t.Helper()
	return openOn(t, runJetStream(t), o)
}

// runJetStream starts an in-process server with JetStream.
func runJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(testutil.Connect(t, testutil.RunNATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// openOn opens a store on js.
func openOn(t *testing.T, js jetstream.JetStream, o metastore.Options) metastore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := metastore.New(ctx, js, subjects.Namespace{}, replicas.Policy{}, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLeaseTTLFixedAtCreation: a store opened on an existing leader bucket
// with another lease TTL takes the bucket's, and leaves the bucket as it
// was: a coordinator must never act by a longer TTL than the servers keep
// its lease, nor cut short the lease of one that acts by the bucket's.
func TestLeaseTTLFixedAtCreation(t *testing.T) {
	js := runJetStream(t)
	open := func(ttl time.Duration) metastore.Store { return openOn(t, js, metastore.Options{LeaseTTL: ttl}) }
	if got := open(3 * time.Second).LeaseTTL(); got != 3*time.Second {
		t.Fatalf("a new bucket: lease TTL %v, want 3s", got)
	}
	for _, ttl := range []time.Duration{2 * time.Second, 5 * time.Second} {
		if got := open(ttl).LeaseTTL(); got != 3*time.Second {
			t.Errorf("opened with %v on a 3s bucket: lease TTL %v, want the bucket's 3s", ttl, got)
		}
	}
	s, err := js.Stream(context.Background(), "KV_"+metastore.BucketName(subjects.Namespace{}, "LEADER"))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != 3*time.Second {
		t.Errorf("the bucket's TTL is now %v, want 3s", got)
	}
}

// TestOpenedTogether: coordinators that start together (all waited for
// NATS, which just came up) open the same buckets at once. Each open turns
// direct gets off and binds its reads to whatever the stream says then; an
// open that ran between another's create-or-update (which turned direct
// gets on) and that one's turning them off again bound its reads to a
// direct-get subject nobody answers. Its leader then waited forever to
// claim its jobs. Every store must read, whatever the interleaving.
func TestOpenedTogether(t *testing.T) {
	js := runJetStream(t)
	for round := range 15 {
		ns, err := subjects.NewNamespace(fmt.Sprintf("r%d", round))
		if err != nil {
			t.Fatal(err)
		}
		stores := make([]metastore.Store, 3)
		var wg sync.WaitGroup
		for i := range stores {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s, err := metastore.New(ctx, js, ns, replicas.Policy{}, metastore.Options{LeaseTTL: 5 * time.Second})
				if err != nil {
					t.Error(err)
				}
				stores[i] = s
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, s := range stores {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := s.ReadLease(ctx); !errors.Is(err, metastore.ErrNoLease) {
				t.Errorf("round %d, store %d: reading the lease: %v", round, i, err)
			}
			if _, _, err := s.Load(ctx, "job", false); err != nil {
				t.Errorf("round %d, store %d: loading a job: %v", round, i, err)
			}
			if _, err := s.Jobs(ctx); err != nil {
				t.Errorf("round %d, store %d: listing jobs: %v", round, i, err)
			}
			cancel()
		}
	}
}
