// Package subjects owns flotilla's wire: every NATS subject name, every
// message type with its type and version, the one encode/decode path that
// validates, and the registry of error codes. No other package spells a
// subject by hand or string-matches an error.
//
// All subjects live under a prefix (default "flotilla"). With prefix p:
//
//	Control plane (Flink's TaskExecutor / ResourceManager / JobMaster protocol)
//	  p.rm.register                     worker -> coordinator, request: RegisterRequest -> RegisterResponse
//	  p.rm.heartbeat.<worker>           worker -> coordinator, request: Heartbeat -> HeartbeatResponse
//	  p.worker.<worker>.slot            coordinator -> worker, request: SlotRequest -> SlotResponse
//	  p.job.<job>.offer.<worker>        worker -> job master, request: SlotOffer -> OfferResponse
//	  p.worker.<worker>.deploy          job master -> worker, request: DeployTask -> Response
//	  p.worker.<worker>.cancel          job master -> worker, request: CancelTask -> Response
//	  p.job.<job>.status.<worker>       worker -> job master, publish: TaskStatus
//
//	Checkpoint plane
//	  p.job.<job>.barrier               coordinator -> tasks, publish: Barrier
//	  p.job.<job>.ack.<worker>          task -> coordinator, publish: Ack
//	  p.job.<job>.decline.<worker>      task -> coordinator, publish: Decline
//	  p.job.<job>.complete              coordinator -> tasks, publish: Complete
//	  p.job.<job>.abort                 coordinator -> tasks, publish: Abort
//
//	Queryable state
//	  p.job.<job>.state.<group>         anyone -> the task owning key group <group>, request: StateQuery -> StateResult
//
//	User plane
//	  p.trigger.savepoint.<job>         anyone, publish or request: TriggerSavepoint (body may be empty) -> SavepointResult
//	  p.api.<endpoint>                  the "flotilla" nats micro service (see API* constants), served by the leader only
//	  p.coordinator.leader              anyone -> every coordinator, request: LeaderInfo -> LeaderInfo
//	  p.events.<kind...>                coordinator, publish: Event, kept in a JetStream stream
//
// Everything a worker says (register aside) carries its name as the last
// token of the subject, so that per-worker NATS users bind each worker to
// its own messages; receivers check that the body names the same worker
// (CheckSpeaker).
//
// Names used as subject tokens (jobs, workers) must satisfy ValidateName.
package subjects

import (
	"regexp"
	"strconv"
)

// DefaultPrefix is the subject prefix of a fleet that does not configure one.
const DefaultPrefix = "flotilla"

// Namespace builds the subjects of one fleet. The zero value uses
// DefaultPrefix.
type Namespace struct {
	prefix string
}

// NewNamespace returns the namespace with the given prefix; an empty prefix
// means DefaultPrefix. The prefix must be one or more valid subject tokens
// separated by dots.
func NewNamespace(prefix string) (Namespace, error) {
	if prefix == "" {
		return Namespace{}, nil
	}
	if !prefixRE.MatchString(prefix) {
		return Namespace{}, Errorf(CodeInvalidArgument, "invalid subject prefix %q", prefix)
	}
	return Namespace{prefix: prefix}, nil
}

// Prefix returns the namespace's prefix.
func (n Namespace) Prefix() string {
	if n.prefix == "" {
		return DefaultPrefix
	}
	return n.prefix
}

func (n Namespace) s(rest string) string { return n.Prefix() + "." + rest }

// Register is the subject on which the coordinator answers worker
// registration.
func (n Namespace) Register() string { return n.s("rm.register") }

// Heartbeat is the subject of worker's heartbeats; HeartbeatAll matches all.
func (n Namespace) Heartbeat(worker string) string { return n.s("rm.heartbeat." + worker) }

// HeartbeatAll matches the heartbeats of every worker.
func (n Namespace) HeartbeatAll() string { return n.s("rm.heartbeat.*") }

// SlotRequest is the subject on which worker answers slot requests.
func (n Namespace) SlotRequest(worker string) string { return n.s("worker." + worker + ".slot") }

// Deploy is the subject on which worker accepts task deployments.
func (n Namespace) Deploy(worker string) string { return n.s("worker." + worker + ".deploy") }

// Cancel is the subject on which worker accepts task cancellations.
func (n Namespace) Cancel(worker string) string { return n.s("worker." + worker + ".cancel") }

// Offer is the subject on which job's master accepts worker's slot offers.
func (n Namespace) Offer(job, worker string) string { return n.s("job." + job + ".offer." + worker) }

// TaskStatus is the subject of status reports of job's tasks on worker.
func (n Namespace) TaskStatus(job, worker string) string {
	return n.s("job." + job + ".status." + worker)
}

// Barrier is the subject on which job's tasks receive checkpoint barriers.
func (n Namespace) Barrier(job string) string { return n.s("job." + job + ".barrier") }

// Ack is the subject of checkpoint acknowledgements of job's tasks on
// worker.
func (n Namespace) Ack(job, worker string) string { return n.s("job." + job + ".ack." + worker) }

// Decline is the subject of checkpoint declines of job's tasks on worker.
func (n Namespace) Decline(job, worker string) string {
	return n.s("job." + job + ".decline." + worker)
}

// Complete is the subject on which job's tasks learn that a checkpoint is
// committed.
func (n Namespace) Complete(job string) string { return n.s("job." + job + ".complete") }

// Abort is the subject on which job's tasks learn that a checkpoint was
// given up.
func (n Namespace) Abort(job string) string { return n.s("job." + job + ".abort") }

// JobWildcard matches what workers say of kind (one of "offer", "status",
// "ack", "decline") about every job, from every worker.
func (n Namespace) JobWildcard(kind string) string { return n.s("job.*." + kind + ".*") }

// JobWorkers matches what workers say of kind about job, from every worker.
func (n Namespace) JobWorkers(job, kind string) string { return n.s("job." + job + "." + kind + ".*") }

// CheckSpeaker returns an invalid_argument error unless subject, on which
// a worker said something, names worker (the worker its body names) as
// its last token: subject permissions bind a NATS user to the subjects of
// its worker, and this binds the body to the subject.
func CheckSpeaker(subject, worker string) error {
	if tok := LastToken(subject); tok != worker {
		return Errorf(CodeInvalidArgument, "message of worker %q on the subject of worker %q", worker, tok)
	}
	return nil
}

// StateQuery is the subject on which the task owning key group group of job
// answers state queries.
func (n Namespace) StateQuery(job string, group int) string {
	return n.s("job." + job + ".state." + strconv.Itoa(group))
}

// TriggerSavepoint is the subject on which anyone may trigger a savepoint of
// job by publishing (or requesting, to learn the outcome).
func (n Namespace) TriggerSavepoint(job string) string { return n.s("trigger.savepoint." + job) }

// TriggerSavepointAll matches the savepoint triggers of every job.
func (n Namespace) TriggerSavepointAll() string { return n.s("trigger.savepoint.*") }

// API is the subject of user API endpoint e (one of the API* constants).
func (n Namespace) API(e string) string { return n.s("api." + e) }

// APIGroup is the subject prefix of the user API micro service.
func (n Namespace) APIGroup() string { return n.s("api") }

// Leader is where every coordinator, leading or standing by, answers who
// leads (LeaderInfo). It is outside the API group, which only the leader
// serves.
func (n Namespace) Leader() string { return n.s("coordinator.leader") }

// Events is the subject of an event of kind k about subject token about
// (a job or worker name; may be empty).
func (n Namespace) Events(k EventKind, about string) string {
	if about == "" {
		return n.s("events." + k.String())
	}
	return n.s("events." + k.String() + "." + about)
}

// EventsAll matches every event.
func (n Namespace) EventsAll() string { return n.s("events.>") }

// Endpoints of the user API micro service, each under Namespace.API.
const (
	APIJobSubmit       = "job.submit"
	APIJobList         = "job.list"
	APIJobStatus       = "job.status"
	APIJobCancel       = "job.cancel"
	APIJobStop         = "job.stop"
	APIJobRescale      = "job.rescale"
	APISavepoint       = "savepoint.trigger"
	APISavepointList   = "savepoint.list"
	APISavepointDelete = "savepoint.delete"
	APICheckpointList  = "checkpoint.list"
	APIWorkerList      = "worker.list"
	APIStateGet        = "state.get"
)

// ServiceName is the name of the user API micro service (`nats micro ls`).
const ServiceName = "flotilla"

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// ValidateName reports whether s may name a job or a worker: 1 to 64
// letters, digits, '-' or '_', so that it is a single subject token and a
// safe object-store path element.
func ValidateName(what, s string) error {
	if !nameRE.MatchString(s) {
		return Errorf(CodeInvalidName, "invalid %s name %q: want 1-64 of [A-Za-z0-9_-]", what, s)
	}
	return nil
}

// ParseGroupToken parses the key-group token of a StateQuery subject.
func ParseGroupToken(tok string) (int, error) {
	g, err := strconv.Atoi(tok)
	if err != nil || g < 0 {
		return 0, Errorf(CodeInvalidArgument, "invalid key group %q", tok)
	}
	return g, nil
}

// LastToken returns the last dot-separated token of subject.
func LastToken(subject string) string {
	for i := len(subject) - 1; i >= 0; i-- {
		if subject[i] == '.' {
			return subject[i+1:]
		}
	}
	return subject
}
