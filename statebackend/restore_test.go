package statebackend

import (
	"errors"
	"fmt"
	"testing"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// TestCanonicalSavepointRescale writes a savepoint of [0,127] and restores
// it into 2 and into 7 task ranges: each task gets exactly its part, and the
// parts add up to the original.
func TestCanonicalSavepointRescale(t *testing.T) {
	for name, store := range stores(t) {
		t.Run(name, func(t *testing.T) {
			const m = 128
			b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})
			model := newState()
			w := newWorkload(b, model, 7, 3000)
			w.run(t, 6000, 100)
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			w.run(t, 1000, 100)
			sp, err := b.Savepoint()
			if err != nil {
				t.Fatal(err)
			}
			atSavepoint := model.clone()
			w.run(t, 500, 100) // after the view: not in the savepoint
			h, err := sp.Write(ctx, store, "savepoints/job/sp-1/task-0")
			sp.Release()
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Validate(m); err != nil {
				t.Fatal(err)
			}
			for _, p := range []int{1, 2, 7} {
				union := newState()
				for i := range p {
					r := keygroup.ForTask(i, p, m)
					rb := restoreTest(t, store, m, r, h)
					part := dump(t, rb) // fails on keys outside r
					if d := atSavepoint.restrict(r, m).diff(part); d != "" {
						t.Fatalf("p=%d task %d %v:\n%s", p, i, r, d)
					}
					union.merge(part)
				}
				if d := atSavepoint.diff(union); d != "" {
					t.Fatalf("p=%d union:\n%s", p, d)
				}
			}
		})
	}
}

// TestRestoreFourIntoOne restores the handles of 4 tasks (native, canonical
// and mixed) into one task and into 3.
func TestRestoreFourIntoOne(t *testing.T) {
	const m = 128
	store := objectstore.NewMem()
	all := newState()
	var native, canonical []Handle
	for i := range 4 {
		r := keygroup.ForTask(i, 4, m)
		b := openTest(t, m, r)
		model := newState()
		w := newWorkload(b, model, uint64(10+i), 800)
		w.run(t, 2000, 50)
		if i%2 == 0 {
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			w.run(t, 300, 50)
		}
		all.merge(model)
		p, err := b.Snapshot(1)
		if err != nil {
			t.Fatal(err)
		}
		h, err := p.Upload(ctx, store, Target{SharedPrefix: "job/shared", PrivatePrefix: fmt.Sprintf("job/chk-1/task-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		native = append(native, h)
		sp, err := b.WriteSavepoint(ctx, store, fmt.Sprintf("savepoints/job/sp-1/task-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		canonical = append(canonical, sp)
	}
	mixed := []Handle{native[0], canonical[1], native[2], canonical[3]}
	for name, hs := range map[string][]Handle{"native": native, "canonical": canonical, "mixed": mixed} {
		t.Run(name, func(t *testing.T) {
			// Handles in any order.
			rev := []Handle{hs[3], hs[1], hs[0], hs[2]}
			checkState(t, restoreTest(t, store, m, keygroup.Range{Start: 0, End: m - 1}, rev...), all)
			for i := range 3 {
				r := keygroup.ForTask(i, 3, m)
				checkState(t, restoreTest(t, store, m, r, hs...), all.restrict(r, m))
			}
		})
	}
}

// TestRestoreSplitsCanonicalReads restores with group sub-ranges decoded in
// parallel (as for large savepoints) and checks the result and the split.
func TestRestoreSplitsCanonicalReads(t *testing.T) {
	const m = 128
	store := objectstore.NewMem()
	b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})
	model := newState()
	newWorkload(b, model, 21, 3000).run(t, 6000, 200)
	h, err := b.WriteSavepoint(ctx, store, "sp/task-0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := readSavepointFooter(ctx, store, h.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []keygroup.Range{{Start: 0, End: m - 1}, {Start: 5, End: 70}, {Start: 9, End: 9}} {
		parts := f.split(r, 4, 1)
		if len(parts) != min(4, r.Len()) || parts[0].Start != r.Start || parts[len(parts)-1].End != r.End {
			t.Fatalf("split %v: %v", r, parts)
		}
		for i := 1; i < len(parts); i++ {
			if parts[i].Start != parts[i-1].End+1 {
				t.Fatalf("split %v: %v", r, parts)
			}
		}
	}
	defer func(old int64) { restoreUnitMin = old }(restoreUnitMin)
	restoreUnitMin = 1
	for _, r := range []keygroup.Range{{Start: 0, End: m - 1}, keygroup.ForTask(2, 3, m)} {
		checkState(t, restoreTest(t, store, m, r, h), model.restrict(r, m))
	}
}

// TestSavepointReaderReadsOnlyItsGroups restores a quarter of the groups of
// a savepoint and counts the bytes read.
func TestSavepointReaderReadsOnlyItsGroups(t *testing.T) {
	const m = 128
	mem := objectstore.NewMem()
	b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})
	newWorkload(b, newState(), 20, 10000).run(t, 20000, 500)
	h, err := b.WriteSavepoint(ctx, mem, "savepoints/job/sp-1/task-0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := readSavepointFooter(ctx, mem, h.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	r := keygroup.ForTask(1, 4, m)
	var blocks int64
	for g := r.Start; g <= r.End; g++ {
		blocks += f.blocks[g].length
	}
	cs := &countingStore{Store: mem}
	rb := restoreTest(t, cs, m, r, h)
	if rb.Range() != r {
		t.Fatal(rb.Range())
	}
	tail := min(h.Size, int64(savepointTailRead))
	if got := cs.read.Load(); got != blocks+tail {
		t.Errorf("read %d bytes, want the blocks of %v (%d) and the tail (%d)", got, r, blocks, tail)
	}
	if got := cs.read.Load(); got*10 > h.Size*3 {
		t.Errorf("read %d of %d bytes for a quarter of the groups", got, h.Size)
	}
	if cs.gets.Load() != 2 {
		t.Errorf("%d range reads, want 2 (tail, blocks)", cs.gets.Load())
	}
}

func TestRestoreCoverage(t *testing.T) {
	const m = 128
	store := objectstore.NewMem()
	var hs []Handle
	for i := range 4 {
		b := openTest(t, m, keygroup.ForTask(i, 4, m))
		newWorkload(b, newState(), uint64(30+i), 50).run(t, 100, 10)
		h, err := b.WriteSavepoint(ctx, store, fmt.Sprintf("sp/task-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	opts := Options{MaxParallelism: m, KeyGroups: keygroup.Range{Start: 0, End: m - 1}}
	_, err := Restore(ctx, store, t.TempDir(), opts, []Handle{hs[0], hs[2]})
	var ce *CoverageError
	if !errors.As(err, &ce) || !errors.Is(err, ErrNotCovered) || len(ce.Missing) != 2 ||
		ce.Missing[0] != hs[1].Range || ce.Missing[1] != hs[3].Range {
		t.Errorf("gaps: %v", err)
	}
	if _, err := Restore(ctx, store, t.TempDir(), opts, nil); !errors.As(err, &ce) {
		t.Errorf("no handles: %v", err)
	}
	if _, err := Restore(ctx, store, t.TempDir(), opts, []Handle{hs[0], hs[1], hs[1], hs[2], hs[3]}); !errors.Is(err, ErrOverlap) {
		t.Errorf("overlap: %v", err)
	}
	// Handles outside the range are ignored.
	r := keygroup.ForTask(1, 4, m)
	b, err := Restore(ctx, store, t.TempDir(), Options{MaxParallelism: m, KeyGroups: r}, hs)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	// A handle of another max parallelism is rejected.
	bad := hs[0]
	if _, err := Restore(ctx, store, t.TempDir(), Options{MaxParallelism: 64, KeyGroups: keygroup.Range{Start: 0, End: 31}}, []Handle{bad}); !errors.Is(err, ErrMaxParallelismMismatch) {
		t.Errorf("max parallelism: %v", err)
	}
	// A handle whose range disagrees with its object is rejected.
	bad.Range = keygroup.Range{Start: 0, End: 10}
	if _, err := Restore(ctx, store, t.TempDir(), Options{MaxParallelism: m, KeyGroups: bad.Range}, []Handle{bad}); !errors.Is(err, ErrInvalidHandle) {
		t.Errorf("range mismatch: %v", err)
	}
	// Restore refuses a directory holding a backend.
	dir := t.TempDir()
	b, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := Restore(ctx, store, dir, opts, hs); !errors.Is(err, ErrDirNotEmpty) {
		t.Errorf("existing dir: %v", err)
	}
}

// TestRandomWorkloadAgainstModel runs seeded random workloads with
// snapshots, savepoints and restores into random ranges, checking every
// restored backend against a Go map model.
func TestRandomWorkloadAgainstModel(t *testing.T) {
	const m = 32
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			store := objectstore.NewMem()
			whole := keygroup.Range{Start: 0, End: m - 1}
			b := openTest(t, m, whole)
			model := newState()
			w := newWorkload(b, model, seed, 400)
			var last Handle
			for round := range 6 {
				w.run(t, 300+int(w.rng.IntN(700)), 1+w.rng.IntN(60))
				if w.rng.IntN(2) == 0 {
					if err := b.db.Flush(); err != nil {
						t.Fatal(err)
					}
				}
				checkState(t, b, model)
				var h Handle
				if w.rng.IntN(3) == 0 {
					var err error
					if h, err = b.WriteSavepoint(ctx, store, fmt.Sprintf("sp/%d", round)); err != nil {
						t.Fatal(err)
					}
				} else {
					id := uint64(round + 1)
					h = snapshotAndUpload(t, b, store, id)
					if w.rng.IntN(4) > 0 {
						b.SnapshotCompleted(id)
					} else {
						b.SnapshotAborted(id)
					}
				}
				p := 1 + w.rng.IntN(5)
				i := w.rng.IntN(p)
				r := keygroup.ForTask(i, p, m)
				checkState(t, restoreTest(t, store, m, r, h), model.restrict(r, m))
				if last.Manifest != "" && w.rng.IntN(2) == 0 {
					// Continue from the restored backend, as after a failover.
					nb := restoreTest(t, store, m, whole, h)
					b, w.b = nb, nb
				}
				last = h
			}
		})
	}
}
