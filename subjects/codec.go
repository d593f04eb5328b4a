package subjects

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MaxMessageSize bounds every encoded message, well under NATS's default
// max_payload of 1 MiB. Decode rejects larger input before parsing it.
const MaxMessageSize = 512 << 10

// Type identifies a message kind on the wire. Types are persisted (in
// JetStream records and events): append-only, never renumbered, and each
// keeps its name.
type Type uint16

// Message types. Append only.
const (
	TypeInvalid Type = iota
	TypeRegisterRequest
	TypeRegisterResponse
	TypeHeartbeat
	TypeHeartbeatResponse
	TypeSlotRequest
	TypeSlotResponse
	TypeSlotOffer
	TypeOfferResponse
	TypeDeployTask
	TypeCancelTask
	TypeResponse
	TypeTaskStatus
	TypeBarrier
	TypeAck
	TypeDecline
	TypeComplete
	TypeAbort
	TypeTriggerSavepoint
	TypeSavepointResult
	TypeStateQuery
	TypeStateResult
	TypeEvent
	TypeSubmitJob
	TypeJobRequest
	TypeJobInfo
	TypeJobList
	TypeWorkerList
	TypeRescaleJob
	TypeCheckpointList
	TypeCheckpointRecord
	TypeSavepointDelete
	TypeCheckpointAttempt
	TypeHistoryRequest
	TypeCheckpointHistory
	TypeJobRecord
	TypeLatestPointer
	TypeLeaderLease
	TypeLeaderInfo
	numTypes
)

var typeNames = [numTypes]string{
	TypeInvalid:           "invalid",
	TypeRegisterRequest:   "register",
	TypeRegisterResponse:  "register_response",
	TypeHeartbeat:         "heartbeat",
	TypeHeartbeatResponse: "heartbeat_response",
	TypeSlotRequest:       "slot_request",
	TypeSlotResponse:      "slot_response",
	TypeSlotOffer:         "slot_offer",
	TypeOfferResponse:     "offer_response",
	TypeDeployTask:        "deploy_task",
	TypeCancelTask:        "cancel_task",
	TypeResponse:          "response",
	TypeTaskStatus:        "task_status",
	TypeBarrier:           "barrier",
	TypeAck:               "ack",
	TypeDecline:           "decline",
	TypeComplete:          "complete",
	TypeAbort:             "abort",
	TypeTriggerSavepoint:  "trigger_savepoint",
	TypeSavepointResult:   "savepoint_result",
	TypeStateQuery:        "state_query",
	TypeStateResult:       "state_result",
	TypeEvent:             "event",
	TypeSubmitJob:         "submit_job",
	TypeJobRequest:        "job_request",
	TypeJobInfo:           "job_info",
	TypeJobList:           "job_list",
	TypeWorkerList:        "worker_list",
	TypeRescaleJob:        "rescale_job",
	TypeCheckpointList:    "checkpoint_list",
	TypeCheckpointRecord:  "checkpoint_record",
	TypeSavepointDelete:   "savepoint_delete",
	TypeCheckpointAttempt: "checkpoint_attempt",
	TypeHistoryRequest:    "history_request",
	TypeCheckpointHistory: "checkpoint_history",
	TypeJobRecord:         "job_record",
	TypeLatestPointer:     "latest_pointer",
	TypeLeaderLease:       "leader_lease",
	TypeLeaderInfo:        "leader_info",
}

func (t Type) String() string {
	if t < numTypes {
		return typeNames[t]
	}
	return fmt.Sprintf("type_%d", uint16(t))
}

// MarshalJSON writes the type's name.
func (t Type) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// UnmarshalJSON reads a type name; unknown names decode as TypeInvalid so
// that Decode can report them with CodeUnknownType.
func (t *Type) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*t = TypeInvalid
	for i, n := range typeNames {
		if n == s {
			*t = Type(i)
		}
	}
	return nil
}

// Version is the version of every message type this build writes. A reader
// accepts versions 1..Version; fields added within a version are optional,
// and unknown fields are ignored, so older readers read newer writers.
const Version = 1

// Header starts every message.
type Header struct {
	Type Type `json:"type"`
	V    int  `json:"v"`
}

func (h *Header) header() *Header { return h }

// Message is a value that travels on a subject.
type Message interface {
	header() *Header
	// MsgType returns the message's type.
	MsgType() Type
	// Validate checks every field's presence and domain; Decode calls it
	// and Encode refuses to send a message that fails it.
	Validate() error
}

// lenient is implemented by user-facing messages that people type by hand
// (e.g. with `nats pub`): they may omit type and version, and an empty body
// decodes as the zero value.
type lenient interface{ lenient() }

// Container is a message that carries whole messages of another type (a
// list of jobs or of checkpoint records). Encode stamps their headers as
// it stamps m's, so that every object on the wire says what it is.
type Container interface {
	Message
	// Records returns pointers to the messages m carries.
	Records() []Message
}

// Failer is a reply that may carry an error.
type Failer interface {
	Message
	// Failure returns the reply's error, nil if it has none.
	Failure() *Error
}

// Encode validates m, stamps its header (and those of the messages it
// carries, if it is a Container) and returns its JSON encoding.
func Encode(m Message) ([]byte, error) {
	h := m.header()
	h.Type, h.V = m.MsgType(), Version
	if c, ok := m.(Container); ok {
		for _, r := range c.Records() {
			r.header().Type, r.header().V = r.MsgType(), Version
		}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, Errorf(CodeInternal, "encode %s: %v", m.MsgType(), err)
	}
	if len(b) > MaxMessageSize {
		return nil, Errorf(CodeTooLarge, "%s message is %d bytes, max %d", m.MsgType(), len(b), MaxMessageSize)
	}
	return b, nil
}

// MustEncode is Encode for messages built by flotilla itself, which are
// valid by construction; it panics on an error, which is a bug.
func MustEncode(m Message) []byte {
	b, err := Encode(m)
	if err != nil {
		panic(fmt.Sprintf("subjects: encoding a message flotilla built: %v", err))
	}
	return b
}

// Decode parses data into m, which must be a pointer to a zero message of
// the type the subject carries, and validates it. Every failure is an
// *Error with a code from the 1xx group (or from m's Validate).
func Decode(data []byte, m Message) error {
	if len(data) > MaxMessageSize {
		return Errorf(CodeTooLarge, "%s message is %d bytes, max %d", m.MsgType(), len(data), MaxMessageSize)
	}
	_, isLenient := m.(lenient)
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 && isLenient {
		trimmed = []byte("{}")
	}
	var peek struct {
		Type json.RawMessage `json:"type"`
		V    *int            `json:"v"`
	}
	if err := json.Unmarshal(trimmed, &peek); err != nil {
		return Errorf(CodeBadMessage, "%s: %s", m.MsgType(), jsonError(err))
	}
	var h Header
	if len(peek.Type) == 0 && isLenient {
		h.Type, h.V = m.MsgType(), Version // typed by hand: the subject says what it is
	} else if err := h.Type.UnmarshalJSON(peek.Type); err != nil {
		return Errorf(CodeBadMessage, "%s: field \"type\": %s", m.MsgType(), jsonError(err))
	}
	if peek.V != nil {
		h.V = *peek.V
	}
	switch {
	case h.Type != m.MsgType():
		return Errorf(CodeUnknownType, "got a %s message where %s was expected", h.Type, m.MsgType())
	case h.V < 1 || h.V > Version:
		return Errorf(CodeUnsupportedVersion, "%s version %d: this build reads versions 1 to %d", h.Type, h.V, Version)
	}
	if err := json.Unmarshal(trimmed, m); err != nil {
		return Errorf(CodeBadMessage, "%s: %s", m.MsgType(), jsonError(err))
	}
	*m.header() = h
	return m.Validate()
}

func jsonError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: want %s, got %s", te.Field, te.Type, te.Value)
	}
	return err.Error()
}

// Duration is a time.Duration that travels as a Go duration string ("1m30s")
// and also reads a number of milliseconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string or a number of milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = Duration(v)
		return nil
	}
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("invalid duration %s", b)
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// Check helpers used by Validate methods.

func required(typ Type, field, v string) error {
	if v == "" {
		return Errorf(CodeMissingField, "%s: %s is required", typ, field)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// Responder is where a reply goes: a *nats.Msg, or anything that answers
// a request the same way.
type Responder interface{ Respond([]byte) error }

// ErrorResponder is a Responder that can also mark a reply as an error,
// as a micro service request does (its service then counts the request
// among its errors and sends the code and description in headers).
type ErrorResponder interface {
	Responder
	// RespondError answers with body, the encoded reply, marked as the
	// error e.
	RespondError(e *Error, body []byte) error
}

// Reply answers a request with m. A message that fails to encode is a bug,
// answered with a Response carrying the error rather than with silence. A
// reply carrying an error (a Failer whose Failure is set) goes through
// RespondError when r is an ErrorResponder, with the same body.
func Reply(r Responder, m Message) {
	b, err := Encode(m)
	if err != nil {
		m = &Response{Error: AsError(err)}
		b = MustEncode(m)
	}
	if er, ok := r.(ErrorResponder); ok {
		if f, ok := m.(Failer); ok && f.Failure() != nil {
			_ = er.RespondError(f.Failure(), b)
			return
		}
	}
	_ = r.Respond(b)
}

// New returns a pointer to a zero message of type t, or nil for a type this
// build does not know.
func New(t Type) Message {
	switch t {
	case TypeRegisterRequest:
		return new(RegisterRequest)
	case TypeRegisterResponse:
		return new(RegisterResponse)
	case TypeHeartbeat:
		return new(Heartbeat)
	case TypeHeartbeatResponse:
		return new(HeartbeatResponse)
	case TypeSlotRequest:
		return new(SlotRequest)
	case TypeSlotResponse:
		return new(SlotResponse)
	case TypeSlotOffer:
		return new(SlotOffer)
	case TypeOfferResponse:
		return new(OfferResponse)
	case TypeDeployTask:
		return new(DeployTask)
	case TypeCancelTask:
		return new(CancelTask)
	case TypeResponse:
		return new(Response)
	case TypeTaskStatus:
		return new(TaskStatus)
	case TypeBarrier:
		return new(Barrier)
	case TypeAck:
		return new(Ack)
	case TypeDecline:
		return new(Decline)
	case TypeComplete:
		return new(Complete)
	case TypeAbort:
		return new(Abort)
	case TypeTriggerSavepoint:
		return new(TriggerSavepoint)
	case TypeSavepointResult:
		return new(SavepointResult)
	case TypeStateQuery:
		return new(StateQuery)
	case TypeStateResult:
		return new(StateResult)
	case TypeEvent:
		return new(Event)
	case TypeSubmitJob:
		return new(SubmitJob)
	case TypeJobRequest:
		return new(JobRequest)
	case TypeJobInfo:
		return new(JobInfo)
	case TypeJobList:
		return new(JobList)
	case TypeWorkerList:
		return new(WorkerList)
	case TypeRescaleJob:
		return new(RescaleJob)
	case TypeCheckpointList:
		return new(CheckpointList)
	case TypeCheckpointRecord:
		return new(CheckpointRecord)
	case TypeSavepointDelete:
		return new(SavepointDelete)
	case TypeCheckpointAttempt:
		return new(CheckpointAttempt)
	case TypeHistoryRequest:
		return new(HistoryRequest)
	case TypeCheckpointHistory:
		return new(CheckpointHistory)
	case TypeJobRecord:
		return new(JobRecord)
	case TypeLatestPointer:
		return new(LatestPointer)
	case TypeLeaderLease:
		return new(LeaderLease)
	case TypeLeaderInfo:
		return new(LeaderInfo)
	}
	return nil
}
