package statebackend

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A full disk must fail the backend's owner at once, never hang it. Pebble
// cannot be left to meet it: its commit pipeline panics on a WAL write error
// while holding the lock DB.Close takes (so Close never returns), and a
// memtable flush that fails makes later commits wait for room that never
// comes. So a backend refuses to commit (ErrNoSpace) while the filesystem
// holding it has less free space than a flush needs (Options.MinFreeBytes),
// and once any write of its Pebble files has met ENOSPC (spaceFS). A commit
// that panics in Pebble anyway is recovered; that DB is abandoned rather
// than closed.

// NoSpaceError is the error of a commit refused for lack of disk space. It
// wraps ErrNoSpace.
type NoSpaceError struct {
	Dir string
	// Free and Need are the bytes free on Dir's filesystem and the bytes a
	// commit needs free; both 0 when a write already met ENOSPC.
	Free, Need uint64
	// Cause is the failed write or Pebble's failure, if any.
	Cause error
}

func (e *NoSpaceError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("statebackend: no space left for state in %s: %v", e.Dir, e.Cause)
	}
	return fmt.Sprintf("statebackend: no space left for state in %s: %s free, %s needed", e.Dir, mib(e.Free), mib(e.Need))
}

func (e *NoSpaceError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrNoSpace}
	}
	return []error{ErrNoSpace, e.Cause}
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// MinFreeBytes returns the free space a backend with memtables of
// memTableSize (0: DefaultMemTableSize) needs on its filesystem to commit:
// room to flush both memtables Pebble may hold (MemTableStopWritesThreshold
// is 2), plus 1 MiB for the WAL, the MANIFEST and a snapshot's images.
func MinFreeBytes(memTableSize uint64) uint64 {
	if memTableSize == 0 {
		memTableSize = DefaultMemTableSize
	}
	return 2*memTableSize + 1<<20
}

// IsNoSpace reports whether err says a disk is full: ErrNoSpace, or ENOSPC
// from a file operation (a restore's download, say).
func IsNoSpace(err error) bool {
	return errors.Is(err, ErrNoSpace) || errors.Is(err, syscall.ENOSPC)
}

// spaceGuard records that a write of the backend's files met ENOSPC.
type spaceGuard struct {
	full   atomic.Bool
	once   sync.Once
	fullCh chan struct{} // closed when full is first set
}

func newSpaceGuard() *spaceGuard { return &spaceGuard{fullCh: make(chan struct{})} }

func (g *spaceGuard) setFull() {
	g.full.Store(true)
	g.once.Do(func() { close(g.fullCh) })
}

// wrap returns fs reporting ENOSPC to g. A WAL or MANIFEST write that meets
// ENOSPC is reported to Pebble as written: Pebble panics on those (with a
// mutex state that no recover survives: "unlock of unlocked mutex" when
// rotating the WAL), and the DB is never used again: every later commit and
// snapshot of the backend is refused, and its owner throws the directory
// away and restores from a checkpoint. Other writes (SSTs of flushes and
// compactions) return the error, which Pebble handles.
func (g *spaceGuard) wrap(fs vfs.FS) vfs.FS { return spaceFS{FS: fs, g: g} }

type spaceFS struct {
	vfs.FS
	g *spaceGuard
}

func (fs spaceFS) file(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			fs.g.setFull()
		}
		return nil, err
	}
	base := filepath.Base(name)
	return spaceFile{File: f, g: fs.g, swallow: isWAL(base) || strings.HasPrefix(base, "MANIFEST-")}, nil
}

func (fs spaceFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.file(name, f, err)
}

func (fs spaceFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.file(name, f, err)
}

func (fs spaceFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.file(newname, f, err)
}

func (fs spaceFS) Unwrap() vfs.FS { return fs.FS }

type spaceFile struct {
	vfs.File
	g       *spaceGuard
	swallow bool
}

func (f spaceFile) check(n int, err error, want int) (int, error) {
	if err == nil || !errors.Is(err, syscall.ENOSPC) {
		return n, err
	}
	f.g.setFull()
	if f.swallow {
		return want, nil
	}
	return n, err
}

func (f spaceFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	return f.check(n, err, len(p))
}

func (f spaceFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	return f.check(n, err, len(p))
}

// checkRoom returns a *NoSpaceError when the backend must not commit.
func (b *Backend) checkRoom() error {
	if b.fs.space.full.Load() {
		return &NoSpaceError{Dir: b.dir, Cause: syscall.ENOSPC}
	}
	free, err := b.opts.freeBytes(b.dir)
	if err != nil {
		return nil // cannot tell: Pebble's own errors still count
	}
	if need := b.opts.MinFreeBytes; free < need {
		return &NoSpaceError{Dir: b.dir, Free: free, Need: need}
	}
	return nil
}
