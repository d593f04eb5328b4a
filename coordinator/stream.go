package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// probeWait bounds how long a mapping probe waits for its own message.
const probeWait = 2 * time.Second

// resolveInput resolves the job's input layout: partitioned when the
// server maps the source subject by key group (Config.MapInput, when set,
// adds the mapping first), one stream otherwise. It returns the spec with
// its layout resolved.
func (c *leader) resolveInput(spec subjects.JobSpec) (subjects.JobSpec, error) {
	src, dest, err := subjects.InputMapping(&spec)
	if err != nil {
		return spec, err
	}
	if spec.Source.Layout != subjects.LayoutStream && c.cfg.MapInput != nil {
		if err := c.cfg.MapInput(src, dest); err != nil {
			return spec, subjects.Errorf(subjects.CodeInternal, "adding subject mapping %s -> %s: %v", src, dest, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.RequestTimeout)
	defer cancel()
	mapped, err := c.probeMapping(ctx, &spec)
	if err != nil {
		return spec, err
	}
	switch spec.Source.Layout {
	case subjects.LayoutAuto:
		spec.Source.Layout = subjects.LayoutStream
		if mapped {
			spec.Source.Layout = subjects.LayoutPartitioned
		}
	case subjects.LayoutPartitioned:
		if !mapped {
			return spec, subjects.Errorf(subjects.CodeInvalidJobSpec,
				"job %s: source.layout partitioned needs the subject mapping of %s, which the server does not have; add %s to the account, or submit with layout auto or stream",
				spec.Name, src, subjects.MappingConfig(&spec))
		}
	}
	return spec, nil
}

// ensureInput makes sure the streams of a job's resolved input exist,
// creating or adopting them, and returns warnings for the submitter.
func (c *leader) ensureInput(spec subjects.JobSpec) ([]string, error) {
	src, _, err := subjects.InputMapping(&spec)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.RequestTimeout)
	defer cancel()
	var warnings []string
	if spec.Partitions() == 0 {
		c.log.Warn("job input is not partitioned", "job", spec.Name, "note", subjects.UnpartitionedNote(&spec))
		warnings = append(warnings, subjects.UnpartitionedNote(&spec))
	}
	for _, want := range subjects.InputStreamConfigs(&spec) {
		w, err := c.ensureStream(ctx, &spec, want)
		if err != nil {
			return nil, err
		}
		warnings = append(warnings, w...)
	}
	if spec.Partitions() > 0 {
		// A stream of the source subject itself (an earlier unpartitioned
		// run, or the user's) no longer receives events.
		if s, err := c.js.Stream(ctx, spec.Source.Stream); err == nil && slices.Contains(s.CachedInfo().Config.Subjects, src) {
			w := fmt.Sprintf("stream %s captures %s, which the server now maps to partition streams: it receives no new events, and the %d events it holds are not read by job %s",
				spec.Source.Stream, src, s.CachedInfo().State.Msgs, spec.Name)
			c.log.Warn(w)
			warnings = append(warnings, w)
		}
	}
	return append(warnings, retentionWarnings(&spec)...), nil
}

// probeMapping finds out whether the server maps the job's source subject by
// key group: it publishes one message to a source subject and sees on which
// subject it arrives. The message carries Nats-Expected-Stream naming no
// stream, so no stream stores it.
func (c *leader) probeMapping(ctx context.Context, spec *subjects.JobSpec) (bool, error) {
	src := spec.Source.Subjects[0]
	key := "_flotilla_probe_" + nuid.Next()
	toks := strings.Split(src, ".")
	for i, t := range toks {
		if t == "*" {
			toks[i] = "_probe"
		}
	}
	toks[spec.Source.Key.SubjectToken-1] = key
	subject := strings.Join(toks, ".")

	got := make(chan string, 4)
	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	for _, f := range []string{src, subjects.GroupSubject(spec, -1)} {
		s, err := c.nc.Subscribe(f, func(m *nats.Msg) {
			if strings.Contains(m.Subject, key) {
				select {
				case got <- m.Subject:
				default:
				}
			}
		})
		if err != nil {
			return false, subjects.Errorf(subjects.CodeUnavailable, "probing the mapping of %s: subscribe %s: %v", src, f, err)
		}
		subs = append(subs, s)
	}
	msg := nats.NewMsg(subject)
	msg.Header.Set(jetstream.ExpectedStreamHeader, "flotilla-probe-not-a-stream")
	msg.Header.Set("Flotilla-Probe", spec.Name)
	if err := c.nc.PublishMsg(msg); err != nil {
		return false, subjects.Errorf(subjects.CodeUnavailable, "probing the mapping of %s: %v", src, err)
	}
	if err := c.nc.FlushWithContext(ctx); err != nil {
		return false, subjects.Errorf(subjects.CodeUnavailable, "probing the mapping of %s: %v", src, err)
	}
	select {
	case s := <-got:
		if s == subject {
			return false, nil
		}
		g, _, _, err := subjects.ParseInputSubject(s, spec.Source.Key.SubjectToken, spec.MaxParallelism)
		if err != nil || g != keygroup.Of([]byte(key), spec.MaxParallelism) {
			return false, subjects.Errorf(subjects.CodeInvalidJobSpec,
				"job %s: the server maps %s to %s, not by this job's %d key groups; the mapping must be %s",
				spec.Name, subject, s, spec.MaxParallelism, subjects.MappingConfig(spec))
		}
		return true, nil
	case <-time.After(probeWait):
		return false, subjects.Errorf(subjects.CodeInvalidJobSpec,
			"job %s: a message published to %s reached neither %s nor %s: the account maps %s elsewhere, or this user may not publish or subscribe there (a mapped publish is checked against the mapped subject too); flotilla needs no mapping or %s",
			spec.Name, subject, src, subjects.GroupSubject(spec, -1), src, subjects.MappingConfig(spec))
	case <-ctx.Done():
		return false, subjects.Errorf(subjects.CodeTimeout, "probing the mapping of %s: %v", src, ctx.Err())
	}
}

// ensureStream creates stream want or adopts the existing stream of that
// name when it stores what want would: the same subjects for a partition
// stream; for an unpartitioned input, any stream capturing the source
// subject (or its mapped form), without a subject transform or with the
// key-group transform of earlier flotilla versions. Limits the spec sets are
// applied to an adopted stream.
func (c *leader) ensureStream(ctx context.Context, spec *subjects.JobSpec, want jetstream.StreamConfig) ([]string, error) {
	s, change, err := replicas.EnsureStream(ctx, c.js, want, c.jobReplicas(*spec), false)
	switch {
	case errors.Is(err, replicas.ErrReplicas):
		return nil, subjects.Errorf(subjects.CodeInvalidJobSpec, "input stream %s: %v", want.Name, err)
	case err != nil && change == replicas.Create:
		return nil, subjects.Errorf(subjects.CodeInvalidJobSpec,
			"creating input stream %s of job %s (subjects %s): %v; a stream capturing any of them (the unpartitioned input of an earlier run, %s?) must be deleted first, or submit with source.layout stream",
			want.Name, spec.Name, strings.Join(want.Subjects, " "), err, spec.Source.Stream)
	case err != nil:
		return nil, subjects.Errorf(subjects.CodeStorageUnavailable, "input stream %s: %v", want.Name, err)
	case change == replicas.Create:
		c.log.Info("created input stream", "job", spec.Name, "stream", want.Name, "subjects", want.Subjects, "replicas", s.CachedInfo().Config.Replicas)
		return nil, nil
	case change == replicas.Raise:
		c.log.Info("raised the replicas of an input stream", "stream", want.Name, "replicas", s.CachedInfo().Config.Replicas)
	}
	have := s.CachedInfo().Config
	if err := adoptable(spec, want, have); err != nil {
		return nil, err
	}
	var warnings []string
	if spec.Source.MaxMsgs != 0 || spec.Source.MaxBytes != 0 || spec.Source.MaxAge != 0 {
		if have.MaxMsgs != want.MaxMsgs || have.MaxBytes != want.MaxBytes || have.MaxAge != want.MaxAge {
			have.MaxMsgs, have.MaxBytes, have.MaxAge = want.MaxMsgs, want.MaxBytes, want.MaxAge
			if _, err := c.js.UpdateStream(ctx, have); err != nil {
				return nil, subjects.Errorf(subjects.CodeInvalidJobSpec, "setting the limits of input stream %s: %v", want.Name, err)
			}
			warnings = append(warnings, fmt.Sprintf("input stream %s: limits set to the spec's (max_msgs %d, max_bytes %d, max_age %s)",
				want.Name, want.MaxMsgs, want.MaxBytes, want.MaxAge))
		}
	}
	c.log.Info("adopted input stream", "job", spec.Name, "stream", want.Name)
	return warnings, nil
}

// adoptable reports whether an existing stream can serve as want.
func adoptable(spec *subjects.JobSpec, want, have jetstream.StreamConfig) error {
	src, dest, _ := subjects.InputMapping(spec)
	if spec.Partitions() > 0 {
		a, b := slices.Clone(have.Subjects), slices.Clone(want.Subjects)
		slices.Sort(a)
		slices.Sort(b)
		if have.SubjectTransform == nil && slices.Equal(a, b) {
			return nil
		}
		return subjects.Errorf(subjects.CodeInvalidJobSpec,
			"stream %s exists but is not partition %s of job %s: it must capture exactly %s with no subject transform (delete it, or let flotilla create it)",
			want.Name, strings.TrimPrefix(want.Name, spec.Source.Stream+"-"), spec.Name, strings.Join(want.Subjects, " "))
	}
	captures := slices.Contains(have.Subjects, src) || slices.Contains(have.Subjects, subjects.GroupSubject(spec, -1))
	tr := have.SubjectTransform
	if captures && (tr == nil || (tr.Source == src && tr.Destination == dest)) {
		return nil
	}
	return subjects.Errorf(subjects.CodeInvalidJobSpec,
		"stream %s exists but cannot be job %s's input: it must capture %s (or %s), with no subject transform or the transform %s -> %s",
		want.Name, spec.Name, src, subjects.GroupSubject(spec, -1), src, dest)
}

// retentionWarnings says when the input's limits can evict events newer
// than the oldest retained checkpoint: a restore from it would find them
// gone.
func retentionWarnings(spec *subjects.JobSpec) []string {
	s, ck := &spec.Source, &spec.Checkpoint
	if s.MaxMsgs == 0 && s.MaxBytes == 0 && s.MaxAge == 0 {
		return nil
	}
	oldest := time.Duration(ck.Retained)*ck.Interval.D() + ck.Timeout.D()
	span := fmt.Sprintf("the oldest retained checkpoint (about %s old: %d retained every %s, plus the %s timeout)",
		oldest, ck.Retained, ck.Interval.D(), ck.Timeout.D())
	if ck.Interval == 0 {
		span = "the last savepoint (checkpoint.interval is 0)"
	}
	var out []string
	if s.MaxAge > 0 && (ck.Interval == 0 || s.MaxAge.D() < oldest) {
		out = append(out, fmt.Sprintf("source.max_age %s can evict events newer than %s; a restore from it then fails with data_loss (source.on_gap %s)",
			s.MaxAge.D(), span, s.OnGap))
	}
	if s.MaxMsgs > 0 || s.MaxBytes > 0 {
		out = append(out, fmt.Sprintf("source.max_msgs %d / max_bytes %d can evict events newer than %s once an input stream receives more than that in this time; a restore from it then fails with data_loss (source.on_gap %s)",
			s.MaxMsgs, s.MaxBytes, span, s.OnGap))
	}
	return out
}

// jobReplicas is the replication policy of a job's own streams: the spec's
// replicas when set, else the coordinator's.
func (c *leader) jobReplicas(spec subjects.JobSpec) replicas.Policy {
	p := c.repl
	if spec.Replicas > 0 {
		p.Replicas = spec.Replicas
	}
	return p
}
