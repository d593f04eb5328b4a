package testutil

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// RunNATS starts an in-process nats-server with JetStream on a random
// loopback port, storing in a fresh temp dir, as nats-server's own RunServer
// test helper does. It is shut down when the test ends.
func RunNATS(tb testing.TB) *server.Server {
	tb.Helper()
	return RunNATSWithOptions(tb, NATSOptions(tb.TempDir()))
}

// NATSOptions returns the options RunNATS uses, storing in dir, for tests
// that restart a server on the same store or change settings.
func NATSOptions(dir string) *server.Options {
	return &server.Options{
		Host:       "127.0.0.1",
		Port:       -1,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   dir,
		MaxPayload: 1 << 20,
		// flotilla's metadata must not be acknowledged before it is on disk.
		SyncAlways: true,
	}
}

// RunNATSWithOptions starts a server with opts and waits until it accepts
// connections.
func RunNATSWithOptions(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatalf("nats-server did not start")
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect returns a client connection to s, closed when the test ends.
func Connect(tb testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("connect to %s: %v", s.ClientURL(), err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
