// Package election decides, as a pure state machine, when a coordinator
// campaigns for the leader lease, renews it, and acts as leader. It never
// touches the network or a clock: the adapter (coordinator.Coordinator)
// feeds it Tick(now) and the outcomes of the requests it asked for, and
// carries out the actions it returns against metastore.Store.
//
// The safety rule: a leader acts only before its deadline, computed from
// the moment it sent its last successful renewal (or acquisition) plus the
// lease TTL minus a margin. The lease key on the servers lives at least TTL
// after they stored that request, which is after it was sent, so by the
// monotonic clock of the process the deadline always falls before the key
// can expire, and before any other coordinator can acquire it. A paused
// process that wakes after its deadline stops at its next step; anything it
// had already started is refused by the fencing token (its term) at the
// metadata store and at the workers.
package election

import (
	"errors"
	"fmt"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
)

// Config configures a Machine.
type Config struct {
	// TTL is the lease's time to live on the servers.
	TTL time.Duration
	// RenewEvery is how often a leader renews (default TTL/3).
	RenewEvery time.Duration
	// Margin is how long before the lease could expire a leader stops
	// acting (default TTL/5): it covers clock rate drift and the time
	// between checking the deadline and acting.
	Margin time.Duration
	// PollEvery is how often a standby tries to take the lease (default
	// TTL/10, at least 100 ms).
	PollEvery time.Duration
}

func (c Config) withDefaults() Config {
	if c.RenewEvery <= 0 {
		c.RenewEvery = c.TTL / 3
	}
	if c.Margin <= 0 {
		c.Margin = c.TTL / 5
	}
	if c.PollEvery <= 0 {
		c.PollEvery = max(c.TTL/10, 100*time.Millisecond)
	}
	return c
}

// Action is something the adapter must do.
type Action interface{ isAction() }

// Acquire: try to take the lease (metastore.Store.Acquire) and report with
// Acquired, giving the time the request was sent.
type Acquire struct{}

// Renew: renew Lease (metastore.Store.Renew) and report with Renewed.
type Renew struct{ Lease metastore.Lease }

// Lead: the coordinator leads in Lease.Term from now on; it must check
// Machine.Acting before every step.
type Lead struct{ Lease metastore.Lease }

// StepDown: the coordinator no longer leads: it stops every activity of
// Lease.Term. Release says whether the lease should be given up (it may
// still be held on the servers).
type StepDown struct {
	Lease   metastore.Lease
	Reason  string
	Release bool
}

func (Acquire) isAction()  {}
func (Renew) isAction()    {}
func (Lead) isAction()     {}
func (StepDown) isAction() {}

// Machine is one coordinator's view of the election. It is not safe for
// concurrent use.
type Machine struct {
	cfg      Config
	leading  bool
	lease    metastore.Lease // held (leading) or last observed
	known    bool            // lease holds an observed or held lease
	deadline time.Time       // leading: act only before it
	next     time.Time       // when to send the next request
	inflight bool
}

// New returns a standby that campaigns at its first Tick.
func New(cfg Config) *Machine {
	if cfg.TTL <= 0 {
		panic("election: TTL must be positive")
	}
	return &Machine{cfg: cfg.withDefaults()}
}

// Tick advances the machine to now.
func (m *Machine) Tick(now time.Time) []Action {
	if m.leading && !now.Before(m.deadline) {
		return m.stepDown(now, fmt.Sprintf("no renewal confirmed since %s before the deadline", m.cfg.TTL-m.cfg.Margin), true)
	}
	if m.inflight || now.Before(m.next) {
		return nil
	}
	m.inflight = true
	if m.leading {
		return []Action{Renew{Lease: m.lease}}
	}
	return []Action{Acquire{}}
}

// Acquired reports the outcome of an Acquire sent at sent: the lease taken,
// or metastore.ErrLeaseHeld with the holder's lease, or another error.
func (m *Machine) Acquired(l metastore.Lease, err error, sent, now time.Time) []Action {
	m.inflight = false
	switch {
	case err == nil:
		m.leading, m.lease, m.known = true, l, true
		m.deadline = sent.Add(m.cfg.TTL - m.cfg.Margin)
		m.next = sent.Add(m.cfg.RenewEvery)
		if !now.Before(m.deadline) {
			// Took so long that the lease may be gone already.
			return m.stepDown(now, "the acquisition took longer than the lease allows", true)
		}
		return []Action{Lead{Lease: l}}
	case errors.Is(err, metastore.ErrLeaseHeld):
		// A lease without a term is being acquired (its holder has created
		// it and not yet written its term): who will lead, and in which
		// term, is not known yet.
		m.lease, m.known = l, l.Holder != "" && l.Term != 0
	default:
		m.known = false
	}
	m.next = now.Add(m.cfg.PollEvery)
	return nil
}

// Renewed reports the outcome of a Renew sent at sent.
func (m *Machine) Renewed(l metastore.Lease, err error, sent, now time.Time) []Action {
	m.inflight = false
	if !m.leading {
		return nil // stepped down meanwhile
	}
	switch {
	case err == nil:
		m.lease = l
		m.deadline = sent.Add(m.cfg.TTL - m.cfg.Margin)
		m.next = sent.Add(m.cfg.RenewEvery)
		return m.Tick(now)
	case errors.Is(err, metastore.ErrLeaseLost):
		return m.stepDown(now, "the lease expired or was taken", false)
	}
	// No answer: try again soon, while the deadline allows.
	m.next = now.Add(min(m.cfg.RenewEvery/4, m.deadline.Sub(now)/2))
	return m.Tick(now)
}

// Resign steps down at once (the coordinator is shutting down, or its term
// failed), giving the lease up.
func (m *Machine) Resign(now time.Time, reason string) []Action {
	if !m.leading {
		return nil
	}
	return m.stepDown(now, reason, true)
}

func (m *Machine) stepDown(now time.Time, reason string, release bool) []Action {
	l := m.lease
	m.leading, m.known = false, false
	m.next = now.Add(m.cfg.PollEvery)
	return []Action{StepDown{Lease: l, Reason: reason, Release: release}}
}

// Acting reports whether the coordinator leads and may act at now.
func (m *Machine) Acting(now time.Time) bool { return m.leading && now.Before(m.deadline) }

// Deadline returns the time until which a leader may act (zero when it
// does not lead).
func (m *Machine) Deadline() time.Time {
	if !m.leading {
		return time.Time{}
	}
	return m.deadline
}

// Leader returns the lease this coordinator holds or last saw held, and
// false when it knows of none.
func (m *Machine) Leader() (metastore.Lease, bool) { return m.lease, m.known }
