package worker

import (
	"testing"
	"time"
)

func TestInputStalled(t *testing.T) {
	const timeout = 20 * time.Second
	type check struct {
		at                time.Duration // since the first check
		read, first, last uint64
		stalled           bool
	}
	for _, c := range []struct {
		name   string
		checks []check
	}{
		{"idle: nothing after what was read", []check{{0, 10, 1, 10, false}, {5, 10, 1, 10, false}, {60, 10, 1, 10, false}}},
		{"later events for the whole timeout", []check{{0, 10, 1, 12, false}, {5, 10, 1, 12, false}, {20, 10, 1, 12, true}}},
		{"later events at two checks, but not for the timeout", []check{{0, 10, 1, 12, false}, {5, 10, 1, 12, false}, {15, 10, 1, 13, false}}},
		// A sparse input that waited long for its next event: the time
		// counts from the first check that found it, not from the last
		// event read.
		{"a long wait, then a later event", []check{{0, 10, 1, 10, false}, {300, 10, 1, 10, false}, {305, 10, 1, 11, false},
			{310, 10, 1, 11, false}, {320, 10, 1, 11, false}, {325, 10, 1, 11, true}}},
		{"a read in between clears the suspicion", []check{{0, 10, 1, 12, false}, {20, 12, 1, 13, false}, {40, 13, 1, 13, false}}},
		{"later events evicted before they were read", []check{{0, 10, 20, 19, false}, {20, 10, 20, 19, false}}},
		{"a fresh consumer of a stream with events", []check{{0, 0, 1, 5, false}, {20, 0, 1, 5, true}}},
		{"a stream whose first events are gone", []check{{0, 0, 7, 9, false}, {20, 0, 7, 9, true}}},
		{"suspicion lapses when the events are gone", []check{{0, 10, 1, 12, false}, {10, 10, 13, 12, false}, {20, 10, 1, 14, false}, {35, 10, 1, 14, false}}},
		{"one check is never enough", []check{{60, 10, 1, 12, false}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s suspicion
			t0 := time.Unix(1e9, 0)
			for i, ck := range c.checks {
				if stalled := s.check(ck.read, ck.first, ck.last, t0.Add(ck.at*time.Second), timeout); stalled != ck.stalled {
					t.Fatalf("check %d at %ds (read %d, stream %d-%d): stalled %v, want %v", i, ck.at, ck.read, ck.first, ck.last, stalled, ck.stalled)
				}
			}
		})
	}
}
