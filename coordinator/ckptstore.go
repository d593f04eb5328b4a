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
// latest pointer was written by a commit that did not finish; it is ignored
// and removed when found.
type ckptStore struct {
	kv jetstream.KeyValue
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
// When it fails for want of an answer (a timeout, NATS away), the record
// may be stored all the same: the server may have stored it without its
// answer arriving, or the request may wait in the connection's reconnect
// buffer and reach the server after the caller has aborted the checkpoint.
// Once a later checkpoint moves the latest pointer past it, such a record
// would read as completed (see load), although the tasks were told it
// aborted and retention may delete the shared files it references. So a
// failed commit deletes the record again, on the same connection: the
// delete reaches the server after any such put.
func (s *ckptStore) commit(ctx context.Context, r subjects.CheckpointRecord) (err error) {
	b, err := subjects.Encode(&r)
	if err != nil {
		return err
	}
	if _, err = s.kv.Put(ctx, recordKey(r), b); err != nil {
		s.forget(r)
		return err
	}
	defer func() {
		if err != nil {
			s.forget(r)
		}
	}()
	ptr, _ := json.Marshal(latestPointer{ID: r.ID, Kind: r.Kind, Location: r.Location})
	key := r.Job + ".latest"
	for attempt := 0; attempt < 5; attempt++ {
		e, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err = s.kv.Create(ctx, key, ptr); err == nil || !errors.Is(err, jetstream.ErrKeyExists) {
				return err
			}
		case err != nil:
			return err
		default:
			var cur latestPointer
			if err := json.Unmarshal(e.Value(), &cur); err != nil {
				return fmt.Errorf("corrupt latest pointer of %s: %w", r.Job, err)
			}
			if cur.ID >= r.ID {
				return nil
			}
			if _, err = s.kv.Update(ctx, key, ptr, e.Revision()); err == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("latest pointer of %s: too much contention", r.Job)
}

// forgetTimeout bounds forget's delete.
const forgetTimeout = 5 * time.Second

// forget deletes the record of a failed commit, best effort (a record it
// leaves behind can only ever be an older restore point; see commit).
func (s *ckptStore) forget(r subjects.CheckpointRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	_ = s.kv.Delete(ctx, recordKey(r))
}

// jobCheckpoints is what the store knows of one job.
type jobCheckpoints struct {
	latest      uint64
	checkpoints []subjects.CheckpointRecord // retained, oldest first
	savepoints  []subjects.CheckpointRecord // oldest first
}

// load reads a job's records. Uncommitted leftovers (ids above the latest
// pointer) are deleted; unreadable records are reported and skipped.
func (s *ckptStore) load(ctx context.Context, job string) (jobCheckpoints, []error, error) {
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
		if r.ID > out.latest {
			warnings = append(warnings, fmt.Errorf("checkpoint record %s was never committed; removing it", k))
			_ = s.kv.Delete(ctx, k)
			continue
		}
		if r.Kind == subjects.KindSavepoint {
			out.savepoints = append(out.savepoints, r)
		} else {
			out.checkpoints = append(out.checkpoints, r)
		}
	}
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
