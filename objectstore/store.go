// Package objectstore is flotilla's narrow seam to checkpoint storage, after
// Pebble's objstorage/remote.Storage.
//
// Three implementations share one contract, checked by one conformance suite
// (objectstore/storetest): S3-compatible stores through minio-go (MinIO, AWS S3),
// a local directory (the embedded default), and memory (unit tests).
//
// Keys are slash-separated relative paths ("job/chk-3/_metadata"); a key never
// starts with "/", never contains "." or ".." elements and is never empty.
// Every method is safe for concurrent use.
package objectstore

import (
	"context"
	"errors"
	"io"
	"time"
)

// Store is an object store.
type Store interface {
	// Put writes size bytes read from r as key, replacing any existing object.
	// The object is visible to readers only once Put has returned nil, and a
	// failed Put leaves no partial object. size must equal the bytes r yields.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// PutIfAbsent is Put that fails with ErrExists, writing nothing, if key
	// already exists. It is how a manifest or metadata object is committed
	// exactly once.
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error
	// Get reads length bytes of key starting at offset; length < 0 reads to the
	// end, and a negative offset counts as 0. A range past the end of the
	// object is cut to the object (possibly to nothing). A missing key is
	// reported by Get itself, as ErrNotFound, not by the first Read. The
	// caller must Close the reader.
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Stat returns the object's attributes, or ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Copy writes a copy of object src as dst, replacing any existing dst,
	// with Put's visibility rules. A missing src is ErrNotFound, and dst is
	// then untouched; src == dst is a no-op for an existing src. S3 copies on
	// the server (one request, no bytes through the client), for objects up
	// to 5 GiB, S3's limit for a single copy.
	Copy(ctx context.Context, src, dst string) error
	// Delete removes keys. Keys that do not exist are not an error.
	Delete(ctx context.Context, keys ...string) error
	// Location is the store's location string, as accepted by Open, without
	// credentials.
	Location() string
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

var (
	// ErrNotFound is returned for an object that does not exist.
	ErrNotFound = errors.New("objectstore: object not found")
	// ErrExists is returned by PutIfAbsent when the object exists.
	ErrExists = errors.New("objectstore: object already exists")
	// ErrInvalidKey is returned for a key that breaks the key rules above.
	ErrInvalidKey = errors.New("objectstore: invalid key")
	// ErrInvalidLocation is returned by Open for a location it cannot parse.
	ErrInvalidLocation = errors.New("objectstore: invalid location")
	// ErrSizeMismatch is returned by Put when the reader yields a different
	// number of bytes than size.
	ErrSizeMismatch = errors.New("objectstore: size mismatch")
)
