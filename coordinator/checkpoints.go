package coordinator

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/engine"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// writeCheckpointMetadata checks r's objects while it writes r's metadata
// object, and feeds the outcome back (engine.WriteMetadata). A metadata
// object of a checkpoint that then aborts belongs to nothing (only the
// commit completes a checkpoint) and is overwritten or swept.
func (c *leader) writeCheckpointMetadata(job string, r subjects.CheckpointRecord) {
	start := time.Now()
	verified := make(chan error, 1)
	go func() { verified <- c.verifyObjects(r) }()
	err := c.writeMetadata(r)
	wrote := time.Since(start)
	err = cmp.Or(<-verified, err)
	c.log.Debug("checkpoint objects verified", "job", job, "id", r.ID, "objects", countObjects(r),
		"metadata_write", wrote, "with_verification", time.Since(start), "err", err)
	c.feed(engine.MetadataWritten{Job: job, ID: r.ID, Err: err})
}

// commit commits a checkpoint record and feeds the outcome back
// (engine.Commit). It is retried through leader elections until the
// checkpoint times out, and tried once at least.
func (c *leader) commit(f engine.Commit) {
	var err error
	if c.cfg.BeforeCommit != nil {
		err = c.cfg.BeforeCommit(f.Record)
	}
	if err == nil {
		deadline := f.Deadline
		if minimum := time.Now().Add(c.cfg.RequestTimeout); deadline.Before(minimum) {
			deadline = minimum
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err = c.store.Commit(ctx, c.epoch, f.Record)
		cancel()
	}
	c.feed(engine.Committed{Job: f.Job, ID: f.Record.ID, Err: err})
}

func (c *leader) publish(subject string, m subjects.Message) {
	if err := c.nc.Publish(subject, subjects.MustEncode(m)); err != nil {
		c.log.Warn("publish", "subject", subject, "err", err)
	}
}

// verifyConcurrency bounds the store requests verifyObjects has in flight.
const verifyConcurrency = 16

// verifyListMin is the number of objects of one directory to check from
// which verifyObjects lists the directory (one request per 1,000 objects in
// it) instead of asking for each object.
const verifyListMin = 4

// countObjects returns the number of distinct objects r's handles name.
func countObjects(r subjects.CheckpointRecord) int {
	seen := map[string]bool{}
	for _, t := range r.Tasks {
		for _, f := range t.Handle.Files {
			seen[f] = true
		}
	}
	return len(seen)
}

// listPrefix is the prefix under which verifyObjects looks for object f of
// a checkpoint at location: the location itself for the checkpoint's own
// files, and otherwise f's directory and the part of its name up to the
// first '-', which for a shared file is the DB instance that uploaded it
// (statebackend names them "<instance>-<attempt>-<file>"), so that a
// listing returns little besides the files of one task.
func listPrefix(location, f string) string {
	if strings.HasPrefix(f, location+"/") {
		return location + "/"
	}
	dir, name := path.Split(f)
	if i := strings.IndexByte(name, '-'); i > 0 {
		return dir + name[:i+1]
	}
	return dir
}

// verifyObjects checks, before a checkpoint is committed, that the store
// holds every object r's handles name, with the size the handle gives
// (handles of older builds give none: then only that it exists). So an ack
// with a forged or stale handle, or one naming a shared file that was
// deleted behind the task's back, never completes a checkpoint: a
// *checkpoint.MissingObjectsError names what is missing, and the abort
// tells the tasks, which upload those files again.
//
// Objects are grouped by listPrefix: a group of verifyListMin or more is
// listed, the others are asked for one by one (Stat), verifyConcurrency
// requests at a time, within RequestTimeout.
func (c *leader) verifyObjects(r subjects.CheckpointRecord) error {
	want := map[string]int64{} // key -> size, -1: not given
	dirs := map[string][]string{}
	for _, t := range r.Tasks {
		h := t.Handle
		for i, f := range h.Files {
			if _, dup := want[f]; dup {
				continue
			}
			want[f] = -1
			if len(h.Sizes) == len(h.Files) {
				want[f] = h.Sizes[i]
			}
			dirs[listPrefix(r.Location, f)] = append(dirs[listPrefix(r.Location, f)], f)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	var (
		mu      sync.Mutex
		found   = map[string]int64{}
		failed  error
		work    = make(chan func() ([]objectstore.ObjectInfo, error))
		workers sync.WaitGroup
	)
	for range verifyConcurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for f := range work {
				infos, err := f()
				mu.Lock()
				switch {
				case err == nil:
					for _, o := range infos {
						found[o.Key] = o.Size
					}
				case !errors.Is(err, objectstore.ErrNotFound):
					failed = cmp.Or(failed, err)
				}
				mu.Unlock()
			}
		}()
	}
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		if keys := dirs[dir]; len(keys) < verifyListMin {
			for _, k := range keys {
				work <- func() ([]objectstore.ObjectInfo, error) {
					o, err := c.cfg.Store.Stat(ctx, k)
					return []objectstore.ObjectInfo{o}, err
				}
			}
			continue
		}
		work <- func() ([]objectstore.ObjectInfo, error) { return c.cfg.Store.List(ctx, dir) }
	}
	close(work)
	workers.Wait()
	if failed != nil {
		return fmt.Errorf("checking the objects of %s %d: %w", r.Kind, r.ID, failed)
	}
	missing := &checkpoint.MissingObjectsError{}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		size, ok := found[k]
		detail := ""
		switch {
		case !ok:
			detail = k + ": absent"
		case want[k] >= 0 && size != want[k]:
			detail = fmt.Sprintf("%s: %d bytes, acked %d", k, size, want[k])
		default:
			continue
		}
		missing.Total++
		if len(missing.Keys) < checkpoint.MaxMissing {
			missing.Keys = append(missing.Keys, k)
		}
		if len(missing.Details) < 3 {
			missing.Details = append(missing.Details, detail)
		}
	}
	if missing.Total > 0 {
		return missing
	}
	return nil
}

// writeMetadata writes a checkpoint's _metadata object. It overwrites: a
// metadata object left by a coordinator that crashed before committing the
// same id belongs to nothing, since only the JetStream commit completes a
// checkpoint.
func (c *leader) writeMetadata(r subjects.CheckpointRecord) error {
	b, err := subjects.Encode(&r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	return c.cfg.Store.Put(ctx, checkpoint.MetadataKey(r.Location), bytes.NewReader(b), int64(len(b)))
}

// deleteCheckpoint removes a subsumed checkpoint: its JetStream record
// first (so nothing can restore from it any more; refused once a newer
// term claimed the job), then its files, only while this term still holds
// the lease. A crash in between leaves only orphans, which the sweep
// removes.
func (c *leader) deleteCheckpoint(r subjects.CheckpointRecord, files []string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.store.Remove(ctx, c.epoch, r); err != nil {
		c.log.Warn("deleting checkpoint record", "job", r.Job, "id", r.ID, "err", err)
		return
	}
	if err := c.co.holds(ctx, c.epoch); err != nil {
		c.log.Warn("not deleting checkpoint files", "job", r.Job, "id", r.ID, "err", err)
		return
	}
	if err := c.cfg.Store.Delete(ctx, files...); err != nil {
		c.log.Warn("deleting checkpoint files (the orphan sweep will retry)", "job", r.Job, "id", r.ID, "err", err)
	}
}

// locationOf returns the full location (store location + key) of key.
func (c *leader) locationOf(key string) string {
	return objectstore.JoinLocation(c.cfg.Store.Location(), key)
}

// resolveLocation turns a user-given location into an object key prefix in
// the configured store: a full location must lie inside the store, a bare
// key is taken as relative to it. Anything else is CodeInvalidLocation.
func (c *leader) resolveLocation(loc string) (string, error) {
	// KeyOf refuses locations carrying credentials and never repeats
	// secrets in its errors.
	key, err := objectstore.KeyOf(c.cfg.Store.Location(), loc)
	if err != nil {
		return "", subjects.Errorf(subjects.CodeInvalidLocation, "%v", err)
	}
	if k := strings.TrimSuffix(key, "/"+checkpoint.MetadataName); k != key && k != "" {
		key = k
	}
	return key, nil
}

// readMetadata reads the record of the checkpoint or savepoint at key.
func (c *leader) readMetadata(ctx context.Context, key string) (subjects.CheckpointRecord, error) {
	var r subjects.CheckpointRecord
	rc, err := c.cfg.Store.Get(ctx, checkpoint.MetadataKey(key), 0, -1)
	if err != nil {
		return r, subjects.Errorf(subjects.CodeUnknownCheckpoint, "no checkpoint or savepoint at %s: %v", c.locationOf(key), err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, subjects.MaxMessageSize+1))
	if err != nil {
		return r, subjects.Errorf(subjects.CodeStorageUnavailable, "reading %s: %v", c.locationOf(checkpoint.MetadataKey(key)), err)
	}
	if err := subjects.Decode(b, &r); err != nil {
		return r, subjects.Errorf(subjects.CodeCorruptState, "metadata %s is unreadable: %v", c.locationOf(checkpoint.MetadataKey(key)), err)
	}
	return r, nil
}

func (c *leader) onAck(msg *nats.Msg) {
	var a subjects.Ack
	err := subjects.Decode(msg.Data, &a)
	if err == nil {
		err = subjects.CheckSpeaker(msg.Subject, a.Worker)
	}
	if err != nil {
		c.log.Warn("bad ack", "subject", msg.Subject, "err", err)
		return
	}
	c.feed(engine.Ack{Ack: a})
}

func (c *leader) onDecline(msg *nats.Msg) {
	var d subjects.Decline
	err := subjects.Decode(msg.Data, &d)
	if err == nil {
		err = subjects.CheckSpeaker(msg.Subject, d.Worker)
	}
	if err != nil {
		c.log.Warn("bad decline", "subject", msg.Subject, "err", err)
		return
	}
	c.feed(engine.Decline{Decline: d})
}

// onTriggerSavepoint handles `nats pub|req flotilla.trigger.savepoint.<job>`.
func (c *leader) onTriggerSavepoint(msg *nats.Msg) {
	var r subjects.Responder
	if msg.Reply != "" {
		r = msg
	}
	var t subjects.TriggerSavepoint
	if err := subjects.Decode(msg.Data, &t); err != nil {
		c.savepointError(r, "", err)
		return
	}
	job := subjects.LastToken(msg.Subject)
	if t.Job != "" && t.Job != job {
		c.savepointError(r, job, subjects.Errorf(subjects.CodeInvalidArgument, "body names job %q on the trigger subject of %q", t.Job, job))
		return
	}
	t.Job = job
	c.triggerSavepoint(t, r, 0)
}

// savepointError refuses a savepoint request before it is queued; r may
// be nil (nobody to answer).
func (c *leader) savepointError(r subjects.Responder, job string, err error) {
	c.feed(engine.RefuseSavepoint{Job: job, Err: err, Reply: replyTo(r)})
}

// triggerSavepoint queues a savepoint of t.Job; reply (if not nil) hears
// the outcome. rescale > 0 stops the job and resubmits it at that
// parallelism.
func (c *leader) triggerSavepoint(t subjects.TriggerSavepoint, reply subjects.Responder, rescale int) {
	if err := subjects.ValidateName("job", t.Job); err != nil {
		c.savepointError(reply, t.Job, err)
		return
	}
	dir := ""
	if t.Target != "" {
		key, err := c.resolveLocation(t.Target)
		if err != nil {
			c.savepointError(reply, t.Job, err)
			return
		}
		// A savepoint inside a job's checkpoint directories would be taken
		// for that job's orphans and swept.
		if job, _, _ := strings.Cut(key, "/"); isCheckpointObject(job, key+"/sp-0") {
			c.savepointError(reply, t.Job, subjects.Errorf(subjects.CodeInvalidLocation,
				"%s lies among the checkpoints of job %q; write savepoints elsewhere", t.Target, job))
			return
		}
		dir = key
	}
	c.feed(engine.TriggerSavepoint{Request: t, Dir: dir, Reply: replyTo(reply), Rescale: rescale})
}

// replyTo is r as an engine reply token: nil, not a typed nil, for nobody.
func replyTo(r subjects.Responder) any {
	if r == nil {
		return nil
	}
	return r
}
