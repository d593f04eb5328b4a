package metastore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// store is Store's logic over four buckets; New and NewMem differ only in
// the buckets they give it.
type store struct {
	opts Options
	// coord holds the epoch, leader the lease (with the lease TTL),
	// jobs the job records, ckpts the checkpoint records and pointers.
	coord, leader, jobs, ckpts bucket
	// transient reports whether an error of the buckets means "no answer
	// now, send the same request again".
	transient func(error) bool
}

func (s *store) LeaseTTL() time.Duration { return s.opts.LeaseTTL }

func (s *store) ReadLease(ctx context.Context) (Lease, error) {
	e, err := s.leader.Get(ctx, keyLease)
	if errors.Is(err, errNotFound) {
		return Lease{}, ErrNoLease
	} else if err != nil {
		return Lease{}, err
	}
	var v subjects.LeaderLease
	if err := subjects.Decode(e.val, &v); err != nil {
		return Lease{}, fmt.Errorf("metastore: lease: %w", err)
	}
	return Lease{Holder: v.Holder, Term: v.Term, Revision: e.rev, Acquired: v.Acquired}, nil
}

// Acquire creates the lease key first and takes the epoch only while
// holding it: a holder's term is then above the term of every earlier
// holder, whatever the timing of their epoch increments.
func (s *store) Acquire(ctx context.Context, holder string, now time.Time) (Lease, error) {
	v := subjects.LeaderLease{Holder: holder, Acquired: now.UTC()}
	b, err := subjects.Encode(&v)
	if err != nil {
		return Lease{}, err
	}
	rev, err := s.leader.Create(ctx, keyLease, b)
	if errors.Is(err, errExists) {
		l, rerr := s.ReadLease(ctx)
		if rerr != nil {
			return Lease{}, fmt.Errorf("%w (%v)", ErrLeaseHeld, rerr)
		}
		return l, ErrLeaseHeld
	} else if err != nil {
		return Lease{}, err
	}
	l := Lease{Holder: holder, Revision: rev, Acquired: v.Acquired}
	term, err := s.nextEpoch(ctx)
	if err == nil {
		l.Term = term
		l, err = s.Renew(ctx, l)
	}
	if err != nil {
		_ = s.leader.Delete(ctx, keyLease, rev)
		return Lease{}, err
	}
	return l, nil
}

func (s *store) Renew(ctx context.Context, l Lease) (Lease, error) {
	b, err := subjects.Encode(&subjects.LeaderLease{Holder: l.Holder, Term: l.Term, Acquired: l.Acquired})
	if err != nil {
		return Lease{}, err
	}
	rev, err := s.leader.Update(ctx, keyLease, b, l.Revision)
	if errors.Is(err, errWrongRevision) || errors.Is(err, errNotFound) {
		return Lease{}, ErrLeaseLost
	} else if err != nil {
		return Lease{}, err
	}
	l.Revision = rev
	return l, nil
}

func (s *store) Release(ctx context.Context, l Lease) error {
	err := s.leader.Delete(ctx, keyLease, l.Revision)
	if errors.Is(err, errWrongRevision) {
		return ErrLeaseLost
	}
	return err
}

// nextEpoch increments the durable epoch with compare-and-set and returns
// it: every term is higher than any before.
func (s *store) nextEpoch(ctx context.Context) (uint64, error) {
	for i := 0; i < 100; i++ {
		e, err := s.coord.Get(ctx, keyEpoch)
		switch {
		case errors.Is(err, errNotFound):
			if _, err := s.coord.Create(ctx, keyEpoch, []byte("1")); err == nil {
				return 1, nil
			} else if !errors.Is(err, errExists) {
				return 0, err
			}
		case err != nil:
			return 0, err
		default:
			n, perr := strconv.ParseUint(string(e.val), 10, 64)
			if perr != nil {
				return 0, fmt.Errorf("metastore: corrupt epoch %q", e.val)
			}
			if _, err := s.coord.Update(ctx, keyEpoch, []byte(strconv.FormatUint(n+1, 10)), e.rev); err == nil {
				return n + 1, nil
			} else if !errors.Is(err, errWrongRevision) {
				return 0, err
			}
		}
	}
	return 0, errors.New("metastore: epoch: too much contention")
}

// PutJob replaces the job's record by compare-and-set, refusing to replace
// one written by a newer term.
func (s *store) PutJob(ctx context.Context, term uint64, r subjects.JobRecord) error {
	r.Term = term
	b, err := subjects.Encode(&r)
	if err != nil {
		return err
	}
	for conflicts := 0; conflicts < 5; conflicts++ {
		e, err := s.jobs.Get(ctx, r.Spec.Name)
		switch {
		case errors.Is(err, errNotFound):
			_, err = s.jobs.Create(ctx, r.Spec.Name, b)
		case err != nil:
			return err
		default:
			var cur subjects.JobRecord
			if derr := decodeRecord(e.val, &cur); derr == nil && cur.Term > term {
				return fmt.Errorf("%w: job %s is claimed by term %d, not %d", ErrFenced, r.Spec.Name, cur.Term, term)
			}
			_, err = s.jobs.Update(ctx, r.Spec.Name, b, e.rev)
		}
		if err == nil || !(errors.Is(err, errExists) || errors.Is(err, errWrongRevision)) {
			return err
		}
	}
	return fmt.Errorf("metastore: job %s: too much contention", r.Spec.Name)
}

func (s *store) Jobs(ctx context.Context) ([]subjects.JobRecord, error) {
	keys, err := s.jobs.Keys(ctx)
	if err != nil {
		return nil, err
	}
	var out []subjects.JobRecord
	for _, k := range keys {
		// Reads go to the leader (see kvBucket): a listed key not found
		// was deleted.
		e, err := s.jobs.Get(ctx, k)
		if errors.Is(err, errNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		var r subjects.JobRecord
		if err := decodeRecord(e.val, &r); err != nil {
			return nil, fmt.Errorf("metastore: job record %q: %w", k, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// pointer reads a job's latest pointer; nil entry if there is none.
func (s *store) pointer(ctx context.Context, job string) (subjects.LatestPointer, *entry, error) {
	var p subjects.LatestPointer
	var e entry
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		e, err = s.ckpts.Get(ctx, latestKey(job))
		return err
	})
	if errors.Is(err, errNotFound) {
		return p, nil, nil
	} else if err != nil {
		return p, nil, err
	}
	if err := decodeRecord(e.val, &p); err != nil {
		return p, nil, fmt.Errorf("metastore: corrupt latest pointer of %s: %w", job, err)
	}
	return p, &e, nil
}

// setPointer moves the pointer by compare-and-set on e (create if nil).
func (s *store) setPointer(ctx context.Context, job string, p subjects.LatestPointer, e *entry) error {
	b, err := subjects.Encode(&p)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, commitStepTimeout)
	defer cancel()
	if e == nil {
		_, err = s.ckpts.Create(cctx, latestKey(job), b)
	} else {
		_, err = s.ckpts.Update(cctx, latestKey(job), b, e.rev)
	}
	return err
}

func (s *store) Claim(ctx context.Context, job string, term uint64) error {
	for conflicts := 0; conflicts < 10; {
		p, e, err := s.pointer(ctx, job)
		switch {
		case err != nil:
			return err
		case p.Term > term:
			return fmt.Errorf("%w: job %s is claimed by term %d, not %d", ErrFenced, job, p.Term, term)
		case e != nil && p.Term == term:
			return nil
		}
		p.Term = term
		err = s.setPointer(ctx, job, p, e)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errExists) || errors.Is(err, errWrongRevision):
			conflicts++
		case s.transient(err) && ctx.Err() == nil:
			if werr := wait(ctx); werr != nil {
				return err
			}
		default:
			return err
		}
	}
	return fmt.Errorf("metastore: claiming %s: too much contention", job)
}

// Commit: the record is created (never overwritten: a record of the same
// id written by another term makes the commit fail with ErrConflict), then
// the latest pointer is moved by compare-and-set, unless the pointer is
// already at or past the record's id (a newer checkpoint committed first:
// a record at or below the pointer is committed once stored).
//
// Each step that gets no answer is retried until ctx ends (the end of the
// checkpoint's timeout). Retrying is safe: a create whose answer was lost
// finds its own bytes, and the compare-and-set is retried only after
// reading the pointer again, so an update that was applied although its
// answer was lost reads as done instead of being applied twice. A read from
// a replica that lags shows an older pointer, never a newer one.
//
// When it fails for good, the record may be stored all the same (the answer
// was lost, or the request waits in the connection's reconnect buffer).
// Once a later checkpoint moves the pointer past it, such a record would
// read as completed although the tasks were told it aborted. So a failed
// commit deletes the record again, on the same connection, by
// compare-and-set on the revision of its own bytes (forget).
func (s *store) Commit(ctx context.Context, term uint64, r subjects.CheckpointRecord) (err error) {
	b, err := subjects.Encode(&r)
	if err != nil {
		return err
	}
	key := recordKey(r)
	crashed := false
	defer func() {
		if err != nil && !crashed && !errors.Is(err, ErrConflict) {
			s.forget(key, b)
		}
	}()
	if err = s.retry(ctx, func(ctx context.Context) error {
		_, err := s.ckpts.Create(ctx, key, b)
		if errors.Is(err, errExists) {
			if e, gerr := s.ckpts.Get(ctx, key); gerr != nil {
				return gerr
			} else if !bytes.Equal(e.val, b) {
				return fmt.Errorf("%w: %s", ErrConflict, key)
			}
			return nil // our own create, whose answer was lost
		}
		return err
	}); err != nil {
		return err
	}
	if s.opts.AfterPut != nil {
		if err := s.opts.AfterPut(r); err != nil {
			crashed = true // as a crash would: nothing is forgotten
			return err
		}
	}
	for conflicts := 0; conflicts < 5; {
		cur, e, err := s.pointer(ctx, r.Job)
		if err != nil {
			return err
		}
		if e != nil {
			switch {
			case cur.ID == r.ID:
				// Our own update whose answer was lost (ids are unique per
				// job: the record's create would have failed otherwise).
				return nil
			case cur.Term > term:
				return fmt.Errorf("%w: job %s is claimed by term %d, not %d", ErrFenced, r.Job, cur.Term, term)
			case cur.ID > r.ID:
				return nil // committed: a newer one moved the pointer first
			}
		}
		err = s.setPointer(ctx, r.Job, subjects.LatestPointer{ID: r.ID, Kind: r.Kind, Location: r.Location, Term: max(term, cur.Term)}, e)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errExists) || errors.Is(err, errWrongRevision):
			conflicts++ // another commit moved the pointer: read it again
		case s.transient(err) && ctx.Err() == nil:
			if werr := wait(ctx); werr != nil {
				return err
			}
		default:
			return err
		}
	}
	return fmt.Errorf("metastore: latest pointer of %s: too much contention", r.Job)
}

// commitStepTimeout bounds each request of a commit, so that one lost to a
// leader election is retried within the checkpoint's timeout.
const commitStepTimeout = 2 * time.Second

// forgetTimeout bounds forget's retries.
const forgetTimeout = time.Minute

// retry runs op with commitStepTimeout per attempt until it succeeds, fails
// with an error that is not transient, or ctx ends.
func (s *store) retry(ctx context.Context, op func(context.Context) error) error {
	return Retry(ctx, s.transient, op)
}

// Retry runs op with a timeout of 2 s per attempt until it succeeds, fails
// with an error transient does not accept, or ctx ends: a request lost to a
// JetStream leader election is sent again.
func Retry(ctx context.Context, transient func(error) bool, op func(context.Context) error) error {
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

// forget deletes the record of a failed commit, in the background, if the
// key still holds the commit's own bytes, retrying while the bucket does
// not answer for up to forgetTimeout.
//
// Why the delete lands after the put it undoes, also on a JetStream
// cluster: both are sent on the same connection, so the server receives the
// delete after the put (a put still in the reconnect buffer goes out
// first). The stream leader orders them in its raft log; a put that an old
// leader appended but did not replicate to a majority is truncated when it
// rejoins, and once the delete is committed by a majority, a server whose
// log ends before it cannot be elected again. What remains: if the delete
// never gets an answer within forgetTimeout (no quorum for a minute), the
// record stays until a pruning load finds it above the latest pointer, or,
// when a later checkpoint committed meanwhile, as an older restore point.
func (s *store) forget(key string, val []byte) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
		defer cancel()
		_ = s.retry(ctx, func(ctx context.Context) error {
			e, err := s.ckpts.Get(ctx, key)
			if errors.Is(err, errNotFound) || (err == nil && !bytes.Equal(e.val, val)) {
				return nil
			} else if err != nil {
				return err
			}
			return s.ckpts.Delete(ctx, key, e.rev)
		})
	}()
}

func (s *store) Load(ctx context.Context, job string, prune bool) (JobCheckpoints, []error, error) {
	var out JobCheckpoints
	var warnings []error
	p, _, err := s.pointer(ctx, job)
	if err != nil {
		return out, nil, err
	}
	out.Latest = p.ID
	keys, err := s.ckpts.Keys(ctx, recordFilters(job)...)
	if err != nil {
		return out, nil, err
	}
	for _, k := range keys {
		e, err := s.ckpts.Get(ctx, k)
		if errors.Is(err, errNotFound) {
			continue
		} else if err != nil {
			return out, nil, err
		}
		var r subjects.CheckpointRecord
		if err := subjects.Decode(e.val, &r); err != nil {
			warnings = append(warnings, fmt.Errorf("checkpoint record %s: %w", k, err))
			continue
		}
		out.Highest = max(out.Highest, r.ID)
		if r.ID > out.Latest {
			if prune {
				warnings = append(warnings, fmt.Errorf("checkpoint record %s was never committed; removing it", k))
				_ = s.ckpts.Delete(ctx, k, e.rev)
			}
			continue
		}
		if r.Kind == subjects.KindSavepoint {
			out.Savepoints = append(out.Savepoints, r)
		} else {
			out.Checkpoints = append(out.Checkpoints, r)
		}
	}
	out.Highest = max(out.Highest, out.Latest)
	byID := func(rs []subjects.CheckpointRecord) {
		sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	}
	byID(out.Checkpoints)
	byID(out.Savepoints)
	return out, warnings, nil
}

func (s *store) Remove(ctx context.Context, term uint64, r subjects.CheckpointRecord) error {
	p, _, err := s.pointer(ctx, r.Job)
	if err != nil {
		return err
	}
	if p.Term > term {
		return fmt.Errorf("%w: job %s is claimed by term %d, not %d", ErrFenced, r.Job, p.Term, term)
	}
	return s.ckpts.Delete(ctx, recordKey(r), 0)
}

func (s *store) SavepointByLocation(ctx context.Context, location string) (subjects.CheckpointRecord, bool, error) {
	keys, err := s.ckpts.Keys(ctx, savepointFilter)
	if err != nil {
		return subjects.CheckpointRecord{}, false, err
	}
	for _, k := range keys {
		e, err := s.ckpts.Get(ctx, k)
		if err != nil {
			continue
		}
		var r subjects.CheckpointRecord
		if subjects.Decode(e.val, &r) == nil && strings.TrimSuffix(r.Location, "/") == location {
			return r, true, nil
		}
	}
	return subjects.CheckpointRecord{}, false, nil
}

// decodeRecord decodes a persisted record, accepting the records of builds
// that wrote them without a type and version (plain JSON of the same
// fields).
func decodeRecord(data []byte, m subjects.Message) error {
	var peek struct {
		Type json.RawMessage `json:"type"`
	}
	if err := json.Unmarshal(data, &peek); err != nil {
		return err
	}
	if len(peek.Type) == 0 {
		return json.Unmarshal(data, m)
	}
	return subjects.Decode(data, m)
}
