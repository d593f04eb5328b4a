package coordinator

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/coordinator/engine"
	"github.com/flotilla-io/flotilla/objectstore"
)

// SweepOrphans runs the orphan sweep now with the given grace period and
// returns the number of objects it deleted. The periodic sweep uses
// Config.OrphanGrace; a grace shorter than the longest upload can delete
// files of checkpoints in flight, so use a short one only on stopped jobs.
// A standby sweeps nothing and returns 0.
func (co *Coordinator) SweepOrphans(grace time.Duration) int {
	c := co.current()
	if c == nil {
		return 0
	}
	ch := make(chan int, 1)
	var done chan<- int = ch // the type carryOut hands on
	c.feed(engine.Sweep{Grace: grace, Done: done})
	select {
	case n := <-ch:
		return n
	case <-c.done:
		return 0
	}
}

// sweepOrphans deletes, for every job of f (engine.SweepOrphans), the
// objects of the job's checkpoints (under checkpoint.SharedLocation and the
// checkpoint.CheckpointLocation directories, never anything else under the
// job's name: a savepoint may have been written there, or another job's
// savepoints directory may be named like the job) that the job does not use
// and no stored record references, and that are older than f.Cutoff:
// leftovers of crashed uploads, aborted checkpoints and earlier runs. It
// sends the number deleted on done (if not nil).
func (c *leader) sweepOrphans(f engine.SweepOrphans, done chan<- int) {
	cutoff := f.Cutoff
	jobs := f.Jobs
	deleted := 0
	if done != nil {
		defer func() { done <- deleted }()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, j := range jobs {
		var objs []objectstore.ObjectInfo
		var err error
		for _, prefix := range []string{checkpoint.SharedLocation(j.Job) + "/", j.Job + "/chk-"} {
			var part []objectstore.ObjectInfo
			if part, err = c.cfg.Store.List(ctx, prefix); err != nil {
				break
			}
			objs = append(objs, part...)
		}
		if err != nil {
			c.log.Warn("orphan sweep: listing", "job", j.Job, "err", err)
			continue
		}
		// Every record still in the store references its files, even
		// one the coordinator no longer retains: a record whose
		// removal failed (no answer while JetStream elected a leader)
		// stays readable, and must not name deleted files.
		stored, _, err := c.store.Load(ctx, j.Job, false)
		if err != nil {
			c.log.Warn("orphan sweep: reading the job's records", "job", j.Job, "err", err)
			continue
		}
		for _, r := range stored.Checkpoints {
			for _, f := range checkpoint.Files(r) {
				j.Referenced[f] = true
			}
		}
		var orphans []string
	next:
		for _, o := range objs {
			if j.Referenced[o.Key] || o.ModTime.After(cutoff) || !isCheckpointObject(j.Job, o.Key) {
				continue
			}
			for _, p := range j.Pending {
				if strings.HasPrefix(o.Key, p) {
					continue next
				}
			}
			orphans = append(orphans, o.Key)
		}
		if len(orphans) == 0 {
			continue
		}
		if err := c.co.holds(ctx, c.epoch); err != nil {
			c.log.Warn("orphan sweep: not deleting", "job", j.Job, "err", err)
			return
		}
		if err := c.cfg.Store.Delete(ctx, orphans...); err != nil {
			c.log.Warn("orphan sweep: deleting", "job", j.Job, "err", err)
			continue
		}
		deleted += len(orphans)
		c.log.Info("orphan sweep", "job", j.Job, "deleted", len(orphans))
	}
}

// isCheckpointObject reports whether key lies where job's checkpoints write:
// its shared directory or a chk-<n> directory (checkpoint.SharedLocation,
// checkpoint.CheckpointLocation).
func isCheckpointObject(job, key string) bool {
	if strings.HasPrefix(key, checkpoint.SharedLocation(job)+"/") {
		return true
	}
	rest, ok := strings.CutPrefix(key, job+"/chk-")
	if !ok {
		return false
	}
	n, _, ok := strings.Cut(rest, "/")
	_, err := strconv.ParseUint(n, 10, 64)
	return ok && err == nil
}
