package worker

import (
	"fmt"

	"github.com/flotilla-io/flotilla/statebackend"
)

// diskFull records that a task's state storage ran out of room. The task
// fails with a storage error; the worker stays unhealthy while its data
// directory has less room than a task needs (unhealthy).
func (w *Worker) diskFull(err error) {
	w.log.Error("task state storage is full; the task fails and the worker takes no new tasks until it has room",
		"data", w.cfg.DataDir, "err", err)
}

// unhealthy returns why the worker must get no new tasks, or "": its data
// directory's filesystem has less free space than a task needs to commit
// (statebackend.MinFreeBytes of its memtable size). Heartbeats carry it, and
// the coordinator places no task on the worker until it has room again.
func (w *Worker) unhealthy() string {
	free, err := statebackend.FreeBytes(w.cfg.DataDir)
	if err != nil {
		return ""
	}
	need := statebackend.MinFreeBytes(w.cfg.MemTableSize)
	if free >= need {
		return ""
	}
	return fmt.Sprintf("disk full: %.1f MiB free in %s, a task needs %.1f MiB", float64(free)/(1<<20), w.cfg.DataDir, float64(need)/(1<<20))
}
