// Package storetest is the conformance suite of objectstore.Store: every
// implementation runs it, so that code written against the in-memory store
// holds against MinIO and a local directory too.
//
//	func TestFS(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) objectstore.Store {
//			s, err := objectstore.NewFS(t.TempDir())
//			...
//			return s
//		})
//	}
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/objectstore"
)

// LargeSize is the size of the object in the Large test: large enough that an
// S3 store uploads it in several parts.
const LargeSize = 40 << 20

// Run runs the conformance suite. open must return a new, empty store each
// time it is called; it is called once per subtest, from that subtest's
// goroutine, and subtests run in parallel.
func Run(t *testing.T, open func(t *testing.T) objectstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s objectstore.Store)
	}{
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"Empty", testEmpty},
		{"Ranges", testRanges},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ListEmpty", testListEmpty},
		{"Delete", testDelete},
		{"PutIfAbsent", testPutIfAbsent},
		{"PutIfAbsentConcurrent", testPutIfAbsentConcurrent},
		{"Copy", testCopy},
		{"SizeMismatch", testSizeMismatch},
		{"InvalidKeys", testInvalidKeys},
		{"FailingReader", testFailingReader},
		{"Concurrent", testConcurrent},
		{"Location", testLocation},
		{"Large", testLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

// ctx returns a context that ends with the test, with a deadline well inside
// go test's, so a hung store fails one test with a clear error.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func put(t *testing.T, s objectstore.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(ctx(t), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

// get reads [offset, offset+length) of key, failing the test on error.
func get(t *testing.T, s objectstore.Store, key string, offset, length int64) []byte {
	t.Helper()
	data, err := read(ctx(t), s, key, offset, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", key, offset, length, err)
	}
	return data
}

func read(ctx context.Context, s objectstore.Store, key string, offset, length int64) ([]byte, error) {
	rc, err := s.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return data, err
}

func wantContent(t *testing.T, s objectstore.Store, key string, want []byte) {
	t.Helper()
	if got := get(t, s, key, 0, -1); !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %s, want %s", key, brief(got), brief(want))
	}
	info, err := s.Stat(ctx(t), key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if info.Key != key || info.Size != int64(len(want)) {
		t.Fatalf("Stat(%q) = {Key: %q, Size: %d}, want {Key: %q, Size: %d}", key, info.Key, info.Size, key, len(want))
	}
}

// wantStream checks that Get(key, offset, length) yields want, comparing as
// it reads rather than collecting the whole object first.
func wantStream(t *testing.T, s objectstore.Store, key string, offset, length int64, want []byte) {
	t.Helper()
	rc, err := s.Get(ctx(t), key, offset, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", key, offset, length, err)
	}
	defer rc.Close()
	buf := make([]byte, 1<<20)
	for pos := 0; ; {
		n, err := io.ReadFull(rc, buf)
		if !bytes.Equal(buf[:n], want[pos:min(pos+n, len(want))]) {
			t.Fatalf("Get(%q, %d, %d): bytes from %d on differ from what was written", key, offset, length, pos)
		}
		pos += n
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if pos != len(want) {
				t.Fatalf("Get(%q, %d, %d) yields %d bytes, want %d", key, offset, length, pos, len(want))
			}
			return
		}
		if err != nil {
			t.Fatalf("Get(%q, %d, %d): reading at %d: %v", key, offset, length, pos, err)
		}
	}
}

func wantAbsent(t *testing.T, s objectstore.Store, key string) {
	t.Helper()
	if _, err := s.Stat(ctx(t), key); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	if _, err := read(ctx(t), s, key, 0, -1); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Get(%q) = %v, want ErrNotFound", key, err)
	}
}

func wantKeys(t *testing.T, s objectstore.Store, prefix string, want ...string) {
	t.Helper()
	infos, err := s.List(ctx(t), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	got := make([]string, len(infos))
	for i, info := range infos {
		got[i] = info.Key
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List(%q) = %q, want %q", prefix, got, want)
	}
}

// brief shows data compactly in a failure message.
func brief(data []byte) string {
	if len(data) <= 64 {
		return fmt.Sprintf("%q", data)
	}
	return fmt.Sprintf("%d bytes starting %q", len(data), data[:32])
}

// pattern returns n deterministic pseudo-random bytes.
func pattern(n int, seed uint64) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b) // never fails
	return b
}

func testPutGet(t *testing.T, s objectstore.Store) {
	before := time.Now().Add(-time.Hour) // generous: the server's clock may differ
	data := []byte("hello, checkpoint")
	put(t, s, "job/chk-1/_metadata", data)
	wantContent(t, s, "job/chk-1/_metadata", data)

	info, err := s.Stat(ctx(t), "job/chk-1/_metadata")
	if err != nil {
		t.Fatal(err)
	}
	if info.ModTime.Before(before) || info.ModTime.After(time.Now().Add(time.Hour)) {
		t.Errorf("Stat ModTime = %v, want about now", info.ModTime)
	}

	// Keys with dots, dashes, spaces and UTF-8 are fine.
	for _, key := range []string{"a", "a.b", "..a/b..", "x/.hidden", "with space/ü-ñ"} {
		put(t, s, key, []byte(key))
		wantContent(t, s, key, []byte(key))
	}
}

func testOverwrite(t *testing.T, s objectstore.Store) {
	put(t, s, "k", []byte("first version, longer"))
	put(t, s, "k", []byte("second"))
	wantContent(t, s, "k", []byte("second"))
	wantKeys(t, s, "", "k")
}

func testEmpty(t *testing.T, s objectstore.Store) {
	put(t, s, "empty", nil)
	wantContent(t, s, "empty", []byte{})
	for _, r := range [][2]int64{{0, 0}, {0, 10}, {5, -1}, {5, 10}} {
		if got := get(t, s, "empty", r[0], r[1]); len(got) != 0 {
			t.Errorf("Get(empty, %d, %d) = %q, want nothing", r[0], r[1], got)
		}
	}
	if err := s.PutIfAbsent(ctx(t), "empty2", bytes.NewReader(nil), 0); err != nil {
		t.Fatalf("PutIfAbsent(empty2, 0 bytes): %v", err)
	}
	wantContent(t, s, "empty2", []byte{})
}

func testRanges(t *testing.T, s objectstore.Store) {
	data := pattern(1000, 1)
	put(t, s, "r", data)
	n := int64(len(data))
	for _, tc := range []struct {
		offset, length int64
		start, end     int64 // want data[start:end]
	}{
		{0, -1, 0, n},            // whole object
		{0, n, 0, n},             // exactly the object
		{0, 1, 0, 1},             // first byte
		{10, -1, 10, n},          // from an offset to the end
		{10, 20, 10, 30},         // a middle range
		{n - 1, -1, n - 1, n},    // the last byte
		{n - 1, 1, n - 1, n},     // the last byte, explicitly
		{990, 20, 990, n},        // a range cut at the end
		{0, n + 1, 0, n},         // one past the end
		{0, 1 << 62, 0, n},       // far past the end
		{500, 1<<63 - 1, 500, n}, // offset+length overflows
		{n, -1, n, n},            // at the end
		{n, 10, n, n},            // at the end, with a length
		{n + 50, -1, n, n},       // past the end
		{n + 50, 10, n, n},       // past the end, with a length
		{0, 0, 0, 0},             // zero length
		{500, 0, 500, 500},       // zero length in the middle
		{n + 5, 0, n, n},         // zero length past the end
		{-5, 10, 0, 10},          // a negative offset reads from the start
	} {
		got := get(t, s, "r", tc.offset, tc.length)
		if want := data[tc.start:tc.end]; !bytes.Equal(got, want) {
			t.Errorf("Get(r, %d, %d) = %s, want data[%d:%d] = %s", tc.offset, tc.length, brief(got), tc.start, tc.end, brief(want))
		}
	}
}

func testNotFound(t *testing.T, s objectstore.Store) {
	put(t, s, "dir/present", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir/present/below", "dir", "nodir/missing"} {
		if _, err := s.Stat(ctx(t), key); !errors.Is(err, objectstore.ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
		}
		for _, r := range [][2]int64{{0, -1}, {0, 0}, {5, 10}, {5, -1}} {
			rc, err := s.Get(ctx(t), key, r[0], r[1])
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, objectstore.ErrNotFound) {
				t.Errorf("Get(%q, %d, %d) = %v, want ErrNotFound (returned by Get itself)", key, r[0], r[1], err)
			}
		}
	}
}

// listKeys are written by testList. Keys that are byte-wise neighbours of
// each other check the ordering ('-' < '/' < '0' < '_').
var listKeys = []string{
	"job1/chk-1-old",
	"job1/chk-1/_metadata",
	"job1/chk-1/task-0",
	"job1/chk-10/_metadata",
	"job1/chk-2/_metadata",
	"job1/shared/0001.sst",
	"job10/x",
	"job2/chk-1/_metadata",
	"top",
}

func testList(t *testing.T, s objectstore.Store) {
	// Write in reverse so that insertion order is not list order.
	for i := len(listKeys) - 1; i >= 0; i-- {
		put(t, s, listKeys[i], []byte(strings.Repeat("x", i)))
	}
	all := slices.Clone(listKeys)
	slices.Sort(all)
	if !slices.Equal(all, listKeys) {
		t.Fatalf("listKeys is not sorted: %q", listKeys)
	}
	wantKeys(t, s, "", listKeys...)

	infos, err := s.List(ctx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	for i, info := range infos {
		if info.Size != int64(i) || info.ModTime.IsZero() {
			t.Errorf("List: %q has Size %d and ModTime %v, want Size %d and a ModTime", info.Key, info.Size, info.ModTime, i)
		}
	}

	wantKeys(t, s, "job1/", listKeys[:6]...)
	wantKeys(t, s, "job1", listKeys[:7]...) // ends mid-name: job10 too
	wantKeys(t, s, "job1/chk-1", "job1/chk-1-old", "job1/chk-1/_metadata", "job1/chk-1/task-0", "job1/chk-10/_metadata")
	wantKeys(t, s, "job1/chk-1/", "job1/chk-1/_metadata", "job1/chk-1/task-0")
	wantKeys(t, s, "job1/chk-1/_m", "job1/chk-1/_metadata")
	wantKeys(t, s, "job1/chk-1/_metadata", "job1/chk-1/_metadata") // a whole key
	wantKeys(t, s, "job1/chk-1/_metadata/")
	wantKeys(t, s, "job1/chk-3")
	wantKeys(t, s, "j", listKeys[:8]...)
	wantKeys(t, s, "t", "top")
	wantKeys(t, s, "top/")
	wantKeys(t, s, "zzz")
	wantKeys(t, s, "nodir/")
	// Prefixes that no valid key can have are not an error: nothing matches.
	wantKeys(t, s, "../")
	wantKeys(t, s, "/")
	wantKeys(t, s, "job1//")
	wantKeys(t, s, "./job1")
}

func testListEmpty(t *testing.T, s objectstore.Store) {
	for _, prefix := range []string{"", "a", "a/", "a/b"} {
		infos, err := s.List(ctx(t), prefix)
		if err != nil || len(infos) != 0 {
			t.Errorf("List(%q) on an empty store = %v, %v; want nothing, nil", prefix, infos, err)
		}
	}
}

func testDelete(t *testing.T, s objectstore.Store) {
	for _, k := range []string{"d/a", "d/b", "d/sub/c", "e"} {
		put(t, s, k, []byte(k))
	}
	if err := s.Delete(ctx(t)); err != nil {
		t.Fatalf("Delete(): %v", err)
	}
	if err := s.Delete(ctx(t), "d/a", "missing", "d/sub/c", "d/sub/missing", "nodir/missing"); err != nil {
		t.Fatalf("Delete(some, and missing ones): %v", err)
	}
	wantAbsent(t, s, "d/a")
	wantAbsent(t, s, "d/sub/c")
	wantKeys(t, s, "", "d/b", "e")
	wantContent(t, s, "d/b", []byte("d/b"))

	// Deleting again, or deleting nothing that exists, is fine.
	if err := s.Delete(ctx(t), "d/a", "d/a"); err != nil {
		t.Fatalf("Delete(deleted key twice): %v", err)
	}
	// A deleted key (and a key in a directory that emptied) can be written again.
	put(t, s, "d/sub/c", []byte("again"))
	wantContent(t, s, "d/sub/c", []byte("again"))
	if err := s.Delete(ctx(t), "d/b", "d/sub/c", "e"); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, s, "")
	put(t, s, "d/b", []byte("again"))
	wantKeys(t, s, "", "d/b")

	// Many keys at once.
	var keys []string
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("many/%02d/%d", i%7, i))
		put(t, s, keys[i], []byte{byte(i)})
	}
	if err := s.Delete(ctx(t), keys...); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, s, "many/")
}

func testPutIfAbsent(t *testing.T, s objectstore.Store) {
	c := ctx(t)
	if err := s.PutIfAbsent(c, "m", strings.NewReader("first"), 5); err != nil {
		t.Fatalf("PutIfAbsent(new key): %v", err)
	}
	err := s.PutIfAbsent(c, "m", strings.NewReader("second"), 6)
	if !errors.Is(err, objectstore.ErrExists) {
		t.Fatalf("PutIfAbsent(existing key) = %v, want ErrExists", err)
	}
	wantContent(t, s, "m", []byte("first"))

	// Put still overwrites; PutIfAbsent still refuses.
	put(t, s, "m", []byte("third"))
	if err := s.PutIfAbsent(c, "m", strings.NewReader("fourth"), 6); !errors.Is(err, objectstore.ErrExists) {
		t.Fatalf("PutIfAbsent(overwritten key) = %v, want ErrExists", err)
	}
	wantContent(t, s, "m", []byte("third"))

	// After Delete the key is absent again.
	if err := s.Delete(c, "m"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(c, "m", strings.NewReader("fifth"), 5); err != nil {
		t.Fatalf("PutIfAbsent(deleted key): %v", err)
	}
	wantContent(t, s, "m", []byte("fifth"))

	// In a new directory, too.
	if err := s.PutIfAbsent(c, "new/dir/m", strings.NewReader("x"), 1); err != nil {
		t.Fatalf("PutIfAbsent(new/dir/m): %v", err)
	}
	wantKeys(t, s, "", "m", "new/dir/m")
}

func testCopy(t *testing.T, s objectstore.Store) {
	c := ctx(t)
	data := pattern(100<<10, 7)
	put(t, s, "src/a", data)
	if err := s.Copy(c, "src/a", "dst/deep/a"); err != nil {
		t.Fatalf("Copy(src/a, dst/deep/a): %v", err)
	}
	wantContent(t, s, "dst/deep/a", data)
	info, err := s.Stat(c, "dst/deep/a")
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Stat(copy) = %+v, %v", info, err)
	}
	// The copy is an object of its own: replacing or deleting the source
	// leaves it alone.
	put(t, s, "src/a", []byte("changed"))
	wantContent(t, s, "dst/deep/a", data)
	if err := s.Delete(c, "src/a"); err != nil {
		t.Fatal(err)
	}
	wantContent(t, s, "dst/deep/a", data)

	// Copy replaces an existing destination.
	put(t, s, "other", []byte("other"))
	if err := s.Copy(c, "other", "dst/deep/a"); err != nil {
		t.Fatalf("Copy(onto an existing key): %v", err)
	}
	wantContent(t, s, "dst/deep/a", []byte("other"))

	// A missing source is ErrNotFound and leaves the destination alone.
	if err := s.Copy(c, "src/a", "dst/deep/a"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Copy(missing source) = %v, want ErrNotFound", err)
	}
	wantContent(t, s, "dst/deep/a", []byte("other"))
	if err := s.Copy(c, "missing", "dst/new"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Copy(missing source, new key) = %v, want ErrNotFound", err)
	}
	wantAbsent(t, s, "dst/new")

	// Copying an object onto itself keeps it; onto itself when missing is
	// ErrNotFound.
	if err := s.Copy(c, "other", "other"); err != nil {
		t.Fatalf("Copy(other, other): %v", err)
	}
	wantContent(t, s, "other", []byte("other"))
	if err := s.Copy(c, "missing", "missing"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Copy(missing, missing) = %v, want ErrNotFound", err)
	}
	// Empty objects copy too.
	put(t, s, "empty", nil)
	if err := s.Copy(c, "empty", "empty2"); err != nil {
		t.Fatalf("Copy(empty): %v", err)
	}
	wantContent(t, s, "empty2", nil)
	wantKeys(t, s, "", "dst/deep/a", "empty", "empty2", "other")
}

func testPutIfAbsentConcurrent(t *testing.T, s objectstore.Store) {
	const n = 8
	for round := range 3 {
		key := fmt.Sprintf("race/%d/_metadata", round)
		var (
			wg     sync.WaitGroup
			wins   atomic.Int32
			winner atomic.Int32
			start  = make(chan struct{})
			errs   = make([]error, n)
		)
		for i := range n {
			wg.Go(func() {
				<-start
				data := []byte(fmt.Sprintf("writer %d", i))
				err := s.PutIfAbsent(ctx(t), key, bytes.NewReader(data), int64(len(data)))
				if err == nil {
					wins.Add(1)
					winner.Store(int32(i))
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d of %d concurrent PutIfAbsent(%q) succeeded, want exactly 1; errors: %v", wins.Load(), n, key, errs)
		}
		for i, err := range errs {
			if err != nil && !errors.Is(err, objectstore.ErrExists) {
				t.Errorf("writer %d: PutIfAbsent = %v, want nil or ErrExists", i, err)
			}
		}
		wantContent(t, s, key, []byte(fmt.Sprintf("writer %d", winner.Load())))
	}
	wantKeys(t, s, "race/", "race/0/_metadata", "race/1/_metadata", "race/2/_metadata")
}

// onlyReader hides every method of r but Read, as a network stream would.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func testSizeMismatch(t *testing.T, s objectstore.Store) {
	put(t, s, "existing", []byte("keep me"))
	type putFunc func(context.Context, string, io.Reader, int64) error
	for _, m := range []struct {
		name string
		put  putFunc
	}{{"Put", s.Put}, {"PutIfAbsent", s.PutIfAbsent}} {
		for _, tc := range []struct {
			name string
			data []byte
			size int64
		}{
			{"short", []byte("abc"), 4},
			{"long", []byte("abcde"), 4},
			{"nonempty for 0", []byte("a"), 0},
			{"empty for 1", nil, 1},
			{"negative size", []byte("a"), -1},
			{"short 3MiB", pattern(3<<20, 2), 3<<20 + 1},
			{"long 3MiB", pattern(3<<20, 3), 3<<20 - 1},
		} {
			for _, wrap := range []struct {
				name string
				fn   func([]byte) io.Reader
			}{
				{"bytes.Reader", func(b []byte) io.Reader { return bytes.NewReader(b) }},
				{"stream", func(b []byte) io.Reader { return onlyReader{bytes.NewReader(b)} }},
			} {
				key := "mismatch/" + strings.ReplaceAll(tc.name, " ", "-")
				err := m.put(ctx(t), key, wrap.fn(tc.data), tc.size)
				if !errors.Is(err, objectstore.ErrSizeMismatch) {
					t.Errorf("%s(%d bytes from %s, size %d) = %v, want ErrSizeMismatch", m.name, len(tc.data), wrap.name, tc.size, err)
				}
				wantAbsent(t, s, key)
			}
		}
		// A failed overwrite leaves the old object.
		if err := s.Put(ctx(t), "existing", strings.NewReader("new"), 10); !errors.Is(err, objectstore.ErrSizeMismatch) {
			t.Errorf("Put(existing, short) = %v, want ErrSizeMismatch", err)
		}
		wantContent(t, s, "existing", []byte("keep me"))
	}
	wantKeys(t, s, "", "existing")
}

func testInvalidKeys(t *testing.T, s objectstore.Store) {
	c := ctx(t)
	for _, key := range []string{"", "/", "/abs", "a/", "a//b", ".", "..", "./a", "a/.", "a/../b", "../escape", "a/..", "nul\x00", `back\slash`} {
		if err := s.Put(c, key, strings.NewReader("x"), 1); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := s.PutIfAbsent(c, key, strings.NewReader("x"), 1); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("PutIfAbsent(%q) = %v, want ErrInvalidKey", key, err)
		}
		if rc, err := s.Get(c, key, 0, -1); !errors.Is(err, objectstore.ErrInvalidKey) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Get(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(c, key); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := s.Copy(c, key, "valid"); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("Copy(%q, valid) = %v, want ErrInvalidKey", key, err)
		}
		if err := s.Copy(c, "valid", key); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("Copy(valid, %q) = %v, want ErrInvalidKey", key, err)
		}
		if err := s.Delete(c, "valid", key); !errors.Is(err, objectstore.ErrInvalidKey) {
			t.Errorf("Delete(valid, %q) = %v, want ErrInvalidKey", key, err)
		}
	}
	wantKeys(t, s, "")
}

var errInjected = errors.New("storetest: injected read failure")

// failingReader yields n bytes of data and then fails.
type failingReader struct {
	data []byte
	n    int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errInjected
	}
	k := copy(p[:min(len(p), f.n)], f.data)
	f.data, f.n = f.data[k:], f.n-k
	return k, nil
}

func testFailingReader(t *testing.T, s objectstore.Store) {
	put(t, s, "existing", []byte("keep me"))
	for _, size := range []int{100, 3 << 20} {
		data := pattern(size, 4)
		for _, key := range []string{"fail/new", "existing"} {
			for _, ifAbsent := range []bool{false, true} {
				if ifAbsent && key == "existing" {
					continue
				}
				r := &failingReader{data: data, n: size / 2}
				var err error
				if ifAbsent {
					err = s.PutIfAbsent(ctx(t), key, r, int64(size))
				} else {
					err = s.Put(ctx(t), key, r, int64(size))
				}
				if !errors.Is(err, errInjected) {
					t.Errorf("Put(%q, reader failing after %d of %d bytes, ifAbsent=%v) = %v, want the reader's error", key, size/2, size, ifAbsent, err)
				}
			}
		}
		wantAbsent(t, s, "fail/new")
		wantContent(t, s, "existing", []byte("keep me"))
	}
	// Failing right at the end: the object must not appear either.
	data := pattern(100, 5)
	err := s.Put(ctx(t), "fail/end", &failingReader{data: data, n: 100}, 100)
	if err == nil {
		// Every byte was delivered before the failure; storing them is
		// acceptable, and then the content must be complete.
		wantContent(t, s, "fail/end", data)
	} else {
		if !errors.Is(err, errInjected) {
			t.Errorf("Put(reader failing after all bytes) = %v, want nil or the reader's error", err)
		}
		wantAbsent(t, s, "fail/end")
	}
	wantKeys(t, s, "fail/new")
}

func testConcurrent(t *testing.T, s objectstore.Store) {
	const workers, rounds = 8, 5
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			key := fmt.Sprintf("conc/w%d/obj", w)
			for r := range rounds {
				data := pattern(1000+w*100+r, uint64(w*rounds+r))
				if err := s.Put(ctx(t), key, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Errorf("Put(%q): %v", key, err)
					return
				}
				got, err := read(ctx(t), s, key, 0, -1)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get(%q) after Put = %s, %v; want %s", key, brief(got), err, brief(data))
					return
				}
				if part, err := read(ctx(t), s, key, 100, 50); err != nil || !bytes.Equal(part, data[100:150]) {
					t.Errorf("Get(%q, 100, 50) = %s, %v", key, brief(part), err)
					return
				}
				if info, err := s.Stat(ctx(t), key); err != nil || info.Size != int64(len(data)) {
					t.Errorf("Stat(%q) = %+v, %v; want size %d", key, info, err, len(data))
					return
				}
				if _, err := s.List(ctx(t), "conc/"); err != nil {
					t.Errorf("List: %v", err)
					return
				}
			}
			if err := s.Delete(ctx(t), key); err != nil {
				t.Errorf("Delete(%q): %v", key, err)
			}
		})
	}
	wg.Wait()
	wantKeys(t, s, "conc/")
}

func testLocation(t *testing.T, s objectstore.Store) {
	loc := s.Location()
	if !strings.Contains(loc, "://") {
		t.Errorf("Location() = %q, want scheme://...", loc)
	}
}

func testLarge(t *testing.T, s objectstore.Store) {
	if testing.Short() {
		t.Skip("-short: skipping the large object")
	}
	data := pattern(LargeSize, 6)
	// A plain stream: the store cannot seek or read at offsets.
	if err := s.Put(ctx(t), "large", onlyReader{bytes.NewReader(data)}, int64(len(data))); err != nil {
		t.Fatalf("Put(large): %v", err)
	}
	wantStream(t, s, "large", 0, -1, data)
	info, err := s.Stat(ctx(t), "large")
	if err != nil || info.Size != LargeSize {
		t.Fatalf("Stat(large) = %+v, %v; want size %d", info, err, LargeSize)
	}
	const mib = 1 << 20
	for _, r := range [][2]int64{
		{16*mib - 10, 20},       // across the first part boundary
		{32*mib - 1, 2},         // across the second
		{LargeSize - 100, 1000}, // the end, cut
		{5 * mib, 3 * mib},      // a large range inside one part
		{LargeSize - 3*mib, -1}, // the tail
	} {
		end := min(r[0]+r[1], LargeSize)
		if r[1] < 0 {
			end = LargeSize
		}
		wantStream(t, s, "large", r[0], r[1], data[r[0]:end])
	}
	// PutIfAbsent of a large object goes through the multipart path too.
	if err := s.PutIfAbsent(ctx(t), "large", bytes.NewReader(data), int64(len(data))); !errors.Is(err, objectstore.ErrExists) {
		t.Fatalf("PutIfAbsent(large, existing) = %v, want ErrExists", err)
	}
	if err := s.PutIfAbsent(ctx(t), "large2", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("PutIfAbsent(large2): %v", err)
	}
	if info, err := s.Stat(ctx(t), "large2"); err != nil || info.Size != LargeSize {
		t.Fatalf("Stat(large2) = %+v, %v", info, err)
	}
	// A copy of an object uploaded in parts.
	if err := s.Copy(ctx(t), "large", "copies/large"); err != nil {
		t.Fatalf("Copy(large): %v", err)
	}
	wantStream(t, s, "copies/large", 0, -1, data)

	// Size mismatches that show only in the last part (an S3 store uploads
	// 20 MiB in two parts).
	const mid = 20 << 20
	for _, tc := range []struct {
		name string
		data []byte
		size int64
	}{
		{"short", data[:mid-1], mid},
		{"long", data[:mid+1], mid},
	} {
		err := s.Put(ctx(t), "large-"+tc.name, onlyReader{bytes.NewReader(tc.data)}, tc.size)
		if !errors.Is(err, objectstore.ErrSizeMismatch) {
			t.Errorf("Put(%d bytes, size %d) = %v, want ErrSizeMismatch", len(tc.data), tc.size, err)
		}
		wantAbsent(t, s, "large-"+tc.name)
	}
}
