// Package statebackend keeps the keyed state of one task in Pebble and turns
// it into checkpoints and savepoints in an object store, after Flink's
// RocksDB state backend.
//
// A Backend owns a key-group range (keygroup.Range) of one job with max
// parallelism M. Pebble keys start with the 2-byte big-endian key group of
// the user key (keygroup.Of), so a range of groups is a range of keys (see
// keys.go for the layout). State is named: value state (Put, Get, Delete)
// and int64 counter state (Add, written as merge operands of the
// Int64MergerName merger). Writes go through a Batch; reads through the
// batch see its uncommitted writes. Each key group stores the last input
// sequence applied to it, written in the same batch as the state change
// (Batch.SetApplied); on restore, replayed events at or below
// Backend.Applied(group) are skipped, which makes state updates
// exactly-once.
//
// Checkpoints are native and incremental:
//
//	p, _ := b.Snapshot(id)                   // synchronous, milliseconds, at a record boundary
//	h, err := p.Upload(ctx, store, target)   // asynchronous: only SSTs no completed snapshot uploaded
//	b.SnapshotCompleted(id)                  // after the checkpoint is committed; or SnapshotAborted(id)
//
// Savepoints are canonical: one self-contained object per task, key groups
// in order with a footer of per-group offsets and checksums, so that a task
// restoring a sub-range reads only its groups (WriteSavepoint, or Savepoint
// then Write).
//
// Restore builds a backend for any key-group range from any handles (native
// or canonical, one or several) that together cover it: that is rescaling.
// Every object read is verified against its recorded size and CRC32C.
//
// Handle is the persisted description of a snapshot or savepoint; it
// travels in checkpoint acks and lives in checkpoint metadata.
//
// Local durability is deliberately not provided: the backend never fsyncs
// (see backendFS). After a machine crash, delete the backend's directory and
// restore from a checkpoint.
package statebackend
