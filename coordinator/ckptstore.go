package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// ckptStore keeps completed checkpoints and savepoints in a JetStream KV
// bucket (file storage, synced on every write by the server's
// sync_interval: always):
//
//	<job>.chk.<id>   a retained completed checkpoint (subjects.CheckpointRecord)
//	<job>.sp.<id>    a savepoint (subjects.CheckpointRecord), until deleted
//	<job>.latest     the id of the newest completed one (latestPointer)
//
// A record is completed once the compare-and-set of the latest pointer to
// its id succeeded: that update is the commit. A record with an id above the
// latest pointer is either being committed right now (stored, pointer not
// yet moved) or was left by a commit that did not finish: readers ignore it,
// and only a starting coordinator, before it commits anything, removes it.
type ckptStore struct {
	kv jetstream.KeyValue
	// afterPut, if set, runs between storing a record and moving the latest
	// pointer: tests use it to read the store inside that window.
	afterPut func(subjects.CheckpointRecord)
}

type latestPointer struct {
	ID       uint64                  `json:"id"`
	Kind     subjects.CheckpointKind `json:"kind"`
	Location string                  `json:"location"`
}

func openCkptStore(ctx context.Context, js jetstream.JetStream, ns subjects.Namespace, p replicas.Policy) (*ckptStore, error) {
	kv, _, err := replicas.EnsureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket: bucketName(ns, "CHECKPOINTS"), Storage: jetstream.FileStorage, History: 1,
		Description: "flotilla completed checkpoints and savepoints",
	}, p)
	if err != nil {
		return nil, fmt.Errorf("coordinator: checkpoints bucket: %w", err)
	}
	return &ckptStore{kv: kv}, nil
}

func recordKey(r subjects.CheckpointRecord) string {
	kind := "chk"
	if r.Kind == subjects.KindSavepoint {
		kind = "sp"
	}
	return r.Job + "." + kind + "." + strconv.FormatUint(r.ID, 10)
}

// commit stores r, then moves the job's latest pointer to it with
// compare-and-set, unless a newer checkpoint or savepoint committed first
// (they run concurrently): a record at or below the latest pointer is
// committed once stored, so an older one completes without moving it.
//
// Each step that gets no answer (a timeout, no responders, JetStream
// temporarily unavailable: a stream leader being elected, a server lost) is
// retried until ctx ends, the end of the checkpoint's timeout. Retrying is
// safe: the put writes the same value to the same key, and the
// compare-and-set is retried only after reading the pointer again, so an
// update that was applied although its answer was lost reads as done
// (the pointer is at r's id) instead of being applied twice. A read from a
// replica that lags shows an older pointer, never a newer one (ids only
// grow), so it can only cause one more round, never a false success.
//
// When it fails for good, the record may be stored all the same: the server
// may have stored it without its answer arriving, or the request may wait
// in the connection's reconnect buffer and reach the server after the
// caller has aborted the checkpoint. Once a later checkpoint moves the
// latest pointer past it, such a record would read as completed (see load),
// although the tasks were told it aborted and retention may delete the
// shared files it references. So a failed commit deletes the record again,
// on the same connection (see forget for why it lands after any such put,
// also across leader changes).
func (s *ckptStore) commit(ctx context.Context, r subjects.CheckpointRecord) (err error) {
	b, err := subjects.Encode(&r)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.forget(r)
		}
	}()
	if err = retry(ctx, func(ctx context.Context) error {
		_, err := s.kv.Put(ctx, recordKey(r), b)
		return err
	}); err != nil {
		return err
	}
	if s.afterPut != nil {
		s.afterPut(r)
	}
	ptr, _ := json.Marshal(latestPointer{ID: r.ID, Kind: r.Kind, Location: r.Location})
	key := r.Job + ".latest"
	for conflicts := 0; conflicts < 5; {
		var e jetstream.KeyValueEntry
		err := retry(ctx, func(ctx context.Context) error {
			var err error
			e, err = s.kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				e, err = nil, nil
			}
			return err
		})
		if err != nil {
			return err
		}
		if e != nil {
			var cur latestPointer
			if err := json.Unmarshal(e.Value(), &cur); err != nil {
				return fmt.Errorf("corrupt latest pointer of %s: %w", r.Job, err)
			}
			if cur.ID >= r.ID {
				return nil // committed: by a newer one, or by our own update whose answer was lost
			}
		}
		cctx, cancel := context.WithTimeout(ctx, commitStepTimeout)
		if e == nil {
			_, err = s.kv.Create(cctx, key, ptr)
		} else {
			_, err = s.kv.Update(cctx, key, ptr, e.Revision())
		}
		cancel()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err):
			conflicts++ // another commit moved the pointer: read it again
		case transient(err) && ctx.Err() == nil:
			// No answer: read the pointer again to learn whether it applied.
			if werr := wait(ctx); werr != nil {
				return err
			}
		default:
			return err
		}
	}
	return fmt.Errorf("latest pointer of %s: too much contention", r.Job)
}

// commitStepTimeout bounds each JetStream request of a commit, so that one
// lost to a leader election is retried within the checkpoint's timeout.
const commitStepTimeout = 2 * time.Second

// retry runs op with commitStepTimeout per attempt until it succeeds, fails
// with an error that is not transient, or ctx ends.
func retry(ctx context.Context, op func(context.Context) error) error {
	for {
		sctx, cancel := context.WithTimeout(ctx, commitStepTimeout)
		err := op(sctx)
		cancel()
		if err == nil || !transient(err) {
			return err
		}
		if werr := wait(ctx); werr != nil {
			return err
		}
	}
}

// wait pauses between retries, or returns ctx's error.
func wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(100 * time.Millisecond):
		return nil
	}
}

// transient reports whether err means that JetStream did not answer or
// cannot answer now (a leader election, a server lost, a reconnect), so
// that the same request may be sent again.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503 // e.g. JetStream system temporarily unavailable
	}
	return false
}

// isWrongLastSequence reports whether err is a failed compare-and-set.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// forgetTimeout bounds forget's retries.
const forgetTimeout = time.Minute

// forget deletes the record of a failed commit, in the background, retrying
// while JetStream does not answer for up to forgetTimeout. A record it
// leaves behind can only ever be an older restore point (see commit).
//
// Why the delete lands after the put it undoes, also on a cluster: both are
// sent on the same connection, so the server receives the delete after the
// put (a put still in the reconnect buffer goes out first). The stream
// leader orders them in its raft log; a put that an old leader appended but
// did not replicate to a majority is truncated when that server rejoins,
// and once the delete is committed by a majority, a server whose log ends
// before it cannot be elected again, so such a put cannot reappear after
// the delete. What remains: if the delete itself never gets an answer
// within forgetTimeout (no quorum for a minute), the record stays until a
// load finds it above the latest pointer, or, when a later checkpoint
// committed meanwhile, it stays as an older restore point.
func (s *ckptStore) forget(r subjects.CheckpointRecord) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
		defer cancel()
		_ = retry(ctx, func(ctx context.Context) error {
			err := s.kv.Delete(ctx, recordKey(r))
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil
			}
			return err
		})
	}()
}

// jobCheckpoints is what the store knows of one job.
type jobCheckpoints struct {
	latest uint64
	// highest is the highest id of any record found, committed or not: a
	// new run numbers its checkpoints above it, so that it never reuses the
	// id of a commit still in flight.
	highest     uint64
	checkpoints []subjects.CheckpointRecord // retained, oldest first
	savepoints  []subjects.CheckpointRecord // oldest first
}

// load reads a job's committed records; unreadable records are reported and
// skipped. Records with ids above the latest pointer are not committed and
// are skipped. With prune they are deleted too, which is safe only while no
// commit of the job can be in flight: when the coordinator starts, before it
// resumes the job. Any other reader (a listing, a submit) must not prune: it
// would delete the record of a commit that has stored it but not yet moved
// the pointer, and that commit would then complete without a record.
func (s *ckptStore) load(ctx context.Context, job string, prune bool) (jobCheckpoints, []error, error) {
	var out jobCheckpoints
	var warnings []error
	if e, err := s.kv.Get(ctx, job+".latest"); err == nil {
		var p latestPointer
		if err := json.Unmarshal(e.Value(), &p); err != nil {
			return out, nil, fmt.Errorf("corrupt latest pointer of %s: %w", job, err)
		}
		out.latest = p.ID
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return out, nil, err
	}
	keys, err := s.keys(ctx, job+".chk.*", job+".sp.*")
	if err != nil {
		return out, nil, err
	}
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		} else if err != nil {
			return out, nil, err
		}
		var r subjects.CheckpointRecord
		if err := subjects.Decode(e.Value(), &r); err != nil {
			warnings = append(warnings, fmt.Errorf("checkpoint record %s: %w", k, err))
			continue
		}
		out.highest = max(out.highest, r.ID)
		if r.ID > out.latest {
			if prune {
				warnings = append(warnings, fmt.Errorf("checkpoint record %s was never committed; removing it", k))
				_ = s.kv.Delete(ctx, k)
			}
			continue
		}
		if r.Kind == subjects.KindSavepoint {
			out.savepoints = append(out.savepoints, r)
		} else {
			out.checkpoints = append(out.checkpoints, r)
		}
	}
	out.highest = max(out.highest, out.latest)
	byID := func(rs []subjects.CheckpointRecord) {
		sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	}
	byID(out.checkpoints)
	byID(out.savepoints)
	return out, warnings, nil
}

func (s *ckptStore) keys(ctx context.Context, filters ...string) ([]string, error) {
	l, err := s.kv.ListKeysFiltered(ctx, filters...)
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	if errors.Is(l.Stop(), jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	sort.Strings(keys)
	return keys, nil
}

func (s *ckptStore) remove(ctx context.Context, r subjects.CheckpointRecord) error {
	err := s.kv.Delete(ctx, recordKey(r))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

// savepointByLocation finds a savepoint record by its location.
func (s *ckptStore) savepointByLocation(ctx context.Context, location string) (subjects.CheckpointRecord, bool, error) {
	keys, err := s.keys(ctx, "*.sp.*")
	if err != nil {
		return subjects.CheckpointRecord{}, false, err
	}
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var r subjects.CheckpointRecord
		if subjects.Decode(e.Value(), &r) == nil && strings.TrimSuffix(r.Location, "/") == location {
			return r, true, nil
		}
	}
	return subjects.CheckpointRecord{}, false, nil
}
