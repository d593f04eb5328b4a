package objectstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// fsTempDir is the directory under an FS root that holds files being
// written. It is not part of the key space: keys whose first element is
// fsTempDir are invalid for an FS, and List never reports anything in it.
const fsTempDir = ".flotilla-tmp"

// fsStaleTemp is the age after which NewFS removes a temp file, left behind
// by a process that died while writing it.
const fsStaleTemp = time.Hour

// fsRetries bounds how often a write retries after a concurrent Delete
// removed the (empty) directory it was writing into.
const fsRetries = 8

// FS is a Store in a local directory: key "a/b/c" is the file dir/a/b/c.
//
// Writes are atomic and durable: the data goes to a temp file under
// dir/.flotilla-tmp, which is synced and then renamed (Put) or hard-linked
// (PutIfAbsent) into place, after which the parent directory is synced. A
// crash leaves either the old object or the new one, never a mix; temp files
// it leaves behind are removed by a later NewFS once they are an hour old.
//
// Beyond the package's key rules, an FS cannot hold both "a" and "a/b" (a file
// cannot also be a directory): writing one while the other exists fails with
// an error that is not one of the package's sentinels. Keys starting with
// ".flotilla-tmp/" are ErrInvalidKey. The directory must be on a file system
// that supports hard links.
//
// All access goes through an os.Root, so no key, symlink or race can reach a
// file outside dir.
type FS struct {
	dir  string
	root *os.Root
}

var _ Store = (*FS)(nil)

// NewFS returns an FS storing objects under dir, which is created if missing.
// dir is made absolute; the FS keeps it open until Close.
func NewFS(dir string) (*FS, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("objectstore: fs %q: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, fsTempDir), 0o755); err != nil {
		return nil, fmt.Errorf("objectstore: fs: %w", err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("objectstore: fs: %w", err)
	}
	f := &FS{dir: abs, root: root}
	f.removeStaleTemps(time.Now().Add(-fsStaleTemp))
	return f, nil
}

// Close releases the directory handle. The FS must not be used afterwards.
func (f *FS) Close() error { return f.root.Close() }

// Dir returns the absolute directory the FS stores objects in.
func (f *FS) Dir() string { return f.dir }

// Location implements Store.
func (f *FS) Location() string {
	return (&urlForm{scheme: "file", path: filepath.ToSlash(f.dir)}).String()
}

// Put implements Store.
func (f *FS) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return f.put(ctx, key, r, size, false)
}

// PutIfAbsent implements Store. Concurrent callers, in this process or
// another, are serialized by the file system: exactly one wins.
func (f *FS) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return f.put(ctx, key, r, size, true)
}

func (f *FS) put(ctx context.Context, key string, r io.Reader, size int64, ifAbsent bool) (err error) {
	name, err := f.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp, err := f.writeTemp(ctx, key, r, size)
	if err != nil {
		return err
	}
	defer func() {
		// After a rename the temp name is gone; after a link or a failure it
		// must go. Either way a failed removal only leaves garbage that a later
		// NewFS sweeps.
		if rmErr := f.root.Remove(tmp); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
			err = fmt.Errorf("objectstore: fs: removing temp file: %w", rmErr)
		}
	}()
	for attempt := 0; ; attempt++ {
		err = f.mkdirParent(name)
		if err == nil && ifAbsent {
			err = f.root.Link(tmp, name)
		} else if err == nil {
			err = f.root.Rename(tmp, name)
		}
		// A concurrent Delete may have removed a directory on the way to
		// name, since it was empty, while we were creating it or before we
		// moved the file in: start again.
		if err != nil && errors.Is(err, fs.ErrNotExist) && attempt < fsRetries {
			continue
		}
		break
	}
	if err != nil {
		if ifAbsent && errors.Is(err, fs.ErrExist) {
			if fi, statErr := f.root.Lstat(name); statErr == nil && fi.IsDir() {
				return fmt.Errorf("objectstore: fs put %q: key is a directory of other keys", key)
			}
			return fmt.Errorf("%w: %q", ErrExists, key)
		}
		return fmt.Errorf("objectstore: fs put %q: %w", key, err)
	}
	if err := f.syncDir(path.Dir(name)); err != nil {
		return fmt.Errorf("objectstore: fs put %q: %w", key, err)
	}
	return nil
}

// writeTemp copies exactly size bytes of r into a new synced temp file and
// returns its name relative to the root. It removes the file on failure.
func (f *FS) writeTemp(ctx context.Context, key string, r io.Reader, size int64) (name string, err error) {
	var file *os.File
	for attempt := 0; ; attempt++ {
		name = path.Join(fsTempDir, "put-"+randomHex(8))
		file, err = f.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			break
		}
		if attempt >= fsRetries {
			return "", fmt.Errorf("objectstore: fs put %q: %w", key, err)
		}
		if errors.Is(err, fs.ErrNotExist) {
			// Someone removed the temp directory: recreate it.
			if err := f.root.MkdirAll(fsTempDir, 0o755); err != nil {
				return "", fmt.Errorf("objectstore: fs put %q: %w", key, err)
			}
		}
	}
	defer func() {
		if err != nil {
			_ = file.Close()
			_ = f.root.Remove(name)
		}
	}()
	n, err := io.Copy(file, io.LimitReader(ctxReader{ctx, r}, max(size, 0)+1))
	if err != nil {
		return "", fmt.Errorf("objectstore: fs put %q: reading input: %w", key, err)
	}
	if n != size {
		return "", fmt.Errorf("%w: %q: got %s bytes, want %d", ErrSizeMismatch, key, countString(n, size), size)
	}
	if err := file.Sync(); err != nil {
		return "", fmt.Errorf("objectstore: fs put %q: %w", key, err)
	}
	if err := file.Close(); err != nil {
		return "", fmt.Errorf("objectstore: fs put %q: %w", key, err)
	}
	return name, nil
}

// mkdirParent makes sure the directory holding name exists. When it has to
// create directories, it syncs every directory from the new one's parent up
// to the root so that the new entries are durable.
func (f *FS) mkdirParent(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	fi, err := f.root.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%q is an object, not a directory of other keys", dir)
		}
		return nil
	}
	if err := f.root.MkdirAll(dir, 0o755); err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			return fmt.Errorf("a prefix of the key is an object: %w", err)
		}
		// os.Root.MkdirAll fails with EEXIST when a concurrent Put creates
		// one of the directories first; that is success.
		// Or the directory is gone again, removed by a concurrent Delete:
		// then the ErrNotExist below makes put retry.
		fi, statErr := f.root.Stat(dir)
		if statErr != nil {
			return statErr
		}
		if !fi.IsDir() {
			return err
		}
	}
	for d := path.Dir(dir); ; d = path.Dir(d) {
		if err := f.syncDir(d); err != nil {
			return err
		}
		if d == "." {
			return nil
		}
	}
}

// syncDir fsyncs the directory dir (relative to the root), making the
// entries created or renamed in it durable.
func (f *FS) syncDir(dir string) error {
	d, err := f.root.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get implements Store.
func (f *FS) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	name, err := f.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	file, err := f.root.Open(name)
	if err != nil {
		return nil, f.openErr("get", key, err)
	}
	fi, err := file.Stat()
	if err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("objectstore: fs get %q: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		_ = file.Close()
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	start, end := clip(fi.Size(), offset, length)
	if _, err := file.Seek(start, io.SeekStart); err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("objectstore: fs get %q: %w", key, err)
	}
	return &fileReader{Reader: io.LimitReader(file, end-start), file: file}, nil
}

// fileReader reads a byte range of an open file and closes the file.
type fileReader struct {
	io.Reader
	file *os.File
}

func (r *fileReader) Close() error { return r.file.Close() }

// Stat implements Store.
func (f *FS) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	name, err := f.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	fi, err := f.root.Stat(name)
	if err != nil {
		return ObjectInfo{}, f.openErr("stat", key, err)
	}
	if !fi.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Copy implements Store: a Put of src's bytes.
func (f *FS) Copy(ctx context.Context, src, dst string) error {
	if _, err := f.path(dst); err != nil {
		return err
	}
	rc, err := f.Get(ctx, src, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	if src == dst {
		return nil
	}
	fi, err := rc.(*fileReader).file.Stat() // of the file Get opened
	if err != nil {
		return fmt.Errorf("objectstore: fs copy %q: %w", src, err)
	}
	return f.put(ctx, dst, rc, fi.Size(), false)
}

// List implements Store. It walks only the directory that prefix determines
// (everything up to its last slash).
func (f *FS) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !prefixCanMatch(prefix) {
		return nil, nil // and the prefix must not be used as a path
	}
	start := "."
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	var out []ObjectInfo
	err := fs.WalkDir(f.root.FS(), start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// Objects and directories deleted while we walk are simply gone.
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			if p == fsTempDir {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(p, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, ObjectInfo{Key: p, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("objectstore: fs list %q: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Store. It also removes directories that the deletions
// leave empty, up to (not including) the root; that part is best effort.
func (f *FS) Delete(ctx context.Context, keys ...string) error {
	names := make([]string, len(keys))
	for i, k := range keys {
		name, err := f.path(k)
		if err != nil {
			return err
		}
		names[i] = name
	}
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := f.root.Lstat(name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			return fmt.Errorf("objectstore: fs delete %q: %w", keys[i], err)
		}
		if fi.IsDir() {
			continue // a directory of other keys, not an object
		}
		if err := f.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("objectstore: fs delete %q: %w", keys[i], err)
		}
		f.removeEmptyDirs(path.Dir(name))
	}
	return nil
}

// removeEmptyDirs removes dir and its ancestors below the root for as long as
// they are empty. It uses rmdir, which never removes a file, so a concurrent
// Put that makes one of them an object again is safe; a concurrent Put into
// one of them retries (see put).
func (f *FS) removeEmptyDirs(dir string) {
	for ; dir != "." && dir != "/"; dir = path.Dir(dir) {
		if err := syscall.Rmdir(filepath.Join(f.dir, filepath.FromSlash(dir))); err != nil {
			return
		}
	}
}

// removeStaleTemps removes temp files last modified before cutoff.
func (f *FS) removeStaleTemps(cutoff time.Time) {
	entries, err := fs.ReadDir(f.root.FS(), fsTempDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			_ = f.root.Remove(path.Join(fsTempDir, e.Name()))
		}
	}
}

// checkKey is ValidateKey plus the FS's reserved temp directory.
func (f *FS) checkKey(key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if key == fsTempDir || strings.HasPrefix(key, fsTempDir+"/") {
		return fmt.Errorf("%w: %q: %s is reserved by the file store", ErrInvalidKey, key, fsTempDir)
	}
	return nil
}

// path returns key's file name relative to the root. Besides ValidateKey, it
// checks that the cleaned name stays inside the root; os.Root enforces the
// same at every access.
func (f *FS) path(key string) (string, error) {
	if err := f.checkKey(key); err != nil {
		return "", err
	}
	name := filepath.FromSlash(key)
	if !filepath.IsLocal(name) {
		return "", fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	return key, nil
}

// openErr maps an error opening or statting key to ErrNotFound where the file
// does not exist, or where a prefix of the key is a file.
func (f *FS) openErr(op, key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return fmt.Errorf("objectstore: fs %s %q: %w", op, key, err)
}

// ctxReader fails reads once ctx is done, so a long copy stops on
// cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// countString describes a byte count read with one byte of lookahead: a count
// above want means "more than want".
func countString(n, want int64) string {
	if n > want {
		return fmt.Sprintf("more than %d", want)
	}
	return fmt.Sprint(n)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
