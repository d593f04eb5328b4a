package statebackend

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// quotaFS is the twin of a small filesystem: writes through it fail with
// ENOSPC once limit bytes were written, counted across every file.
type quotaFS struct {
	vfs.FS
	used  *atomic.Int64
	limit int64
}

func (q quotaFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return quotaFile{File: f, q: q}, nil
}

func (q quotaFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return q.wrap(q.FS.Create(name, c))
}

func (q quotaFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return q.wrap(q.FS.OpenReadWrite(name, c, opts...))
}

func (q quotaFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return q.wrap(q.FS.ReuseForWrite(oldname, newname, c))
}

type quotaFile struct {
	vfs.File
	q quotaFS
}

func (f quotaFile) Write(p []byte) (int, error) {
	if f.q.used.Add(int64(len(p))) > f.q.limit {
		f.q.used.Add(-int64(len(p)))
		return 0, &os.PathError{Op: "write", Path: "quota", Err: syscall.ENOSPC}
	}
	return f.File.Write(p)
}

func (f quotaFile) WriteAt(p []byte, off int64) (int, error) {
	if f.q.used.Add(int64(len(p))) > f.q.limit {
		f.q.used.Add(-int64(len(p)))
		return 0, &os.PathError{Op: "write", Path: "quota", Err: syscall.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

// fillUntilNoSpace commits batches of 64 KiB values until a commit fails,
// and returns that error and how many commits succeeded. It fails the test
// if no commit fails within limit bytes written.
func fillUntilNoSpace(t *testing.T, b *Backend, limit int) (error, int) {
	t.Helper()
	v := make([]byte, 64<<10)
	rnd := rand.NewChaCha8([32]byte{9})
	bt := b.NewBatch()
	defer bt.Close()
	for i := 0; i*len(v) < 4*limit; i++ {
		rnd.Read(v) // incompressible: SSTs as large as the values
		if err := bt.Put("s", fmt.Appendf(nil, "k%06d", i), v); err != nil {
			t.Fatal(err)
		}
		if err := bt.Commit(); err != nil {
			return err, i
		}
	}
	t.Fatalf("no commit failed after %d bytes on a %d byte filesystem", 4*limit, limit)
	return nil, 0
}

// checkNoLeak fails the test if more goroutines run than before, once the
// ones that are ending have had time to.
func checkNoLeak(t *testing.T, before int) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

// A full disk fails a commit with ErrNoSpace at once, and the backend then
// closes promptly with none of Pebble's goroutines left (issue 9, item 9).
// The twin counts bytes written through the DB's filesystem: "measured"
// reports the free space the quota leaves, so the commit is refused before
// Pebble runs out and nothing leaks. "blind" reports plenty (another writer
// took the space after the check), so Pebble itself meets ENOSPC in a flush
// and the commit waits for room forever: the commit still fails within
// noSpaceGrace and Close returns, abandoning the stuck DB (its goroutines
// stay until the process exits).
func TestNoSpaceTwin(t *testing.T) {
	const limit = 6 << 20
	for _, measured := range []bool{true, false} {
		t.Run(map[bool]string{true: "measured", false: "blind"}[measured], func(t *testing.T) {
			before := runtime.NumGoroutine()
			used := &atomic.Int64{}
			opts := Options{MaxParallelism: 8, KeyGroups: keygroup.Range{Start: 0, End: 7}, MemTableSize: 1 << 20, Logger: newTestLogger(t),
				testFS: func(fs vfs.FS) vfs.FS { return quotaFS{FS: fs, used: used, limit: limit} },
				freeBytes: func(string) (uint64, error) {
					if !measured {
						return 1 << 40, nil
					}
					return uint64(max(limit-used.Load(), 0)), nil
				}}
			dir := t.TempDir()
			if !measured {
				// The abandoned DB's goroutines go on writing in its
				// directory until the process exits: t.TempDir's cleanup
				// would fail on files they create meanwhile.
				var err error
				if dir, err = os.MkdirTemp("", "nospace-blind-"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.RemoveAll(dir) }) // best effort
			}
			b, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err, n := fillUntilNoSpace(t, b, limit)
			t.Logf("commit %d failed after %s, %d bytes written: %v", n, time.Since(start).Round(time.Millisecond), used.Load(), err)
			var nse *NoSpaceError
			if !errors.Is(err, ErrNoSpace) || !errors.As(err, &nse) {
				t.Fatalf("commit on a full disk: %v, want ErrNoSpace", err)
			}
			closed := make(chan error, 1)
			go func() { closed <- b.Close() }()
			select {
			case err := <-closed:
				t.Logf("close: %v", err)
				if measured && err != nil {
					t.Errorf("close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close of a backend on a full disk did not return")
			}
			if measured {
				checkNoLeak(t, before)
			}
		})
	}
}

// testLogger logs Pebble's errors to the test until it ends: an abandoned
// DB's goroutines may go on logging after that.
type testLogger struct {
	t    *testing.T
	done *atomic.Bool
}

func newTestLogger(t *testing.T) testLogger {
	l := testLogger{t: t, done: new(atomic.Bool)}
	t.Cleanup(func() { l.done.Store(true) })
	return l
}

func (l testLogger) Errorf(format string, args ...any) {
	if !l.done.Load() {
		l.t.Logf("pebble: "+format, args...)
	}
}

// The same on a real 16 MiB tmpfs: the commit that would leave less room
// than a flush needs fails with ErrNoSpace in milliseconds, and the backend
// closes with no goroutine left behind. It needs to mount a tmpfs (root);
// with CI=true it fails when it cannot.
func TestNoSpaceTmpfs(t *testing.T) {
	dir := testutil.MountTmpfs(t, "16m")
	before := runtime.NumGoroutine()
	// No background compactions: this is about the commit path. A
	// compaction that meets ENOSPC is retried by Pebble (a logged
	// background error) and its partial output removed, but while it is
	// on disk the free space below says nothing of the commit path.
	b, err := Open(dir, Options{MaxParallelism: 8, KeyGroups: keygroup.Range{Start: 0, End: 7}, MemTableSize: 1 << 20, Logger: newTestLogger(t),
		testPebble: func(o *pebble.Options) { o.DisableAutomaticCompactions = true }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() }) // before the unmount
	start := time.Now()
	err, n := fillUntilNoSpace(t, b, 16<<20)
	t.Logf("commit %d failed after %s: %v", n, time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("commit on a full tmpfs: %v, want ErrNoSpace", err)
	}
	if free, _ := FreeBytes(dir); free < MinFreeBytes(1<<20)/2 {
		t.Errorf("the refused commit left %d bytes free: Pebble may have met ENOSPC", free)
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close of a backend on a full tmpfs did not return")
	}
	checkNoLeak(t, before)
}

// A restore onto a filesystem too small for the state (a real 4 MiB tmpfs)
// fails with an error IsNoSpace recognizes, promptly, and leaves no
// goroutine behind.
func TestNoSpaceRestoreTmpfs(t *testing.T) {
	src, err := Open(t.TempDir(), Options{MaxParallelism: 8, KeyGroups: keygroup.Range{Start: 0, End: 7}, MemTableSize: 1 << 20, Logger: newTestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bt := src.NewBatch()
	rnd := rand.NewChaCha8([32]byte{3})
	v := make([]byte, 64<<10)
	for i := range 128 { // 8 MiB, incompressible
		rnd.Read(v)
		if err := bt.Put("s", fmt.Appendf(nil, "k%04d", i), v); err != nil {
			t.Fatal(err)
		}
		if err := bt.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	bt.Close()
	ps, err := src.Snapshot(1)
	if err != nil {
		t.Fatal(err)
	}
	store := objectstore.NewMem()
	h, err := ps.Upload(context.Background(), store, Target{SharedPrefix: "j/shared", PrivatePrefix: "j/chk-1/task-0"})
	if err != nil {
		t.Fatal(err)
	}

	dir := testutil.MountTmpfs(t, "4m")
	before := runtime.NumGoroutine()
	start := time.Now()
	b, err := Restore(context.Background(), store, dir, Options{MaxParallelism: 8, KeyGroups: keygroup.Range{Start: 0, End: 7}, MemTableSize: 1 << 20, Logger: newTestLogger(t)}, []Handle{h})
	t.Logf("restore of 8 MiB onto a 4 MiB tmpfs: %v after %s", err, time.Since(start).Round(time.Millisecond))
	if err == nil {
		b.Close()
		t.Fatal("restore onto a full tmpfs succeeded")
	}
	if !IsNoSpace(err) {
		t.Errorf("restore onto a full tmpfs: %v, want a no-space error", err)
	}
	checkNoLeak(t, before)
}
