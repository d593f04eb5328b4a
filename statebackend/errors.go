package statebackend

import (
	"errors"
	"fmt"
	"strings"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

var (
	// ErrNotFound is returned by reads of a key that has no value.
	ErrNotFound = errors.New("statebackend: not found")
	// ErrClosed is returned by operations on a closed Backend.
	ErrClosed = errors.New("statebackend: closed")
	// ErrInvalidOptions is returned by Open and Restore for Options that fail
	// validation.
	ErrInvalidOptions = errors.New("statebackend: invalid options")
	// ErrInvalidStateName is returned for a state name that is empty or longer
	// than MaxStateNameLen bytes.
	ErrInvalidStateName = errors.New("statebackend: invalid state name")
	// ErrNotOwned is returned for a key or key group outside the backend's
	// key-group range.
	ErrNotOwned = errors.New("statebackend: key group not owned")
	// ErrCorrupt is wrapped by every *CorruptError.
	ErrCorrupt = errors.New("statebackend: corrupt object")
	// ErrNotCovered is wrapped by *CoverageError: the handles given to Restore
	// do not cover the range to restore.
	ErrNotCovered = errors.New("statebackend: handles do not cover the key-group range")
	// ErrOverlap is returned by Restore for handles that claim the same key
	// group.
	ErrOverlap = errors.New("statebackend: handles overlap")
	// ErrInvalidHandle is returned by Handle.Validate and by Restore for a
	// handle that is malformed or does not match what it points to.
	ErrInvalidHandle = errors.New("statebackend: invalid handle")
	// ErrUnknownFormat is returned when decoding a Format, a manifest or a
	// savepoint written in a format or version this build does not know.
	ErrUnknownFormat = errors.New("statebackend: unknown format")
	// ErrMaxParallelismMismatch is returned by Restore for a snapshot or
	// savepoint written with a different max parallelism.
	ErrMaxParallelismMismatch = errors.New("statebackend: max parallelism mismatch")
	// ErrDirNotEmpty is returned by Restore when dir already holds a backend.
	ErrDirNotEmpty = errors.New("statebackend: directory already holds state")
	// ErrSnapshotExists is returned by Snapshot for an id that is still
	// pending.
	ErrSnapshotExists = errors.New("statebackend: snapshot already pending")
	// ErrNoSpace is wrapped by *NoSpaceError: the filesystem holding the
	// backend has too little room to commit.
	ErrNoSpace = errors.New("statebackend: no space left for state")
	// ErrBroken is returned by Close (and wrapped by the commit error) of a
	// backend whose Pebble DB failed in a commit: the DB is abandoned, not
	// closed, since closing it would never return.
	ErrBroken = errors.New("statebackend: state store failed")
	// ErrSnapshotReleased is returned by Upload of a snapshot that was
	// released, aborted or already uploaded.
	ErrSnapshotReleased = errors.New("statebackend: snapshot released")
)

// CorruptError reports an object whose bytes do not match what the manifest,
// footer or format says: wrong size, checksum mismatch, undecodable content.
// It wraps ErrCorrupt.
type CorruptError struct {
	// Object is the object-store key of the corrupt object.
	Object string
	// Reason says what did not match.
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("statebackend: corrupt object %q: %s", e.Object, e.Reason)
}

// Unwrap returns ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

func corruptf(object, format string, args ...any) error {
	return &CorruptError{Object: object, Reason: fmt.Sprintf(format, args...)}
}

// MissingError reports an object that a handle references but the store does
// not hold. It wraps the store's error, which wraps objectstore.ErrNotFound.
type MissingError struct {
	// Object is the object-store key of the missing object.
	Object string
	// Err is the store's error.
	Err error
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("statebackend: missing object %q: %v", e.Object, e.Err)
}

// Unwrap returns the store's error.
func (e *MissingError) Unwrap() error { return e.Err }

// CoverageError reports key groups of the range to restore that no handle
// covers. It wraps ErrNotCovered.
type CoverageError struct {
	// Want is the range to restore.
	Want keygroup.Range
	// Missing lists the uncovered sub-ranges, in order.
	Missing []keygroup.Range
}

func (e *CoverageError) Error() string {
	parts := make([]string, len(e.Missing))
	for i, r := range e.Missing {
		parts[i] = r.String()
	}
	return fmt.Sprintf("%v: restoring %v, no handle covers %s", ErrNotCovered, e.Want, strings.Join(parts, ", "))
}

// Unwrap returns ErrNotCovered.
func (e *CoverageError) Unwrap() error { return ErrNotCovered }
