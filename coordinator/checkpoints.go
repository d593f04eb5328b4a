package coordinator

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// savepointWaiter is someone waiting for a savepoint's outcome: a trigger
// request, an API call, or a stop/rescale in progress.
type savepointWaiter struct {
	reply   subjects.Responder // nil: nobody to answer
	rescale int                // > 0: resubmit at this parallelism once stopped
}

// doCC carries out checkpoint-coordinator actions of job.
func (c *leader) doCC(job string, acts []checkpoint.Action, now time.Time) {
	e := c.jobs[job]
	for _, a := range acts {
		switch a := a.(type) {
		case checkpoint.SendBarrier:
			b := a.Barrier
			c.log.Debug("barrier", "job", job, "checkpoint", b.Checkpoint, "kind", b.Kind.String())
			c.publish(c.ns.Barrier(job), &b)
		case checkpoint.WriteMetadata:
			r := a.Record
			go func() {
				// The objects are checked while the metadata is written: a
				// metadata object of a checkpoint that then aborts belongs
				// to nothing (only the commit completes a checkpoint) and is
				// overwritten or swept.
				start := time.Now()
				verified := make(chan error, 1)
				go func() { verified <- c.verifyObjects(r) }()
				err := c.writeMetadata(r)
				wrote := time.Since(start)
				err = cmp.Or(<-verified, err)
				c.log.Debug("checkpoint objects verified", "job", job, "id", r.ID, "objects", countObjects(r),
					"metadata_write", wrote, "with_verification", time.Since(start), "err", err)
				c.enqueue(func(now time.Time) {
					if e := c.jobs[job]; e != nil && e.cc != nil {
						c.doCC(job, e.cc.MetadataWritten(r.ID, err, now), now)
					}
				})
			}()
		case checkpoint.Commit:
			r, a := a.Record, a
			go func() {
				var err error
				if c.cfg.BeforeCommit != nil {
					err = c.cfg.BeforeCommit(r)
				}
				if err == nil {
					// Retried through leader elections until the checkpoint
					// times out, and tried once at least.
					deadline := a.Deadline
					if minimum := time.Now().Add(c.cfg.RequestTimeout); deadline.Before(minimum) {
						deadline = minimum
					}
					ctx, cancel := context.WithDeadline(context.Background(), deadline)
					err = c.store.Commit(ctx, c.epoch, r)
					cancel()
				}
				c.enqueue(func(now time.Time) {
					if e := c.jobs[job]; e != nil && e.cc != nil {
						c.doCC(job, e.cc.Committed(r.ID, err, now), now)
					}
				})
			}()
		case checkpoint.NotifyComplete:
			// The record is durable in JetStream: only now is it announced.
			r := a.Record
			done := a.Complete
			c.publish(c.ns.Complete(job), &done)
			e.jm.CheckpointCompleted(restorePoints(r)[0])
			kind := subjects.EventCheckpointCompleted
			if r.Kind == subjects.KindSavepoint {
				kind = subjects.EventSavepointCompleted
			}
			c.log.Info(r.Kind.String()+" completed", "job", job, "id", r.ID, "location", r.Location,
				"size", r.Size, "uploaded", r.Uploaded, "duration", r.Completed.Sub(r.Triggered))
			c.event(subjects.Event{Kind: kind, Job: job, Checkpoint: r.ID, Location: c.locationOf(r.Location),
				Message: fmt.Sprintf("%d bytes (%d uploaded) in %s", r.Size, r.Uploaded, r.Completed.Sub(r.Triggered).Round(time.Millisecond))}, job)
			e.lastCompleted = r.Completed
			c.recordAttempt(a.Attempt)
		case checkpoint.NotifyAbort:
			ab := a.Abort
			c.publish(c.ns.Abort(job), &ab)
			kind := subjects.EventCheckpointFailed
			if a.Kind == subjects.KindSavepoint {
				kind = subjects.EventSavepointFailed
			}
			c.log.Warn(a.Kind.String()+" aborted", "job", job, "id", ab.Checkpoint, "reason", ab.Reason)
			c.event(subjects.Event{Kind: kind, Job: job, Checkpoint: ab.Checkpoint, Error: ab.Reason}, job)
			c.recordAttempt(a.Attempt)
		case checkpoint.SavepointDone:
			c.savepointDone(job, a, now)
		case checkpoint.DeleteCheckpoint:
			r, files := a.Record, a.Files
			e.jm.CheckpointDeleted(r.ID)
			go c.deleteCheckpoint(r, files)
		case checkpoint.FailJob:
			c.log.Error("failing job over", "job", job, "reason", a.Reason)
			c.doJM(job, e.jm.FailAll(a.Reason, now), now)
		default:
			panic(fmt.Sprintf("coordinator: unknown checkpoint action %T", a))
		}
	}
}

func handlesOf(r subjects.CheckpointRecord) []statebackend.Handle {
	out := make([]statebackend.Handle, 0, len(r.Tasks))
	for _, t := range r.Tasks {
		out = append(out, t.Handle)
	}
	return out
}

// restorePoints turns records into job-master restore points.
func restorePoints(rs ...subjects.CheckpointRecord) []jobmaster.RestorePoint {
	out := make([]jobmaster.RestorePoint, 0, len(rs))
	for _, r := range rs {
		rp := jobmaster.RestorePoint{ID: r.ID, Handles: handlesOf(r)}
		if op, ok := r.Operator(); ok {
			rp.Operator = &op
		}
		out = append(out, rp)
	}
	return out
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
	for _, dir := range sortedKeys(dirs) {
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
	for _, k := range sortedKeys(want) {
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

func (c *leader) savepointDone(job string, a checkpoint.SavepointDone, now time.Time) {
	w, ok := c.waiters[a.Request]
	delete(c.waiters, a.Request)
	res := a.Result
	if res.Error == nil {
		res.Location = c.locationOf(res.Location)
	} else {
		// Whoever triggered it may not be listening (a bare publish): the
		// log and the event are how they learn why no savepoint came.
		c.log.Warn("savepoint request failed", "job", job, "request", a.Request, "err", res.Error)
		c.event(subjects.Event{Kind: subjects.EventCheckpointFailed, Job: job, Error: res.Error,
			Message: "savepoint request failed: " + res.Error.Message}, job)
	}
	if a.Stop && res.Error == nil {
		// stop-with-savepoint: the job ends only now that the savepoint is
		// committed.
		e := c.jobs[job]
		c.doCC(job, e.cc.Cancel("job stopped with a savepoint", now), now)
		c.doJM(job, e.jm.Finish("stopped with savepoint "+res.Location, now), now)
		if ok && w.rescale > 0 {
			c.rescaleFrom(job, w, res, now)
			return
		}
	}
	if ok && w.reply != nil {
		subjects.Reply(w.reply, &res)
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
	c.enqueue(func(now time.Time) {
		e := c.jobs[a.Job]
		if e == nil || e.cc == nil {
			return
		}
		acts, ignored := e.cc.Ack(&a, now)
		if ignored != "" {
			c.log.Debug("ack ignored", "job", a.Job, "reason", ignored)
		}
		c.doCC(a.Job, acts, now)
	})
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
	c.enqueue(func(now time.Time) {
		if e := c.jobs[d.Job]; e != nil && e.cc != nil {
			c.doCC(d.Job, e.cc.Decline(&d, now), now)
		}
	})
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
	c.triggerSavepoint(t, savepointWaiter{reply: r})
}

func (c *leader) savepointError(r subjects.Responder, job string, err error) {
	c.log.Warn("savepoint refused", "job", job, "err", err)
	about := job
	if subjects.ValidateName("job", job) != nil {
		about = "" // not a subject token
	}
	c.event(subjects.Event{Kind: subjects.EventCheckpointFailed, Job: job, Error: subjects.AsError(err),
		Message: "savepoint request refused"}, about)
	if r != nil {
		subjects.Reply(r, &subjects.SavepointResult{Job: job, Error: subjects.AsError(err)})
	}
}

// triggerSavepoint queues a savepoint of t.Job; w hears the outcome.
func (c *leader) triggerSavepoint(t subjects.TriggerSavepoint, w savepointWaiter) {
	if err := subjects.ValidateName("job", t.Job); err != nil {
		c.savepointError(w.reply, t.Job, err)
		return
	}
	dir := ""
	if t.Target != "" {
		key, err := c.resolveLocation(t.Target)
		if err != nil {
			c.savepointError(w.reply, t.Job, err)
			return
		}
		// A savepoint inside a job's checkpoint directories would be taken
		// for that job's orphans and swept.
		if job, _, _ := strings.Cut(key, "/"); isCheckpointObject(job, key+"/sp-0") {
			c.savepointError(w.reply, t.Job, subjects.Errorf(subjects.CodeInvalidLocation,
				"%s lies among the checkpoints of job %q; write savepoints elsewhere", t.Target, job))
			return
		}
		dir = key
	}
	c.enqueue(func(now time.Time) {
		e := c.jobs[t.Job]
		if e == nil {
			c.savepointError(w.reply, t.Job, unknownJob(t.Job))
			return
		}
		if e.jm.State().Terminal() {
			c.savepointError(w.reply, t.Job, subjects.Errorf(subjects.CodeJobNotRunning, "job %q is %s", t.Job, e.jm.State()))
			return
		}
		c.requests++
		c.waiters[c.requests] = w
		e.cc.TriggerSavepoint(checkpoint.SavepointRequest{ID: c.requests, Format: t.Format, Dir: dir, Stop: t.Stop || w.rescale > 0}, now)
		c.log.Info("savepoint requested", "job", t.Job, "format", t.Format.String(), "stop", t.Stop, "rescale", w.rescale)
	})
}
