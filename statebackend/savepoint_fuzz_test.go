package statebackend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// FuzzSavepointReader feeds arbitrary bytes to the canonical savepoint
// reader as the object of a savepoint: reading its footer and then every
// group it claims must never panic, and every failure must be a typed
// error (corrupt, missing) naming the object. The seeds are a real
// savepoint, truncations of it and bit flips in its blocks, footer and
// trailer.
func FuzzSavepointReader(f *testing.F) {
	valid := validSavepoint(f)
	f.Add(valid)
	for _, n := range []int{0, 1, 8, len(valid) / 2, len(valid) - 1} {
		f.Add(valid[:n])
	}
	for _, at := range []int{0, len(valid) / 3, len(valid) - 40, len(valid) - 9, len(valid) - 1} {
		flipped := bytes.Clone(valid)
		flipped[at] ^= 0x10
		f.Add(flipped)
	}
	const key = "savepoints/job/sp-1/task-0-1.savepoint"
	f.Fuzz(func(t *testing.T, data []byte) {
		store := objectstore.NewMem()
		ctx := context.Background()
		if err := store.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		footer, err := readSavepointFooter(ctx, store, key)
		if err != nil {
			checkTyped(t, key, err)
			return
		}
		if footer.rng.Validate(keygroup.MaxMaxParallelism) != nil || len(footer.blocks) != footer.rng.Len() {
			t.Fatalf("footer accepted with range %v and %d blocks", footer.rng, len(footer.blocks))
		}
		err = readSavepointGroups(ctx, store, key, footer, footer.rng, func(k, v []byte) error { return nil })
		if err != nil {
			checkTyped(t, key, err)
		}
	})
}

// checkTyped requires err to be one of the reader's typed errors and to
// name the object.
func checkTyped(t *testing.T, key string, err error) {
	typed := false
	for _, sentinel := range []error{ErrCorrupt, ErrUnknownFormat, ErrMaxParallelismMismatch, objectstore.ErrNotFound} {
		typed = typed || errors.Is(err, sentinel)
	}
	if !typed {
		t.Fatalf("untyped error: %v", err)
	}
	if !strings.Contains(err.Error(), key) {
		t.Fatalf("error does not name the object %s: %v", key, err)
	}
}

// validSavepoint returns the bytes of a small canonical savepoint.
func validSavepoint(tb testing.TB) []byte {
	b := openTest(tb, 8, keygroup.Range{Start: 0, End: 7})
	bt := b.NewBatch()
	for i := 0; i < 40; i++ {
		k := benchKey(i)
		if err := bt.Put("profile", k, []byte("value")); err != nil {
			tb.Fatal(err)
		}
		if err := bt.Add("clicks", k, int64(i)); err != nil {
			tb.Fatal(err)
		}
		if err := bt.SetApplied(keygroup.Of(k, 8), uint64(i+1)); err != nil {
			tb.Fatal(err)
		}
	}
	if err := bt.Commit(); err != nil {
		tb.Fatal(err)
	}
	store := objectstore.NewMem()
	ctx := context.Background()
	if _, err := b.WriteSavepoint(ctx, store, "sp"); err != nil {
		tb.Fatal(err)
	}
	rc, err := store.Get(ctx, "sp", 0, -1)
	if err != nil {
		tb.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}
