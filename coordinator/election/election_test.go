package election

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
)

var t0 = time.Unix(1_000_000, 0)

const ttl = 10 * time.Second

func names(acts []Action) string {
	var out []string
	for _, a := range acts {
		switch a := a.(type) {
		case Acquire:
			out = append(out, "acquire")
		case Renew:
			out = append(out, fmt.Sprintf("renew(term %d)", a.Lease.Term))
		case Lead:
			out = append(out, fmt.Sprintf("lead(term %d)", a.Lease.Term))
		case StepDown:
			out = append(out, fmt.Sprintf("step-down(release=%v)", a.Release))
		}
	}
	return strings.Join(out, ",")
}

func expect(t *testing.T, what string, acts []Action, want string) {
	t.Helper()
	if got := names(acts); got != want {
		t.Fatalf("%s: %q, want %q", what, got, want)
	}
}

// TestLeadAndRenew: a standby campaigns, leads, renews every TTL/3 and
// keeps acting while renewals are confirmed.
func TestLeadAndRenew(t *testing.T) {
	m := New(Config{TTL: ttl})
	expect(t, "first tick", m.Tick(t0), "acquire")
	expect(t, "tick while in flight", m.Tick(t0.Add(time.Second)), "")
	l := metastore.Lease{Holder: "a", Term: 4, Revision: 1}
	expect(t, "acquired", m.Acquired(l, nil, t0, t0.Add(10*time.Millisecond)), "lead(term 4)")
	if !m.Acting(t0.Add(time.Second)) {
		t.Fatal("not acting after acquiring")
	}
	now := t0
	for i := 0; i < 10; i++ {
		expect(t, "before renewal", m.Tick(now.Add(ttl/3-time.Millisecond)), "")
		now = now.Add(ttl / 3)
		expect(t, "renewal due", m.Tick(now), "renew(term 4)")
		l.Revision++
		expect(t, "renewed", m.Renewed(l, nil, now, now.Add(5*time.Millisecond)), "")
		if !m.Acting(now.Add(ttl / 2)) {
			t.Fatalf("renewal %d: not acting", i)
		}
	}
	if d := m.Deadline(); d != now.Add(ttl-ttl/5) {
		t.Fatalf("deadline %s after the last renewal sent, want %s", d.Sub(now), ttl-ttl/5)
	}
}

// TestRenewalsUnanswered: a leader whose renewals get no answer retries,
// then stops acting TTL - margin after the last confirmed one was sent.
func TestRenewalsUnanswered(t *testing.T) {
	m := New(Config{TTL: ttl})
	m.Tick(t0)
	m.Acquired(metastore.Lease{Holder: "a", Term: 1}, nil, t0, t0)
	deadline := t0.Add(ttl - ttl/5)
	var down []Action
	for now := t0; now.Before(t0.Add(ttl)) && down == nil; now = now.Add(50 * time.Millisecond) {
		for _, a := range m.Tick(now) {
			switch a.(type) {
			case Renew:
				m.Renewed(metastore.Lease{}, errors.New("timeout"), now, now.Add(20*time.Millisecond))
			case StepDown:
				down = append(down, a)
				if now.Before(deadline) || now.Sub(deadline) > 50*time.Millisecond {
					t.Fatalf("stepped down at %s, deadline %s", now.Sub(t0), deadline.Sub(t0))
				}
			}
		}
		if m.Acting(now) != now.Before(deadline) {
			t.Fatalf("acting %v at %s", m.Acting(now), now.Sub(t0))
		}
	}
	expect(t, "step down", down, "step-down(release=true)")
}

// TestLeaseLost: a renewal refused (expired, or taken) steps down at once,
// without releasing what belongs to another holder.
func TestLeaseLost(t *testing.T) {
	m := New(Config{TTL: ttl})
	m.Tick(t0)
	m.Acquired(metastore.Lease{Holder: "a", Term: 1}, nil, t0, t0)
	now := t0.Add(ttl / 3)
	expect(t, "renew", m.Tick(now), "renew(term 1)")
	expect(t, "lost", m.Renewed(metastore.Lease{}, metastore.ErrLeaseLost, now, now), "step-down(release=false)")
	if m.Acting(now) {
		t.Fatal("acting after losing the lease")
	}
	expect(t, "campaigns again after a poll", m.Tick(now.Add(time.Second)), "acquire")
}

// TestStandby: a standby learns who leads and polls every PollEvery.
func TestStandby(t *testing.T) {
	m := New(Config{TTL: ttl})
	m.Tick(t0)
	held := metastore.Lease{Holder: "b", Term: 9}
	expect(t, "held", m.Acquired(held, metastore.ErrLeaseHeld, t0, t0), "")
	if l, ok := m.Leader(); !ok || l.Holder != "b" || m.Acting(t0) {
		t.Fatalf("leader %+v %v acting %v", l, ok, m.Acting(t0))
	}
	expect(t, "before the poll", m.Tick(t0.Add(time.Second-time.Millisecond)), "")
	expect(t, "poll", m.Tick(t0.Add(time.Second)), "acquire")
	expect(t, "no answer", m.Acquired(metastore.Lease{}, errors.New("timeout"), t0.Add(time.Second), t0.Add(2*time.Second)), "")
	if _, ok := m.Leader(); ok {
		t.Fatal("still names a leader after an unanswered poll")
	}
	// A lease read between its creation and its term's write is being
	// acquired: no term to report yet.
	m.Tick(t0.Add(3 * time.Second))
	m.Acquired(metastore.Lease{Holder: "c"}, metastore.ErrLeaseHeld, t0.Add(3*time.Second), t0.Add(3*time.Second))
	if l, ok := m.Leader(); ok {
		t.Fatalf("names %+v, a lease without a term, as the leader", l)
	}
}

// TestSlowAcquisition: an acquisition answered after its deadline does not
// lead: the lease may already be gone.
func TestSlowAcquisition(t *testing.T) {
	m := New(Config{TTL: ttl})
	m.Tick(t0)
	expect(t, "late answer", m.Acquired(metastore.Lease{Holder: "a", Term: 1}, nil, t0, t0.Add(ttl)), "step-down(release=true)")
}

// TestNeverActsPastExpiry: under random answers, delays and pauses, a
// leader never acts at or after the earliest moment its lease can expire on
// the servers: TTL after it sent its last confirmed request.
func TestNeverActsPastExpiry(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		m := New(Config{TTL: ttl})
		now := t0
		var confirmed time.Time // when the last confirmed request was sent
		type pending struct {
			renew bool
			sent  time.Time
			at    time.Time
		}
		var p *pending
		for step := 0; step < 400; step++ {
			// Time passes: usually a tick, sometimes a long pause.
			d := time.Duration(r.IntN(300)) * time.Millisecond
			if r.IntN(50) == 0 {
				d = time.Duration(r.IntN(20)) * time.Second
			}
			now = now.Add(d)
			if p != nil && !now.Before(p.at) {
				var err error
				if r.IntN(4) == 0 {
					err = errors.New("timeout")
				}
				if err == nil {
					confirmed = p.sent
				}
				if p.renew {
					m.Renewed(metastore.Lease{Holder: "a", Term: 1}, err, p.sent, now)
				} else {
					m.Acquired(metastore.Lease{Holder: "a", Term: 1}, err, p.sent, now)
				}
				p = nil
			}
			for _, a := range m.Tick(now) {
				switch a.(type) {
				case Acquire, Renew:
					_, renew := a.(Renew)
					p = &pending{renew: renew, sent: now, at: now.Add(time.Duration(r.IntN(3000)) * time.Millisecond)}
				}
			}
			if m.Acting(now) && !now.Before(confirmed.Add(ttl)) {
				t.Fatalf("seed %d: acting at %s, the lease could expire at %s", seed, now.Sub(t0), confirmed.Add(ttl).Sub(t0))
			}
		}
	}
}
