package coordinator

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/internal/testutil"
)

// TestServiceStoppedWhileDisconnected: a term that ends while NATS is down
// stops its API service without leaving a subscription on the server once
// it is back: a request then finds no responder, where a plain Stop while
// disconnected leaves one that swallows every request routed to it.
func TestServiceStoppedWhileDisconnected(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	srv := testutil.RunNATSWithOptions(t, opts)
	opts.Port = srv.Addr().(*net.TCPAddr).Port
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	svc, err := micro.AddService(nc, micro.Config{Name: "probe", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AddEndpoint("ping", micro.HandlerFunc(func(r micro.Request) { _ = r.Respond([]byte("pong")) }),
		micro.WithEndpointSubject("probe.ping")); err != nil {
		t.Fatal(err)
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	stopService(nc, svc)
	client := testutil.Connect(t, testutil.RunNATSWithOptions(t, opts))
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !nc.IsConnected() || !svc.Stopped() {
			return errors.New("not reconnected, or the service not stopped yet")
		}
		return nc.Flush() // the server has what the connection sent on reconnecting
	})
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.RequestWithContext(ctx, "probe.ping", nil)
		cancel()
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("request %d after the service stopped: %v, want no responders", i, err)
		}
	}
}
