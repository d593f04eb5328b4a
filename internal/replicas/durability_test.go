package replicas_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/internal/testutil"
)

// TestCheckSync: a user of the system account learns how the server syncs
// and gets the line to add when it does not sync every write; any other
// user learns that flotilla cannot tell.
func TestCheckSync(t *testing.T) {
	for _, always := range []bool{true, false} {
		opts := testutil.NATSOptions(t.TempDir())
		opts.SyncAlways = always
		if !always {
			opts.SyncInterval = 2 * time.Minute
		}
		sys, app := server.NewAccount("SYS"), server.NewAccount("APP")
		opts.Accounts = []*server.Account{sys, app}
		opts.SystemAccount = "SYS"
		opts.Users = []*server.User{{Username: "sys", Password: "s", Account: sys}, {Username: "app", Password: "a", Account: app}}
		s := testutil.RunNATSWithOptions(t, opts)
		for _, user := range []string{"sys", "app"} {
			nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, user[:1]))
			if err != nil {
				t.Fatal(err)
			}
			r, err := replicas.CheckSync(context.Background(), nc, 2*time.Second)
			nc.Close()
			if err != nil {
				t.Fatal(err)
			}
			line, warn := r.Verdict()
			t.Logf("sync always %v, user %s: %s", always, user, line)
			switch {
			case user == "app":
				if r.Known || warn || !strings.Contains(line, "cannot tell") {
					t.Errorf("an application user learned %+v", r)
				}
			case always:
				if !r.Known || warn || len(r.Always) != 1 {
					t.Errorf("sync always: %+v, warn %v", r, warn)
				}
			default:
				if !r.Known || !warn || !strings.Contains(line, replicas.SyncLine) {
					t.Errorf("sync every 2m: %+v, %q", r, line)
				}
			}
		}
	}
}
