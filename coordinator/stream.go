package coordinator

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// ensureStream makes sure the job's source stream exists and partitions
// events by key group with flotilla's subject transform: it creates the
// stream if it is missing, and refuses a stream that exists without the
// transform, since tasks could not consume only their own key groups.
func (c *Coordinator) ensureStream(spec subjects.JobSpec) error {
	tr, err := subjects.SourceTransform(&spec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	name := spec.Source.Stream
	s, change, err := replicas.EnsureStream(ctx, c.js, jetstream.StreamConfig{
		Name: name, Subjects: spec.Source.Subjects, SubjectTransform: &tr,
		Storage: jetstream.FileStorage, Description: "flotilla source of job " + spec.Name,
	}, c.jobReplicas(spec), false)
	switch {
	case errors.Is(err, replicas.ErrReplicas):
		return subjects.Errorf(subjects.CodeInvalidJobSpec, "source stream: %v", err)
	case err != nil && change == replicas.Create:
		return subjects.Errorf(subjects.CodeInvalidJobSpec, "creating source stream %q: %v", name, err)
	case err != nil:
		return subjects.Errorf(subjects.CodeStorageUnavailable, "source stream %q: %v", name, err)
	case change == replicas.Create:
		c.log.Info("created source stream", "stream", name, "transform", tr.Destination, "replicas", s.CachedInfo().Config.Replicas)
		return nil
	case change == replicas.Raise:
		c.log.Info("raised the replicas of the source stream", "stream", name, "replicas", s.CachedInfo().Config.Replicas)
	}
	got := s.CachedInfo().Config.SubjectTransform
	if got == nil || got.Source != tr.Source || got.Destination != tr.Destination {
		return subjects.Errorf(subjects.CodeInvalidJobSpec,
			"stream %q exists but does not partition by key group; it needs subject transform %q -> %q (or let flotilla create the stream)",
			name, tr.Source, tr.Destination)
	}
	return nil
}

// jobReplicas is the replication policy of a job's own streams: the spec's
// replicas when set, else the coordinator's.
func (c *Coordinator) jobReplicas(spec subjects.JobSpec) replicas.Policy {
	p := c.repl
	if spec.Replicas > 0 {
		p.Replicas = spec.Replicas
	}
	return p
}
