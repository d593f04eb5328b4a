package subjects

import (
	"encoding/json"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// This file holds the control-plane and checkpoint-plane messages. Every
// message embeds Header and has MsgType and Validate. Responses carry an
// optional *Error; when it is set, the other fields may be empty.

// RegisterRequest is a worker's registration with the resource manager.
type RegisterRequest struct {
	Header
	// Worker is the worker's stable identity, kept in its data directory so
	// that a restarted worker is the same worker.
	Worker string `json:"worker"`
	// Slots is the number of task slots the worker offers.
	Slots int `json:"slots"`
	// Operators are the operator types the worker can run.
	Operators []string `json:"operators,omitempty"`
	Host      string   `json:"host,omitempty"`
	Build     string   `json:"build,omitempty"`
	// Epoch is the highest coordinator epoch the worker has seen, and
	// Running what its slots hold under it: a coordinator that took over
	// adopts those attempts instead of restarting them.
	Epoch   uint64       `json:"epoch,omitempty"`
	Running []SlotReport `json:"running,omitempty"`
}

func (*RegisterRequest) MsgType() Type { return TypeRegisterRequest }

func (m *RegisterRequest) Validate() error {
	if err := ValidateName("worker", m.Worker); err != nil {
		return err
	}
	if m.Slots < 0 || m.Slots > 1024 {
		return Errorf(CodeInvalidArgument, "register: slots %d out of range [0, 1024]", m.Slots)
	}
	return nil
}

// RegisterResponse answers a RegisterRequest.
type RegisterResponse struct {
	Header
	// Instance identifies this registration; heartbeats must carry it.
	Instance string `json:"instance,omitempty"`
	// Epoch is the coordinator's fencing token: messages from a coordinator
	// with a lower epoch are ignored.
	Epoch             uint64   `json:"epoch,omitempty"`
	HeartbeatInterval Duration `json:"heartbeat_interval,omitempty"`
	HeartbeatTimeout  Duration `json:"heartbeat_timeout,omitempty"`
	// Adopted lists the allocations of RegisterRequest.Running whose
	// attempts the coordinator adopts: the worker moves them to Epoch and
	// keeps them running. Everything else it held under an older epoch is
	// fenced.
	Adopted []string `json:"adopted,omitempty"`
	Error   *Error   `json:"error,omitempty"`
}

func (*RegisterResponse) MsgType() Type { return TypeRegisterResponse }

func (m *RegisterResponse) Validate() error {
	if m.Error != nil {
		return nil
	}
	if m.Instance == "" || m.Epoch == 0 || m.HeartbeatInterval <= 0 || m.HeartbeatTimeout <= 0 {
		return Errorf(CodeMissingField, "register_response: instance, epoch and heartbeat settings are required")
	}
	return nil
}

// SlotReport is one slot's state in a heartbeat, after Flink's SlotReport.
type SlotReport struct {
	Slot int `json:"slot"`
	// Allocation is empty for a free slot.
	Allocation string `json:"allocation,omitempty"`
	Job        string `json:"job,omitempty"`
	// Task and Attempt are set while a task runs in the slot.
	Task    int    `json:"task,omitempty"`
	Attempt uint64 `json:"attempt,omitempty"`
	// State of the task in the slot, if any.
	State TaskState `json:"state,omitempty"`
	// Skipped is how many events the task's attempt has skipped because
	// its operator could not use them (or they had no usable key).
	Skipped uint64 `json:"skipped,omitempty"`
	// Stats are the figures of the task in the slot, if any.
	Stats *TaskStats `json:"stats,omitempty"`
	// Checkpoint is the highest checkpoint id whose barrier the attempt
	// took: a coordinator that adopts the attempt triggers above it.
	Checkpoint uint64 `json:"checkpoint,omitempty"`
	// Range is the key groups of the attempt, reported on registration: a
	// coordinator adopts an attempt only for the range it expects.
	Range *keygroup.Range `json:"range,omitempty"`
}

// Heartbeat is a worker's periodic liveness signal and slot report.
type Heartbeat struct {
	Header
	Worker   string       `json:"worker"`
	Instance string       `json:"instance"`
	Epoch    uint64       `json:"epoch"`
	Slots    []SlotReport `json:"slots"`
	// Leaving is set on the last heartbeat of a worker that is shutting
	// down: the coordinator fails its tasks over at once instead of waiting
	// for the heartbeat timeout.
	Leaving bool `json:"leaving,omitempty"`
	// Unhealthy, when set, says why the worker must get no new slot
	// requests (its data directory's disk is full); its running tasks go
	// on. Absent once it has room again.
	Unhealthy string `json:"unhealthy,omitempty"`
}

func (*Heartbeat) MsgType() Type { return TypeHeartbeat }

func (m *Heartbeat) Validate() error {
	if err := ValidateName("worker", m.Worker); err != nil {
		return err
	}
	if err := required(TypeHeartbeat, "instance", m.Instance); err != nil {
		return err
	}
	for _, s := range m.Slots {
		if s.Slot < 0 {
			return Errorf(CodeInvalidArgument, "heartbeat: negative slot %d", s.Slot)
		}
	}
	return nil
}

// HeartbeatResponse answers a Heartbeat. CodeUnknownWorker means: register
// again.
type HeartbeatResponse struct {
	Header
	Epoch uint64 `json:"epoch,omitempty"`
	// Release lists allocations of the slot report that the coordinator no
	// longer has (their job ended, failed or gave them back): the worker
	// frees those slots, stopping any task in them.
	Release []string `json:"release,omitempty"`
	Error   *Error   `json:"error,omitempty"`
}

func (*HeartbeatResponse) MsgType() Type   { return TypeHeartbeatResponse }
func (*HeartbeatResponse) Validate() error { return nil }

// SlotRequest asks a worker to reserve a slot for a job and offer it to the
// job's master.
type SlotRequest struct {
	Header
	Epoch      uint64 `json:"epoch"`
	Worker     string `json:"worker"`
	Allocation string `json:"allocation"`
	Job        string `json:"job"`
}

func (*SlotRequest) MsgType() Type { return TypeSlotRequest }

func (m *SlotRequest) Validate() error {
	return firstErr(ValidateName("worker", m.Worker), ValidateName("job", m.Job),
		required(TypeSlotRequest, "allocation", m.Allocation))
}

// SlotResponse answers a SlotRequest with the reserved slot.
type SlotResponse struct {
	Header
	Slot  int    `json:"slot"`
	Error *Error `json:"error,omitempty"`
}

func (*SlotResponse) MsgType() Type   { return TypeSlotResponse }
func (*SlotResponse) Validate() error { return nil }

// OfferedSlot is a reserved slot offered to a job master.
type OfferedSlot struct {
	Slot       int    `json:"slot"`
	Allocation string `json:"allocation"`
}

// SlotOffer offers a worker's reserved slots to a job's master.
type SlotOffer struct {
	Header
	Epoch    uint64        `json:"epoch"`
	Worker   string        `json:"worker"`
	Instance string        `json:"instance"`
	Job      string        `json:"job"`
	Slots    []OfferedSlot `json:"slots"`
}

func (*SlotOffer) MsgType() Type { return TypeSlotOffer }

func (m *SlotOffer) Validate() error {
	if err := firstErr(ValidateName("worker", m.Worker), ValidateName("job", m.Job)); err != nil {
		return err
	}
	if len(m.Slots) == 0 {
		return Errorf(CodeMissingField, "slot_offer: no slots")
	}
	for _, s := range m.Slots {
		if s.Allocation == "" || s.Slot < 0 {
			return Errorf(CodeInvalidArgument, "slot_offer: slot %d with allocation %q", s.Slot, s.Allocation)
		}
	}
	return nil
}

// OfferResponse lists the allocations the job master accepted; the worker
// frees the others.
type OfferResponse struct {
	Header
	Accepted []string `json:"accepted"`
	Error    *Error   `json:"error,omitempty"`
}

func (*OfferResponse) MsgType() Type   { return TypeOfferResponse }
func (*OfferResponse) Validate() error { return nil }

// TaskRef names one attempt of one task of a job. Attempt numbers grow with
// every deployment of the task, across coordinator restarts, so that a
// superseded attempt (a zombie) can always be told from the current one.
type TaskRef struct {
	Job     string `json:"job"`
	Task    int    `json:"task"`
	Attempt uint64 `json:"attempt"`
}

func (r TaskRef) validate(typ Type) error {
	if err := ValidateName("job", r.Job); err != nil {
		return err
	}
	if r.Task < 0 || r.Task >= keygroup.MaxMaxParallelism || r.Attempt == 0 {
		return Errorf(CodeInvalidArgument, "%s: task %d attempt %d", typ, r.Task, r.Attempt)
	}
	return nil
}

// DeployTask asks a worker to run one task of a job in an allocated slot.
type DeployTask struct {
	Header
	Epoch      uint64 `json:"epoch"`
	Worker     string `json:"worker"`
	Allocation string `json:"allocation"`
	TaskRef
	Parallelism int            `json:"parallelism"`
	Range       keygroup.Range `json:"range"`
	Spec        JobSpec        `json:"spec"`
	// Restore lists the state handles covering Range to restore from; empty
	// for a fresh start.
	Restore []statebackend.Handle `json:"restore,omitempty"`
	// RestoredFrom is the checkpoint id the handles belong to (0: none).
	RestoredFrom uint64 `json:"restored_from,omitempty"`
	// RestoredOperator is the operator (and state version) whose state the
	// handles hold, as their record says (absent for records of older
	// builds). The worker refuses the deployment with CodeOperatorMismatch
	// when the job's operator is another or writes another state version,
	// unless AllowOperatorChange (the user said the change is intended).
	RestoredOperator    *OperatorInfo `json:"restored_operator,omitempty"`
	AllowOperatorChange bool          `json:"allow_operator_change,omitempty"`
}

func (*DeployTask) MsgType() Type { return TypeDeployTask }

func (m *DeployTask) Validate() error {
	if err := firstErr(ValidateName("worker", m.Worker), m.TaskRef.validate(TypeDeployTask),
		required(TypeDeployTask, "allocation", m.Allocation), m.Spec.Validate()); err != nil {
		return err
	}
	if m.Spec.Name != m.Job {
		return Errorf(CodeInvalidArgument, "deploy_task: spec of %q for job %q", m.Spec.Name, m.Job)
	}
	if m.Parallelism < 1 || m.Parallelism > m.Spec.MaxParallelism || m.Task >= m.Parallelism {
		return Errorf(CodeInvalidArgument, "deploy_task: task %d of parallelism %d (max %d)", m.Task, m.Parallelism, m.Spec.MaxParallelism)
	}
	if err := validRange(TypeDeployTask, m.Range, m.Spec.MaxParallelism); err != nil {
		return err
	}
	for _, h := range m.Restore {
		if err := h.Validate(m.Spec.MaxParallelism); err != nil {
			return Errorf(CodeInvalidArgument, "deploy_task: restore handle: %v", err)
		}
	}
	return nil
}

func validRange(typ Type, r keygroup.Range, m int) error {
	if err := r.Validate(m); err != nil {
		return Errorf(CodeInvalidRange, "%s: %v", typ, err)
	}
	return nil
}

// CancelTask asks a worker to stop a task attempt.
type CancelTask struct {
	Header
	Epoch  uint64 `json:"epoch"`
	Worker string `json:"worker"`
	TaskRef
	// Release frees the attempt's slot too, so that the worker may offer it
	// again; without it the slot stays allocated to the job.
	Release bool `json:"release,omitempty"`
}

func (*CancelTask) MsgType() Type { return TypeCancelTask }

func (m *CancelTask) Validate() error {
	return firstErr(ValidateName("worker", m.Worker), m.TaskRef.validate(TypeCancelTask))
}

// Response is the answer to a request that returns nothing but success or
// an error.
type Response struct {
	Header
	Error *Error `json:"error,omitempty"`
}

func (*Response) MsgType() Type     { return TypeResponse }
func (*Response) Validate() error   { return nil }
func (m *Response) Failure() *Error { return m.Error }

// Err returns the response's error as an error (nil if none).
func (m *Response) Err() error {
	if m.Error == nil {
		return nil
	}
	return m.Error
}

// TaskStatus reports a task attempt's state change to the job master.
type TaskStatus struct {
	Header
	Worker string `json:"worker"`
	TaskRef
	State TaskState `json:"state"`
	Error *Error    `json:"error,omitempty"`
	// Gap, on a running task, reports input events evicted before they were
	// applied that the task continued past (source.on_gap continue).
	Gap *InputGap `json:"gap,omitempty"`
}

func (*TaskStatus) MsgType() Type { return TypeTaskStatus }

func (m *TaskStatus) Validate() error {
	if err := firstErr(ValidateName("worker", m.Worker), m.TaskRef.validate(TypeTaskStatus)); err != nil {
		return err
	}
	if m.State == TaskUnknown {
		return Errorf(CodeMissingField, "task_status: state is required")
	}
	return nil
}

// Barrier asks every task of a job to snapshot its state for a checkpoint
// or savepoint.
type Barrier struct {
	Header
	Epoch      uint64              `json:"epoch"`
	Job        string              `json:"job"`
	Checkpoint uint64              `json:"checkpoint"`
	Kind       CheckpointKind      `json:"kind"`
	Format     statebackend.Format `json:"format"`
	// Target is the object-key prefix under which each task writes its
	// private files (a checkpoint's chk-<n> or a savepoint's directory).
	Target string `json:"target"`
	// Shared is the object-key prefix of the job's shared (incremental) files.
	Shared    string    `json:"shared,omitempty"`
	Timestamp time.Time `json:"timestamp"`
}

func (*Barrier) MsgType() Type { return TypeBarrier }

func (m *Barrier) Validate() error {
	if err := firstErr(ValidateName("job", m.Job), required(TypeBarrier, "target", m.Target)); err != nil {
		return err
	}
	if m.Checkpoint == 0 || m.Kind == 0 || m.Format == 0 {
		return Errorf(CodeMissingField, "barrier: checkpoint, kind and format are required")
	}
	return nil
}

// Ack reports that a task persisted its state for a checkpoint.
type Ack struct {
	Header
	Worker string `json:"worker"`
	TaskRef
	Checkpoint uint64 `json:"checkpoint"`
	// Epoch is the epoch of the barrier answered (0 from older builds): a
	// coordinator counts only its own term's, so that an attempt it adopted
	// cannot answer its checkpoint with an upload of the previous term's.
	Epoch  uint64              `json:"epoch,omitempty"`
	Handle statebackend.Handle `json:"handle"`
	// Sync is the synchronous pause; Async the upload time.
	Sync  Duration `json:"sync"`
	Async Duration `json:"async"`
	// Operator is the operator whose state the handle holds (absent from
	// acks of older builds).
	Operator *OperatorInfo `json:"operator,omitempty"`
}

// OperatorInfo says which operator wrote a state, and in which version of
// its state format: a restore into another operator is refused unless the
// user says the change is intended.
type OperatorInfo struct {
	Type string `json:"type"`
	// StateVersion is the operator's state format version (1 unless the
	// operator says otherwise).
	StateVersion int `json:"state_version"`
}

func (*Ack) MsgType() Type { return TypeAck }

func (m *Ack) Validate() error {
	if err := firstErr(ValidateName("worker", m.Worker), m.TaskRef.validate(TypeAck)); err != nil {
		return err
	}
	if m.Checkpoint == 0 {
		return Errorf(CodeMissingField, "ack: checkpoint is required")
	}
	if err := m.Handle.Validate(keygroup.MaxMaxParallelism); err != nil {
		return Errorf(CodeInvalidArgument, "ack: handle: %v", err)
	}
	return nil
}

// Decline reports that a task could not take a checkpoint.
type Decline struct {
	Header
	Worker string `json:"worker"`
	TaskRef
	Checkpoint uint64 `json:"checkpoint"`
	// Epoch is the epoch of the barrier declined (0 from older builds).
	Epoch  uint64 `json:"epoch,omitempty"`
	Reason *Error `json:"reason"`
}

func (*Decline) MsgType() Type { return TypeDecline }

func (m *Decline) Validate() error {
	if err := firstErr(ValidateName("worker", m.Worker), m.TaskRef.validate(TypeDecline)); err != nil {
		return err
	}
	if m.Checkpoint == 0 || m.Reason == nil {
		return Errorf(CodeMissingField, "decline: checkpoint and reason are required")
	}
	return nil
}

// Complete tells a job's tasks that a checkpoint is committed.
type Complete struct {
	Header
	Epoch      uint64         `json:"epoch"`
	Job        string         `json:"job"`
	Checkpoint uint64         `json:"checkpoint"`
	Kind       CheckpointKind `json:"kind"`
}

func (*Complete) MsgType() Type { return TypeComplete }

func (m *Complete) Validate() error {
	if err := ValidateName("job", m.Job); err != nil {
		return err
	}
	if m.Checkpoint == 0 {
		return Errorf(CodeMissingField, "complete: checkpoint is required")
	}
	return nil
}

// Abort tells a job's tasks that a checkpoint was given up.
type Abort struct {
	Header
	Epoch      uint64 `json:"epoch"`
	Job        string `json:"job"`
	Checkpoint uint64 `json:"checkpoint"`
	Reason     *Error `json:"reason,omitempty"`
	// Missing names objects the acks referenced that the store does not
	// hold (or holds with another size): a task must never name them again
	// and uploads their files anew.
	Missing []string `json:"missing,omitempty"`
}

func (*Abort) MsgType() Type { return TypeAbort }

func (m *Abort) Validate() error {
	if err := ValidateName("job", m.Job); err != nil {
		return err
	}
	if m.Checkpoint == 0 {
		return Errorf(CodeMissingField, "abort: checkpoint is required")
	}
	return nil
}

// StateQuery asks the task owning Key for its current value. People type it
// by hand, so type and version may be omitted.
type StateQuery struct {
	Header
	Job string `json:"job,omitempty"`
	Key string `json:"key"`
}

func (*StateQuery) MsgType() Type { return TypeStateQuery }
func (*StateQuery) lenient()      {}

func (m *StateQuery) Validate() error { return required(TypeStateQuery, "key", m.Key) }

// StateResult answers a StateQuery.
type StateResult struct {
	Header
	Job   string          `json:"job,omitempty"`
	Key   string          `json:"key,omitempty"`
	Group int             `json:"group"`
	Task  int             `json:"task"`
	Found bool            `json:"found"`
	Value json.RawMessage `json:"value,omitempty"`
	Error *Error          `json:"error,omitempty"`
}

func (*StateResult) MsgType() Type     { return TypeStateResult }
func (*StateResult) Validate() error   { return nil }
func (m *StateResult) Failure() *Error { return m.Error }

// Event is published on Namespace.Events and kept in a JetStream stream.
type Event struct {
	Header
	Kind       EventKind `json:"kind"`
	Time       time.Time `json:"time"`
	Job        string    `json:"job,omitempty"`
	Worker     string    `json:"worker,omitempty"`
	Checkpoint uint64    `json:"checkpoint,omitempty"`
	State      JobState  `json:"state,omitempty"`
	Location   string    `json:"location,omitempty"`
	Message    string    `json:"message,omitempty"`
	Error      *Error    `json:"error,omitempty"`
}

func (*Event) MsgType() Type { return TypeEvent }

func (m *Event) Validate() error {
	if m.Kind == 0 {
		return Errorf(CodeMissingField, "event: kind is required")
	}
	return nil
}
