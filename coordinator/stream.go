package coordinator

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

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
	s, err := c.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = c.js.CreateStream(ctx, jetstream.StreamConfig{
			Name: name, Subjects: spec.Source.Subjects, SubjectTransform: &tr,
			Storage: jetstream.FileStorage, Description: "flotilla source of job " + spec.Name,
		})
		if err == nil {
			c.log.Info("created source stream", "stream", name, "transform", tr.Destination)
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return subjects.Errorf(subjects.CodeInvalidJobSpec, "creating source stream %q: %v", name, err)
		}
		s, err = c.js.Stream(ctx, name)
	}
	if err != nil {
		return subjects.Errorf(subjects.CodeStorageUnavailable, "source stream %q: %v", name, err)
	}
	got := s.CachedInfo().Config.SubjectTransform
	if got == nil || got.Source != tr.Source || got.Destination != tr.Destination {
		return subjects.Errorf(subjects.CodeInvalidJobSpec,
			"stream %q exists but does not partition by key group; it needs subject transform %q -> %q (or let flotilla create the stream)",
			name, tr.Source, tr.Destination)
	}
	return nil
}
