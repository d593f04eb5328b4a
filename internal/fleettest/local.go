package fleettest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// Local is what an in-process fleet runs on: a NATS server with
// JetStream, an object store on the local filesystem, and a connection to
// the server with a user API client on it. All of it ends with the test.
type Local struct {
	Srv   *server.Server
	Store objectstore.Store
	NC    *nats.Conn
	API   *client.Client
}

// NewLocal starts a Local.
func NewLocal(tb testing.TB) Local {
	tb.Helper()
	srv := testutil.RunNATS(tb)
	store, err := objectstore.NewFS(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	nc := testutil.Connect(tb, srv)
	return Local{Srv: srv, Store: store, NC: nc, API: client.New(nc, subjects.Namespace{})}
}

// Conn returns another connection to srv, for a coordinator or a worker:
// it reconnects forever, quickly, as a process under test would.
func Conn(tb testing.TB, srv *server.Server) *nats.Conn {
	return testutil.Connect(tb, srv, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
}
