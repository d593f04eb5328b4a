package worker

import (
	"context"
	"fmt"
	"path"
	"sync/atomic"
	"time"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/subjects"
)

// The task side of checkpoints (docs/DESIGN.md, "Checkpoints and
// savepoints"). On a barrier, at the next record boundary, the task commits
// its batch and takes the synchronous part (a native snapshot, or a
// consistent view for a canonical savepoint), then resumes processing. An
// asynchronous part first waits until every output of the committed batches
// is confirmed by the sink (so that a restore from this checkpoint never
// loses an output: the events after it are replayed and their outputs
// published again), then uploads, then acks with the handle or declines
// with a coded reason.
//
// Object names include the task index and attempt, so an attempt that dies
// mid-upload leaves only objects no later attempt writes or reads; the
// coordinator's orphan sweep removes them.

// checkpoint is an in-flight checkpoint of a task.
type checkpoint struct {
	id     uint64
	epoch  uint64 // of its barrier
	kind   subjects.CheckpointKind
	cancel context.CancelFunc
	// answer is the ack or decline sent, once the upload is over: a
	// repeated barrier (the coordinator resends one while acks are
	// missing, since a core NATS message can be lost with a server) is
	// answered with it again.
	answer atomic.Pointer[answer]
}

type answer struct {
	subject string
	msg     subjects.Message
}

// barrierLog remembers the last barriers a task took, so that a repeated
// barrier is ignored. It is a set of recent ids, not a high-water mark: a
// barrier whose id is far ahead of the real ones (a forged checkpoint
// 2^40) must not make the task ignore every real barrier after it. One
// publisher's barriers reach a task in order, so a lower id than the last
// one is never a repeat of the same coordinator's.
type barrierLog struct {
	ids [16]uint64
	n   int
}

// take records id and reports whether it was not taken before.
func (l *barrierLog) take(id uint64) bool {
	for i := 0; i < min(l.n, len(l.ids)); i++ {
		if l.ids[i] == id {
			return false
		}
	}
	l.ids[l.n%len(l.ids)] = id
	l.n++
	return true
}

// control handles a checkpoint-plane message on the task goroutine.
func (t *task) control(m any) error {
	switch m := m.(type) {
	case *subjects.Barrier:
		return t.barrier(m)
	case *subjects.Complete:
		t.complete(m)
	case *subjects.Abort:
		t.abort(m)
	case adopted:
		t.adopted(m.epoch)
	}
	return nil
}

// adopted is handed to the task goroutine when a coordinator of epoch
// adopted the attempt.
type adopted struct{ epoch uint64 }

// adopted aborts the checkpoints of older epochs still in flight: the
// coordinator that triggered them is gone, and the one that adopted the
// attempt never commits them.
func (t *task) adopted(epoch uint64) {
	for id, ck := range t.ckpts {
		if ck.epoch < epoch {
			ck.cancel()
			delete(t.ckpts, id)
			t.be.SnapshotAborted(id)
			t.log.Info("checkpoint of the previous coordinator aborted", "checkpoint", id, "epoch", ck.epoch)
		}
	}
}

// privatePrefix is the object-key prefix of this attempt's files in the
// checkpoint or savepoint at target.
func (t *task) privatePrefix(target string) string {
	return path.Join(target, fmt.Sprintf("task-%d-%d", t.ref.Task, t.ref.Attempt))
}

func (t *task) barrier(b *subjects.Barrier) error {
	epoch := t.epoch.Load()
	if b.Job == t.ref.Job && b.Epoch == epoch && b.Epoch > t.barrierEpoch {
		t.barrierEpoch, t.priorBarrier = b.Epoch, t.lastBarrier.Load()
	}
	switch {
	case b.Job != t.ref.Job || b.Epoch != epoch:
		t.log.Debug("ignoring barrier of another epoch", "checkpoint", b.Checkpoint, "epoch", b.Epoch, "task_epoch", epoch)
		return nil
	case b.Checkpoint <= t.priorBarrier:
		// The coordinator that adopted this attempt reuses an id the
		// previous one triggered: the two checkpoints must not share
		// objects or bookkeeping. Its next id is above.
		t.decline(b, subjects.Errorf(subjects.CodeCheckpointAborted, "task %d: checkpoint %d of epoch %d: the attempt took checkpoint %d under an earlier epoch",
			t.ref.Task, b.Checkpoint, b.Epoch, t.priorBarrier))
		return nil
	case !t.barriers.take(b.Checkpoint):
		if c := t.ckpts[b.Checkpoint]; c != nil && c.epoch == b.Epoch {
			if a := c.answer.Load(); a != nil {
				t.log.Debug("repeated barrier: answering again", "checkpoint", b.Checkpoint)
				t.publish(a.subject, a.msg)
				return nil
			}
		}
		t.log.Debug("ignoring repeated barrier", "checkpoint", b.Checkpoint)
		return nil
	}
	if b.Checkpoint > t.lastBarrier.Load() {
		t.lastBarrier.Store(b.Checkpoint)
	}
	if err := t.markPosition(); err != nil {
		return err
	}
	if err := t.commit(); err != nil {
		return err
	}
	start := time.Now()
	var (
		upload  func(context.Context) (statebackend.Handle, error) // removes the local image or view
		release func()                                             // drops them when upload is not called
		cleanup func(context.Context)                              // removes what a failed upload left
	)
	store := t.w.cfg.Store
	switch b.Format {
	case statebackend.FormatNative:
		ps, err := t.be.Snapshot(b.Checkpoint)
		if err != nil {
			if statebackend.IsNoSpace(err) {
				err = t.noSpace("snapshot", err)
				t.decline(b, subjects.AsError(err))
				return err
			}
			t.decline(b, subjects.Errorf(subjects.CodeInternal, "snapshot: %v", err))
			return nil
		}
		target := statebackend.Target{SharedPrefix: b.Shared, PrivatePrefix: t.privatePrefix(b.Target)}
		if target.SharedPrefix == "" {
			// A savepoint shares nothing with the job's checkpoints.
			target.SharedPrefix = target.PrivatePrefix + "/shared"
		}
		upload = func(ctx context.Context) (statebackend.Handle, error) { return ps.Upload(ctx, store, target) }
		release = ps.Release
		cleanup = func(ctx context.Context) { deletePrefix(ctx, store, target.PrivatePrefix+"/") }
	case statebackend.FormatCanonical:
		sp, err := t.be.Savepoint()
		if err != nil {
			t.decline(b, subjects.Errorf(subjects.CodeInternal, "savepoint view: %v", err))
			return nil
		}
		key := t.privatePrefix(b.Target) + ".savepoint"
		upload = func(ctx context.Context) (statebackend.Handle, error) {
			defer sp.Release()
			return sp.Write(ctx, store, key)
		}
		release = sp.Release
		cleanup = func(context.Context) {}
	default:
		t.decline(b, subjects.Errorf(subjects.CodeInvalidArgument, "unknown snapshot format %v", b.Format))
		return nil
	}
	syncDur := time.Since(start)
	published := t.sink.published()
	ctx, cancel := context.WithCancel(t.ctx)
	ck := &checkpoint{id: b.Checkpoint, epoch: b.Epoch, kind: b.Kind, cancel: cancel}
	t.ckpts[b.Checkpoint] = ck
	t.asyncWG.Add(1)
	go func() {
		defer t.asyncWG.Done()
		defer cancel()
		start := time.Now()
		err := t.sink.waitConfirmed(ctx, published)
		var h statebackend.Handle
		if err == nil {
			h, err = upload(ctx)
		} else {
			release()
		}
		switch {
		case ctx.Err() != nil:
			// Aborted, or the task is ending: nobody waits for an answer.
			t.log.Debug("checkpoint upload canceled", "checkpoint", b.Checkpoint, "err", err)
		case err != nil:
			code := subjects.CodeStorageUnavailable
			if c := subjects.CodeOf(err); c != subjects.CodeInternal {
				code = c
			}
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			cleanup(cctx)
			ccancel()
			ck.answer.Store(t.decline(b, subjects.Errorf(code, "task %d: persisting checkpoint %d: %v", t.ref.Task, b.Checkpoint, err)))
		default:
			ack := subjects.Ack{Worker: t.w.name, TaskRef: t.ref, Checkpoint: b.Checkpoint, Epoch: b.Epoch, Handle: h, Operator: operatorInfo(t.spec.Operator.Type, t.op),
				Sync: subjects.Duration(syncDur), Async: subjects.Duration(time.Since(start))}
			a := &answer{subject: t.w.ns.Ack(t.ref.Job, t.w.name), msg: &ack}
			ck.answer.Store(a)
			t.publish(a.subject, a.msg)
			t.log.Debug("checkpoint acked", "checkpoint", b.Checkpoint, "kind", b.Kind.String(), "handle", h.String(),
				"sync", syncDur, "async", time.Since(start))
		}
	}()
	return nil
}

// complete handles a committed checkpoint: a native checkpoint's uploaded
// files may now be shared by later snapshots. A savepoint's are not: it is
// the user's and may be deleted independently of the checkpoints.
func (t *task) complete(c *subjects.Complete) {
	if c.Epoch < t.epoch.Load() {
		return
	}
	savepoint := c.Kind == subjects.KindSavepoint
	if ck := t.ckpts[c.Checkpoint]; ck != nil {
		savepoint = savepoint || ck.kind == subjects.KindSavepoint
	}
	if savepoint {
		t.be.SnapshotAborted(c.Checkpoint)
	} else {
		t.be.SnapshotCompleted(c.Checkpoint)
	}
	delete(t.ckpts, c.Checkpoint)
	// Forget older checkpoints that can no longer complete.
	for id := range t.ckpts {
		if id < c.Checkpoint {
			delete(t.ckpts, id)
		}
	}
}

// abort gives up a checkpoint: its upload is canceled and nothing it
// uploaded is ever shared, nor any object the coordinator found missing.
func (t *task) abort(a *subjects.Abort) {
	if a.Epoch < t.epoch.Load() {
		return
	}
	if c := t.ckpts[a.Checkpoint]; c != nil {
		c.cancel()
		delete(t.ckpts, a.Checkpoint)
	}
	t.be.SnapshotAborted(a.Checkpoint)
	if len(a.Missing) > 0 {
		// Objects this task may name are gone from the store: upload their
		// files again rather than name them in every later checkpoint.
		t.be.ForgetObjects(a.Missing)
		t.log.Warn("checkpoint objects missing from the store; their files will be uploaded again",
			"checkpoint", a.Checkpoint, "missing", len(a.Missing))
	}
}

// decline declines b's checkpoint and returns the answer sent.
func (t *task) decline(b *subjects.Barrier, reason *subjects.Error) *answer {
	t.log.Warn("declining checkpoint", "checkpoint", b.Checkpoint, "reason", reason)
	a := &answer{subject: t.w.ns.Decline(t.ref.Job, t.w.name),
		msg: &subjects.Decline{Worker: t.w.name, TaskRef: t.ref, Checkpoint: b.Checkpoint, Epoch: b.Epoch, Reason: reason}}
	t.publish(a.subject, a.msg)
	return a
}

func (t *task) publish(subject string, m subjects.Message) {
	b, err := subjects.Encode(m)
	if err == nil {
		err = t.w.nc.Publish(subject, b)
	}
	if err != nil {
		t.log.Warn("publishing", "type", m.MsgType().String(), "err", err)
	}
}

// deletePrefix deletes every object under prefix, best effort.
func deletePrefix(ctx context.Context, store objectstore.Store, prefix string) {
	objs, err := store.List(ctx, prefix)
	if err != nil || len(objs) == 0 {
		return
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	_ = store.Delete(ctx, keys...)
}
