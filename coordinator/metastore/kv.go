package metastore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// New opens (creating them if needed) the namespace's buckets in JetStream,
// replicated as p says. Buckets use file storage; the server must sync
// every write (sync_interval: always) for a committed record to survive a
// crash. The leader bucket's TTL is o.LeaseTTL, or the TTL it was created
// with if it exists (LeaseTTL says which): a lease key not renewed within
// it expires on the servers, whatever the holder's clock says.
func New(ctx context.Context, js jetstream.JetStream, ns subjects.Namespace, p replicas.Policy, o Options) (Store, error) {
	o = o.withDefaults()
	open := func(cfg jetstream.KeyValueConfig, what string) (bucket, error) {
		if _, _, err := replicas.EnsureKV(ctx, js, cfg, p); err != nil {
			return nil, fmt.Errorf("metastore: %s bucket: %w", what, err)
		}
		b := &kvBucket{js: js, name: cfg.Bucket, stream: "KV_" + cfg.Bucket, prefix: "$KV." + cfg.Bucket + "."}
		if err := b.bind(ctx); err != nil {
			return nil, fmt.Errorf("metastore: %s bucket: %w", what, err)
		}
		return b, nil
	}
	coord, err := open(CoordinatorBucket(ns), "coordinator")
	if err != nil {
		return nil, err
	}
	// The lease bucket's TTL is fixed when it is created. A store opened
	// with another takes the bucket's: a coordinator that lowered it would
	// cut short the lease of a leader that acts by the longer one, and one
	// that acted by a longer TTL than the servers keep its lease could act
	// beside its successor.
	if s, err := js.Stream(ctx, "KV_"+BucketName(ns, bucketLeader)); err == nil {
		if have := s.CachedInfo().Config.MaxAge; have > 0 {
			o.LeaseTTL = have
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("metastore: leader bucket: %w", err)
	}
	leader, err := open(jetstream.KeyValueConfig{Bucket: BucketName(ns, bucketLeader), Storage: jetstream.FileStorage, History: 1,
		TTL: o.LeaseTTL, Description: "flotilla coordinator leader lease"}, "leader")
	if err != nil {
		return nil, err
	}
	jobs, err := open(jetstream.KeyValueConfig{Bucket: BucketName(ns, bucketJobs), Storage: jetstream.FileStorage, History: 1}, "jobs")
	if err != nil {
		return nil, err
	}
	ckpts, err := open(jetstream.KeyValueConfig{Bucket: BucketName(ns, bucketCheckpoints), Storage: jetstream.FileStorage, History: 1,
		Description: "flotilla completed checkpoints and savepoints"}, "checkpoints")
	if err != nil {
		return nil, err
	}
	return &store{opts: o, coord: coord, leader: leader, jobs: jobs, ckpts: ckpts, transient: Transient}, nil
}

// kvBucket is a bucket whose reads are answered by its stream's leader.
// A KV bucket lets any replica answer a read ("direct get"), and its key
// listing is a consumer that may run on any replica: one behind its leader
// (just restarted, catching up) answers with what it has applied so far.
// Seen: after two of three servers were down, a new leader's listing of
// the jobs bucket missed a job, and the job was forgotten. Metadata that
// says what is committed is read from the leader.
type kvBucket struct {
	kv     atomic.Pointer[jetstream.KeyValue] // see bind
	js     jetstream.JetStream
	name   string
	stream string // KV_<bucket>
	prefix string // $KV.<bucket>.
}

// bind turns direct gets off on the bucket's stream (any replica may
// answer those) and opens the bucket anew, so that its gets go to the
// stream leader.
//
// A handle sends its gets where the stream's configuration said when it
// was opened, and another process may change that afterwards: creating or
// updating a bucket (nats.go does so on every create-or-update) turns
// direct gets on again, and the next open turns them off. A handle opened
// in between sends its gets to a direct-get subject nobody answers once
// they are off; Get then binds again (see Get). Coordinators that start
// together, once the NATS they waited for comes up, do exactly this.
func (b *kvBucket) bind(ctx context.Context) error {
	s, err := b.js.Stream(ctx, b.stream)
	if err != nil {
		return err
	}
	if cfg := s.CachedInfo().Config; cfg.AllowDirect {
		cfg.AllowDirect = false
		if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("turning direct gets off: %w", err)
		}
	}
	kv, err := b.js.KeyValue(ctx, b.name)
	if err != nil {
		return err
	}
	b.kv.Store(&kv)
	return nil
}

func (b *kvBucket) handle() jetstream.KeyValue { return *b.kv.Load() }

// Get reads key from the stream leader. Nobody answering a read while
// JetStream answers means that the handle sends direct gets the stream no
// longer serves (see bind): it binds again and reads once more.
func (b *kvBucket) Get(ctx context.Context, key string) (entry, error) {
	e, err := b.handle().Get(ctx, key)
	if errors.Is(err, nats.ErrNoResponders) {
		if berr := b.bind(ctx); berr != nil {
			return entry{}, fmt.Errorf("%w (binding the bucket again: %v)", err, berr)
		}
		e, err = b.handle().Get(ctx, key)
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return entry{}, errNotFound
	} else if err != nil {
		return entry{}, err
	}
	return entry{val: e.Value(), rev: e.Revision()}, nil
}

func (b *kvBucket) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	rev, err := b.handle().Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errExists
	}
	return rev, err
}

func (b *kvBucket) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	rev, err := b.handle().Update(ctx, key, val, rev)
	if isWrongLastSequence(err) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errWrongRevision
	}
	return rev, err
}

func (b *kvBucket) Delete(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err := b.handle().Delete(ctx, key, opts...)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil
	case isWrongLastSequence(err):
		return errWrongRevision
	}
	return err
}

// Keys lists the bucket's keys (matching filters, if any) from the stream
// leader's count of messages per subject. Keys whose last operation is a
// delete or purge are listed too: a Get of them finds nothing.
func (b *kvBucket) Keys(ctx context.Context, filters ...string) ([]string, error) {
	s, err := b.js.Stream(ctx, b.stream)
	if err != nil {
		return nil, err
	}
	if len(filters) == 0 {
		filters = []string{">"}
	}
	seen := map[string]bool{}
	for _, f := range filters {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(b.prefix+f))
		if err != nil {
			return nil, fmt.Errorf("metastore: listing keys of %s: %w", b.stream, err)
		}
		for subj := range info.State.Subjects {
			if k, ok := strings.CutPrefix(subj, b.prefix); ok {
				seen[k] = true
			}
		}
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

// Transient reports whether err means that JetStream did not answer or
// cannot answer now (a leader election, a server lost, a reconnect), so
// that the same request may be sent again.
func Transient(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, errInjected):
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
