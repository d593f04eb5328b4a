package statebackend

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"

	"github.com/flotilla-io/flotilla/objectstore"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// storeErr wraps an error of the store about object key: a missing object
// becomes a *MissingError naming it.
func storeErr(op, key string, err error) error {
	if errors.Is(err, objectstore.ErrNotFound) {
		return &MissingError{Object: key, Err: err}
	}
	return fmt.Errorf("statebackend: %s %q: %w", op, key, err)
}

// uploadFile writes the local file path, or its first limit bytes if limit
// >= 0, as object key and returns its size and CRC32C.
func uploadFile(ctx context.Context, store objectstore.Store, key, path string, limit int64) (int64, uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("statebackend: upload: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("statebackend: upload: %w", err)
	}
	size := fi.Size()
	if limit >= 0 {
		if limit > size {
			return 0, 0, fmt.Errorf("statebackend: upload: %s has %d bytes, want %d", path, size, limit)
		}
		size = limit
	}
	h := crc32.New(castagnoli)
	if err := store.Put(ctx, key, io.TeeReader(io.LimitReader(f, size), h), size); err != nil {
		return 0, 0, storeErr("put", key, err)
	}
	return size, h.Sum32(), nil
}

// downloadFile reads object key into a new local file path and verifies its
// size and CRC32C.
func downloadFile(ctx context.Context, store objectstore.Store, key, path string, size int64, crc uint32) error {
	rc, err := store.Get(ctx, key, 0, -1)
	if err != nil {
		return storeErr("get", key, err)
	}
	defer rc.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("statebackend: download: %w", err)
	}
	h := crc32.New(castagnoli)
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rc, size+1))
	if cerr := f.Close(); err == nil && cerr != nil {
		return fmt.Errorf("statebackend: download: %w", cerr)
	}
	if err != nil {
		return storeErr("get", key, err)
	}
	if n != size {
		return corruptf(key, "%s bytes, manifest says %d", countString(n, size), size)
	}
	if got := h.Sum32(); got != crc {
		return corruptf(key, "crc32c %08x, manifest says %08x", got, crc)
	}
	return nil
}

func countString(n, want int64) string {
	if n > want {
		return fmt.Sprintf("more than %d", want)
	}
	return fmt.Sprint(n)
}

// runParallel runs jobs with at most n at a time. The first error cancels
// the context the others see and is returned once all have stopped.
func runParallel(ctx context.Context, n int, jobs []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, max(n, 1))
loop:
	for _, job := range jobs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := job(ctx); err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}
