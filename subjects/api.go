package subjects

import (
	"fmt"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// This file holds the user plane: the requests and replies of the "flotilla"
// micro service and of the savepoint trigger subject. People send these by
// hand, so requests are lenient: type and version may be omitted.
//
// Requests that change something (submit, cancel, stop, rescale, savepoint,
// savepoint delete) may carry a request id chosen by the client
// (RequestID): a client that got no answer sends the request again with
// the same id, and the leader carries out one request per id (see
// ValidateRequestID and coordinator/engine). Without an id every request is
// carried out.

// MaxRequestID is the longest request id accepted (as names: nameRE).
const MaxRequestID = 64

// ValidateRequestID checks a request id: empty (none), or 1-MaxRequestID of
// [A-Za-z0-9_-] (a nuid is 22 of them). Anything else is
// CodeInvalidArgument.
func ValidateRequestID(id string) error {
	if id != "" && !nameRE.MatchString(id) {
		return Errorf(CodeInvalidArgument, "invalid request_id %q: want 1-%d of [A-Za-z0-9_-]", id, MaxRequestID)
	}
	return nil
}

// TriggerSavepoint asks for a savepoint of a job. Published (or requested) on
// Namespace.TriggerSavepoint(job) with an empty or JSON body.
type TriggerSavepoint struct {
	Header
	// Job is taken from the subject when empty.
	Job string `json:"job,omitempty"`
	// Target is the location of the savepoint directory; empty means the
	// coordinator's default savepoint location in its store.
	Target string `json:"target,omitempty"`
	// Format is "canonical" (default) or "native".
	Format statebackend.Format `json:"format,omitempty"`
	// Stop ends the job once the savepoint is committed (stop-with-savepoint).
	Stop bool `json:"stop,omitempty"`
	// RequestID, if set, makes a resent request (the same id) join or
	// repeat the outcome of the first instead of taking another savepoint.
	RequestID string `json:"request_id,omitempty"`
}

func (*TriggerSavepoint) MsgType() Type { return TypeTriggerSavepoint }
func (*TriggerSavepoint) lenient()      {}

func (m *TriggerSavepoint) Validate() error {
	if err := ValidateRequestID(m.RequestID); err != nil {
		return err
	}
	if m.Job != "" {
		return ValidateName("job", m.Job)
	}
	return nil
}

// SavepointResult is the outcome of a savepoint.
type SavepointResult struct {
	Header
	Job        string `json:"job,omitempty"`
	Checkpoint uint64 `json:"checkpoint,omitempty"`
	Location   string `json:"location,omitempty"`
	Error      *Error `json:"error,omitempty"`
}

func (*SavepointResult) MsgType() Type     { return TypeSavepointResult }
func (*SavepointResult) Validate() error   { return nil }
func (m *SavepointResult) Failure() *Error { return m.Error }

// SubmitJob submits a job.
type SubmitJob struct {
	Header
	Spec JobSpec `json:"spec"`
	// Parallelism overrides Spec.Parallelism when set.
	Parallelism int `json:"parallelism,omitempty"`
	// FromSavepoint is a savepoint or checkpoint location to restore from.
	FromSavepoint string `json:"from_savepoint,omitempty"`
	// AllowOperatorChange restores FromSavepoint even if another operator
	// wrote it: the user says the change is intended.
	AllowOperatorChange bool `json:"allow_operator_change,omitempty"`
	// RequestID, if set, is recorded in the run's job record: a resent
	// request (the same id) is answered with the run it started, by this
	// leader or the next, instead of job_exists.
	RequestID string `json:"request_id,omitempty"`
}

func (*SubmitJob) MsgType() Type { return TypeSubmitJob }
func (*SubmitJob) lenient()      {}

func (m *SubmitJob) Validate() error {
	if err := ValidateRequestID(m.RequestID); err != nil {
		return err
	}
	if m.Parallelism < 0 {
		return Errorf(CodeInvalidArgument, "submit_job: parallelism %d is negative", m.Parallelism)
	}
	if m.Parallelism > 0 {
		m.Spec.Parallelism = m.Parallelism
	}
	m.Spec = m.Spec.WithDefaults()
	return m.Spec.Validate()
}

// JobRequest names a job, for status, cancel, stop and the list endpoints.
type JobRequest struct {
	Header
	Job string `json:"job"`
	// RequestID, if set on a cancel or stop, makes a resent request (the
	// same id) repeat the outcome of the first.
	RequestID string `json:"request_id,omitempty"`
}

func (*JobRequest) MsgType() Type { return TypeJobRequest }
func (*JobRequest) lenient()      {}

func (m *JobRequest) Validate() error {
	return firstErr(ValidateName("job", m.Job), ValidateRequestID(m.RequestID))
}

// RescaleJob changes a running job's parallelism through a savepoint.
type RescaleJob struct {
	Header
	Job         string `json:"job"`
	Parallelism int    `json:"parallelism"`
	// RequestID, if set, makes a resent request (the same id) join or
	// repeat the outcome of the first instead of rescaling again.
	RequestID string `json:"request_id,omitempty"`
}

func (*RescaleJob) MsgType() Type { return TypeRescaleJob }
func (*RescaleJob) lenient()      {}

func (m *RescaleJob) Validate() error {
	if err := firstErr(ValidateName("job", m.Job), ValidateRequestID(m.RequestID)); err != nil {
		return err
	}
	if m.Parallelism < 1 {
		return Errorf(CodeInvalidArgument, "rescale_job: parallelism %d must be at least 1", m.Parallelism)
	}
	return nil
}

// SavepointDelete deletes a savepoint by location.
type SavepointDelete struct {
	Header
	Location string `json:"location"`
	// RequestID, if set, makes a resent request (the same id) repeat the
	// outcome of the first rather than find the savepoint gone.
	RequestID string `json:"request_id,omitempty"`
}

func (*SavepointDelete) MsgType() Type { return TypeSavepointDelete }
func (*SavepointDelete) lenient()      {}

func (m *SavepointDelete) Validate() error {
	return firstErr(required(TypeSavepointDelete, "location", m.Location), ValidateRequestID(m.RequestID))
}

// TaskInfo is one task of a job in JobInfo.
type TaskInfo struct {
	Task    int            `json:"task"`
	Range   keygroup.Range `json:"range"`
	Worker  string         `json:"worker,omitempty"`
	Attempt uint64         `json:"attempt,omitempty"`
	State   TaskState      `json:"state,omitempty"`
	// Skipped is how many events the current attempt has skipped (events
	// its operator could not use), as of its worker's last heartbeat.
	Skipped uint64 `json:"skipped,omitempty"`
	// Stats are the figures of the current attempt, from its worker's last
	// heartbeat (nil before the first).
	Stats *TaskStats `json:"stats,omitempty"`
}

// JobInfo describes a job.
type JobInfo struct {
	Header
	Job   string     `json:"job,omitempty"`
	State JobState   `json:"state,omitempty"`
	Spec  *JobSpec   `json:"spec,omitempty"`
	Tasks []TaskInfo `json:"tasks,omitempty"`
	// LatestCheckpoint is the newest completed checkpoint or savepoint.
	LatestCheckpoint uint64 `json:"latest_checkpoint,omitempty"`
	Restarts         int    `json:"restarts,omitempty"`
	// Rate (events/s) and Lag (input messages not yet read) sum the tasks'
	// Stats; LastCheckpointAt is when the newest completed checkpoint or
	// savepoint of this coordinator's run of the job completed.
	Rate             float64   `json:"rate,omitempty"`
	Lag              uint64    `json:"lag,omitempty"`
	LastCheckpointAt time.Time `json:"last_checkpoint_at,omitzero"`
	// Waiting is set while the job is JobWaiting.
	Waiting *SlotShortage `json:"waiting,omitempty"`
	// Input describes the job's input streams and says whether they are
	// partitioned (job status).
	Input *InputInfo `json:"input,omitempty"`
	// Warnings are things the submitter should know (submit only): an input
	// that is not partitioned, limits that can evict unapplied events.
	Warnings []string `json:"warnings,omitempty"`
	Error    *Error   `json:"error,omitempty"`
}

// SlotShortage says why a job waits: it needs Needed slots (one per task)
// and the fleet can give it only Free of them (the slots it holds or has
// requested; no live worker that runs its operator has another free).
type SlotShortage struct {
	Needed int `json:"slots_needed"`
	Free   int `json:"slots_free"`
}

func (s SlotShortage) String() string {
	return fmt.Sprintf("waiting for slots: %d needed, %d free", s.Needed, s.Free)
}

func (*JobInfo) MsgType() Type     { return TypeJobInfo }
func (*JobInfo) Validate() error   { return nil }
func (m *JobInfo) Failure() *Error { return m.Error }

// JobList lists jobs.
type JobList struct {
	Header
	Jobs  []JobInfo `json:"jobs"`
	Error *Error    `json:"error,omitempty"`
}

func (*JobList) MsgType() Type     { return TypeJobList }
func (*JobList) Validate() error   { return nil }
func (m *JobList) Failure() *Error { return m.Error }

// Records returns the jobs, so that Encode stamps their headers too.
func (m *JobList) Records() []Message { return pointers(m.Jobs) }

// pointers returns pointers to the elements of xs, as messages.
func pointers[T any, P interface {
	*T
	Message
}](xs []T) []Message {
	out := make([]Message, len(xs))
	for i := range xs {
		out[i] = P(&xs[i])
	}
	return out
}

// WorkerInfo describes a registered worker.
type WorkerInfo struct {
	Worker        string    `json:"worker"`
	Instance      string    `json:"instance"`
	Host          string    `json:"host,omitempty"`
	Slots         int       `json:"slots"`
	FreeSlots     int       `json:"free_slots"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Unhealthy says why the worker gets no new tasks (Heartbeat.Unhealthy).
	Unhealthy string `json:"unhealthy,omitempty"`
}

// WorkerList lists registered workers.
type WorkerList struct {
	Header
	Workers []WorkerInfo `json:"workers"`
	Error   *Error       `json:"error,omitempty"`
}

func (*WorkerList) MsgType() Type     { return TypeWorkerList }
func (*WorkerList) Validate() error   { return nil }
func (m *WorkerList) Failure() *Error { return m.Error }

// TaskCheckpoint is one task's part of a completed checkpoint.
type TaskCheckpoint struct {
	Task   int                 `json:"task"`
	Worker string              `json:"worker,omitempty"`
	Handle statebackend.Handle `json:"handle"`
	Sync   Duration            `json:"sync"`
	Async  Duration            `json:"async"`
	// Operator is the operator whose state the handle holds; absent from
	// records written before it was added.
	Operator *OperatorInfo `json:"operator,omitempty"`
}

// CheckpointRecord is a completed checkpoint or savepoint as committed to
// JetStream: committed is completed. It is persisted for as long as the
// checkpoint is retained (savepoints: until deleted).
type CheckpointRecord struct {
	Header
	Job            string              `json:"job"`
	ID             uint64              `json:"id"`
	Kind           CheckpointKind      `json:"kind"`
	Format         statebackend.Format `json:"format"`
	Location       string              `json:"location"`
	Parallelism    int                 `json:"parallelism"`
	MaxParallelism int                 `json:"max_parallelism"`
	Triggered      time.Time           `json:"triggered"`
	Completed      time.Time           `json:"completed"`
	Size           int64               `json:"size"`
	Uploaded       int64               `json:"uploaded"`
	Tasks          []TaskCheckpoint    `json:"tasks"`
	// Input names the input whose stream sequences the tasks' applied marks
	// are (InputID): a restore into another input is refused.
	Input string `json:"input,omitempty"`
	// RequestID is the request id of the savepoint, stop or rescale request
	// this savepoint answers (TriggerSavepoint.RequestID): the request sent
	// again to a later leader is answered with this savepoint.
	RequestID string `json:"request_id,omitempty"`
}

func (*CheckpointRecord) MsgType() Type { return TypeCheckpointRecord }

// Operator returns the operator whose state the record holds, and false if
// no task recorded one (a record of an older build).
func (m *CheckpointRecord) Operator() (OperatorInfo, bool) {
	for _, t := range m.Tasks {
		if t.Operator != nil {
			return *t.Operator, true
		}
	}
	return OperatorInfo{}, false
}

func (m *CheckpointRecord) Validate() error {
	if err := firstErr(ValidateName("job", m.Job), required(TypeCheckpointRecord, "location", m.Location)); err != nil {
		return err
	}
	if m.ID == 0 || m.Kind == 0 || m.Parallelism < 1 || len(m.Tasks) != m.Parallelism {
		return Errorf(CodeInvalidArgument, "checkpoint_record: id %d kind %s parallelism %d with %d tasks", m.ID, m.Kind, m.Parallelism, len(m.Tasks))
	}
	for _, t := range m.Tasks {
		if err := t.Handle.Validate(m.MaxParallelism); err != nil {
			return Errorf(CodeCorruptState, "checkpoint_record %s/%d task %d: %v", m.Job, m.ID, t.Task, err)
		}
	}
	return nil
}

// CheckpointList lists a job's retained checkpoints or its savepoints.
type CheckpointList struct {
	Header
	Checkpoints []CheckpointRecord `json:"checkpoints"`
	Error       *Error             `json:"error,omitempty"`
}

func (*CheckpointList) MsgType() Type     { return TypeCheckpointList }
func (*CheckpointList) Validate() error   { return nil }
func (m *CheckpointList) Failure() *Error { return m.Error }

// Records returns the checkpoint records, so that Encode stamps their
// headers too.
func (m *CheckpointList) Records() []Message { return pointers(m.Checkpoints) }
