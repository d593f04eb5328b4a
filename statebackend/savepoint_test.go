package statebackend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

func TestEntrySizeMatchesEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		name := []byte(strings.Repeat("n", 1+rng.IntN(MaxStateNameLen)))
		user := make([]byte, rng.IntN(300))
		value := make([]byte, rng.IntN(70000))
		kind := byte(entryKindValue)
		if rng.IntN(2) == 0 {
			kind = entryKindCounter
			v := []int64{0, -1, 1, math.MaxInt64, math.MinInt64, rng.Int64() - rng.Int64()}[rng.IntN(6)]
			value = encodeInt64(v)
		}
		nameFollows := rng.IntN(2) == 0
		if got, want := len(appendEntry(nil, kind, nameFollows, name, user, value)), entrySize(kind, nameFollows, name, user, value); int64(got) != want {
			t.Fatalf("kind %d name %v key %d value %d: encoded %d bytes, entrySize %d", kind, nameFollows, len(user), len(value), got, want)
		}
	}
}

// failingStore fails PutIfAbsent after reading failAfter bytes, or at once
// (without reading) if failAfter < 0.
type failingStore struct {
	objectstore.Store
	failAfter int64
}

var errInjected = errors.New("injected failure")

func (s *failingStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if s.failAfter >= 0 {
		if _, err := io.CopyN(io.Discard, r, s.failAfter); err != nil {
			return err
		}
	}
	return errInjected
}

func TestSavepointWriteFailures(t *testing.T) {
	const m = 128
	mem := objectstore.NewMem()
	b := openTest(t, m, keygroup.Range{Start: 0, End: m - 1})
	// Large enough for many chunks and units.
	bt := b.NewBatch()
	for i := range 20000 {
		k := fmt.Appendf(nil, "k%d", i)
		if err := bt.Put("v", k, []byte(strings.Repeat("x", 200+i%100))); err != nil {
			t.Fatal(err)
		}
		if err := bt.Add("c", k, int64(i)-5000); err != nil {
			t.Fatal(err)
		}
	}
	if err := bt.Commit(); err != nil {
		t.Fatal(err)
	}
	bt.Close()
	for _, after := range []int64{-1, 0, 1000, 3 << 20} {
		if _, err := b.WriteSavepoint(ctx, &failingStore{Store: mem, failAfter: after}, "sp/fail"); !errors.Is(err, errInjected) {
			t.Errorf("store failing after %d bytes: %v", after, err)
		}
	}
	h, err := b.WriteSavepoint(ctx, mem, "sp/ok")
	if err != nil {
		t.Fatal(err)
	}
	if h.Size < 4<<20 {
		t.Fatalf("savepoint of %d bytes: too small for the test", h.Size)
	}
	if _, err := b.WriteSavepoint(ctx, mem, "sp/ok"); !errors.Is(err, objectstore.ErrExists) {
		t.Errorf("second savepoint at the same key: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.WriteSavepoint(cctx, mem, "sp/canceled"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if _, err := mem.Stat(ctx, "sp/canceled"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("canceled savepoint left an object: %v", err)
	}
	checkState(t, restoreTest(t, mem, m, keygroup.ForTask(3, 5, m), h), dump(t, b).restrict(keygroup.ForTask(3, 5, m), m))
	// Nothing is left in the backend's scratch directories.
	for _, sub := range []string{tmpDirName, checkpointsDirName} {
		if entries, err := readDirNames(filepath.Join(b.dir, sub)); err != nil || len(entries) != 0 {
			t.Errorf("%s: %v", sub, entries)
		}
	}
}
