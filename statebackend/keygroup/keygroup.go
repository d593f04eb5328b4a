// Package keygroup is flotilla's unit of state partitioning, after Flink's
// KeyGroupRangeAssignment.
//
// A job has a max parallelism M: the number of key groups, fixed for the
// job's lifetime. Every key belongs to exactly one group, Of(key, M). Task i of
// p owns the contiguous range ForTask(i, p, M). Rescaling moves whole groups
// between tasks, never keys within a group.
//
// Of is bit-for-bit the hash NATS uses for the subject-mapping function
// {{partition(M, token...)}} (FNV-1a 32 of the concatenated key tokens, modulo
// M), so a stream that partitions by key with a subject transform stores each
// event under the same group number that flotilla assigns to its key.
package keygroup

import (
	"errors"
	"fmt"
)

// DefaultMaxParallelism is the number of key groups of a job that does not
// say otherwise.
const DefaultMaxParallelism = 128

// MaxMaxParallelism bounds M. Key groups are written as 2 bytes in state keys.
const MaxMaxParallelism = 1 << 15

// ErrInvalidRange is returned for a range that is empty, inverted or outside
// [0, M).
var ErrInvalidRange = errors.New("keygroup: invalid key-group range")

// Of returns the key group of key for max parallelism m. m must be in
// [1, MaxMaxParallelism]; Of panics otherwise, since callers validate M once,
// when a job is submitted.
func Of(key []byte, m int) int {
	if m < 1 || m > MaxMaxParallelism {
		panic(fmt.Sprintf("keygroup: max parallelism %d out of range", m))
	}
	// FNV-1a 32, as hash/fnv computes it, inline: Of runs for every state
	// access and every entry a savepoint restore decodes.
	h := uint32(fnvOffset32)
	for _, c := range key {
		h ^= uint32(c)
		h *= fnvPrime32
	}
	return int(h % uint32(m))
}

// FNV-1a 32 parameters (hash/fnv).
const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// Range is the inclusive range [Start, End] of key groups. The zero Range is
// the single group 0.
type Range struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

// ForTask returns the range owned by task i of parallelism p with max
// parallelism m: start = ceil(i*m/p), end = ceil((i+1)*m/p)-1. It requires
// 0 <= i < p <= m.
func ForTask(i, p, m int) Range {
	if p < 1 || p > m || i < 0 || i >= p {
		panic(fmt.Sprintf("keygroup: task %d of %d with max parallelism %d", i, p, m))
	}
	return Range{Start: ceilDiv(i*m, p), End: ceilDiv((i+1)*m, p) - 1}
}

// Partition returns the key groups of partition j of parts partitions of
// max parallelism m: ForTask(j, parts, m), a contiguous range. It requires
// 0 <= j < parts <= m.
func Partition(j, parts, m int) Range { return ForTask(j, parts, m) }

// PartitionOf returns the partition of parts partitions that holds group g.
func PartitionOf(g, parts, m int) int { return TaskFor(g, parts, m) }

// ForTaskIn returns the range of task i of parallelism p when the job's
// input is split into parts partitions of contiguous groups (parts 0: not
// partitioned, ForTask). For p <= parts, whole partitions are assigned to
// tasks the way ForTask assigns groups, so every task's range is a union of
// whole partitions and no two tasks read the same partition; above parts it
// is ForTask, and a partition is read by every task whose range overlaps it.
func ForTaskIn(i, p, m, parts int) Range {
	if parts < 1 || p > parts || parts > m {
		return ForTask(i, p, m)
	}
	ps := ForTask(i, p, parts)
	return Range{Start: Partition(ps.Start, parts, m).Start, End: Partition(ps.End, parts, m).End}
}

// TaskFor returns the index of the task of parallelism p that owns group g.
func TaskFor(g, p, m int) int { return g * p / m }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// Validate reports whether r is a non-empty range within [0, m).
func (r Range) Validate(m int) error {
	if r.Start < 0 || r.End < r.Start || r.End >= m {
		return fmt.Errorf("%w: [%d, %d] with max parallelism %d", ErrInvalidRange, r.Start, r.End, m)
	}
	return nil
}

// Len is the number of groups in r.
func (r Range) Len() int { return r.End - r.Start + 1 }

// Contains reports whether g is in r.
func (r Range) Contains(g int) bool { return g >= r.Start && g <= r.End }

// Intersect returns the groups in both r and o, and false if there are none.
func (r Range) Intersect(o Range) (Range, bool) {
	s, e := max(r.Start, o.Start), min(r.End, o.End)
	if s > e {
		return Range{}, false
	}
	return Range{Start: s, End: e}, true
}

func (r Range) String() string { return fmt.Sprintf("[%d-%d]", r.Start, r.End) }
