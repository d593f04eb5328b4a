package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// jobRecord is a job as persisted in the jobs bucket, so that a restarted
// coordinator resumes every job that had not ended.
type jobRecord struct {
	Spec      subjects.JobSpec  `json:"spec"`
	State     subjects.JobState `json:"state"`
	Submitted time.Time         `json:"submitted"`
	// FromSavepoint is the object key of the savepoint or checkpoint the
	// run was submitted with.
	FromSavepoint string `json:"from_savepoint,omitempty"`
	// AllowOperatorChange: the submit said that restoring FromSavepoint
	// into another operator or state version is intended.
	AllowOperatorChange bool `json:"allow_operator_change,omitempty"`
	// FirstID is the first checkpoint id of this run: checkpoints of the
	// job's earlier runs (lower ids) are never restored.
	FirstID uint64 `json:"first_id"`
}

// meta is the coordinator's durable metadata in JetStream: its epoch and
// its jobs. Buckets use file storage; the server must sync every write
// (sync_interval: always) for a committed record to survive a crash.
type meta struct {
	coord jetstream.KeyValue
	jobs  jetstream.KeyValue
}

// bucketName returns a JetStream bucket or stream name for the namespace,
// so that fleets with different prefixes share a server without sharing
// state.
func bucketName(ns subjects.Namespace, what string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(ns.Prefix()) + "_" + what)
}

// coordinatorBucket is the configuration of the bucket of the coordinator's
// epoch.
func coordinatorBucket(ns subjects.Namespace) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: bucketName(ns, "COORDINATOR"), Storage: jetstream.FileStorage, History: 1}
}

func openMeta(ctx context.Context, js jetstream.JetStream, ns subjects.Namespace, p replicas.Policy) (*meta, error) {
	coord, _, err := replicas.EnsureKV(ctx, js, coordinatorBucket(ns), p)
	if err != nil {
		return nil, fmt.Errorf("coordinator: coordinator bucket: %w", err)
	}
	jobs, _, err := replicas.EnsureKV(ctx, js, jetstream.KeyValueConfig{
		Bucket: bucketName(ns, "JOBS"), Storage: jetstream.FileStorage, History: 1,
	}, p)
	if err != nil {
		return nil, fmt.Errorf("coordinator: jobs bucket: %w", err)
	}
	return &meta{coord: coord, jobs: jobs}, nil
}

// nextEpoch increments the durable epoch with compare-and-set and returns
// it: every coordinator start gets a higher fencing token than any before.
func (m *meta) nextEpoch(ctx context.Context) (uint64, error) {
	for i := 0; i < 100; i++ {
		e, err := m.coord.Get(ctx, "epoch")
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err := m.coord.Create(ctx, "epoch", []byte("1")); err == nil {
				return 1, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return 0, err
			}
		case err != nil:
			return 0, err
		default:
			n, perr := strconv.ParseUint(string(e.Value()), 10, 64)
			if perr != nil {
				return 0, fmt.Errorf("coordinator: corrupt epoch %q", e.Value())
			}
			if _, err := m.coord.Update(ctx, "epoch", []byte(strconv.FormatUint(n+1, 10)), e.Revision()); err == nil {
				return n + 1, nil
			}
		}
	}
	return 0, errors.New("coordinator: epoch: too much contention")
}

func (m *meta) putJob(ctx context.Context, r jobRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = m.jobs.Put(ctx, r.Spec.Name, b)
	return err
}

func (m *meta) loadJobs(ctx context.Context) ([]jobRecord, error) {
	lister, err := m.jobs.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []jobRecord
	for k := range lister.Keys() {
		e, err := m.jobs.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var r jobRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, fmt.Errorf("coordinator: job record %q: %w", k, err)
		}
		out = append(out, r)
	}
	return out, nil
}
