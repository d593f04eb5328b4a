package replicas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
)

// SyncReport is what the JetStream servers told about how they sync
// writes to disk.
type SyncReport struct {
	// Known is false when no server answered: the connection's user has no
	// access to the system account's monitoring subjects, so flotilla
	// cannot tell.
	Known bool
	// Always names the servers that sync every write (sync_interval:
	// always); Interval names those that sync on a timer, with the
	// interval.
	Always   []string
	Interval map[string]time.Duration
}

// SyncLine is the line a server's jetstream block needs for a write that
// JetStream acknowledged to survive the server's crash.
const SyncLine = "sync_interval: always"

// Verdict returns a one-line summary of r and whether it calls for a
// warning (a server that does not sync every write).
func (r SyncReport) Verdict() (string, bool) {
	switch {
	case !r.Known:
		return "cannot tell whether the JetStream servers sync every write (no access to $SYS.REQ.SERVER.PING.VARZ); each server's jetstream block needs `" + SyncLine + "`", false
	case len(r.Interval) > 0:
		var names []string
		for n, d := range r.Interval {
			names = append(names, fmt.Sprintf("%s (every %s)", n, d))
		}
		sort.Strings(names)
		return fmt.Sprintf("JetStream servers %v do not sync every write: a crash may lose committed checkpoints and job records; add `%s` to their jetstream block", names, SyncLine), true
	default:
		return fmt.Sprintf("JetStream servers %v sync every write", r.Always), false
	}
}

// CheckSync asks every server reachable over nc for its JetStream settings
// ($SYS.REQ.SERVER.PING.VARZ, answered only to users of the system
// account) and collects the answers for up to wait.
func CheckSync(ctx context.Context, nc *nats.Conn, wait time.Duration) (SyncReport, error) {
	r := SyncReport{Interval: map[string]time.Duration{}}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return r, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SYS.REQ.SERVER.PING.VARZ", inbox, nil); err != nil {
		return r, err
	}
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return r, nil
		}
		m, err := sub.NextMsg(left)
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) {
			return r, nil // all answered, or no access
		} else if err != nil {
			return r, err
		}
		var v struct {
			Server struct {
				Name string `json:"name"`
			} `json:"server"`
			Data struct {
				JetStream struct {
					Config *struct {
						SyncInterval time.Duration `json:"sync_interval"`
						SyncAlways   bool          `json:"sync_always"`
					} `json:"config"`
				} `json:"jetstream"`
			} `json:"data"`
		}
		if json.Unmarshal(m.Data, &v) != nil || v.Data.JetStream.Config == nil {
			continue // not a JetStream server, or a no-responders status
		}
		r.Known = true
		if c := v.Data.JetStream.Config; c.SyncAlways {
			r.Always = append(r.Always, v.Server.Name)
		} else {
			r.Interval[v.Server.Name] = c.SyncInterval
		}
	}
}
