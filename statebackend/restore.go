package statebackend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// restoreSSTSize is the raw bytes after which Restore starts a new SST (at a
// key-group boundary), so that later compactions stay incremental.
const restoreSSTSize = 32 << 20

// restoreUnitMin is the least savepoint bytes Restore reads and decodes on
// one goroutine (a variable for tests).
var restoreUnitMin int64 = restoreSSTSize

// restoreSource is a handle and the part of it a restore reads.
type restoreSource struct {
	h     Handle
	inter keygroup.Range
}

// Restore builds a backend in dir owning opts.KeyGroups from handles: native
// snapshots and canonical savepoints that together cover the range, with
// ranges wider or narrower than it (rescaling). Keys of groups outside the
// range are never visible; the applied marks of exactly the owned groups are
// restored. Every object read is checked against its recorded size and
// CRC32C: a damaged object gives a *CorruptError and a missing one a
// *MissingError, both naming the object. Handles leaving groups uncovered
// give a *CoverageError, handles claiming the same group ErrOverlap.
//
// dir must not hold a backend already. A single native handle is restored by
// downloading its files into the DB directory (its SSTs then count as
// uploaded for the next Snapshot to the same store) and deleting what lies
// outside the range; anything else by reading the owned groups of each
// handle into new SSTs that are ingested at once. On error, Restore removes
// what it created.
func Restore(ctx context.Context, store objectstore.Store, dir string, opts Options, handles []Handle) (*Backend, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	srcs, err := selectSources(opts, handles)
	if err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(filepath.Join(dir, dbDirName)); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrDirNotEmpty, dir)
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	var b *Backend
	if len(srcs) == 1 && srcs[0].h.Format == FormatNative {
		b, err = restoreNative(ctx, store, dir, opts, srcs[0].h)
	} else {
		b, err = restoreMerge(ctx, store, dir, opts, srcs)
	}
	if err != nil {
		_ = os.RemoveAll(filepath.Join(dir, dbDirName))
		_ = prepareDir(dir)
		return nil, err
	}
	return b, nil
}

// selectSources picks the handles intersecting opts.KeyGroups, in group
// order, and checks that they cover it exactly once.
func selectSources(opts Options, handles []Handle) ([]restoreSource, error) {
	want := opts.KeyGroups
	var srcs []restoreSource
	for _, h := range handles {
		if err := h.Validate(opts.MaxParallelism); err != nil {
			return nil, err
		}
		if inter, ok := h.Range.Intersect(want); ok {
			srcs = append(srcs, restoreSource{h: h, inter: inter})
		}
	}
	sort.Slice(srcs, func(i, j int) bool { return srcs[i].inter.Start < srcs[j].inter.Start })
	var missing []keygroup.Range
	next := want.Start
	for i, s := range srcs {
		if i > 0 && s.inter.Start <= srcs[i-1].inter.End {
			return nil, fmt.Errorf("%w: %s and %s both hold groups %v", ErrOverlap, srcs[i-1].h.Manifest, s.h.Manifest,
				keygroup.Range{Start: s.inter.Start, End: min(s.inter.End, srcs[i-1].inter.End)})
		}
		if s.inter.Start > next {
			missing = append(missing, keygroup.Range{Start: next, End: s.inter.Start - 1})
		}
		next = s.inter.End + 1
	}
	if next <= want.End {
		missing = append(missing, keygroup.Range{Start: next, End: want.End})
	}
	if len(missing) > 0 {
		return nil, &CoverageError{Want: want, Missing: missing}
	}
	return srcs, nil
}

// readManifest reads and checks the manifest of native handle h.
func readManifest(ctx context.Context, store objectstore.Store, h Handle, m int) (*nativeManifest, error) {
	rc, err := store.Get(ctx, h.Manifest, 0, -1)
	if err != nil {
		return nil, storeErr("get", h.Manifest, err)
	}
	data, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		return nil, storeErr("get", h.Manifest, err)
	}
	man, err := decodeManifest(h.Manifest, data)
	if err != nil {
		return nil, err
	}
	if man.MaxParallelism != m {
		return nil, fmt.Errorf("%w: %q was written with %d, restoring with %d", ErrMaxParallelismMismatch, h.Manifest, man.MaxParallelism, m)
	}
	if man.Range != h.Range {
		return nil, fmt.Errorf("%w: handle says %v, manifest %q says %v", ErrInvalidHandle, h.Range, h.Manifest, man.Range)
	}
	return man, nil
}

// downloadSnapshot fetches and verifies every file of a native snapshot into
// dbDir.
func downloadSnapshot(ctx context.Context, store objectstore.Store, dbDir string, man *nativeManifest, concurrency int) error {
	if err := os.MkdirAll(dbDir, 0o755); err != nil {
		return fmt.Errorf("statebackend: restore: %w", err)
	}
	jobs := make([]func(context.Context) error, len(man.Files))
	for i, f := range man.Files {
		jobs[i] = func(ctx context.Context) error {
			return downloadFile(ctx, store, f.Object, filepath.Join(dbDir, f.Name), f.Size, f.CRC32C)
		}
	}
	return runParallel(ctx, concurrency, jobs)
}

func restoreNative(ctx context.Context, store objectstore.Store, dir string, opts Options, h Handle) (*Backend, error) {
	man, err := readManifest(ctx, store, h, opts.MaxParallelism)
	if err != nil {
		return nil, err
	}
	if err := downloadSnapshot(ctx, store, filepath.Join(dir, dbDirName), man, opts.TransferConcurrency); err != nil {
		return nil, err
	}
	b, err := openDB(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("%w (restoring %q)", err, h.Manifest)
	}
	fail := func(err error) (*Backend, error) {
		_ = b.Close()
		return nil, err
	}
	// The DB's own applied marks must be the manifest's.
	want := make(map[int]uint64)
	for _, a := range man.Applied {
		want[a.Group] = a.Seq
	}
	for g := opts.KeyGroups.Start; g <= opts.KeyGroups.End; g++ {
		if got := b.Applied(g); got != want[g] {
			return fail(corruptf(h.Manifest, "group %d: applied %d in the files, %d in the manifest", g, got, want[g]))
		}
	}
	if err := b.clipToRange(); err != nil {
		return fail(err)
	}
	location := store.Location()
	for _, f := range man.Files {
		if f.Shared {
			b.uploaded[f.Name] = sharedObject{location: location, key: f.Object, size: f.Size, crc: f.CRC32C}
		}
	}
	return b, nil
}

func restoreMerge(ctx context.Context, store objectstore.Store, dir string, opts Options, srcs []restoreSource) (*Backend, error) {
	b, err := openDB(dir, opts)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Backend, error) {
		_ = b.Close()
		return nil, err
	}
	// Units of work: a native source is one (its DB is downloaded whole);
	// a canonical source is split into byte-balanced group sub-ranges that
	// are range-read and decoded in parallel, each into its own SSTs.
	type unit struct {
		src    restoreSource
		groups keygroup.Range
		footer *savepointFooter
	}
	par := min(opts.TransferConcurrency, max(runtime.GOMAXPROCS(0), 2))
	var units []unit
	for _, s := range srcs {
		if s.h.Format != FormatCanonical {
			units = append(units, unit{src: s, groups: s.inter})
			continue
		}
		f, err := readCanonicalFooter(ctx, store, opts, s.h)
		if err != nil {
			return fail(err)
		}
		for _, r := range f.split(s.inter, par, restoreUnitMin) {
			units = append(units, unit{src: s, groups: r, footer: f})
		}
	}
	ssts := make([][]string, len(units))
	jobs := make([]func(context.Context) error, len(units))
	for i, u := range units {
		jobs[i] = func(ctx context.Context) error {
			w := &sstBuilder{b: b, prefix: fmt.Sprintf("ingest-%d-", i)}
			var err error
			if u.footer != nil {
				err = readSavepointGroups(ctx, store, u.src.h.Manifest, u.footer, u.groups, w.add)
			} else {
				err = restoreNativeInto(ctx, store, opts, b.tmpDir(), i, u.src, w.add)
			}
			if ferr := w.finish(); err == nil {
				err = ferr
			}
			ssts[i] = w.paths
			return err
		}
	}
	err = runParallel(ctx, par, jobs)
	var paths []string
	for _, p := range ssts {
		paths = append(paths, p...)
	}
	defer func() {
		for _, p := range paths {
			_ = os.Remove(p)
		}
	}()
	if err != nil {
		return fail(err)
	}
	if len(paths) > 0 {
		if err := b.db.Ingest(ctx, paths); err != nil {
			return fail(fmt.Errorf("statebackend: restore: ingest: %w", err))
		}
	}
	if err := b.loadApplied(); err != nil {
		return fail(err)
	}
	if b.fs.space.full.Load() {
		// A MANIFEST write met ENOSPC and was reported written (see
		// spaceFS): the DB on disk is not what Pebble holds.
		return fail(&NoSpaceError{Dir: b.dir, Cause: syscall.ENOSPC})
	}
	return b, nil
}

// loadApplied reloads the applied marks of the owned groups from the DB.
func (b *Backend) loadApplied() error {
	for g := b.opts.KeyGroups.Start; g <= b.opts.KeyGroups.End; g++ {
		v, closer, err := b.db.Get(appliedKey(g))
		if errors.Is(err, pebble.ErrNotFound) {
			b.applied[g-b.opts.KeyGroups.Start].Store(0)
			continue
		}
		if err != nil {
			return fmt.Errorf("statebackend: read applied mark of group %d: %w", g, err)
		}
		seq, ok := decodeSeq(v)
		_ = closer.Close()
		if !ok {
			return fmt.Errorf("%w: applied mark of group %d has %d bytes", ErrCorrupt, g, len(v))
		}
		b.applied[g-b.opts.KeyGroups.Start].Store(seq)
	}
	return nil
}

// readCanonicalFooter reads the footer of canonical handle h and checks it
// against the handle and opts.
func readCanonicalFooter(ctx context.Context, store objectstore.Store, opts Options, h Handle) (*savepointFooter, error) {
	f, err := readSavepointFooter(ctx, store, h.Manifest)
	if err != nil {
		return nil, err
	}
	if f.maxParallelism != opts.MaxParallelism {
		return nil, fmt.Errorf("%w: %q was written with %d, restoring with %d", ErrMaxParallelismMismatch, h.Manifest, f.maxParallelism, opts.MaxParallelism)
	}
	if f.rng != h.Range {
		return nil, fmt.Errorf("%w: handle says %v, savepoint %q holds %v", ErrInvalidHandle, h.Range, h.Manifest, f.rng)
	}
	return f, nil
}

// restoreNativeInto downloads a native snapshot into a temp directory, opens
// it read-only and copies the owned groups' keys (counters merged to their
// values, applied marks included).
func restoreNativeInto(ctx context.Context, store objectstore.Store, opts Options, tmp string, i int, s restoreSource, emit func(k, v []byte) error) error {
	man, err := readManifest(ctx, store, s.h, opts.MaxParallelism)
	if err != nil {
		return err
	}
	dbDir := filepath.Join(tmp, fmt.Sprintf("restore-%d", i))
	defer os.RemoveAll(dbDir)
	if err := downloadSnapshot(ctx, store, dbDir, man, opts.TransferConcurrency); err != nil {
		return err
	}
	popts := opts.pebbleOptions(newBackendFS(filepath.Clean(dbDir), "", opts.testFS))
	popts.ReadOnly = true
	db, err := pebble.Open(dbDir, popts)
	if err != nil {
		return fmt.Errorf("statebackend: restore: open %q: %w", s.h.Manifest, err)
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: groupPrefix(s.inter.Start), UpperBound: groupPrefix(s.inter.End + 1)})
	if err != nil {
		return err
	}
	defer it.Close()
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("statebackend: restore: read %q: %w", s.h.Manifest, err)
		}
		if err := emit(it.Key(), v); err != nil {
			return err
		}
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("statebackend: restore: read %q: %w", s.h.Manifest, err)
	}
	return nil
}

// sstBuilder writes sorted keys into SSTs in the backend's tmp dir, starting
// a new file at a key-group boundary once restoreSSTSize raw bytes are in
// the current one.
type sstBuilder struct {
	b      *Backend
	prefix string
	w      *sstable.Writer
	bytes  int64
	group  int
	paths  []string
}

func (s *sstBuilder) add(k, v []byte) error {
	g := keyGroupOf(k)
	if s.w != nil && g != s.group && s.bytes >= restoreSSTSize {
		if err := s.finish(); err != nil {
			return err
		}
	}
	if s.w == nil {
		p := filepath.Join(s.b.tmpDir(), fmt.Sprintf("%s%d.sst", s.prefix, len(s.paths)))
		f, err := s.b.popts.FS.Create(p, vfs.WriteCategoryUnspecified)
		if err != nil {
			return fmt.Errorf("statebackend: restore: %w", err)
		}
		s.paths = append(s.paths, p)
		s.w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), s.b.popts.MakeWriterOptions(6, s.b.db.TableFormat()))
		s.bytes = 0
	}
	s.group = g
	s.bytes += int64(len(k) + len(v))
	if err := s.w.Set(k, v); err != nil {
		return fmt.Errorf("statebackend: restore: write sst: %w", err)
	}
	return nil
}

func (s *sstBuilder) finish() error {
	if s.w == nil {
		return nil
	}
	err := s.w.Close()
	s.w = nil
	if err != nil {
		return fmt.Errorf("statebackend: restore: write sst: %w", err)
	}
	return nil
}
