package subjects

import "time"

// The records below are persisted in JetStream KV by coordinator/metastore,
// which owns their buckets and keys. They carry a type and a version like
// every message, so that a record written today is readable in a year.

// JobRecord is a job as persisted, so that the next leader resumes every
// job that had not ended.
type JobRecord struct {
	Header
	Spec      JobSpec   `json:"spec"`
	State     JobState  `json:"state"`
	Submitted time.Time `json:"submitted"`
	// FromSavepoint is the object key of the savepoint or checkpoint the
	// run was submitted with.
	FromSavepoint string `json:"from_savepoint,omitempty"`
	// AllowOperatorChange: the submit said that restoring FromSavepoint
	// into another operator or state version is intended.
	AllowOperatorChange bool `json:"allow_operator_change,omitempty"`
	// FirstID is the first checkpoint id of this run: checkpoints of the
	// job's earlier runs (lower ids) are never restored.
	FirstID uint64 `json:"first_id"`
	// Term is the leader term (coordinator epoch) that wrote the record; a
	// leader of an older term may not overwrite it. 0 in records written
	// before leases existed.
	Term uint64 `json:"term,omitempty"`
	// FirstAttempt is the lowest attempt number of this run: a leader that
	// takes over never adopts a reported attempt below it, which belongs to
	// an earlier run of the job name. 0 in records written before adoption
	// existed.
	FirstAttempt uint64 `json:"first_attempt,omitempty"`
	// RequestID is the request id of the submission that started this run
	// (SubmitJob.RequestID), if it had one: the same submission resent to
	// a later leader is answered with this run.
	RequestID string `json:"request_id,omitempty"`
}

func (*JobRecord) MsgType() Type { return TypeJobRecord }

func (m *JobRecord) Validate() error { return ValidateName("job", m.Spec.Name) }

// LatestPointer is a job's latest completed checkpoint or savepoint: moving
// it by compare-and-set is what commits one. Term is the highest leader
// term that claimed the job; a commit of an older term is refused.
type LatestPointer struct {
	Header
	ID       uint64         `json:"id"`
	Kind     CheckpointKind `json:"kind,omitempty"`
	Location string         `json:"location,omitempty"`
	Term     uint64         `json:"term,omitempty"`
}

func (*LatestPointer) MsgType() Type   { return TypeLatestPointer }
func (*LatestPointer) Validate() error { return nil }

// LeaderLease is the value of the coordinators' lease key: who leads, in
// which term. The key expires with its bucket's TTL unless renewed.
type LeaderLease struct {
	Header
	// Holder is the leading coordinator's name.
	Holder string `json:"holder"`
	// Term is the leader's fencing token: the coordinator epoch it took
	// after acquiring the key. 0 while the holder is still taking it.
	Term uint64 `json:"term"`
	// Acquired is when the holder acquired the lease, by its clock.
	Acquired time.Time `json:"acquired"`
}

func (*LeaderLease) MsgType() Type { return TypeLeaderLease }

func (m *LeaderLease) Validate() error { return required(TypeLeaderLease, "holder", m.Holder) }

// LeaderInfo answers "who leads": every coordinator, leader or standby,
// answers it (subject Namespace.Leader).
type LeaderInfo struct {
	Header
	// Leader and Term are the lease's holder and term; empty while no
	// coordinator leads (the lease expired and nobody took it yet).
	Leader string `json:"leader,omitempty"`
	Term   uint64 `json:"term,omitempty"`
	// Answered is the name of the coordinator that answered, and Leading
	// whether it is the leader and acting.
	Answered string `json:"answered"`
	Leading  bool   `json:"leading"`
	Error    *Error `json:"error,omitempty"`
}

func (*LeaderInfo) MsgType() Type     { return TypeLeaderInfo }
func (*LeaderInfo) Validate() error   { return nil }
func (m *LeaderInfo) Failure() *Error { return m.Error }
func (*LeaderInfo) lenient()          {}
