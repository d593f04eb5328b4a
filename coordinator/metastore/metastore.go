// Package metastore is the coordinator's durable metadata: the leader lease
// and the epoch it fences with, job records, and the commit, load and
// removal of checkpoint and savepoint records. Store is the seam; New opens
// it on JetStream KV, NewMem is its in-memory twin, WithFaults injects
// failures, and metastoretest is the conformance suite both pass.
//
// Both implementations run the same logic (store.go) over a narrow bucket
// interface (a JetStream KV bucket, or a map), so the twin cannot drift
// from the real thing in anything but the bucket's semantics, which the
// conformance suite pins down.
//
// Fencing. A leader's term (its fencing token) is the coordinator epoch it
// took while holding the lease, so terms grow with every new leader. Every
// write that matters carries the term and is refused with ErrFenced when a
// newer term has claimed what it writes:
//
//   - a checkpoint commit is a compare-and-set of the job's latest pointer,
//     which records the highest term that claimed the job (Claim, done by a
//     new leader before it loads the job);
//   - a job record is replaced by compare-and-set, never over a newer term's;
//   - a checkpoint record is removed only while no newer term claimed the job.
package metastore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/subjects"
)

// Errors. Compare with errors.Is.
var (
	// ErrNoLease: nobody holds the lease.
	ErrNoLease = errors.New("metastore: no coordinator holds the lease")
	// ErrLeaseHeld: Acquire found the lease held (Lease says by whom).
	ErrLeaseHeld = errors.New("metastore: the lease is held")
	// ErrLeaseLost: Renew or Release found the lease expired or taken.
	ErrLeaseLost = errors.New("metastore: the lease is lost")
	// ErrFenced: a newer leader term claimed what the write would change.
	ErrFenced = errors.New("metastore: fenced by a newer leader term")
	// ErrConflict: another record was stored under the same checkpoint id.
	ErrConflict = errors.New("metastore: another record holds this checkpoint id")
)

// Lease is a held (or observed) leader lease.
type Lease struct {
	Holder string
	// Term is the fencing token: the coordinator epoch the holder took
	// after acquiring the key. Terms of successive holders grow.
	Term uint64
	// Revision is the lease key's revision: Renew compares and sets on it.
	Revision uint64
	Acquired time.Time
}

// JobCheckpoints is what the store knows of one job.
type JobCheckpoints struct {
	Latest uint64
	// Highest is the highest id of any record found, committed or not: a
	// new run numbers its checkpoints above it, so that it never reuses the
	// id of a commit still in flight.
	Highest     uint64
	Checkpoints []subjects.CheckpointRecord // retained, oldest first
	Savepoints  []subjects.CheckpointRecord // oldest first
}

// Store is the coordinator's metadata. Every method may be called from any
// goroutine. Methods that take a term refuse with ErrFenced when a newer
// term has claimed the job.
type Store interface {
	// LeaseTTL is how long a lease lives without renewal: on JetStream the
	// TTL the leader bucket was created with, which may not be the one
	// asked for. An elected leader must act by this one.
	LeaseTTL() time.Duration
	// ReadLease returns the current lease, or ErrNoLease.
	ReadLease(ctx context.Context) (Lease, error)
	// Acquire takes the lease for holder if nobody holds it, then takes the
	// next epoch as its term. It returns ErrLeaseHeld (with the holder's
	// lease) when someone does.
	Acquire(ctx context.Context, holder string, now time.Time) (Lease, error)
	// Renew extends l by compare-and-set on its revision: ErrLeaseLost if
	// the lease expired or another holder took it.
	Renew(ctx context.Context, l Lease) (Lease, error)
	// Release gives l up, if it is still held.
	Release(ctx context.Context, l Lease) error

	// PutJob writes r under term.
	PutJob(ctx context.Context, term uint64, r subjects.JobRecord) error
	// Jobs returns every job record.
	Jobs(ctx context.Context) ([]subjects.JobRecord, error)

	// Claim makes term the job's term: from then on, commits and removals
	// of older terms are refused. A new leader claims a job before it loads
	// its checkpoints.
	Claim(ctx context.Context, job string, term uint64) error
	// Commit stores r, then moves the job's latest pointer to it by
	// compare-and-set, unless a newer checkpoint or savepoint committed
	// first. That compare-and-set is the commit.
	Commit(ctx context.Context, term uint64, r subjects.CheckpointRecord) error
	// Load reads a job's committed records; with prune it deletes records
	// above the latest pointer (leftovers of commits that died), which is
	// safe only while no commit of the job can be in flight.
	Load(ctx context.Context, job string, prune bool) (JobCheckpoints, []error, error)
	// Remove deletes a checkpoint or savepoint record.
	Remove(ctx context.Context, term uint64, r subjects.CheckpointRecord) error
	// SavepointByLocation finds a savepoint record by its location.
	SavepointByLocation(ctx context.Context, location string) (subjects.CheckpointRecord, bool, error)
}

// Options configure a store.
type Options struct {
	// LeaseTTL is the lease's time to live (default DefaultLeaseTTL). On
	// JetStream it is the leader bucket's TTL, fixed when the bucket is
	// created: a store opened on an existing bucket takes its TTL instead
	// (Store.LeaseTTL).
	LeaseTTL time.Duration
	// AfterPut, if set, runs between storing a checkpoint record and moving
	// the latest pointer; an error ends the commit there as a crash would
	// (the record stays, the pointer does not move). For tests.
	AfterPut func(subjects.CheckpointRecord) error
}

// DefaultLeaseTTL is the lease's default time to live. A leader acts until
// a fifth of it before it could expire (12 s after a renewal was sent), and
// renews every third of it: the lease rides out the loss of its bucket's
// stream leader, which nats-server replaces after a random election
// timeout of 4 to 9 s, with room to spare. A 10 s lease (acting 8 s) did
// not always.
const DefaultLeaseTTL = 15 * time.Second

func (o Options) withDefaults() Options {
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	return o
}

// Bucket and key names: the only place they are spelled.

// BucketName returns a JetStream bucket or stream name for the namespace,
// so that fleets with different prefixes share a server without sharing
// state.
func BucketName(ns subjects.Namespace, what string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(ns.Prefix()) + "_" + what)
}

// The buckets.
const (
	bucketCoordinator = "COORDINATOR" // keyEpoch
	bucketLeader      = "LEADER"      // keyLease, with the lease TTL as the bucket's TTL
	bucketJobs        = "JOBS"        // <job>: subjects.JobRecord
	bucketCheckpoints = "CHECKPOINTS" // <job>.chk.<id>, <job>.sp.<id>, <job>.latest
	// Streams the coordinator keeps beside them.
	StreamEvents  = "EVENTS"
	StreamHistory = "CHECKPOINT_HISTORY"
)

const (
	keyEpoch = "epoch"
	keyLease = "lease"
)

// CoordinatorBucket is the configuration of the bucket holding the epoch;
// replicas.Resolve reads it to learn the replication already in use.
func CoordinatorBucket(ns subjects.Namespace) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: BucketName(ns, bucketCoordinator), Storage: jetstream.FileStorage, History: 1}
}

func recordKey(r subjects.CheckpointRecord) string {
	kind := "chk"
	if r.Kind == subjects.KindSavepoint {
		kind = "sp"
	}
	return r.Job + "." + kind + "." + strconv.FormatUint(r.ID, 10)
}

func latestKey(job string) string { return job + ".latest" }

func recordFilters(job string) []string { return []string{job + ".chk.*", job + ".sp.*"} }

const savepointFilter = "*.sp.*"
