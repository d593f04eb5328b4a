package engine

import (
	"maps"
	"slices"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
	"github.com/flotilla-io/flotilla/subjects"
)

// The queries below read the engine's state for the user API and metrics;
// they change nothing, and run on the goroutine that steps the engine.

// JobInfo returns the status of job name: the job master's view with the
// figures of its current attempts added (only the state, for a job the
// term found ended).
func (e *Engine) JobInfo(name string) (subjects.JobInfo, bool) {
	j := e.jobs[name]
	if j == nil {
		if st, ok := e.ended[name]; ok {
			return subjects.JobInfo{Job: name, State: st}, true
		}
		return subjects.JobInfo{Error: unknownJob(name)}, false
	}
	return e.jobInfo(j), true
}

// Jobs returns the status of every job, by name.
func (e *Engine) Jobs() []subjects.JobInfo {
	out := []subjects.JobInfo{}
	for _, name := range sortedKeys(e.jobs) {
		out = append(out, e.jobInfo(e.jobs[name]))
	}
	return out
}

func (e *Engine) jobInfo(j *job) subjects.JobInfo {
	info := j.jm.Info()
	info.LastCheckpointAt = j.lastCompleted
	in := subjects.DescribeInput(&j.rec.Spec)
	in.Gaps = j.gaps
	info.Input = &in
	if info.State.Terminal() {
		return info
	}
	for i := range info.Tasks {
		t := &info.Tasks[i]
		f, ok := j.figures[t.Task]
		if !ok || f.attempt != t.Attempt || f.worker != t.Worker || t.State != subjects.TaskRunning {
			continue
		}
		st := f.stats
		t.Stats = &st
		info.Rate += st.Rate
		info.Lag += st.Lag
	}
	return info
}

// Workers returns every registered worker.
func (e *Engine) Workers() []subjects.WorkerInfo {
	return append([]subjects.WorkerInfo{}, e.rm.Workers()...)
}

// HasOperator reports whether a registered worker has operator.
func (e *Engine) HasOperator(operator string) bool { return e.rm.HasOperator(operator) }

// MaxParallelism returns job name's max_parallelism, 0 for an unknown job.
func (e *Engine) MaxParallelism(name string) int {
	if j := e.jobs[name]; j != nil {
		return j.jm.Spec().MaxParallelism
	}
	return 0
}

// Refusal returns why a savepoint, stop or rescale of job name is refused
// at once (it does not exist or has ended), nil if it is not, or if its
// request id was seen (TriggerSavepoint answers it).
func (e *Engine) Refusal(name, requestID string) *subjects.Error {
	key := requestKey{opSavepoint, requestID}
	if _, ok := e.inFlight[key]; ok && requestID != "" {
		return nil
	}
	if _, ok := e.answers[key]; ok && requestID != "" {
		return nil
	}
	switch j := e.jobs[name]; {
	case j == nil:
		return e.absent(name)
	case j.jm.State().Terminal():
		return subjects.Errorf(subjects.CodeJobNotRunning, "job %q is %s", name, j.jm.State())
	}
	return nil
}

// Answer returns a copy of the remembered answer of the request with
// requestID for operation op (Answered), and false if there is none.
func (e *Engine) Answer(op, requestID string) (subjects.Message, bool) {
	m, ok := e.answers[requestKey{op, requestID}]
	if !ok || requestID == "" {
		return nil, false
	}
	return clone(m), true
}

// StateLookup returns the key group of key in job name, or why no task can
// answer a state query for it now.
func (e *Engine) StateLookup(name, key string) (int, *subjects.Error) {
	j := e.jobs[name]
	if j == nil {
		return 0, unknownJob(name)
	}
	st := j.jm.State()
	if st != subjects.JobRunning && st != subjects.JobWaiting {
		return 0, subjects.Errorf(subjects.CodeJobNotRunning, "job %q is %s", name, st)
	}
	g := keygroup.Of([]byte(key), j.jm.Spec().MaxParallelism)
	if info := j.jm.Info(); info.Waiting != nil {
		// Say which task cannot answer and why, rather than time out.
		for _, t := range info.Tasks {
			if t.Range.Contains(g) && t.Worker == "" {
				return g, subjects.Errorf(subjects.CodeUnavailable, "task %d of %q, owning key group %d, has no slot: the job is %s",
					t.Task, name, g, info.Waiting)
			}
		}
	}
	return g, nil
}

// Retained returns job name's retained checkpoints, which the checkpoint
// coordinator decides (the metadata store lags while subsumed records are
// deleted); known is false for a job the engine does not run.
func (e *Engine) Retained(name string) (list []subjects.CheckpointRecord, known bool) {
	j := e.jobs[name]
	if j == nil {
		return nil, false
	}
	return append([]subjects.CheckpointRecord{}, j.cc.Retained()...), true
}

// SavepointUsers returns the job that can restore only from the savepoint
// at location (it restored from it and completed no checkpoint since), ""
// if none, and every object a retained checkpoint of any job references.
func (e *Engine) SavepointUsers(location string) (inUse string, referenced map[string]bool) {
	referenced = map[string]bool{}
	for _, name := range sortedKeys(e.jobs) {
		j := e.jobs[name]
		for f := range j.cc.Referenced() {
			referenced[f] = true
		}
		if j.from != nil && j.from.Location == location && !j.jm.State().Terminal() && len(j.cc.Retained()) == 0 {
			inUse = name
		}
	}
	return inUse, referenced
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
