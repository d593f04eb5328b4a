package devcluster

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A port in use is reported at once, with the address and the reason,
// instead of after nats-server's readiness timeout.
func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{Listen: addr, DataDir: t.TempDir(), Out: io.Discard})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("error %v, want one naming %s and the reason", err, addr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no error 5 s after starting on a port in use")
	}
}
