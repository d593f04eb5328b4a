package subjects

import (
	"encoding/json"
	"time"
)

// This file holds what the fleet reports about itself: per-task figures in
// heartbeats and job status, and the checkpoint history kept in JetStream.

// TaskStats are one task attempt's figures, sampled by its worker at each
// heartbeat. Counters count from the attempt's start.
type TaskStats struct {
	// EventsIn counts the events of the task's key groups it read and did
	// not skip as applied before (replays), unusable ones included.
	EventsIn uint64 `json:"events_in"`
	// Outputs counts the outputs published to the sink (dead letters
	// excluded). Skipped events are counted in SlotReport.Skipped.
	Outputs uint64 `json:"outputs"`
	// Lag is the number of input messages not yet read: the consumer's
	// num_pending at the last message read.
	Lag uint64 `json:"lag"`
	// Rate is events in per second over the last heartbeat interval.
	Rate float64 `json:"rate"`
	// StateBytes is the disk space the task's state takes.
	StateBytes uint64 `json:"state_bytes"`
}

// CheckpointTrigger says what started a checkpoint attempt.
type CheckpointTrigger uint8

// Checkpoint triggers. Append only.
const (
	TriggerPeriodic CheckpointTrigger = iota + 1
	TriggerUser                       // a savepoint someone asked for
	TriggerStop                       // stop-with-savepoint, and the savepoint of a rescale
)

var checkpointTriggers = enum[CheckpointTrigger]{[]string{"", "periodic", "savepoint", "stop"}}

func (t CheckpointTrigger) String() string { return checkpointTriggers.str(t) }

// MarshalJSON writes the trigger's name.
func (t CheckpointTrigger) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// UnmarshalJSON reads a trigger's name.
func (t *CheckpointTrigger) UnmarshalJSON(b []byte) (err error) {
	*t, err = checkpointTriggers.parse("checkpoint trigger", b)
	return err
}

// CheckpointOutcome is how a checkpoint attempt ended.
type CheckpointOutcome uint8

// Checkpoint outcomes. Append only.
const (
	// OutcomeCompleted: committed to JetStream.
	OutcomeCompleted CheckpointOutcome = iota + 1
	// OutcomeFailed: declined, expired, or its metadata write or commit
	// failed; counts towards tolerable failures.
	OutcomeFailed
	// OutcomeAborted: given up without a fault of its own (subsumed, a task
	// failed over, the job ended).
	OutcomeAborted
)

var checkpointOutcomes = enum[CheckpointOutcome]{[]string{"", "completed", "failed", "aborted"}}

func (o CheckpointOutcome) String() string { return checkpointOutcomes.str(o) }

// MarshalJSON writes the outcome's name.
func (o CheckpointOutcome) MarshalJSON() ([]byte, error) { return json.Marshal(o.String()) }

// UnmarshalJSON reads an outcome's name.
func (o *CheckpointOutcome) UnmarshalJSON(b []byte) (err error) {
	*o, err = checkpointOutcomes.parse("checkpoint outcome", b)
	return err
}

// OutcomeOf returns the outcome of a checkpoint given up for reason.
func OutcomeOf(reason *Error) CheckpointOutcome {
	if reason != nil && reason.Code == CodeCheckpointAborted {
		return OutcomeAborted
	}
	return OutcomeFailed
}

// TaskAttempt is one task's part of a checkpoint attempt: what it acked,
// or nothing (Acked false) if it had not acked when the attempt ended.
type TaskAttempt struct {
	Task     int      `json:"task"`
	Worker   string   `json:"worker,omitempty"`
	Acked    bool     `json:"acked"`
	Sync     Duration `json:"sync,omitempty"`
	Async    Duration `json:"async,omitempty"`
	Size     int64    `json:"size,omitempty"`
	Uploaded int64    `json:"uploaded,omitempty"`
}

// CheckpointAttempt is one checkpoint or savepoint attempt as kept in the
// checkpoint history (Namespace.History): every attempt, completed, failed
// or aborted, with its figures. It is persisted in JetStream.
type CheckpointAttempt struct {
	Header
	Job         string            `json:"job"`
	ID          uint64            `json:"id"`
	Kind        CheckpointKind    `json:"kind"`
	Trigger     CheckpointTrigger `json:"trigger"`
	Outcome     CheckpointOutcome `json:"outcome"`
	Location    string            `json:"location,omitempty"`
	Parallelism int               `json:"parallelism"`
	Triggered   time.Time         `json:"triggered"`
	Ended       time.Time         `json:"ended"`
	// Duration is Ended - Triggered.
	Duration Duration `json:"duration"`
	// Size and Uploaded sum the acks received (all of them when completed).
	Size     int64         `json:"size"`
	Uploaded int64         `json:"uploaded"`
	Failure  *Error        `json:"failure,omitempty"`
	Tasks    []TaskAttempt `json:"tasks"`
}

func (*CheckpointAttempt) MsgType() Type { return TypeCheckpointAttempt }

func (m *CheckpointAttempt) Validate() error {
	if err := ValidateName("job", m.Job); err != nil {
		return err
	}
	if m.ID == 0 || m.Kind == 0 || m.Trigger == 0 || m.Outcome == 0 {
		return Errorf(CodeMissingField, "checkpoint_attempt: id, kind, trigger and outcome are required")
	}
	if (m.Outcome == OutcomeCompleted) != (m.Failure == nil) {
		return Errorf(CodeInvalidArgument, "checkpoint_attempt %s/%d: outcome %s with failure %v", m.Job, m.ID, m.Outcome, m.Failure)
	}
	return nil
}

// HistoryRequest asks for a job's checkpoint history: the newest Limit
// attempts (0: DefaultHistoryLimit).
type HistoryRequest struct {
	Header
	Job   string `json:"job"`
	Limit int    `json:"limit,omitempty"`
}

// DefaultHistoryLimit is the number of attempts a HistoryRequest without a
// limit gets; MaxHistoryLimit the most one may ask for.
const (
	DefaultHistoryLimit = 100
	MaxHistoryLimit     = 1000
)

func (*HistoryRequest) MsgType() Type { return TypeHistoryRequest }
func (*HistoryRequest) lenient()      {}

func (m *HistoryRequest) Validate() error {
	if err := ValidateName("job", m.Job); err != nil {
		return err
	}
	if m.Limit < 0 || m.Limit > MaxHistoryLimit {
		return Errorf(CodeInvalidArgument, "history_request: limit %d out of range [0, %d]", m.Limit, MaxHistoryLimit)
	}
	return nil
}

// CheckpointHistory answers a HistoryRequest, oldest first. Truncated says
// older attempts exist beyond the limit (or beyond what fits in a reply).
type CheckpointHistory struct {
	Header
	Attempts  []CheckpointAttempt `json:"attempts"`
	Truncated bool                `json:"truncated,omitempty"`
	Error     *Error              `json:"error,omitempty"`
}

func (*CheckpointHistory) MsgType() Type   { return TypeCheckpointHistory }
func (*CheckpointHistory) Validate() error { return nil }

// APICheckpointHistory is the user API endpoint of a job's checkpoint
// history: HistoryRequest -> CheckpointHistory.
const APICheckpointHistory = "checkpoint.history"

// History is the subject on which the coordinator records job's checkpoint
// attempts (CheckpointAttempt), kept in a JetStream stream.
func (n Namespace) History(job string) string { return n.s("history." + job) }

// HistoryAll matches the checkpoint history of every job.
func (n Namespace) HistoryAll() string { return n.s("history.*") }
