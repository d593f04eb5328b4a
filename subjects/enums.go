package subjects

import (
	"encoding/json"
	"fmt"
)

// enum implements String and JSON (as names) for the persisted enums below.
// Values are append-only: a name, once written, keeps its number.
type enum[T ~uint8] struct{ names []string }

func (e enum[T]) str(v T) string {
	if int(v) < len(e.names) && e.names[v] != "" {
		return e.names[v]
	}
	return fmt.Sprintf("%d", uint8(v))
}

func (e enum[T]) parse(what string, b []byte) (T, error) {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, fmt.Errorf("%s must be a string", what)
	}
	for i, n := range e.names {
		if n == s && n != "" {
			return T(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q", what, s)
}

// TaskState is the state of a task attempt, as reported by its worker.
type TaskState uint8

// Task states. Append only.
const (
	TaskUnknown TaskState = iota
	TaskDeploying
	TaskRunning
	TaskFailed
	TaskFinished
	TaskCanceled
)

var taskStates = enum[TaskState]{[]string{"", "deploying", "running", "failed", "finished", "canceled"}}

func (s TaskState) String() string { return taskStates.str(s) }

// Terminal reports whether the attempt has ended.
func (s TaskState) Terminal() bool { return s == TaskFailed || s == TaskFinished || s == TaskCanceled }

// MarshalJSON writes the state's name.
func (s TaskState) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a state's name.
func (s *TaskState) UnmarshalJSON(b []byte) (err error) {
	*s, err = taskStates.parse("task state", b)
	return err
}

// JobState is the state of a job, after Flink's JobStatus.
type JobState uint8

// Job states. Append only.
const (
	JobUnknown JobState = iota
	JobCreated
	JobRunning
	JobRestarting
	JobFailed
	JobCanceled
	JobFinished
	JobStopping
	// JobWaiting: the job cannot get a slot for every task (Flink's
	// NoResourceAvailable); tasks with a slot run, the others wait for
	// workers to join or slots to be freed. JobInfo.Waiting says how many.
	JobWaiting
)

var jobStates = enum[JobState]{[]string{"", "created", "running", "restarting", "failed", "canceled", "finished", "stopping", "waiting"}}

func (s JobState) String() string { return jobStates.str(s) }

// Terminal reports whether the job has ended.
func (s JobState) Terminal() bool { return s == JobFailed || s == JobCanceled || s == JobFinished }

// MarshalJSON writes the state's name.
func (s JobState) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a state's name.
func (s *JobState) UnmarshalJSON(b []byte) (err error) {
	*s, err = jobStates.parse("job state", b)
	return err
}

// CheckpointKind tells a checkpoint from a savepoint.
type CheckpointKind uint8

// Checkpoint kinds. Append only.
const (
	KindCheckpoint CheckpointKind = iota + 1
	KindSavepoint
)

var checkpointKinds = enum[CheckpointKind]{[]string{"", "checkpoint", "savepoint"}}

func (k CheckpointKind) String() string { return checkpointKinds.str(k) }

// MarshalJSON writes the kind's name.
func (k CheckpointKind) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// UnmarshalJSON reads a kind's name.
func (k *CheckpointKind) UnmarshalJSON(b []byte) (err error) {
	*k, err = checkpointKinds.parse("checkpoint kind", b)
	return err
}

// EventKind names an event on Namespace.Events.
type EventKind uint8

// Event kinds. Append only; the name is a subject token.
const (
	EventWorkerJoined EventKind = iota + 1
	EventWorkerLost
	EventJobSubmitted
	EventJobStateChanged
	EventCheckpointCompleted
	EventCheckpointFailed
	EventSavepointCompleted
	EventSavepointFailed
	EventTaskFailed
	EventInputGap
)

var eventKinds = enum[EventKind]{[]string{"", "worker_joined", "worker_lost", "job_submitted", "job_state",
	"checkpoint_completed", "checkpoint_failed", "savepoint_completed", "savepoint_failed", "task_failed", "input_gap"}}

func (k EventKind) String() string { return eventKinds.str(k) }

// MarshalJSON writes the kind's name.
func (k EventKind) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// UnmarshalJSON reads a kind's name.
func (k *EventKind) UnmarshalJSON(b []byte) (err error) {
	*k, err = eventKinds.parse("event kind", b)
	return err
}
