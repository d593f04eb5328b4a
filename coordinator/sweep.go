package coordinator

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
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
	done := make(chan int, 1)
	c.enqueue(func(now time.Time) { c.sweepOrphans(now, grace, done) })
	select {
	case n := <-done:
		return n
	case <-c.done:
		return 0
	}
}

// sweepOrphans deletes, for every job this coordinator knows, the objects
// of the job's checkpoints (under checkpoint.SharedLocation and the
// checkpoint.CheckpointLocation directories, never anything else under the
// job's name: a savepoint may have been written there, or another job's
// savepoints directory may be named like the job) that no retained
// checkpoint (nor the savepoint the run restored from) references and that
// are older than grace: leftovers of crashed uploads, aborted checkpoints
// and earlier runs. Called on the loop;
// the listing and deleting run on their own goroutine, which sends the
// number deleted on done (if not nil).
func (c *leader) sweepOrphans(now time.Time, grace time.Duration, done chan<- int) {
	type job struct {
		name       string
		referenced map[string]bool
		pending    []string
	}
	var jobs []job
	for _, name := range sortedKeys(c.jobs) {
		e := c.jobs[name]
		if e.cc == nil {
			continue
		}
		j := job{name: name, referenced: e.cc.Referenced()}
		if e.from != nil {
			for _, f := range checkpoint.Files(*e.from) {
				j.referenced[f] = true
			}
		}
		for _, id := range e.cc.Pending() {
			j.pending = append(j.pending, checkpoint.CheckpointLocation(name, id)+"/")
		}
		jobs = append(jobs, j)
	}
	cutoff := now.Add(-grace)
	go func() {
		deleted := 0
		if done != nil {
			defer func() { done <- deleted }()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for _, j := range jobs {
			var objs []objectstore.ObjectInfo
			var err error
			for _, prefix := range []string{checkpoint.SharedLocation(j.name) + "/", j.name + "/chk-"} {
				var part []objectstore.ObjectInfo
				if part, err = c.cfg.Store.List(ctx, prefix); err != nil {
					break
				}
				objs = append(objs, part...)
			}
			if err != nil {
				c.log.Warn("orphan sweep: listing", "job", j.name, "err", err)
				continue
			}
			// Every record still in the store references its files, even
			// one the coordinator no longer retains: a record whose
			// removal failed (no answer while JetStream elected a leader)
			// stays readable, and must not name deleted files.
			stored, _, err := c.store.Load(ctx, j.name, false)
			if err != nil {
				c.log.Warn("orphan sweep: reading the job's records", "job", j.name, "err", err)
				continue
			}
			for _, r := range stored.Checkpoints {
				for _, f := range checkpoint.Files(r) {
					j.referenced[f] = true
				}
			}
			var orphans []string
		next:
			for _, o := range objs {
				if j.referenced[o.Key] || o.ModTime.After(cutoff) || !isCheckpointObject(j.name, o.Key) {
					continue
				}
				for _, p := range j.pending {
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
				c.log.Warn("orphan sweep: not deleting", "job", j.name, "err", err)
				return
			}
			if err := c.cfg.Store.Delete(ctx, orphans...); err != nil {
				c.log.Warn("orphan sweep: deleting", "job", j.name, "err", err)
				continue
			}
			deleted += len(orphans)
			c.log.Info("orphan sweep", "job", j.name, "deleted", len(orphans))
		}
	}()
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
