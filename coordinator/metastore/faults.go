package metastore

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// errInjected is the error of an injected fault; Transient reports it as
// transient, like a request that got no answer.
var errInjected = errors.New("metastore: injected fault")

// Op names a Store method, for fault injection.
type Op string

// The operations a Fault may fail.
const (
	OpReadLease Op = "read_lease"
	OpAcquire   Op = "acquire"
	OpRenew     Op = "renew"
	OpRelease   Op = "release"
	OpPutJob    Op = "put_job"
	OpJobs      Op = "jobs"
	OpClaim     Op = "claim"
	OpCommit    Op = "commit"
	OpLoad      Op = "load"
	OpRemove    Op = "remove"
	OpSavepoint Op = "savepoint_by_location"
)

// Fault decides the fate of one call: fail it before it reaches the store
// (the request was lost), or after (it took effect, its answer was lost),
// or neither.
type Fault func(op Op) (before, after bool)

// RandomFaults fails each call before with probability p and after with
// probability p, from a seeded source (safe for concurrent use).
func RandomFaults(seed uint64, p float64) Fault {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	return func(Op) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64() < p, r.Float64() < p
	}
}

// WithFaults wraps s so that f decides, per call, whether it fails. A
// failed call returns an error that Transient reports as transient.
func WithFaults(s Store, f Fault) Store { return &faulty{s: s, f: f} }

type faulty struct {
	s Store
	f Fault
}

// call runs do under the fault f picks for op.
func call[T any](fs *faulty, op Op, do func() (T, error)) (T, error) {
	var zero T
	before, after := fs.f(op)
	if before {
		return zero, errInjected
	}
	v, err := do()
	if err == nil && after {
		return zero, errInjected
	}
	return v, err
}

func callErr(fs *faulty, op Op, do func() error) error {
	_, err := call(fs, op, func() (struct{}, error) { return struct{}{}, do() })
	return err
}

func (fs *faulty) LeaseTTL() time.Duration { return fs.s.LeaseTTL() }

func (fs *faulty) ReadLease(ctx context.Context) (Lease, error) {
	return call(fs, OpReadLease, func() (Lease, error) { return fs.s.ReadLease(ctx) })
}

func (fs *faulty) Acquire(ctx context.Context, holder string, now time.Time) (Lease, error) {
	return call(fs, OpAcquire, func() (Lease, error) { return fs.s.Acquire(ctx, holder, now) })
}

func (fs *faulty) Renew(ctx context.Context, l Lease) (Lease, error) {
	return call(fs, OpRenew, func() (Lease, error) { return fs.s.Renew(ctx, l) })
}

func (fs *faulty) Release(ctx context.Context, l Lease) error {
	return callErr(fs, OpRelease, func() error { return fs.s.Release(ctx, l) })
}

func (fs *faulty) PutJob(ctx context.Context, term uint64, r subjects.JobRecord) error {
	return callErr(fs, OpPutJob, func() error { return fs.s.PutJob(ctx, term, r) })
}

func (fs *faulty) Jobs(ctx context.Context) ([]subjects.JobRecord, error) {
	return call(fs, OpJobs, func() ([]subjects.JobRecord, error) { return fs.s.Jobs(ctx) })
}

func (fs *faulty) Claim(ctx context.Context, job string, term uint64) error {
	return callErr(fs, OpClaim, func() error { return fs.s.Claim(ctx, job, term) })
}

func (fs *faulty) Commit(ctx context.Context, term uint64, r subjects.CheckpointRecord) error {
	return callErr(fs, OpCommit, func() error { return fs.s.Commit(ctx, term, r) })
}

func (fs *faulty) Load(ctx context.Context, job string, prune bool) (JobCheckpoints, []error, error) {
	var warnings []error
	jc, err := call(fs, OpLoad, func() (JobCheckpoints, error) {
		jc, w, err := fs.s.Load(ctx, job, prune)
		warnings = w
		return jc, err
	})
	return jc, warnings, err
}

func (fs *faulty) Remove(ctx context.Context, term uint64, r subjects.CheckpointRecord) error {
	return callErr(fs, OpRemove, func() error { return fs.s.Remove(ctx, term, r) })
}

func (fs *faulty) SavepointByLocation(ctx context.Context, location string) (subjects.CheckpointRecord, bool, error) {
	var found bool
	r, err := call(fs, OpSavepoint, func() (subjects.CheckpointRecord, error) {
		r, ok, err := fs.s.SavepointByLocation(ctx, location)
		found = ok
		return r, err
	})
	return r, found, err
}
