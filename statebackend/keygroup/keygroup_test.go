package keygroup

import (
	"hash/fnv"
	"strconv"
	"testing"
)

func TestForTaskCoversAllGroupsOnce(t *testing.T) {
	for _, m := range []int{1, 7, 128, 1000} {
		for p := 1; p <= min(m, 33); p++ {
			next := 0
			for i := 0; i < p; i++ {
				r := ForTask(i, p, m)
				if r.Start != next || r.Validate(m) != nil {
					t.Fatalf("m=%d p=%d task %d: %v, want start %d", m, p, i, r, next)
				}
				for g := r.Start; g <= r.End; g++ {
					if TaskFor(g, p, m) != i {
						t.Fatalf("m=%d p=%d: group %d in task %d's range but TaskFor says %d", m, p, g, i, TaskFor(g, p, m))
					}
				}
				next = r.End + 1
			}
			if next != m {
				t.Fatalf("m=%d p=%d: ranges end at %d", m, p, next)
			}
		}
	}
}

// TestOfMatchesNATSPartition pins Of to nats-server's partition function so
// that a subject transform {{partition(M,k)}} and flotilla agree.
func TestOfMatchesNATSPartition(t *testing.T) {
	for i := 0; i < 1000; i++ {
		key := []byte("user-" + strconv.Itoa(i))
		h := fnv.New32a()
		h.Write(key)
		if want := int(h.Sum32() % 128); Of(key, 128) != want {
			t.Fatalf("Of(%q) = %d, want %d", key, Of(key, 128), want)
		}
	}
}

func TestRangeValidateAndIntersect(t *testing.T) {
	for _, r := range []Range{{-1, 3}, {4, 3}, {0, 128}} {
		if r.Validate(128) == nil {
			t.Errorf("%v: want error", r)
		}
	}
	if got, ok := (Range{0, 63}).Intersect(Range{32, 127}); !ok || got != (Range{32, 63}) {
		t.Errorf("intersect = %v %v", got, ok)
	}
	if _, ok := (Range{0, 10}).Intersect(Range{11, 20}); ok {
		t.Error("disjoint ranges intersect")
	}
}

// TestForTaskInAssignsWholePartitions checks that below the partition count
// every task's range is a union of whole partitions, the ranges cover every
// group once, and above it ForTaskIn is ForTask.
func TestForTaskInAssignsWholePartitions(t *testing.T) {
	for _, m := range []int{1, 7, 32, 128, 1000} {
		for _, parts := range []int{1, 3, 32} {
			if parts > m {
				continue
			}
			for p := 1; p <= min(m, 40); p++ {
				next := 0
				for i := 0; i < p; i++ {
					r := ForTaskIn(i, p, m, parts)
					if r.Start != next || r.End < r.Start {
						t.Fatalf("m=%d parts=%d p=%d task %d: range %s, want start %d", m, parts, p, i, r, next)
					}
					next = r.End + 1
					if p > parts {
						if r != ForTask(i, p, m) {
							t.Fatalf("m=%d parts=%d p=%d task %d: %s, want ForTask", m, parts, p, i, r)
						}
						continue
					}
					first, last := PartitionOf(r.Start, parts, m), PartitionOf(r.End, parts, m)
					if Partition(first, parts, m).Start != r.Start || Partition(last, parts, m).End != r.End {
						t.Fatalf("m=%d parts=%d p=%d task %d: %s is not whole partitions", m, parts, p, i, r)
					}
				}
				if next != m {
					t.Fatalf("m=%d parts=%d p=%d: ranges end at %d", m, parts, p, next)
				}
			}
		}
	}
}
