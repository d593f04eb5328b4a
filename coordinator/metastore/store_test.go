package metastore_test

import (
	"context"
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
	srv := testutil.RunNATS(t)
	js, err := jetstream.New(testutil.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := metastore.New(ctx, js, subjects.Namespace{}, replicas.Policy{}, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
