package statebackend

import (
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// openCompacting opens a backend with a small memtable and automatic
// compactions, so that a workload flushes and compacts SSTs away.
func openCompacting(t *testing.T) *Backend {
	t.Helper()
	b, err := Open(t.TempDir(), Options{MaxParallelism: 128, KeyGroups: keygroup.Range{Start: 0, End: 127},
		MemTableSize: 256 << 10, testPebble: func(o *pebble.Options) { o.L0CompactionThreshold = 2 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func uploadTo(t *testing.T, b *Backend, store objectstore.Store, id uint64, tg Target) Handle {
	t.Helper()
	p, err := b.Snapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.Upload(ctx, store, tg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(b.MaxParallelism()); err != nil {
		t.Fatal(err)
	}
	return h
}

// checkSizes checks that the handle's per-file sizes are the store's.
func checkSizes(t *testing.T, store objectstore.Store, h Handle) {
	t.Helper()
	if len(h.Sizes) != len(h.Files) {
		t.Fatalf("%d sizes for %d files", len(h.Sizes), len(h.Files))
	}
	for i, f := range h.Files {
		info, err := store.Stat(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != h.Sizes[i] {
			t.Errorf("%s: handle says %d bytes, store holds %d", f, h.Sizes[i], info.Size)
		}
	}
}

// TestSavepointOwnsItsFiles: a native snapshot to a target with its own
// shared prefix (a savepoint) names no object outside its prefix, even
// though a completed checkpoint uploaded most of its SSTs already; it copies
// them. Deleting everything the checkpoints wrote leaves it restorable.
func TestSavepointOwnsItsFiles(t *testing.T) {
	for name, store := range stores(t) {
		t.Run(name, func(t *testing.T) {
			b := openCompacting(t)
			model := newState()
			w := newWorkload(b, model, 3, 3000)
			w.run(t, 20000, 200)
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			h1 := uploadTo(t, b, store, 1, target(1))
			b.SnapshotCompleted(1)
			if len(sharedObjects(h1)) == 0 {
				t.Fatal("the checkpoint has no SSTs")
			}
			sp := Target{SharedPrefix: "savepoints/job/sp-2/task-0/shared", PrivatePrefix: "savepoints/job/sp-2/task-0"}
			h2 := uploadTo(t, b, store, 2, sp)
			b.SnapshotAborted(2) // savepoints are never shared
			want := model.clone()
			for _, f := range h2.Files {
				if !strings.HasPrefix(f, sp.PrivatePrefix+"/") {
					t.Errorf("savepoint names %s, outside its own prefix", f)
				}
			}
			if h2.Uploaded != h2.Size {
				t.Errorf("savepoint owns %d of its %d bytes", h2.Uploaded, h2.Size)
			}
			checkSizes(t, store, h2)

			// A later checkpoint still names the job's own SSTs, not the
			// savepoint's copies.
			w.run(t, 100, 100)
			h3 := uploadTo(t, b, store, 3, target(3))
			objects1 := map[string]string{}
			for _, f := range manifestOf(t, store, h1).Files {
				objects1[f.Name] = f.Object
			}
			for _, f := range manifestOf(t, store, h3).Files {
				if o, ok := objects1[f.Name]; ok && f.Shared && f.Object != o {
					t.Errorf("checkpoint names %s as %s, not the job's %s", f.Name, f.Object, o)
				}
			}
			if err := store.Delete(ctx, listKeys(t, store, "job/")...); err != nil {
				t.Fatal(err)
			}
			checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h2), want)
		})
	}
}

// TestCheckpointAfterSavepointRestoreOwnsItsFiles: a backend restored from
// a native savepoint copies the savepoint's SSTs into the job's shared
// prefix at its first checkpoint, so deleting the savepoint afterwards
// leaves the checkpoint restorable.
func TestCheckpointAfterSavepointRestoreOwnsItsFiles(t *testing.T) {
	store := objectstore.NewMem()
	b := openCompacting(t)
	model := newState()
	newWorkload(b, model, 4, 2000).run(t, 10000, 200)
	if err := b.db.Flush(); err != nil {
		t.Fatal(err)
	}
	sp := Target{SharedPrefix: "savepoints/job/sp-1/task-0/shared", PrivatePrefix: "savepoints/job/sp-1/task-0"}
	h1 := uploadTo(t, b, store, 1, sp)

	r := restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h1)
	h2 := uploadTo(t, r, store, 2, target(2))
	for _, f := range h2.Files {
		if !strings.HasPrefix(f, "job/") {
			t.Errorf("checkpoint after a savepoint restore names %s", f)
		}
	}
	if err := store.Delete(ctx, listKeys(t, store, "savepoints/")...); err != nil {
		t.Fatal(err)
	}
	checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h2), model)
}

// TestForgottenObjectsAreUploadedAgain: an SST object a completed snapshot
// uploaded disappears; once the backend is told (ForgetObjects), the next
// snapshot uploads the file again instead of naming the missing object. A
// savepoint whose copy source is gone uploads the file itself.
func TestForgottenObjectsAreUploadedAgain(t *testing.T) {
	store := objectstore.NewMem()
	b := openCompacting(t)
	model := newState()
	w := newWorkload(b, model, 5, 2000)
	w.run(t, 10000, 200)
	if err := b.db.Flush(); err != nil {
		t.Fatal(err)
	}
	h1 := uploadTo(t, b, store, 1, target(1))
	b.SnapshotCompleted(1)
	var lost []string
	for f := range sharedObjects(h1) {
		lost = append(lost, f)
	}
	if err := store.Delete(ctx, lost...); err != nil {
		t.Fatal(err)
	}

	// Not told: a savepoint falls back to uploading what it cannot copy.
	sp := Target{SharedPrefix: "savepoints/job/sp-2/task-0/shared", PrivatePrefix: "savepoints/job/sp-2/task-0"}
	h2 := uploadTo(t, b, store, 2, sp)
	b.SnapshotAborted(2)
	checkSizes(t, store, h2)
	checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h2), model)

	// Told: the next checkpoint names none of the lost objects.
	b.ForgetObjects(lost)
	h3 := uploadTo(t, b, store, 3, target(3))
	for f := range sharedObjects(h3) {
		for _, l := range lost {
			if f == l {
				t.Errorf("checkpoint after ForgetObjects names the lost %s", f)
			}
		}
	}
	checkSizes(t, store, h3)
	checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h3), model)
}
