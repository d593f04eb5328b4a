package worker

import "testing"

func TestInputStalled(t *testing.T) {
	type check struct {
		read, first, last uint64
		stalled           bool
	}
	for _, c := range []struct {
		name   string
		checks []check
	}{
		{"idle: nothing after what was read", []check{{10, 1, 10, false}, {10, 1, 10, false}, {10, 1, 10, false}}},
		{"later events at two checks in a row", []check{{10, 1, 12, false}, {10, 1, 12, true}}},
		{"a read in between clears the suspicion", []check{{10, 1, 12, false}, {12, 1, 13, false}, {13, 1, 13, false}}},
		{"later events evicted before they were read", []check{{10, 20, 19, false}, {10, 20, 19, false}}},
		{"a fresh consumer of a stream with events", []check{{0, 1, 5, false}, {0, 1, 5, true}}},
		{"a stream whose first events are gone", []check{{0, 7, 9, false}, {0, 7, 9, true}}},
		{"suspicion lapses when the events are gone", []check{{10, 1, 12, false}, {10, 13, 12, false}, {10, 1, 14, false}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var suspect uint64
			for i, ck := range c.checks {
				var stalled bool
				stalled, suspect = inputStalled(ck.read, ck.first, ck.last, suspect)
				if stalled != ck.stalled {
					t.Fatalf("check %d (read %d, stream %d-%d): stalled %v, want %v", i, ck.read, ck.first, ck.last, stalled, ck.stalled)
				}
			}
		})
	}
}
