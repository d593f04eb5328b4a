package statebackend

import (
	"fmt"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// Format is the kind of state a Handle points to. It is persisted in
// checkpoint metadata: values are append-only and never reused.
type Format uint8

const (
	// FormatNative is an incremental Pebble snapshot: a manifest listing the
	// DB's files, its SSTs shared with other snapshots of the same job.
	FormatNative Format = 1
	// FormatCanonical is a self-contained savepoint file of key groups in
	// order with a footer of per-group offsets and checksums.
	FormatCanonical Format = 2
)

func (f Format) String() string {
	switch f {
	case FormatNative:
		return "native"
	case FormatCanonical:
		return "canonical"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// MarshalText implements encoding.TextMarshaler; unknown formats are an
// error.
func (f Format) MarshalText() ([]byte, error) {
	switch f {
	case FormatNative, FormatCanonical:
		return []byte(f.String()), nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownFormat, uint8(f))
}

// UnmarshalText implements encoding.TextUnmarshaler; unknown names are an
// error.
func (f *Format) UnmarshalText(b []byte) error {
	switch string(b) {
	case "native":
		*f = FormatNative
	case "canonical":
		*f = FormatCanonical
	default:
		return fmt.Errorf("%w: %q", ErrUnknownFormat, b)
	}
	return nil
}

// HandleVersion is the version of the Handle encoding written by this build.
const HandleVersion = 1

// Handle points to the persisted state of one task: a native snapshot or a
// canonical savepoint. It is plain data: it travels in checkpoint acks and is
// kept in checkpoint metadata for as long as the checkpoint or savepoint is,
// so fields are only ever added, with Version raised if old readers would
// misread the new ones.
type Handle struct {
	// Version is HandleVersion of the writer.
	Version int `json:"version"`
	// Format says what Manifest points to.
	Format Format `json:"format"`
	// Manifest is the object key of the native snapshot's manifest or of the
	// canonical savepoint file.
	Manifest string `json:"manifest"`
	// Range is the key groups the state holds.
	Range keygroup.Range `json:"range"`
	// Size is the total bytes of every object the handle references.
	Size int64 `json:"size"`
	// Uploaded is the bytes the snapshot or savepoint wrote itself; the rest
	// of Size was uploaded by earlier snapshots and is shared.
	Uploaded int64 `json:"uploaded"`
	// Files is every object key the handle references, Manifest included,
	// for reference counting and garbage collection.
	Files []string `json:"files"`
	// Sizes, if not empty, is the size of each of Files, in order (they add
	// up to Size): what a checkpoint coordinator checks the store holds
	// before it commits. Handles written before it was added have none.
	Sizes []int64 `json:"sizes,omitempty"`
}

// Validate checks the handle's fields for a job with max parallelism
// maxParallelism. It does not read the store.
func (h Handle) Validate(maxParallelism int) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidHandle, fmt.Sprintf(format, args...))
	}
	if h.Version != HandleVersion {
		return bad("version %d, want %d", h.Version, HandleVersion)
	}
	if h.Format != FormatNative && h.Format != FormatCanonical {
		return bad("%v", h.Format)
	}
	if err := objectstore.ValidateKey(h.Manifest); err != nil {
		return bad("manifest: %v", err)
	}
	if err := h.Range.Validate(maxParallelism); err != nil {
		return bad("%v", err)
	}
	if h.Size < 0 || h.Uploaded < 0 || h.Uploaded > h.Size {
		return bad("size %d, uploaded %d", h.Size, h.Uploaded)
	}
	hasManifest := false
	for _, f := range h.Files {
		if err := objectstore.ValidateKey(f); err != nil {
			return bad("file: %v", err)
		}
		hasManifest = hasManifest || f == h.Manifest
	}
	if !hasManifest {
		return bad("files do not include the manifest %q", h.Manifest)
	}
	if len(h.Sizes) > 0 {
		if len(h.Sizes) != len(h.Files) {
			return bad("%d sizes for %d files", len(h.Sizes), len(h.Files))
		}
		var sum int64
		for _, s := range h.Sizes {
			if s < 0 {
				return bad("negative file size %d", s)
			}
			sum += s
		}
		if sum != h.Size {
			return bad("file sizes add up to %d, size is %d", sum, h.Size)
		}
	}
	if h.Format == FormatCanonical && len(h.Files) != 1 {
		return bad("canonical savepoint with %d files", len(h.Files))
	}
	return nil
}

// String describes the handle for logs.
func (h Handle) String() string {
	return fmt.Sprintf("%v %v %s (%d files, %d bytes, %d uploaded)", h.Format, h.Range, h.Manifest, len(h.Files), h.Size, h.Uploaded)
}
