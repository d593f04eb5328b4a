package engine

import (
	"time"

	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/subjects"
)

// Event is an input to Step: a message from a worker or a user, the outcome
// of an Effect carried out, or a tick of the clock.
type Event interface{ isEvent() }

// Tick: time passed. Timers of every machine are evaluated; the periodic
// orphan sweep is due every Config.SweepInterval.
type Tick struct{}

// Resume starts a job a new term found in the metadata store: it first
// adopts the tasks workers still run, for one heartbeat timeout. A record
// of a job that ended is not resumed: the engine answers requests about
// the job with its state (job_not_running) instead of unknown_job.
type Resume struct {
	Record      subjects.JobRecord
	Checkpoints RunCheckpoints
}

// Submit starts a new run of a job. Reply hears a *subjects.JobInfo. The
// engine emits the run's PersistJob before anything else of the run.
type Submit struct {
	Spec subjects.JobSpec
	// From is the location the user gave, FromKey its object key ("" when
	// the run starts empty).
	From, FromKey       string
	AllowOperatorChange bool
	// Checkpoints: Latest is the highest id the job name used (committed or
	// not), Restore and From the submitted savepoint's restore point.
	Checkpoints RunCheckpoints
	Reply       any
	// RequestID is the client's request id (subjects.SubmitJob.RequestID),
	// if any: the engine starts one run per id. A submission sent again
	// within the term (MaxRemembered ids), or to a later term that found
	// the run's record (subjects.JobRecord.RequestID), is answered with
	// the run it started (Reply.Repeat), not job_exists.
	RequestID string
}

// CancelJob cancels a job. Reply hears a *subjects.JobInfo. A cancel with
// a RequestID this term already answered is answered as before.
type CancelJob struct {
	Job       string
	Reply     any
	RequestID string
}

// TriggerSavepoint queues a savepoint of Request.Job into Dir ("" for the
// default). Reply hears a *subjects.SavepointResult once the savepoint
// ends; Rescale > 0 stops the job with it and resubmits it at that
// parallelism (a Resubmit effect). A request with a Request.RequestID this
// term has seen (savepoint, stop and rescale alike) is not carried out
// again: Reply joins the savepoint in flight, and hears the same outcome,
// or hears the remembered answer. A term knows nothing of the requests of
// an earlier one: a request the previous leader never answered is carried
// out anew.
type TriggerSavepoint struct {
	Request subjects.TriggerSavepoint
	Dir     string
	Reply   any
	Rescale int
}

// RefuseSavepoint answers a savepoint request the caller refused before
// it could be queued (it could not be decoded, or names a bad target):
// Reply hears a *subjects.SavepointResult with Err, and the refusal is
// logged and published as an event.
type RefuseSavepoint struct {
	Job   string
	Err   error
	Reply any
}

// Resubmitted is the outcome of a Resubmit: Result, with the error of the
// submission if it failed. Everyone waiting for the rescale hears it.
type Resubmitted struct {
	Request uint64
	Result  subjects.SavepointResult
}

// Answered remembers Msg as the answer of the request with RequestID for
// operation Op, a request the caller carried out itself (savepoint
// delete): Answer returns it for the same request sent again.
type Answered struct {
	Op, RequestID string
	Msg           subjects.Message
}

// Register is a worker's registration; Reply hears a
// *subjects.RegisterResponse.
type Register struct {
	Req   subjects.RegisterRequest
	Reply any
}

// Heartbeat is a worker's heartbeat; Reply hears a
// *subjects.HeartbeatResponse.
type Heartbeat struct {
	HB    subjects.Heartbeat
	Reply any
}

// Offer is a worker offering slots to a job; Reply hears a
// *subjects.OfferResponse.
type Offer struct {
	Offer subjects.SlotOffer
	Reply any
}

// Status is a task's state change.
type Status struct{ Status subjects.TaskStatus }

// Ack is a task's checkpoint acknowledgement.
type Ack struct{ Ack subjects.Ack }

// Decline is a task declining a checkpoint.
type Decline struct{ Decline subjects.Decline }

// SlotRequestDone is the outcome of a SendSlotRequest: the slot the worker
// gave, or Err (refused, or no answer).
type SlotRequestDone struct {
	Req  subjects.SlotRequest
	Slot int
	Err  error
}

// DeployFailed is a Deploy the worker refused or did not answer.
type DeployFailed struct {
	Job  string
	Task subjects.TaskRef
	Err  error
}

// MetadataWritten is the outcome of a WriteMetadata.
type MetadataWritten struct {
	Job string
	ID  uint64
	Err error
}

// Committed is the outcome of a Commit.
type Committed struct {
	Job string
	ID  uint64
	Err error
}

// Sweep asks for an orphan sweep now with the given grace; Done is handed
// to the SweepOrphans effect.
type Sweep struct {
	Grace time.Duration
	Done  any
}

func (Tick) isEvent()             {}
func (Resume) isEvent()           {}
func (Submit) isEvent()           {}
func (CancelJob) isEvent()        {}
func (TriggerSavepoint) isEvent() {}
func (RefuseSavepoint) isEvent()  {}
func (Resubmitted) isEvent()      {}
func (Answered) isEvent()         {}
func (Register) isEvent()         {}
func (Heartbeat) isEvent()        {}
func (Offer) isEvent()            {}
func (Status) isEvent()           {}
func (Ack) isEvent()              {}
func (Decline) isEvent()          {}
func (SlotRequestDone) isEvent()  {}
func (DeployFailed) isEvent()     {}
func (MetadataWritten) isEvent()  {}
func (Committed) isEvent()        {}
func (Sweep) isEvent()            {}

// Effect is an output of Step, for the caller to carry out. Effects are
// returned in the order they must start; those with an outcome feed it back
// as the Event their doc names. None may block the loop that steps the
// engine: requests and writes run on their own goroutines.
type Effect interface{ isEffect() }

// SendSlotRequest: request Req on subjects.SlotRequest(Req.Worker); feed
// back SlotRequestDone.
type SendSlotRequest struct{ Req subjects.SlotRequest }

// Deploy: request Req on subjects.Deploy(Req.Worker); an error or a refusal
// is fed back as DeployFailed.
type Deploy struct {
	Job string
	Req subjects.DeployTask
}

// CancelTask: request Req on subjects.Cancel(Req.Worker), best effort.
type CancelTask struct {
	Job string
	Req subjects.CancelTask
}

// Publish: publish Msg on Subject (barriers, completions, aborts), best
// effort: each has its own way to be repeated or recovered.
type Publish struct {
	Subject string
	Msg     subjects.Message
}

// Notify: publish Event on the events stream under About.
type Notify struct {
	Event subjects.Event
	About string
}

// PersistJob: write Record to the metadata store under the term. Writes of
// one job must land in the order emitted; a later record of the job may
// replace one not yet written.
type PersistJob struct{ Record subjects.JobRecord }

// WriteMetadata: check Record's objects and write its metadata object
// (checkpoint.WriteMetadata); feed back MetadataWritten.
type WriteMetadata struct {
	Job    string
	Record subjects.CheckpointRecord
}

// Commit: commit Record to the metadata store, retrying until Deadline
// (checkpoint.Commit); feed back Committed.
type Commit struct {
	Job      string
	Record   subjects.CheckpointRecord
	Deadline time.Time
}

// DeleteCheckpoint: remove Record from the metadata store, then, while the
// term still holds the lease, its Files.
type DeleteCheckpoint struct {
	Record subjects.CheckpointRecord
	Files  []string
}

// RecordAttempt: observe an ended checkpoint attempt in the metrics and
// append it to the history.
type RecordAttempt struct{ Attempt subjects.CheckpointAttempt }

// FailedOver: Tasks tasks of Job were failed over with a lost worker (a
// metric).
type FailedOver struct {
	Job   string
	Tasks int
}

// MapInput: add the account mapping that partitions Spec's input, where the
// coordinator maps input at runtime (Config.MapInput).
type MapInput struct{ Spec subjects.JobSpec }

// Reply: answer To (an Event's Reply) with Msg. A nil To is nobody. Repeat
// says that Msg is the answer of a request already carried out (its
// request id sent again): the caller must not act on it a second time
// (what the adapter does after a submission).
type Reply struct {
	To     any
	Msg    subjects.Message
	Repeat bool
}

// Resubmit: a job stopped with savepoint Result.Location for a rescale;
// submit Spec from it, then feed back Resubmitted with Request and Result
// (with the error, if the submission failed), which answers everyone
// waiting. To are those waiting now, to answer directly only if the term
// ends first.
type Resubmit struct {
	Spec    subjects.JobSpec
	Result  subjects.SavepointResult
	Request uint64
	To      []any
}

// SweepJob is what the orphan sweep of one job must keep: objects
// Referenced, and everything under the Pending prefixes.
type SweepJob struct {
	Job        string
	Referenced map[string]bool
	Pending    []string
}

// SweepOrphans: delete the objects of Jobs' checkpoint directories older
// than Cutoff that neither they nor a stored record reference, then hand
// the number deleted to Done (if not nil).
type SweepOrphans struct {
	Jobs   []SweepJob
	Cutoff time.Time
	Done   any
}

func (SendSlotRequest) isEffect()  {}
func (Deploy) isEffect()           {}
func (CancelTask) isEffect()       {}
func (Publish) isEffect()          {}
func (Notify) isEffect()           {}
func (PersistJob) isEffect()       {}
func (WriteMetadata) isEffect()    {}
func (Commit) isEffect()           {}
func (DeleteCheckpoint) isEffect() {}
func (RecordAttempt) isEffect()    {}
func (FailedOver) isEffect()       {}
func (MapInput) isEffect()         {}
func (Reply) isEffect()            {}
func (Resubmit) isEffect()         {}
func (SweepOrphans) isEffect()     {}

// RunCheckpoints is what a job run restores from.
type RunCheckpoints struct {
	Latest   uint64                      // highest checkpoint id the job name used, any run: ids continue above it
	Retained []subjects.CheckpointRecord // this run's retained checkpoints
	Restore  []jobmaster.RestorePoint    // this run's checkpoints and savepoints, and its initial savepoint
	From     *subjects.CheckpointRecord  // the initial savepoint, if any
	// Savepoints are this run's savepoints (a resumed run's): the requests
	// they answered are answered with them if sent again.
	Savepoints []subjects.CheckpointRecord
}
