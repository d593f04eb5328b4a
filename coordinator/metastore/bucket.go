package metastore

import (
	"context"
	"errors"
)

// bucket is the narrow key-value surface the store's logic needs: what a
// JetStream KV bucket with History 1 offers. Revisions grow across the
// bucket and are never reused.
type bucket interface {
	// Get returns errNotFound for a key never written, deleted, or expired.
	Get(ctx context.Context, key string) (entry, error)
	// Create writes key only if it does not exist (errExists otherwise).
	Create(ctx context.Context, key string, val []byte) (uint64, error)
	// Update writes key only if its revision is rev (errWrongRevision).
	Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error)
	// Delete removes key; with rev > 0 only if its revision is rev
	// (errWrongRevision). A key that does not exist is not an error.
	Delete(ctx context.Context, key string, rev uint64) error
	// Keys lists the keys matching any of the filters (NATS wildcards),
	// sorted.
	Keys(ctx context.Context, filters ...string) ([]string, error)
}

type entry struct {
	val []byte
	rev uint64
}

var (
	errNotFound      = errors.New("metastore: key not found")
	errExists        = errors.New("metastore: key exists")
	errWrongRevision = errors.New("metastore: wrong revision")
)
