package statebackend

import (
	"fmt"
	"io"
	"log"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// PebbleFormatMajorVersion is the Pebble format major version every backend
// DB is created with and ratcheted to.
//
// It is persisted: in each DB's format marker and in every native snapshot,
// which Restore opens with this build. A build can open DBs at or below its
// own pinned version, never above. Raise it only deliberately, in its own
// change, after every build that may restore a snapshot of the job (a rolling
// upgrade, a rollback) supports the new version; never use
// pebble.FormatNewest, which moves whenever the dependency is bumped.
const PebbleFormatMajorVersion = pebble.FormatValueSeparation

// Int64MergerName is the name of the Pebble merge operator of counter state.
// Pebble persists it in each DB's OPTIONS file and refuses to open a DB with a
// different merger, so it must never change; a new merge semantics needs a new
// name (and a migration).
const Int64MergerName = "flotilla.int64add.v1"

// Defaults of the tuning knobs in Options.
const (
	// DefaultMemTableSize is Pebble's memtable size. It does not affect the
	// synchronous part of Snapshot, which hard-links the live WAL instead of
	// copying it (see backendFS), but it bounds the WAL every snapshot
	// uploads (up to about two memtables, as private files) and replays on
	// restore. Batched keyed updates ran as fast with 16 MiB as with 64 MiB
	// (see BENCHMARKS.md).
	DefaultMemTableSize = 16 << 20
	// DefaultCacheSize is the size of the block cache.
	DefaultCacheSize = 64 << 20
	// DefaultTransferConcurrency is how many files a snapshot upload or a
	// restore transfers at once.
	DefaultTransferConcurrency = 4
)

// Options configure a Backend.
type Options struct {
	// MaxParallelism is the job's max parallelism M: the number of key groups.
	// Zero means keygroup.DefaultMaxParallelism.
	MaxParallelism int
	// KeyGroups is the range of key groups the backend owns. Reads and writes
	// of keys outside it fail with ErrNotOwned.
	KeyGroups keygroup.Range

	// MemTableSize is Pebble's memtable size; zero means DefaultMemTableSize.
	MemTableSize uint64
	// CacheSize is Pebble's block cache size; zero means DefaultCacheSize.
	CacheSize int64
	// TransferConcurrency bounds concurrent file transfers of Upload and
	// Restore; zero means DefaultTransferConcurrency.
	TransferConcurrency int
	// Logger receives Pebble's error messages; nil means the standard log
	// package. Pebble's informational messages are dropped.
	Logger Logger

	// MinFreeBytes is the free space the backend's filesystem must have for
	// a commit to go ahead (see NoSpaceError); zero means
	// MinFreeBytes(MemTableSize).
	MinFreeBytes uint64

	// testPebble, if set, adjusts the Pebble options (tests only).
	testPebble func(*pebble.Options)
	// testFS, if set, wraps the OS filesystem under the DB (tests only).
	testFS func(vfs.FS) vfs.FS
	// freeBytes measures free space; nil means FreeBytes.
	freeBytes func(dir string) (uint64, error)
}

// Logger receives error messages.
type Logger interface {
	Errorf(format string, args ...any)
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxParallelism == 0 {
		o.MaxParallelism = keygroup.DefaultMaxParallelism
	}
	if o.MaxParallelism < 1 || o.MaxParallelism > keygroup.MaxMaxParallelism {
		return o, fmt.Errorf("%w: max parallelism %d not in [1, %d]", ErrInvalidOptions, o.MaxParallelism, keygroup.MaxMaxParallelism)
	}
	if err := o.KeyGroups.Validate(o.MaxParallelism); err != nil {
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = DefaultMemTableSize
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = MinFreeBytes(o.MemTableSize)
	}
	if o.freeBytes == nil {
		o.freeBytes = FreeBytes
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.TransferConcurrency <= 0 {
		o.TransferConcurrency = DefaultTransferConcurrency
	}
	if o.Logger == nil {
		o.Logger = stdLogger{}
	}
	return o, nil
}

// pebbleOptions returns the Pebble options of a backend DB on fs.
// Benchmarks use them for their raw-Pebble baselines.
func (o Options) pebbleOptions(fs vfs.FS) *pebble.Options {
	po := &pebble.Options{
		// See backendFS: no fsync, no WAL recycling, WALs linked into
		// snapshot images.
		FS:                          fs,
		FormatMajorVersion:          PebbleFormatMajorVersion,
		Merger:                      int64Merger,
		MemTableSize:                o.MemTableSize,
		MemTableStopWritesThreshold: 2,
		// The checkpoint copies the MANIFEST record by record; keeping it
		// small keeps Snapshot's synchronous part short.
		MaxManifestFileSize: 4 << 20,
		CacheSize:           o.CacheSize,
		Logger:              pebbleLogger{o.Logger},
	}
	// SST sizes trade incremental checkpoints against Snapshot's
	// synchronous part: a compaction rewrites, and the next checkpoint
	// re-uploads, whole files, while every file costs a hard link at
	// snapshot time. Files grow from 4 MiB in L0 to at most 64 MiB
	// (RocksDB's and so Flink's default target size): with a 32 MiB cap,
	// snapshots of 1 GiB of state took 2.1-3.6x as long as those of
	// 100 MiB on average, with 64 MiB 1.45-2.3x (BENCHMARKS.md).
	po.TargetFileSizes[0] = 4 << 20
	for i := 1; i < len(po.TargetFileSizes); i++ {
		po.TargetFileSizes[i] = min(2*po.TargetFileSizes[i-1], maxTargetFileSize)
	}
	for i := range po.Levels {
		// Operators read before they write; bloom filters make reads of
		// absent keys (first event of a key) cheap.
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		// Savepoints and restores scan whole key groups: 32 KiB blocks
		// need an eighth of the reads of Pebble's default 4 KiB, and cost
		// point reads little with columnar blocks.
		po.Levels[i].BlockSize = blockSize
	}
	if o.testPebble != nil {
		o.testPebble(po)
	}
	po.EnsureDefaults()
	return po
}

const (
	blockSize         = 32 << 10
	maxTargetFileSize = 64 << 20
)

var int64Merger = &pebble.Merger{
	Name: Int64MergerName,
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		v, ok := decodeInt64(value)
		if !ok {
			return nil, fmt.Errorf("%w: counter operand of %d bytes", ErrCorrupt, len(value))
		}
		return &int64Sum{sum: v}, nil
	},
}

// int64Sum adds int64 operands, wrapping on overflow as Go's int64 does.
type int64Sum struct{ sum int64 }

func (m *int64Sum) add(value []byte) error {
	v, ok := decodeInt64(value)
	if !ok {
		return fmt.Errorf("%w: counter operand of %d bytes", ErrCorrupt, len(value))
	}
	m.sum += v
	return nil
}

func (m *int64Sum) MergeNewer(value []byte) error { return m.add(value) }
func (m *int64Sum) MergeOlder(value []byte) error { return m.add(value) }
func (m *int64Sum) Finish(bool) ([]byte, io.Closer, error) {
	return encodeInt64(m.sum), nil, nil
}

type stdLogger struct{}

func (stdLogger) Errorf(format string, args ...any) { log.Printf(format, args...) }

// pebbleLogger adapts a Logger to pebble.Logger, dropping Infof.
type pebbleLogger struct{ l Logger }

func (pebbleLogger) Infof(string, ...any)                {}
func (p pebbleLogger) Errorf(format string, args ...any) { p.l.Errorf(format, args...) }
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Errorf(format, args...)
	panic(fmt.Sprintf(format, args...))
}
