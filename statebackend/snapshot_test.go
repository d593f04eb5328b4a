package statebackend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

var ctx = context.Background()

func target(chk int) Target {
	return Target{SharedPrefix: "job/shared", PrivatePrefix: fmt.Sprintf("job/chk-%d/task-0", chk)}
}

func snapshotAndUpload(t testing.TB, b *Backend, store objectstore.Store, id uint64) Handle {
	t.Helper()
	p, err := b.Snapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.Upload(ctx, store, target(int(id)))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(b.MaxParallelism()); err != nil {
		t.Fatal(err)
	}
	return h
}

// eventKey is the key of event seq in TestSnapshotWhileWritesContinue.
func eventKey(seq uint64) []byte { return fmt.Appendf(nil, "user-%d", seq*7919%97) }

// TestSnapshotWhileWritesContinue takes and uploads snapshots while a writer
// commits batches, then checks that each restored snapshot is consistent:
// for every group, the state is exactly the events of that group up to the
// group's applied mark.
func TestSnapshotWhileWritesContinue(t *testing.T) {
	const m = 16
	store := objectstore.NewMem()
	b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})

	var stop atomic.Bool
	var written atomic.Uint64
	writerDone := make(chan error, 1)
	go func() {
		bt := b.NewBatch()
		defer bt.Close()
		for seq := uint64(1); !stop.Load(); seq++ {
			k := eventKey(seq)
			g := keygroup.Of(k, m)
			if err := bt.Add("count", k, 1); err != nil {
				writerDone <- err
				return
			}
			if err := bt.Put("last", k, seqBytes(seq)); err != nil {
				writerDone <- err
				return
			}
			if err := bt.SetApplied(g, seq); err != nil {
				writerDone <- err
				return
			}
			if seq%13 == 0 {
				if err := bt.Commit(); err != nil {
					writerDone <- err
					return
				}
				written.Store(seq)
				if seq%(13*50) == 0 {
					// Now and then a flush, so that snapshots hold SSTs too.
					if err := b.db.Flush(); err != nil {
						writerDone <- err
						return
					}
				}
			}
		}
		writerDone <- nil
	}()

	var handles []Handle
	var mu sync.Mutex
	var uploads sync.WaitGroup
	for id := uint64(1); id <= 6; id++ {
		for start := written.Load(); written.Load() < start+500; {
		}
		p, err := b.Snapshot(id)
		if err != nil {
			t.Fatal(err)
		}
		uploads.Add(1)
		go func() {
			defer uploads.Done()
			h, err := p.Upload(ctx, store, target(int(id)))
			if err != nil {
				t.Error(err)
				return
			}
			b.SnapshotCompleted(id)
			mu.Lock()
			handles = append(handles, h)
			mu.Unlock()
		}()
	}
	uploads.Wait()
	stop.Store(true)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	if len(handles) != 6 {
		t.Fatalf("%d handles", len(handles))
	}
	for _, h := range handles {
		r := restoreTest(t, store, m, keygroup.Range{Start: 0, End: m - 1}, h)
		want := newState()
		var maxSeq uint64
		for g := range m {
			if a := r.Applied(g); a > 0 {
				want.applied[g] = a
				maxSeq = max(maxSeq, a)
			}
		}
		if maxSeq == 0 {
			t.Fatalf("%v: nothing applied", h)
		}
		for seq := uint64(1); seq <= maxSeq; seq++ {
			k := eventKey(seq)
			if seq <= want.applied[keygroup.Of(k, m)] {
				want.counters[mkey("count", k)]++
				want.values[mkey("last", k)] = string(seqBytes(seq))
			}
		}
		checkState(t, r, want)
	}
}

// sharedObjects returns the objects of h under the shared prefix.
func sharedObjects(h Handle) map[string]bool {
	out := map[string]bool{}
	for _, f := range h.Files {
		if strings.HasPrefix(f, "job/shared/") {
			out[f] = true
		}
	}
	return out
}

func manifestOf(t testing.TB, store objectstore.Store, h Handle) *nativeManifest {
	t.Helper()
	m, err := readManifest(ctx, store, h, keygroup.DefaultMaxParallelism)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestIncrementalSnapshotUploadsOnlyNewSSTs(t *testing.T) {
	for name, store := range stores(t) {
		t.Run(name, func(t *testing.T) {
			// Without compactions, the SSTs of the first snapshot are all
			// still there at the second.
			b, err := Open(t.TempDir(), Options{MaxParallelism: 128, KeyGroups: keygroup.Range{Start: 0, End: 127},
				testPebble: func(o *pebble.Options) { o.DisableAutomaticCompactions = true }})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			model := newState()
			w := newWorkload(b, model, 1, 2000)
			w.run(t, 3000, 100)
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			h1 := snapshotAndUpload(t, b, store, 1)
			if h1.Uploaded != h1.Size {
				t.Fatalf("first snapshot uploaded %d of %d bytes", h1.Uploaded, h1.Size)
			}
			b.SnapshotCompleted(1)
			shared1 := sharedObjects(h1)
			if len(shared1) == 0 {
				t.Fatal("first snapshot has no SSTs")
			}

			w.run(t, 1000, 100)
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			before := listKeys(t, store, "job/shared/")
			h2 := snapshotAndUpload(t, b, store, 2)
			after := listKeys(t, store, "job/shared/")

			man1 := manifestOf(t, store, h1)
			man2 := manifestOf(t, store, h2)
			names1 := map[string]bool{}
			for _, f := range man1.Files {
				if f.Shared {
					names1[f.Name] = true
				}
			}
			var newShared, reused, wantUploaded int64
			newObjects := map[string]bool{}
			for _, f := range man2.Files {
				switch {
				case f.Shared && names1[f.Name]:
					reused++
					if !shared1[f.Object] {
						t.Errorf("SST %s of snapshot 1 uploaded again as %s", f.Name, f.Object)
					}
				case f.Shared:
					newShared++
					newObjects[f.Object] = true
					wantUploaded += f.Size
				default:
					if !strings.HasPrefix(f.Object, "job/chk-2/task-0/") {
						t.Errorf("private file %s at %s", f.Name, f.Object)
					}
					wantUploaded += f.Size
				}
			}
			if newShared == 0 || reused != int64(len(shared1)) {
				t.Fatalf("second snapshot has %d new SSTs and reuses %d of %d", newShared, reused, len(shared1))
			}
			info, err := store.Stat(ctx, h2.Manifest)
			if err != nil {
				t.Fatal(err)
			}
			wantUploaded += info.Size
			if h2.Uploaded != wantUploaded || h2.Uploaded >= h2.Size {
				t.Errorf("second snapshot: uploaded %d, want %d (size %d)", h2.Uploaded, wantUploaded, h2.Size)
			}
			// The only new shared objects are the new SSTs.
			old := map[string]bool{}
			for _, k := range before {
				old[k] = true
			}
			var appeared []string
			for _, k := range after {
				if !old[k] {
					appeared = append(appeared, k)
					if !newObjects[k] {
						t.Errorf("unexpected new shared object %s", k)
					}
				}
			}
			if len(appeared) != len(newObjects) {
				t.Errorf("%d new shared objects, want %d", len(appeared), len(newObjects))
			}
			// Sizes and the files list agree with the store.
			var total int64
			for _, f := range h2.Files {
				info, err := store.Stat(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				total += info.Size
			}
			if total != h2.Size {
				t.Errorf("handle size %d, objects total %d", h2.Size, total)
			}
			checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h2), model)
		})
	}
}

func TestAbortedSnapshotIsNotReused(t *testing.T) {
	store := objectstore.NewMem()
	// No background compactions: "nothing changed" between snapshots below
	// must hold, and a compaction replacing an SST between them would make
	// a later snapshot upload it (rightly).
	b, err := Open(t.TempDir(), Options{MaxParallelism: 128, KeyGroups: keygroup.Range{Start: 0, End: 127},
		testPebble: func(o *pebble.Options) { o.DisableAutomaticCompactions = true }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	w := newWorkload(b, newState(), 2, 500)
	w.run(t, 2000, 100)
	if err := b.db.Flush(); err != nil {
		t.Fatal(err)
	}

	// Snapshot 1 uploads, then is aborted; snapshot 2 uploads and is never
	// completed (its completion message was lost).
	h1 := snapshotAndUpload(t, b, store, 1)
	b.SnapshotAborted(1)
	h2 := snapshotAndUpload(t, b, store, 2)
	if h2.Uploaded != h2.Size {
		t.Errorf("snapshot 2 reused %d bytes of aborted snapshot 1", h2.Size-h2.Uploaded)
	}
	for f := range sharedObjects(h2) {
		if sharedObjects(h1)[f] {
			t.Errorf("snapshot 2 references %s of aborted snapshot 1", f)
		}
	}
	h3 := snapshotAndUpload(t, b, store, 3)
	if h3.Uploaded != h3.Size {
		t.Errorf("snapshot 3 reused %d bytes of a snapshot never completed", h3.Size-h3.Uploaded)
	}
	b.SnapshotCompleted(3)

	// Aborting a snapshot before its upload removes its image; the upload
	// then fails.
	p4, err := b.Snapshot(4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p4.dir); err != nil {
		t.Fatal(err)
	}
	b.SnapshotAborted(4)
	if _, err := os.Stat(p4.dir); !os.IsNotExist(err) {
		t.Errorf("image of aborted snapshot still there: %v", err)
	}
	if _, err := p4.Upload(ctx, store, target(4)); !errors.Is(err, ErrSnapshotReleased) {
		t.Errorf("upload of aborted snapshot: %v", err)
	}

	// A completed snapshot is reused.
	h5 := snapshotAndUpload(t, b, store, 5)
	if h5.Uploaded >= h5.Size/2 {
		t.Errorf("snapshot 5 uploaded %d of %d bytes after snapshot 3 completed", h5.Uploaded, h5.Size)
	}
	for f := range sharedObjects(h5) {
		if !sharedObjects(h3)[f] {
			t.Errorf("snapshot 5 uploaded %s although nothing changed", f)
		}
	}
	entries, err := os.ReadDir(filepath.Join(b.dir, checkpointsDirName))
	if err != nil || len(entries) != 0 {
		t.Errorf("local images left: %v %v", entries, err)
	}
}

func TestSnapshotIDInUse(t *testing.T) {
	b := openTest(t, 128, keygroup.Range{Start: 0, End: 127})
	p, err := b.Snapshot(7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Snapshot(7); !errors.Is(err, ErrSnapshotExists) {
		t.Fatalf("second Snapshot(7): %v", err)
	}
	p.Release()
	if _, err := p.Upload(ctx, objectstore.NewMem(), target(7)); !errors.Is(err, ErrSnapshotReleased) {
		t.Fatalf("upload after release: %v", err)
	}
	p2, err := b.Snapshot(7)
	if err != nil {
		t.Fatal(err)
	}
	p2.Release()
}

func TestRestoreNativeEqualsStateAtSnapshot(t *testing.T) {
	for name, store := range stores(t) {
		t.Run(name, func(t *testing.T) {
			r := keygroup.ForTask(1, 3, 128)
			b := openTest(t, 128, r)
			model := newState()
			w := newWorkload(b, model, 3, 3000)
			w.run(t, 5000, 64)
			if err := b.db.Flush(); err != nil {
				t.Fatal(err)
			}
			// Most state of a long-running DB is in the last level, where
			// nothing compacts it again soon.
			if err := b.db.Compact(ctx, []byte{0}, []byte{0xff}, false); err != nil {
				t.Fatal(err)
			}
			w.run(t, 2000, 64) // in the memtable and WAL only
			atSnapshot := model.clone()
			p, err := b.Snapshot(1)
			if err != nil {
				t.Fatal(err)
			}
			// The live WAL is in the image as a hard link, with its length
			// at the snapshot.
			if len(p.walLens) == 0 {
				t.Fatal("no WAL linked into the image")
			}
			for name := range p.walLens {
				img, err1 := os.Stat(filepath.Join(p.dir, name))
				live, err2 := os.Stat(filepath.Join(b.dir, dbDirName, name))
				if err1 != nil || err2 != nil || !os.SameFile(img, live) {
					t.Fatalf("WAL %s not linked: %v %v", name, err1, err2)
				}
			}
			w.run(t, 2000, 64) // after the snapshot: appended to the linked WAL, must not be restored
			h, err := p.Upload(ctx, store, target(1))
			if err != nil {
				t.Fatal(err)
			}
			b.SnapshotCompleted(1)
			restored := restoreTest(t, store, 128, r, h)
			checkState(t, restored, atSnapshot)

			// The restored backend knows its SSTs are uploaded: its first
			// snapshot uploads only SSTs written since (by the WAL replay,
			// or a compaction Pebble chose to run), the WAL, MANIFEST and
			// the like.
			orig := map[string]string{}
			for _, f := range manifestOf(t, store, h).Files {
				if f.Shared {
					orig[f.Name] = f.Object
					if restored.uploaded[f.Name].key != f.Object {
						t.Errorf("restored backend does not know %s is %s", f.Name, f.Object)
					}
				}
			}
			h2 := snapshotAndUpload(t, restored, store, 2)
			for _, f := range manifestOf(t, store, h2).Files {
				if f.Shared && orig[f.Name] != "" && f.Object != orig[f.Name] {
					t.Errorf("first snapshot after restore uploaded %s again as %s", f.Name, f.Object)
				}
			}
			// And it keeps working.
			w2 := newWorkload(restored, atSnapshot, 4, 100)
			w2.run(t, 500, 10)
			checkState(t, restored, atSnapshot)
		})
	}
}

func TestRestoreDetectsDamage(t *testing.T) {
	store := objectstore.NewMem()
	b := openTest(t, 128, keygroup.Range{Start: 0, End: 127})
	w := newWorkload(b, newState(), 5, 2000)
	w.run(t, 4000, 100)
	if err := b.db.Flush(); err != nil {
		t.Fatal(err)
	}
	w.run(t, 100, 100)
	h := snapshotAndUpload(t, b, store, 1)
	sp, err := b.WriteSavepoint(ctx, store, "savepoints/job/sp-1/task-0")
	if err != nil {
		t.Fatal(err)
	}
	man := manifestOf(t, store, h)
	var sst, private string
	for _, f := range man.Files {
		if f.Shared && sst == "" {
			sst = f.Object
		}
		if !f.Shared && f.Size > 0 && private == "" {
			private = f.Object
		}
	}
	whole := keygroup.Range{Start: 0, End: 127}
	spInfo, err := store.Stat(ctx, sp.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	f, err := readSavepointFooter(ctx, store, sp.Manifest)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		handle  Handle
		object  string
		offset  int64 // byte to corrupt; -1 deletes the object
		missing bool
	}{
		{"sst-deleted", h, sst, -1, true},
		{"sst-byte", h, sst, 100, false},
		{"private-byte", h, private, 0, false},
		{"manifest-byte", h, h.Manifest, 40, false},
		{"manifest-deleted", h, h.Manifest, -1, true},
		{"savepoint-block-byte", sp, sp.Manifest, f.blocks[3].offset + f.blocks[3].length/2, false},
		{"savepoint-footer-byte", sp, sp.Manifest, f.dataEnd + 20, false},
		{"savepoint-trailer-byte", sp, sp.Manifest, spInfo.Size - 3, false},
		{"savepoint-deleted", sp, sp.Manifest, -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Work on a copy of the store so cases do not interfere.
			s := objectstore.NewMem()
			for _, k := range listKeys(t, store, "") {
				rc, err := store.Get(ctx, k, 0, -1)
				if err != nil {
					t.Fatal(err)
				}
				info, _ := store.Stat(ctx, k)
				if err := s.Put(ctx, k, rc, info.Size); err != nil {
					t.Fatal(err)
				}
				rc.Close()
			}
			if tc.offset < 0 {
				if err := s.Delete(ctx, tc.object); err != nil {
					t.Fatal(err)
				}
			} else if err := s.Corrupt(tc.object, tc.offset); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			_, err := Restore(ctx, s, dir, Options{MaxParallelism: 128, KeyGroups: whole}, []Handle{tc.handle})
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if !strings.Contains(err.Error(), tc.object) {
				t.Errorf("error does not name %s: %v", tc.object, err)
			}
			if tc.missing {
				var me *MissingError
				if !errors.As(err, &me) || me.Object != tc.object || !errors.Is(err, objectstore.ErrNotFound) {
					t.Errorf("want *MissingError for %s wrapping ErrNotFound, got %T %v", tc.object, err, err)
				}
			} else {
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Object != tc.object || !errors.Is(err, ErrCorrupt) {
					t.Errorf("want *CorruptError for %s, got %T %v", tc.object, err, err)
				}
			}
			// A failed restore leaves dir usable for another attempt.
			rb, err := Restore(ctx, store, dir, Options{MaxParallelism: 128, KeyGroups: whole}, []Handle{tc.handle})
			if err != nil {
				t.Fatalf("restore from the intact store into the same dir: %v", err)
			}
			rb.Close()
		})
	}
}

func TestSnapshotObjectNames(t *testing.T) {
	store := objectstore.NewMem()
	b1 := openTest(t, 128, keygroup.Range{Start: 0, End: 127})
	b2 := openTest(t, 128, keygroup.Range{Start: 0, End: 127})
	for _, b := range []*Backend{b1, b2} {
		newWorkload(b, newState(), 6, 100).run(t, 300, 100)
		if err := b.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Same file numbers, same prefixes, different DBs: no collision.
	p1, _ := b1.Snapshot(1)
	p2, _ := b2.Snapshot(1)
	h1, err := p1.Upload(ctx, store, Target{SharedPrefix: "job/shared", PrivatePrefix: "job/chk-1/task-0"})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := p2.Upload(ctx, store, Target{SharedPrefix: "job/shared", PrivatePrefix: "job/chk-1/task-1"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range append(h1.Files, h2.Files...) {
		if seen[f] {
			t.Errorf("object %s written by both DBs", f)
		}
		seen[f] = true
	}
	if h1.Manifest != path.Join("job/chk-1/task-0", NativeManifestName) {
		t.Errorf("manifest at %s", h1.Manifest)
	}
	// A second attempt at the same target cannot overwrite the manifest.
	p3, _ := b1.Snapshot(2)
	if _, err := p3.Upload(ctx, store, Target{SharedPrefix: "job/shared", PrivatePrefix: "job/chk-1/task-0"}); !errors.Is(err, objectstore.ErrExists) {
		t.Errorf("second manifest at the same target: %v", err)
	}
	checkState(t, restoreTest(t, store, 128, keygroup.Range{Start: 0, End: 127}, h1), dump(t, b1))
}
