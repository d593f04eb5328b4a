package metastore

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// New opens (creating them if needed) the namespace's buckets in JetStream,
// replicated as p says. Buckets use file storage; the server must sync
// every write (sync_interval: always) for a committed record to survive a
// crash. The leader bucket's TTL is o.LeaseTTL: a lease key not renewed
// within it expires on the servers, whatever the holder's clock says.
func New(ctx context.Context, js jetstream.JetStream, ns subjects.Namespace, p replicas.Policy, o Options) (Store, error) {
	o = o.withDefaults()
	open := func(cfg jetstream.KeyValueConfig, what string) (bucket, error) {
		kv, _, err := replicas.EnsureKV(ctx, js, cfg, p)
		if err != nil {
			return nil, fmt.Errorf("metastore: %s bucket: %w", what, err)
		}
		return kvBucket{kv}, nil
	}
	coord, err := open(CoordinatorBucket(ns), "coordinator")
	if err != nil {
		return nil, err
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

// kvBucket is a bucket on a JetStream KV bucket.
type kvBucket struct{ kv jetstream.KeyValue }

func (b kvBucket) Get(ctx context.Context, key string) (entry, error) {
	e, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return entry{}, errNotFound
	} else if err != nil {
		return entry{}, err
	}
	return entry{val: e.Value(), rev: e.Revision()}, nil
}

func (b kvBucket) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	rev, err := b.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errExists
	}
	return rev, err
}

func (b kvBucket) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	rev, err := b.kv.Update(ctx, key, val, rev)
	if isWrongLastSequence(err) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, errWrongRevision
	}
	return rev, err
}

func (b kvBucket) Delete(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err := b.kv.Delete(ctx, key, opts...)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil
	case isWrongLastSequence(err):
		return errWrongRevision
	}
	return err
}

func (b kvBucket) Keys(ctx context.Context, filters ...string) ([]string, error) {
	var l jetstream.KeyLister
	var err error
	if len(filters) == 0 {
		l, err = b.kv.ListKeys(ctx)
	} else {
		l, err = b.kv.ListKeysFiltered(ctx, filters...)
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	_ = l.Stop() // after a complete listing it reports only that the subscription ended
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
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, errInjected), errors.Is(err, errStaleRead):
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
