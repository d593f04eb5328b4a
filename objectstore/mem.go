package objectstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Mem is an in-memory Store for tests. The zero value is not usable; call
// NewMem.
type Mem struct {
	mu      sync.Mutex
	objects map[string]memObject
}

type memObject struct {
	data    []byte
	modTime time.Time
}

// NewMem returns an empty in-memory store.
func NewMem() *Mem { return &Mem{objects: make(map[string]memObject)} }

func (m *Mem) read(key string, r io.Reader, size int64) ([]byte, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	data, err := readAll(io.LimitReader(r, max(size, 0)+1), size)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("%w: %q: got %d bytes, want %d", ErrSizeMismatch, key, len(data), size)
	}
	return data, nil
}

// readAll is io.ReadAll with room for sizeHint bytes (up to 64 MiB) from the
// start, which spares large objects a chain of copies.
func readAll(r io.Reader, sizeHint int64) ([]byte, error) {
	b := make([]byte, 0, min(max(sizeHint, 0), 64<<20)+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow
		}
	}
}

// Put implements Store.
func (m *Mem) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	data, err := m.read(key, r, size)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[key] = memObject{data: data, modTime: time.Now()}
	return nil
}

// PutIfAbsent implements Store.
func (m *Mem) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	data, err := m.read(key, r, size)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objects[key]; ok {
		return fmt.Errorf("%w: %q", ErrExists, key)
	}
	m.objects[key] = memObject{data: data, modTime: time.Now()}
	return nil
}

// Get implements Store.
func (m *Mem) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	m.mu.Lock()
	o, ok := m.objects[key]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	s, e := clip(int64(len(o.data)), offset, length)
	return io.NopCloser(bytes.NewReader(o.data[s:e])), nil
}

// Stat implements Store.
func (m *Mem) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return ObjectInfo{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// Copy implements Store.
func (m *Mem) Copy(ctx context.Context, src, dst string) error {
	if err := ValidateKey(src); err != nil {
		return err
	}
	if err := ValidateKey(dst); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[src]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, src)
	}
	if src != dst {
		m.objects[dst] = memObject{data: o.data, modTime: time.Now()}
	}
	return nil
}

// List implements Store.
func (m *Mem) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ObjectInfo
	for k, o := range m.objects {
		if strings.HasPrefix(k, prefix) {
			out = append(out, ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Store.
func (m *Mem) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range keys {
		delete(m.objects, k)
	}
	return nil
}

// Location implements Store.
func (m *Mem) Location() string { return "mem://" }

// Corrupt flips one bit of key's byte at offset, for fault-injection tests.
func (m *Mem) Corrupt(key string, offset int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok || offset < 0 || offset >= int64(len(o.data)) {
		return fmt.Errorf("%w: %q at %d", ErrNotFound, key, offset)
	}
	data := bytes.Clone(o.data)
	data[offset] ^= 0x01
	m.objects[key] = memObject{data: data, modTime: o.modTime}
	return nil
}
