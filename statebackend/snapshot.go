package statebackend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// Target says where the objects of one native snapshot of one task go.
type Target struct {
	// SharedPrefix holds the immutable SST files, shared by every snapshot of
	// the job (e.g. "root/job/shared"). Objects are named after the DB
	// instance, the snapshot attempt and the file, so no two DBs or attempts
	// ever write the same key.
	SharedPrefix string
	// PrivatePrefix is exclusive to this snapshot of this task (e.g.
	// "root/job/chk-7/task-2"). It receives the files that change between
	// snapshots (MANIFEST, OPTIONS, WAL, markers) and, last, the snapshot
	// manifest NativeManifestName.
	PrivatePrefix string
}

// NativeManifestName is the name, under Target.PrivatePrefix, of a native
// snapshot's manifest. A native snapshot exists if and only if its manifest
// does.
const NativeManifestName = "snapshot.json"

// Native manifest encoding: a JSON envelope whose body is checksummed as
// written, so a damaged manifest is reported as corrupt rather than misread.
const (
	nativeManifestType    = "flotilla.statebackend.native-snapshot"
	nativeManifestVersion = 1
)

type manifestEnvelope struct {
	Type    string          `json:"type"`
	Version int             `json:"version"`
	CRC32C  uint32          `json:"crc32c"` // of Body's bytes
	Body    json.RawMessage `json:"body"`
}

type nativeManifest struct {
	Snapshot       uint64         `json:"snapshot"`
	Instance       string         `json:"instance"`
	PebbleFormat   uint64         `json:"pebbleFormat"`
	MaxParallelism int            `json:"maxParallelism"`
	Range          keygroup.Range `json:"range"`
	// Applied lists the last applied input sequence of every group of
	// Range that has one.
	Applied []appliedMark  `json:"applied"`
	Files   []manifestFile `json:"files"`
}

type appliedMark struct {
	Group int    `json:"group"`
	Seq   uint64 `json:"seq"`
}

type manifestFile struct {
	Object string `json:"object"`
	Name   string `json:"name"` // file name in the DB directory
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
	Shared bool   `json:"shared"`
}

func encodeManifest(m *nativeManifest) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return json.Marshal(manifestEnvelope{
		Type:    nativeManifestType,
		Version: nativeManifestVersion,
		CRC32C:  crc32.Checksum(body, castagnoli),
		Body:    body,
	})
}

func decodeManifest(key string, data []byte) (*nativeManifest, error) {
	var env manifestEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, corruptf(key, "manifest: %v", err)
	}
	if env.Type != nativeManifestType {
		return nil, corruptf(key, "manifest type %q, want %q", env.Type, nativeManifestType)
	}
	if env.Version != nativeManifestVersion {
		return nil, fmt.Errorf("%w: %q: native manifest version %d", ErrUnknownFormat, key, env.Version)
	}
	if got := crc32.Checksum(env.Body, castagnoli); got != env.CRC32C {
		return nil, corruptf(key, "manifest crc32c %08x, recorded %08x", got, env.CRC32C)
	}
	var m nativeManifest
	if err := json.Unmarshal(env.Body, &m); err != nil {
		return nil, corruptf(key, "manifest body: %v", err)
	}
	for _, f := range m.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." || strings.ContainsAny(f.Name, `/\`) {
			return nil, corruptf(key, "file name %q", f.Name)
		}
		if objectstore.ValidateKey(f.Object) != nil || f.Size < 0 {
			return nil, corruptf(key, "file %q: object %q, size %d", f.Name, f.Object, f.Size)
		}
	}
	return &m, nil
}

// isShared reports whether a DB file is immutable and named uniquely for
// the DB's life (SSTs and blob files): such files are uploaded once and
// shared by later snapshots.
func isShared(name string) bool {
	return strings.HasSuffix(name, ".sst") || strings.HasSuffix(name, ".blob")
}

// fileNum parses the number of an SST or blob file name ("000123.sst").
func fileNum(name string) (uint64, bool) {
	i := strings.IndexByte(name, '.')
	if i <= 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(name[:i], 10, 64)
	return n, err == nil
}

type snapState int

const (
	snapPending snapState = iota
	snapUploading
	snapUploaded
	snapFailed
	snapReleased
)

// PendingSnapshot is the local image of a native snapshot, taken by
// Snapshot, until Upload turns it into objects. Its methods are safe for
// concurrent use.
type PendingSnapshot struct {
	b       *Backend
	id      uint64
	seq     uint64 // attempt number within the backend
	dir     string
	rng     keygroup.Range
	applied []appliedMark
	walLens map[string]int64 // WALs linked into the image, and their length then

	mu     sync.Mutex
	state  snapState
	cancel context.CancelFunc      // of a running Upload
	added  map[string]sharedObject // SSTs the upload wrote, once uploaded
}

// ID returns the snapshot id given to Snapshot.
func (p *PendingSnapshot) ID() uint64 { return p.id }

// Snapshot takes the synchronous part of native snapshot id: a Pebble
// checkpoint of the DB into a local image (SSTs and WALs hard-linked, see
// backendFS; MANIFEST and OPTIONS copied) and the applied marks, consistent
// with each other and with every batch committed before the call; commits
// wait while it runs. It costs a few file-system operations per SST and
// does not depend on the memtable size (BENCHMARKS.md). The caller then
// calls Upload, usually on another goroutine, and later SnapshotCompleted or
// SnapshotAborted (or Release).
func (b *Backend) Snapshot(id uint64) (*PendingSnapshot, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	b.mu.Lock()
	if _, ok := b.pending[id]; ok {
		b.mu.Unlock()
		return nil, fmt.Errorf("%w: %d", ErrSnapshotExists, id)
	}
	b.snapSeq++
	p := &PendingSnapshot{b: b, id: id, seq: b.snapSeq, rng: b.opts.KeyGroups}
	p.dir = filepath.Join(b.dir, checkpointsDirName, fmt.Sprintf("%d-%d", id, p.seq))
	b.pending[id] = p
	b.mu.Unlock()

	b.commitMu.Lock()
	// WithFlushedWAL writes the WAL buffer out (never syncing it, see
	// backendFS) before the WAL is linked, so that its length then covers
	// every committed batch.
	err := b.db.Checkpoint(p.dir, pebble.WithFlushedWAL())
	p.walLens = b.fs.takeLinked(p.dir)
	if err == nil && b.fs.space.full.Load() {
		// A WAL or MANIFEST write met ENOSPC (before or during the
		// checkpoint, which flushed the WAL): its bytes are missing, so
		// the image is not the committed state.
		err = &NoSpaceError{Dir: b.dir, Cause: syscall.ENOSPC}
	}
	if err == nil {
		for i := range b.applied {
			if seq := b.applied[i].Load(); seq > 0 {
				p.applied = append(p.applied, appliedMark{Group: b.opts.KeyGroups.Start + i, Seq: seq})
			}
		}
	}
	b.commitMu.Unlock()
	if err != nil {
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		_ = os.RemoveAll(p.dir)
		return nil, fmt.Errorf("statebackend: snapshot %d: %w", id, err)
	}
	return p, nil
}

// Upload writes the snapshot to store under target and returns its handle.
// It uploads only the SSTs that no completed snapshot (see
// SnapshotCompleted) or restored snapshot of this backend already holds in
// the same store, records each file's size and CRC32C in a manifest, and
// writes the manifest last, with PutIfAbsent. It removes the local image
// whatever the outcome; it can be called once.
func (p *PendingSnapshot) Upload(ctx context.Context, store objectstore.Store, target Target) (Handle, error) {
	if err := objectstore.ValidateKey(target.SharedPrefix); err != nil {
		return Handle{}, fmt.Errorf("statebackend: shared prefix: %w", err)
	}
	if err := objectstore.ValidateKey(target.PrivatePrefix); err != nil {
		return Handle{}, fmt.Errorf("statebackend: private prefix: %w", err)
	}
	p.mu.Lock()
	if p.state != snapPending {
		p.mu.Unlock()
		return Handle{}, fmt.Errorf("%w: snapshot %d", ErrSnapshotReleased, p.id)
	}
	p.state = snapUploading
	ctx, p.cancel = context.WithCancel(ctx)
	p.mu.Unlock()

	h, added, err := p.upload(ctx, store, target)
	_ = os.RemoveAll(p.dir)

	p.mu.Lock()
	defer p.mu.Unlock()
	p.cancel()
	switch {
	case p.state == snapReleased:
		if err == nil {
			err = fmt.Errorf("%w: snapshot %d aborted during upload", ErrSnapshotReleased, p.id)
		}
	case err != nil:
		p.state = snapFailed
	default:
		p.state = snapUploaded
		p.added = added
	}
	if err != nil {
		return Handle{}, err
	}
	return h, nil
}

func (p *PendingSnapshot) upload(ctx context.Context, store objectstore.Store, target Target) (Handle, map[string]sharedObject, error) {
	b := p.b
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return Handle{}, nil, fmt.Errorf("statebackend: snapshot %d: %w", p.id, err)
	}
	location := store.Location()
	files := make([]manifestFile, 0, len(entries))
	var maxNum uint64
	present := make(map[string]bool)
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		f := manifestFile{Name: e.Name(), Shared: isShared(e.Name())}
		if f.Shared {
			present[f.Name] = true
			if n, ok := fileNum(f.Name); ok {
				maxNum = max(maxNum, n)
			}
		}
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })

	// Reuse what completed snapshots uploaded. Forget uploaded SSTs that are
	// gone from the DB: file numbers are never reused, so an SST older than
	// this image's newest and absent from it is dead for good.
	//
	// Only objects under the target's shared prefix are referenced: a
	// snapshot owns every file it names outside it. So a savepoint (whose
	// shared prefix is its own) and the first checkpoint after a restore
	// from a savepoint copy, on the server, the SSTs the store already holds
	// elsewhere, and nothing a retention or a deleted savepoint removes is
	// ever named by a snapshot that outlives it (Flink's NO_CLAIM restore).
	reused := make(map[string]bool)
	copyFrom := make(map[string]sharedObject)
	sharedDir := target.SharedPrefix + "/"
	b.mu.Lock()
	for name := range b.uploaded {
		n, ok := fileNum(name)
		if !present[name] && ok && n < maxNum {
			delete(b.uploaded, name)
		}
	}
	for i := range files {
		f := &files[i]
		o, ok := b.uploaded[f.Name]
		if !f.Shared || !ok || o.location != location {
			continue
		}
		if fi, err := os.Stat(filepath.Join(p.dir, f.Name)); err != nil || fi.Size() != o.size {
			continue
		}
		if !strings.HasPrefix(o.key, sharedDir) {
			copyFrom[f.Name] = o
			continue
		}
		f.Object, f.Size, f.CRC32C = o.key, o.size, o.crc
		reused[f.Name] = true
	}
	b.mu.Unlock()

	attempt := fmt.Sprintf("%s-%d", b.instance, p.seq)
	var jobs []func(context.Context) error
	for i := range files {
		f := &files[i]
		if reused[f.Name] {
			continue
		}
		if f.Shared {
			f.Object = path.Join(target.SharedPrefix, attempt+"-"+f.Name)
		} else {
			f.Object = path.Join(target.PrivatePrefix, attempt, f.Name)
		}
		limit, ok := p.walLens[f.Name]
		if !ok {
			limit = -1
		}
		src, hasSrc := copyFrom[f.Name]
		jobs = append(jobs, func(ctx context.Context) error {
			if hasSrc {
				err := store.Copy(ctx, src.key, f.Object)
				if err == nil {
					f.Size, f.CRC32C = src.size, src.crc
					return nil
				}
				if ctx.Err() != nil {
					return err
				}
				// The source is gone or the store cannot copy: the file is
				// here, upload it.
			}
			size, crc, err := uploadFile(ctx, store, f.Object, filepath.Join(p.dir, f.Name), limit)
			f.Size, f.CRC32C = size, crc
			return err
		})
	}
	if err := runParallel(ctx, b.opts.TransferConcurrency, jobs); err != nil {
		return Handle{}, nil, fmt.Errorf("statebackend: upload snapshot %d: %w", p.id, err)
	}

	m := &nativeManifest{
		Snapshot:       p.id,
		Instance:       attempt,
		PebbleFormat:   uint64(PebbleFormatMajorVersion),
		MaxParallelism: b.opts.MaxParallelism,
		Range:          p.rng,
		Applied:        p.applied,
		Files:          files,
	}
	data, err := encodeManifest(m)
	if err != nil {
		return Handle{}, nil, fmt.Errorf("statebackend: snapshot %d: %w", p.id, err)
	}
	h := Handle{
		Version:  HandleVersion,
		Format:   FormatNative,
		Manifest: path.Join(target.PrivatePrefix, NativeManifestName),
		Range:    p.rng,
		Size:     int64(len(data)),
		Uploaded: int64(len(data)),
	}
	added := make(map[string]sharedObject)
	for _, f := range files {
		h.Files = append(h.Files, f.Object)
		h.Sizes = append(h.Sizes, f.Size)
		h.Size += f.Size
		if !reused[f.Name] {
			h.Uploaded += f.Size
			if f.Shared {
				added[f.Name] = sharedObject{location: location, key: f.Object, size: f.Size, crc: f.CRC32C}
			}
		}
	}
	h.Files = append(h.Files, h.Manifest)
	h.Sizes = append(h.Sizes, int64(len(data)))
	if err := ctx.Err(); err != nil {
		return Handle{}, nil, err
	}
	if err := store.PutIfAbsent(ctx, h.Manifest, bytes.NewReader(data), int64(len(data))); err != nil {
		return Handle{}, nil, storeErr("put", h.Manifest, err)
	}
	return h, added, nil
}

// release drops the local image and makes sure nothing of the snapshot is
// ever reused.
func (p *PendingSnapshot) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case snapPending:
		_ = os.RemoveAll(p.dir)
	case snapUploading:
		p.cancel() // Upload removes the image when it returns
	}
	p.state = snapReleased
	p.added = nil
}

// Release gives up the snapshot: it removes the local image (at once, or
// when a running Upload returns, which it makes fail) and forgets the
// snapshot. It is SnapshotAborted for a caller holding the PendingSnapshot.
func (p *PendingSnapshot) Release() {
	b := p.b
	b.mu.Lock()
	if b.pending[p.id] == p {
		delete(b.pending, p.id)
	}
	b.mu.Unlock()
	p.release()
}

// SnapshotCompleted records that snapshot id is part of a completed
// checkpoint: the SSTs its upload wrote may be referenced, not uploaded
// again, by later snapshots. Call it only after the checkpoint is committed.
// Unknown ids and snapshots whose upload did not succeed are ignored.
// Completing id also forgets older snapshots that are no longer uploading.
func (b *Backend) SnapshotCompleted(id uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pending[id]
	if p == nil {
		return
	}
	delete(b.pending, id)
	p.mu.Lock()
	if p.state == snapUploaded {
		for name, o := range p.added {
			b.uploaded[name] = o
		}
	}
	p.mu.Unlock()
	for oid, op := range b.pending {
		op.mu.Lock()
		done := op.state == snapUploaded || op.state == snapFailed
		op.mu.Unlock()
		if oid < id && done {
			delete(b.pending, oid)
		}
	}
}

// SnapshotAborted gives up snapshot id: its local image is removed, a
// running upload is canceled, and nothing it uploaded is ever reused.
// Unknown ids are ignored.
func (b *Backend) SnapshotAborted(id uint64) {
	b.mu.Lock()
	p := b.pending[id]
	delete(b.pending, id)
	b.mu.Unlock()
	if p != nil {
		p.release()
	}
}

// ForgetObjects makes the backend stop naming the objects keys in later
// snapshots: the DB files it held there are uploaded again by the next
// Snapshot. Call it when the objects are known to be gone, e.g. when a
// checkpoint coordinator aborted a checkpoint because they were missing
// from the store; keys the backend does not reference are ignored.
func (b *Backend) ForgetObjects(keys []string) {
	if len(keys) == 0 {
		return
	}
	gone := make(map[string]bool, len(keys))
	for _, k := range keys {
		gone[k] = true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, o := range b.uploaded {
		if gone[o.key] {
			delete(b.uploaded, name)
		}
	}
	for _, p := range b.pending {
		p.mu.Lock()
		for name, o := range p.added {
			if gone[o.key] {
				delete(p.added, name)
			}
		}
		p.mu.Unlock()
	}
}
