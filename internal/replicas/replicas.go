// Package replicas is the one way flotilla creates JetStream streams and KV
// buckets: every stream and bucket goes through EnsureStream or EnsureKV, so
// that each gets the replica count and placement the operator asked for,
// and so that none is ever lowered.
//
// The rules (Plan is the pure part, the Ensure functions carry it out):
//   - A missing stream is created with the asked replicas and placement.
//   - An existing stream keeps its replicas when they are at least the
//     asked ones: an operator's R3 bucket never becomes R1.
//   - An existing stream with fewer replicas than asked is raised (NATS
//     allows R1 -> R3 updates); when the server refuses, the error names
//     the stream and both counts.
//   - Placement (cluster, tags) passes through when asked; an existing
//     stream's placement is kept otherwise.
package replicas

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxReplicas is the most replicas a JetStream stream may have.
const MaxReplicas = 5

// AutoReplicas is what Policy.Replicas 0 resolves to on a cluster of at
// least this many JetStream servers (see Resolve).
const AutoReplicas = 3

// Policy is how many replicas flotilla's streams and buckets get, and where.
type Policy struct {
	// Replicas is the replica count asked for; 0 means 1 (callers resolve
	// the automatic default with Resolve first).
	Replicas int
	// Placement, if set, passes through to every stream created or raised.
	Placement *jetstream.Placement
}

func (p Policy) replicas() int { return max(p.Replicas, 1) }

// Check reports whether p is a valid policy.
func (p Policy) Check() error {
	if p.Replicas < 0 || p.Replicas > MaxReplicas {
		return fmt.Errorf("replicas: %d replicas; must be 1 to %d (0: automatic)", p.Replicas, MaxReplicas)
	}
	return nil
}

// Change is what Plan decided to do with a stream.
type Change int

const (
	Create Change = iota // the stream is missing
	Keep                 // it exists with at least the asked replicas
	Raise                // it exists with fewer replicas than asked
)

func (c Change) String() string {
	switch c {
	case Create:
		return "create"
	case Keep:
		return "keep"
	case Raise:
		return "raise"
	}
	return fmt.Sprintf("Change(%d)", int(c))
}

// Plan returns the configuration to write for a stream flotilla wants as
// want, given the existing one (nil when missing) and the policy. The
// result's replicas are never below the existing ones.
func Plan(existing *jetstream.StreamConfig, want jetstream.StreamConfig, p Policy) (jetstream.StreamConfig, Change) {
	want.Replicas = p.replicas()
	if p.Placement != nil {
		want.Placement = p.Placement
	}
	if existing == nil {
		return want, Create
	}
	change := Keep
	if existing.Replicas < want.Replicas {
		change = Raise
	}
	want.Replicas = max(want.Replicas, existing.Replicas)
	if p.Placement == nil {
		want.Placement = existing.Placement
	}
	return want, change
}

// ErrReplicas is wrapped by every error about a stream's replicas.
var ErrReplicas = errors.New("replicas")

// EnsureStream creates the stream cfg describes, or brings an existing one
// to the policy's replicas. With update, an existing stream's whole
// configuration is replaced by cfg (flotilla owns it, e.g. its events
// stream); without, only its replicas and placement change and the caller
// checks the rest (e.g. a source stream an operator created).
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, p Policy, update bool) (jetstream.Stream, Change, error) {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		want, _ := Plan(nil, cfg, p)
		s, err = js.CreateStream(ctx, want)
		if err == nil {
			return s, Create, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, Create, createErr(cfg.Name, want.Replicas, err)
		}
		s, err = js.Stream(ctx, cfg.Name)
	}
	if err != nil {
		return nil, Keep, err
	}
	have := s.CachedInfo().Config
	base := have
	if update {
		base = cfg
	}
	want, change := Plan(&have, base, p)
	if change == Keep && !update && (p.Placement == nil || samePlacement(have.Placement, p.Placement)) {
		return s, Keep, nil
	}
	s, err = js.UpdateStream(ctx, want)
	if err != nil {
		if change == Raise {
			return nil, change, fmt.Errorf("%w: stream %q has %d replicas and %d are asked; raising them failed: %v",
				ErrReplicas, cfg.Name, have.Replicas, want.Replicas, err)
		}
		return nil, change, fmt.Errorf("stream %q: %w", cfg.Name, err)
	}
	return s, change, nil
}

// EnsureKV opens or creates a KV bucket through the same rules as
// EnsureStream: its replicas are raised to the policy's, never lowered.
func EnsureKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, p Policy) (jetstream.KeyValue, Change, error) {
	change := Create
	if s, err := js.Stream(ctx, "KV_"+cfg.Bucket); err == nil {
		have := s.CachedInfo().Config
		var want jetstream.StreamConfig
		want, change = Plan(&have, jetstream.StreamConfig{}, p)
		p = Policy{Replicas: want.Replicas, Placement: want.Placement}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, change, err
	}
	cfg.Replicas = p.replicas()
	cfg.Placement = p.Placement
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if change == Create && (errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || errors.Is(err, jetstream.ErrBucketExists)) {
		// Another process created it since: update it instead.
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		if change == Raise {
			return nil, change, fmt.Errorf("%w: bucket %q: raising to %d replicas failed: %v", ErrReplicas, cfg.Bucket, cfg.Replicas, err)
		}
		return nil, change, createErr("KV_"+cfg.Bucket, cfg.Replicas, err)
	}
	// A replicated bucket answers reads once its replicas run, a moment
	// after it was created: wait for that, so that the caller's first read
	// does not fail with "no responders". Nobody answers either when
	// another process turned direct gets off since kv was opened (the
	// metadata store does, for its buckets): the bucket is opened again.
	for {
		_, err := kv.Get(ctx, "flotilla-ready")
		if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
			return kv, change, nil
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			return nil, change, fmt.Errorf("bucket %q: %w", cfg.Bucket, err)
		}
		select {
		case <-ctx.Done():
			return nil, change, fmt.Errorf("bucket %q: not readable: %w", cfg.Bucket, err)
		case <-time.After(50 * time.Millisecond):
		}
		if again, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
			kv = again
		}
	}
}

func createErr(name string, replicas int, err error) error {
	if replicas > 1 && noPeers(err) {
		return fmt.Errorf("%w: stream %q: the cluster cannot place %d replicas: %v", ErrReplicas, name, replicas, err)
	}
	return fmt.Errorf("stream %q: %w", name, err)
}

// noPeers reports whether err is the server's answer that it cannot place
// the replicas asked for: not clustered, or too few JetStream servers.
func noPeers(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case 10005, // no suitable peers for placement
		10023, // insufficient resources
		10074: // replicas > 1 not supported in non-clustered mode
		return true
	}
	return false
}

func samePlacement(a, b *jetstream.Placement) bool {
	if a == nil {
		a = &jetstream.Placement{}
	}
	if b == nil {
		b = &jetstream.Placement{}
	}
	return a.Cluster == b.Cluster && slices.Equal(a.Tags, b.Tags)
}

// Resolve returns the replica count for policy replicas asked (0:
// automatic): asked when set; otherwise AutoReplicas when the server is
// part of a cluster that can place that many replicas, else 1. It probes
// by creating the bucket probe (which the caller would create anyway)
// with AutoReplicas, and leaves it so. A cluster that has just started may
// not place replicas until its servers are current, so a clustered server
// that cannot place them is asked again for up to ProbeFor.
func Resolve(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, asked int, probe jetstream.KeyValueConfig, placement *jetstream.Placement) (int, error) {
	if asked > 0 {
		return asked, nil
	}
	if nc.ConnectedClusterName() == "" {
		return 1, nil
	}
	deadline := time.Now().Add(ProbeFor)
	for {
		actx, cancel := context.WithTimeout(ctx, probeAttemptTimeout)
		_, _, err := EnsureKV(actx, js, probe, Policy{Replicas: AutoReplicas, Placement: placement})
		unanswered := err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case err == nil:
			return AutoReplicas, nil
		case unanswered:
			// A request the cluster never answered (its meta leader
			// changed, or it is still forming): ask again.
		case !errors.Is(err, ErrReplicas):
			return 0, err
		case time.Now().After(deadline):
			return 1, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ProbeFor is how long Resolve keeps asking a cluster to place
// AutoReplicas before it settles for 1.
const ProbeFor = 8 * time.Second

// probeAttemptTimeout bounds one attempt of Resolve's: a JetStream API
// request gets no answer at all when the meta leader changes under it, and
// would otherwise wait for the caller's whole deadline.
const probeAttemptTimeout = 5 * time.Second
