package cli

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/flotilla-io/flotilla/internal/testutil"
)

// Every authentication method against a server that requires it, with a
// whole fleet on top, is tested in tests/auth; these are the rules of
// Connect itself.

func TestConnectRefusesAmbiguousSettings(t *testing.T) {
	for _, c := range []struct {
		name string
		c    Common
		want string
	}{
		{"creds and user", Common{Creds: "a.creds", User: "u"}, "more than one kind of NATS credentials (-creds, -user"},
		{"nkey and token", Common{NKey: "user.nk", Token: "t"}, "more than one kind of NATS credentials (-nkey, -token"},
		{"unreadable nkey", Common{NKey: "no-such-file.nk"}, "NATS settings: nats: open no-such-file.nk"},
		{"user and token", Common{User: "u", Password: "p", Token: "t"}, "more than one kind of NATS credentials (-user, -token"},
		{"password without user", Common{Password: "p"}, "-password (NATS_PASSWORD) is set without -user"},
		{"certificate without key", Common{TLSCert: "c.pem"}, "needs both -tlscert"},
		{"key without certificate", Common{TLSKey: "k.pem"}, "needs both -tlscert"},
		{"wildcard inbox prefix", Common{InboxPrefix: "_INBOX.>"}, "invalid custom prefix"},
	} {
		c.c.NATS = "nats://127.0.0.1:1"
		nc, err := c.c.Connect("test", false)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// syncBuffer is a buffer a logger may write to from any goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitLog(t *testing.T, buf *syncBuffer, want string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(buf.String(), want) {
			return fmt.Errorf("no %q in the log:\n%s", want, buf.String())
		}
		return nil
	})
}

func TestLogConnectionReportsPermissionViolations(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	opts.Users = []*server.User{{Username: "u", Password: "p", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"allowed"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.u.>"}},
	}}}
	srv := testutil.RunNATSWithOptions(t, opts)
	var buf syncBuffer
	c := Common{NATS: srv.ClientURL(), User: "u", Password: "p", InboxPrefix: "_INBOX.u"}
	nc, err := c.Connect("test", false, LogConnection(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("denied", nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &buf, `Permissions Violation for Publish to \"denied\"`)
	if _, err := nc.SubscribeSync("secrets.>"); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &buf, `Permissions Violation for Subscription to \"secrets.>\"`)
	// Replies arrive under the inbox prefix, the only inbox it may read.
	if _, err := nc.Request("allowed", nil, 200*time.Millisecond); err == nil {
		t.Error("request answered")
	}
	if strings.Contains(buf.String(), "_INBOX.u") {
		t.Errorf("the inbox prefix was refused:\n%s", buf.String())
	}
}

// A long-running process whose credentials the server refuses keeps
// trying, says why, and connects once the server accepts them, without a
// restart.
func TestForeverConnectOutlastsRefusedCredentials(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	opts.Username, opts.Password = "u", "old"
	srv := testutil.RunNATSWithOptions(t, opts)
	var buf syncBuffer
	c := Common{NATS: srv.ClientURL(), User: "u", Password: "new"}
	nc, err := c.Connect("test", true, LogConnection(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitLog(t, &buf, `cannot connect to NATS; retrying" err="nats: Authorization Violation"`)
	if nc.IsConnected() || nc.IsClosed() {
		t.Fatalf("status %v, want still trying", nc.Status())
	}
	reload := *opts
	reload.Password = "new"
	if err := srv.ReloadOptions(&reload); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("status %v (%v)", nc.Status(), nc.LastError())
		}
		return nil
	})
}
