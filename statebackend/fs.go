package statebackend

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// backendFS is the vfs.FS of a backend's Pebble DB. It does three things
// differently from vfs.Default:
//
//   - Nothing is ever synced (Sync, SyncData and SyncTo do nothing). Local
//     durability is not needed: state is recovered from checkpoints plus
//     replay, so a process crash loses nothing (the page cache survives it)
//     and a machine crash means restoring from a checkpoint.
//
//   - WAL files are never recycled: ReuseForWrite removes the old file and
//     creates a new one. So a WAL file's bytes, once written, never change:
//     the file only grows until it is deleted.
//
//   - A Pebble checkpoint into the backend's checkpoints directory captures
//     each WAL by hard link instead of by copy. Pebble copies WALs because
//     recycling would rewrite them; without recycling, a link plus the
//     length at link time is an immutable image of the WAL as of the
//     checkpoint, whatever is appended later. Snapshot calls Checkpoint
//     with commits excluded and after flushing the WAL buffer, so that
//     length covers every committed batch; Upload sends only that prefix.
//     This makes the synchronous part of a snapshot independent of the
//     memtable size: copying a 16 MiB WAL costs tens of milliseconds on a
//     small VM, linking it microseconds.
//
// The last point relies on how Pebble's Checkpoint copies a WAL
// (vfs.CopyAcrossFS: Open the source, Create the destination, io.Copy). If
// that changes, links simply are not made and WALs are copied as before;
// the images stay correct.
type backendFS struct {
	vfs.FS
	dbDir          string // the DB directory, whose WALs are linked
	checkpointsDir string // images are subdirectories of it; "" links nothing

	mu sync.Mutex
	// linked maps image WAL paths to their length at link time, until the
	// snapshot takes them.
	linked map[string]int64
	// skipCopy holds WAL names whose copy into an image is moot (the image
	// holds a link): the next io.Copy from that WAL reads nothing.
	skipCopy map[string]bool

	// space records a write that met ENOSPC (see space.go).
	space *spaceGuard
}

// newBackendFS returns the FS of the DB in dbDir over the OS filesystem,
// which wrap (if not nil) may wrap first.
func newBackendFS(dbDir, checkpointsDir string, wrap func(vfs.FS) vfs.FS) *backendFS {
	fs := &backendFS{dbDir: dbDir, checkpointsDir: checkpointsDir, linked: map[string]int64{}, skipCopy: map[string]bool{}, space: newSpaceGuard()}
	inner := vfs.Default
	if wrap != nil {
		inner = wrap(inner)
	}
	fs.FS = fs.space.wrap(inner)
	return fs
}

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

// Create implements vfs.FS.
func (fs *backendFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	base := filepath.Base(name)
	if fs.checkpointsDir != "" && isWAL(base) && filepath.Dir(filepath.Dir(name)) == fs.checkpointsDir {
		if f, ok := fs.linkWAL(name, base); ok {
			return f, nil
		}
	}
	return wrapNoSync(fs.FS.Create(name, c))
}

// linkWAL makes image path name a hard link to the DB's WAL base.
func (fs *backendFS) linkWAL(name, base string) (vfs.File, bool) {
	if err := os.Link(filepath.Join(fs.dbDir, base), name); err != nil {
		return nil, false
	}
	fi, err := os.Stat(name)
	if err != nil {
		_ = os.Remove(name)
		return nil, false
	}
	fs.mu.Lock()
	fs.linked[name] = fi.Size()
	fs.skipCopy[base] = true
	fs.mu.Unlock()
	return discardFile{name: name}, true
}

// takeLinked returns the lengths of the WALs linked into image dir and
// forgets every pending copy skip.
func (fs *backendFS) takeLinked(dir string) map[string]int64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := map[string]int64{}
	for p, n := range fs.linked {
		if filepath.Dir(p) == dir {
			out[filepath.Base(p)] = n
			delete(fs.linked, p)
		}
	}
	clear(fs.skipCopy)
	return out
}

// Open implements vfs.FS.
func (fs *backendFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.Open(name, opts...)
	if err != nil {
		return nil, err
	}
	if base := filepath.Base(name); isWAL(base) && filepath.Dir(name) == fs.dbDir {
		return walReader{File: f, fs: fs, base: base}, nil
	}
	return noSyncFile{f}, nil
}

// OpenReadWrite implements vfs.FS.
func (fs *backendFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return wrapNoSync(fs.FS.OpenReadWrite(name, c, opts...))
}

// OpenDir implements vfs.FS.
func (fs *backendFS) OpenDir(name string) (vfs.File, error) { return wrapNoSync(fs.FS.OpenDir(name)) }

// ReuseForWrite implements vfs.FS without reuse (see backendFS).
func (fs *backendFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if err := fs.FS.Remove(oldname); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	return fs.Create(newname, c)
}

// Unwrap implements vfs.FS.
func (fs *backendFS) Unwrap() vfs.FS { return fs.FS }

func wrapNoSync(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

// noSyncFile is a vfs.File that never syncs.
type noSyncFile struct{ vfs.File }

func (noSyncFile) Sync() error     { return nil }
func (noSyncFile) SyncData() error { return nil }

// SyncTo does nothing. (Pacing writeback with sync_file_range, as Pebble
// does by default, measured slower here: it blocks flushes and compactions
// on the disk and lengthened snapshot stalls, see BENCHMARKS.md.)
func (noSyncFile) SyncTo(int64) (bool, error) { return true, nil }

// walReader is a WAL opened for reading. io.Copy from it copies nothing if
// the WAL was just linked into an image (the copy's destination is then a
// discardFile).
type walReader struct {
	vfs.File
	fs   *backendFS
	base string
}

func (r walReader) WriteTo(w io.Writer) (int64, error) {
	r.fs.mu.Lock()
	skip := r.fs.skipCopy[r.base]
	delete(r.fs.skipCopy, r.base)
	r.fs.mu.Unlock()
	if skip {
		return 0, nil
	}
	return io.Copy(w, struct{ io.Reader }{r.File})
}

// discardFile stands for an image WAL made by hard link: writes to it are
// dropped.
type discardFile struct{ name string }

func (discardFile) Close() error                           { return nil }
func (discardFile) Read([]byte) (int, error)               { return 0, io.EOF }
func (discardFile) ReadAt([]byte, int64) (int, error)      { return 0, io.EOF }
func (discardFile) Write(p []byte) (int, error)            { return len(p), nil }
func (discardFile) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (discardFile) Preallocate(int64, int64) error         { return nil }
func (f discardFile) Stat() (vfs.FileInfo, error)          { return vfs.Default.Stat(f.name) }
func (discardFile) Sync() error                            { return nil }
func (discardFile) SyncTo(int64) (bool, error)             { return true, nil }
func (discardFile) SyncData() error                        { return nil }
func (discardFile) Prefetch(int64, int64) error            { return nil }
func (discardFile) Fd() uintptr                            { return vfs.InvalidFd }
