package objectstore_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/objectstore/storetest"
)

func TestMem(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) objectstore.Store { return objectstore.NewMem() })
}

func TestFS(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) objectstore.Store { return newFS(t, t.TempDir()) })
}

func newFS(t *testing.T, dir string) *objectstore.FS {
	t.Helper()
	s, err := objectstore.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestS3 runs the suite on a real MinIO server: each store in a bucket of its
// own, then each under a prefix of one shared bucket.
func TestS3(t *testing.T) {
	t.Parallel()
	m := testutil.RunMinIO(t)
	var n atomic.Int64
	t.Run("Bucket", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) objectstore.Store {
			return m.Store(t, fmt.Sprintf("bucket-%d", n.Add(1)), "")
		})
	})
	t.Run("Prefix", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) objectstore.Store {
			// Prefixes that are prefixes of each other as strings ("p/1",
			// "p/10"): each store must still see only its own objects.
			return m.Store(t, "shared", fmt.Sprintf("p/%d", n.Add(1)))
		})
	})
	t.Run("PrefixLayout", func(t *testing.T) { testPrefixLayout(t, m) })
	t.Run("OpenRoundTrip", func(t *testing.T) { testS3OpenRoundTrip(t, m) })
	t.Run("NoSecrets", func(t *testing.T) { testNoSecrets(t, m) })
	t.Run("Checksums", func(t *testing.T) { testChecksums(t, m) })
}

// testChecksums looks at stored objects with a plain minio-go client: uploads
// carry CRC32C checksums, and a large object is uploaded in parts.
func testChecksums(t *testing.T, m *testutil.MinIO) {
	s := m.Store(t, "checksums", "")
	client, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		size  int
		parts int // 0: a single PUT
	}{
		{1000, 0},
		{objectstore.S3PartSize, 0},
		{objectstore.S3PartSize + 1, 2},
	} {
		data := bytes.Repeat([]byte{'x'}, tc.size)
		key := fmt.Sprintf("obj-%d", tc.size)
		if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		info, err := client.StatObject(t.Context(), "checksums", key, minio.StatObjectOptions{Checksum: true})
		if err != nil {
			t.Fatal(err)
		}
		wantSuffix := ""
		if tc.parts > 0 {
			wantSuffix = fmt.Sprintf("-%d", tc.parts)
		}
		if !strings.HasSuffix(info.ETag, wantSuffix) || (wantSuffix == "" && strings.Contains(info.ETag, "-")) {
			t.Errorf("%s: ETag %q, want it to end in %q (parts)", key, info.ETag, wantSuffix)
		}
		if tc.parts == 0 {
			sum := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
			want := base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, sum))
			if info.ChecksumCRC32C != want {
				t.Errorf("%s: CRC32C %q, want %q", key, info.ChecksumCRC32C, want)
			}
		} else if !strings.HasSuffix(info.ChecksumCRC32C, wantSuffix) {
			t.Errorf("%s: CRC32C %q, want a checksum of %d part checksums", key, info.ChecksumCRC32C, tc.parts)
		}
	}
}

// testPrefixLayout checks where a prefixed store puts its objects, and that
// stores whose prefixes share leading characters stay apart.
func testPrefixLayout(t *testing.T, m *testutil.MinIO) {
	ctx := t.Context()
	root := m.Store(t, "layout", "")
	a := m.Store(t, "layout", "a")
	ab := m.Store(t, "layout", "ab")
	nested := m.Store(t, "layout", "a/b")
	for _, s := range []objectstore.Store{a, ab, nested} {
		if err := s.Put(ctx, "x", strings.NewReader(s.Location()), int64(len(s.Location()))); err != nil {
			t.Fatal(err)
		}
	}
	assertKeys(t, root, "", "a/b/x", "a/x", "ab/x")
	assertKeys(t, a, "", "b/x", "x") // a/b's object is under a/, as with any key "b/x"
	assertKeys(t, ab, "", "x")
	assertKeys(t, nested, "", "x")
	assertKeys(t, a, "x", "x")
	if got, _ := read(t, a, "x"); got != a.Location() {
		t.Errorf("a: Get(x) = %q, want %q", got, a.Location())
	}
	if _, err := ab.Stat(ctx, "b/x"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("ab: Stat(b/x) = %v, want ErrNotFound", err)
	}
	if err := a.Delete(ctx, "x", "b/x"); err != nil {
		t.Fatal(err)
	}
	assertKeys(t, root, "", "ab/x")
}

func testS3OpenRoundTrip(t *testing.T, m *testutil.MinIO) {
	s := m.Store(t, "roundtrip", "some/prefix")
	want := "s3://roundtrip/some/prefix?endpoint=" + m.Endpoint + "&path_style=true&region=us-east-1&secure=false"
	if s.Location() != want {
		t.Errorf("Location() = %q, want %q", s.Location(), want)
	}
	s2, err := objectstore.Open(t.Context(), s.Location(), m.Options())
	if err != nil {
		t.Fatal(err)
	}
	if s2.Location() != s.Location() {
		t.Errorf("Open(Location()).Location() = %q, want %q", s2.Location(), s.Location())
	}
	if err := s.Put(t.Context(), "k", strings.NewReader("v"), 1); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, s2, "k"); err != nil || got != "v" {
		t.Errorf("Get through the reopened store = %q, %v", got, err)
	}
}

// TestS3EnvCredentials opens stores with no credentials in Options: they come
// from the environment, AWS's variables first. (Not parallel: it sets
// environment variables.)
func TestS3EnvCredentials(t *testing.T) {
	m := testutil.RunMinIO(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("MINIO_ROOT_USER", m.AccessKey)
	t.Setenv("MINIO_ROOT_PASSWORD", m.SecretKey)
	if _, err := objectstore.Open(t.Context(), m.Location("env", ""), objectstore.Options{}); err != nil {
		t.Fatalf("with MINIO_ROOT_USER/PASSWORD: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
	t.Setenv("MINIO_ROOT_PASSWORD", "wrong-password")
	if _, err := objectstore.Open(t.Context(), m.Location("env", ""), objectstore.Options{}); err != nil {
		t.Fatalf("with AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY: %v", err)
	}
	// Explicit credentials win over the environment.
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-password")
	if _, err := objectstore.Open(t.Context(), m.Location("env", ""), m.Options()); err != nil {
		t.Fatalf("with Options over a wrong environment: %v", err)
	}
}

// testNoSecrets checks that secrets appear neither in locations nor in
// errors nor in a printed Options.
func testNoSecrets(t *testing.T, m *testutil.MinIO) {
	opts := objectstore.Options{AccessKey: m.AccessKey, SecretKey: "not-the-" + m.SecretKey, SessionToken: "session-token-value"}
	_, err := objectstore.Open(t.Context(), m.Location("secrets", "p"), opts)
	if err == nil {
		t.Fatal("Open with a wrong secret key succeeded")
	}
	for _, text := range []string{
		err.Error(),
		fmt.Sprintf("%v %+v %#v %s", opts, opts, opts, opts),
		m.Store(t, "secrets", "p").Location(),
	} {
		if strings.Contains(text, opts.SecretKey) || strings.Contains(text, m.SecretKey) || strings.Contains(text, opts.SessionToken) {
			t.Errorf("secret in %q", text)
		}
	}
}

// TestS3Outage kills MinIO under a store: calls fail (not with ErrNotFound,
// and not later than their context's deadline) and work again once MinIO is
// back, with the data written before the outage intact.
func TestS3Outage(t *testing.T) {
	t.Parallel()
	m := testutil.RunMinIO(t)
	s := m.Store(t, "outage", "pre")
	if err := s.Put(t.Context(), "before", strings.NewReader("durable"), 7); err != nil {
		t.Fatal(err)
	}

	// Kill MinIO in the middle of a multipart upload: after the first part
	// is stored (minio-go reads the second part only once the first is
	// uploaded), while the second is being read.
	pr, pw := io.Pipe()
	putErr := make(chan error, 1)
	const size = objectstore.S3PartSize + 8<<20
	putCtx, cancelPut := context.WithCancel(t.Context())
	defer cancelPut()
	go func() {
		putErr <- s.Put(putCtx, "during", pr, size)
		pr.CloseWithError(errors.New("put returned"))
	}()
	chunk := make([]byte, 1<<20)
	for range objectstore.S3PartSize>>20 + 1 {
		if _, err := pw.Write(chunk); err != nil {
			t.Fatalf("Put stopped reading before MinIO was killed: %v", err)
		}
	}
	m.Kill()
	// The upload of the second part fails and is retried; give up after a
	// while, as a caller with a deadline would.
	const giveUp = 2 * time.Second
	killed := time.Now()
	time.AfterFunc(giveUp, cancelPut)
	go func() {
		for range size>>20 - objectstore.S3PartSize>>20 - 1 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	if err := <-putErr; err == nil {
		t.Fatal("Put succeeded while MinIO was killed")
	} else {
		t.Logf("Put during the kill: %v", err)
	}
	if took := time.Since(killed); took > giveUp+time.Second {
		t.Errorf("Put returned %v after MinIO was killed, beyond the %v its context allowed", took, giveUp)
	}

	// While MinIO is down, every call fails within its deadline.
	const deadline = 1500 * time.Millisecond
	calls := map[string]func(ctx context.Context) error{
		"Put": func(ctx context.Context) error { return s.Put(ctx, "k", strings.NewReader("v"), 1) },
		"PutIfAbsent": func(ctx context.Context) error {
			return s.PutIfAbsent(ctx, "k", strings.NewReader("v"), 1)
		},
		"Get": func(ctx context.Context) error {
			rc, err := s.Get(ctx, "before", 0, -1)
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Stat":   func(ctx context.Context) error { _, err := s.Stat(ctx, "before"); return err },
		"List":   func(ctx context.Context) error { _, err := s.List(ctx, ""); return err },
		"Delete": func(ctx context.Context) error { return s.Delete(ctx, "before") },
		"Open": func(ctx context.Context) error {
			_, err := objectstore.Open(ctx, m.Location("outage", ""), m.Options())
			return err
		},
	}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			start := time.Now()
			err := call(ctx)
			took := time.Since(start)
			switch {
			case err == nil:
				t.Errorf("%s succeeded while MinIO was down", name)
			case errors.Is(err, objectstore.ErrNotFound) || errors.Is(err, objectstore.ErrExists):
				t.Errorf("%s while MinIO was down = %v; an outage must not look like an answer", name, err)
			}
			if took > deadline+time.Second {
				t.Errorf("%s took %v, beyond its %v deadline", name, took, deadline)
			}
		})
	}
	wg.Wait()

	m.Restart()
	ctx := t.Context()
	if got, err := read(t, s, "before"); err != nil || got != "durable" {
		t.Fatalf("after restart: Get(before) = %q, %v", got, err)
	}
	if _, err := s.Stat(ctx, "during"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("after restart: Stat(during) = %v, want ErrNotFound (the interrupted upload must not appear)", err)
	}
	if err := s.PutIfAbsent(ctx, "after", strings.NewReader("ok"), 2); err != nil {
		t.Fatalf("after restart: PutIfAbsent: %v", err)
	}
	assertKeys(t, s, "", "after", "before")
}

func TestFSLayout(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s := newFS(t, dir)
	if err := s.Put(ctx, "job/chk-1/_metadata", strings.NewReader("meta"), 4); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIfAbsent(ctx, "job/chk-1/task-0", strings.NewReader("task"), 4); err != nil {
		t.Fatal(err)
	}
	// Key "a/b" is file dir/a/b.
	if data, err := os.ReadFile(filepath.Join(dir, "job", "chk-1", "_metadata")); err != nil || string(data) != "meta" {
		t.Fatalf("file for job/chk-1/_metadata = %q, %v", data, err)
	}
	// No temp files are left behind, and none shows in List.
	if tmp, err := os.ReadDir(filepath.Join(dir, ".flotilla-tmp")); err != nil || len(tmp) != 0 {
		t.Errorf("temp dir after writes: %v, %v; want it empty", tmp, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".flotilla-tmp", "put-leftover"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	assertKeys(t, s, "", "job/chk-1/_metadata", "job/chk-1/task-0")
	if err := s.Put(ctx, ".flotilla-tmp/x", strings.NewReader("x"), 1); !errors.Is(err, objectstore.ErrInvalidKey) {
		t.Errorf("Put into the temp dir = %v, want ErrInvalidKey", err)
	}

	// Delete removes directories it empties, not the root.
	if err := s.Delete(ctx, "job/chk-1/_metadata"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "job", "chk-1")); err != nil {
		t.Errorf("job/chk-1 removed while it still holds task-0: %v", err)
	}
	if err := s.Delete(ctx, "job/chk-1/task-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "job")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("job/ still exists after its last object was deleted: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("root removed: %v", err)
	}

	// A key cannot be both an object and a directory of objects.
	if err := s.Put(ctx, "a/b", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	for name, put := range map[string]func(context.Context, string, io.Reader, int64) error{"Put": s.Put, "PutIfAbsent": s.PutIfAbsent} {
		if err := put(ctx, "a", strings.NewReader("x"), 1); err == nil || errors.Is(err, objectstore.ErrExists) {
			t.Errorf("%s(a) with a/b present = %v, want a conflict error", name, err)
		}
		if err := put(ctx, "a/b/c", strings.NewReader("x"), 1); err == nil || errors.Is(err, objectstore.ErrExists) {
			t.Errorf("%s(a/b/c) with a/b present = %v, want a conflict error", name, err)
		}
	}
	assertKeys(t, s, "", "a/b")

	// A second FS on the same directory sees the same objects, and sweeps
	// temp files old enough to be left by a dead process.
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, ".flotilla-tmp", "put-leftover"), old, old); err != nil {
		t.Fatal(err)
	}
	s2 := newFS(t, dir)
	assertKeys(t, s2, "", "a/b")
	if _, err := os.Stat(filepath.Join(dir, ".flotilla-tmp", "put-leftover")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temp file not swept: %v", err)
	}
}

// TestFSDeleteRace writes and deletes keys in the same directories from
// several goroutines: Delete's removal of empty directories must never make a
// concurrent Put fail.
func TestFSDeleteRace(t *testing.T) {
	t.Parallel()
	s := newFS(t, t.TempDir())
	ctx := t.Context()
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := range 50 {
				key := fmt.Sprintf("d/%d/w%d", i%3, w)
				if err := s.Put(ctx, key, strings.NewReader("x"), 1); err != nil {
					errs <- fmt.Errorf("Put(%s): %w", key, err)
					return
				}
				if err := s.Delete(ctx, key); err != nil {
					errs <- fmt.Errorf("Delete(%s): %w", key, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	assertKeys(t, s, "")
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	for _, tc := range []struct {
		location string
		want     string // Location() of the store; "" means the input
	}{
		{"mem://", ""},
		{"file://" + filepath.ToSlash(dir), ""},
		{"file://" + filepath.ToSlash(dir) + "/new/sub/", "file://" + filepath.ToSlash(dir) + "/new/sub"},
		{"file://" + filepath.ToSlash(dir) + "/a/../b", "file://" + filepath.ToSlash(dir) + "/b"},
		{"file://" + filepath.ToSlash(dir) + "/with%20space", ""},
	} {
		s, err := objectstore.Open(ctx, tc.location, objectstore.Options{})
		if err != nil {
			t.Errorf("Open(%q): %v", tc.location, err)
			continue
		}
		want := tc.want
		if want == "" {
			want = tc.location
		}
		if s.Location() != want {
			t.Errorf("Open(%q).Location() = %q, want %q", tc.location, s.Location(), want)
		}
		if err := s.Put(ctx, "k", strings.NewReader("v"), 1); err != nil {
			t.Errorf("Open(%q): Put: %v", tc.location, err)
		}
		if fs, ok := s.(*objectstore.FS); ok {
			fs.Close()
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "with space", "k")); err != nil {
		t.Errorf("file location with an escaped space: %v", err)
	}

	for _, location := range []string{
		"",
		"nope",
		"/abs/dir",
		"relative/dir",
		"ftp://host/x",
		"S4://bucket",
		"mem://x",
		"mem://?a=b",
		"mem:",
		"file://relative/dir",
		"file:relative",
		"file:///dir?x=1",
		"file://",
		"file:///dir#frag",
		"s3://",
		"s3:///prefix",
		"s3://Bad_Bucket",
		"s3://b",            // bucket names are at least 3 characters
		"s3://bucket/../up", // prefixes obey the key rules
		"s3://bucket/a//b",
		"s3://bucket?endpoint=",
		"s3://bucket?endpoint=http://host:9000",
		"s3://bucket?endpoint=host/path",
		"s3://bucket?secure=maybe",
		"s3://bucket?path_style=yes",
		"s3://bucket?secure=true&secure=false",
		"s3://bucket?unknown=1",
		"s3://bucket?secret_key=hunter2",
		"s3://AKID:hunter2@bucket",
		"s3://bucket/%zz",
		"s3://bucket?a=%zz",
		"::",
	} {
		s, err := objectstore.Open(ctx, location, objectstore.Options{})
		if !errors.Is(err, objectstore.ErrInvalidLocation) {
			t.Errorf("Open(%q) = %v, %v; want ErrInvalidLocation", location, s, err)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): error %q shows a secret", location, err)
		}
		t.Logf("Open(%q): %v", location, err)
	}
}

func assertKeys(t *testing.T, s objectstore.Store, prefix string, want ...string) {
	t.Helper()
	infos, err := s.List(t.Context(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	var got []string
	for _, info := range infos {
		got = append(got, info.Key)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("List(%q) = %q, want %q", prefix, got, want)
	}
}

func read(t *testing.T, s objectstore.Store, key string) (string, error) {
	t.Helper()
	rc, err := s.Get(t.Context(), key, 0, -1)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(rc)
	return b.String(), err
}
