package subjects

import (
	"errors"
	"fmt"
)

// Code is a numeric error code carried on the wire. Codes are persisted in
// responses, events and checkpoint statistics: they are append-only, and a
// code's meaning never changes.
type Code uint16

// The registry of error codes. Group by hundreds: 1xx malformed input,
// 2xx fleet membership, 3xx jobs, 4xx checkpoints, 5xx storage, 9xx internal.
const (
	CodeOK                 Code = 0
	CodeBadMessage         Code = 100 // not JSON, or a field of the wrong type
	CodeUnsupportedVersion Code = 101 // message version this build does not read
	CodeUnknownType        Code = 102 // message type unknown, or not the one the subject carries
	CodeMissingField       Code = 103 // a required field is absent or empty
	CodeTooLarge           Code = 104 // message above MaxMessageSize
	CodeInvalidRange       Code = 105 // key-group range empty, inverted or outside [0, M)
	CodeInvalidArgument    Code = 106 // a field has a value outside its domain
	CodeInvalidName        Code = 107 // job or worker name is not a valid subject token
	CodeUnknownWorker      Code = 200 // the coordinator does not know this worker: register again
	CodeStaleEpoch         Code = 201 // sender's coordinator epoch or task attempt is superseded
	CodeNoSlot             Code = 202 // the worker has no free slot
	CodeSlotMismatch       Code = 203 // slot/allocation does not match what the receiver holds
	CodeEpochAhead         Code = 204 // a coordinator epoch above the one the worker registered with
	CodeNotLeader          Code = 205 // this coordinator does not lead (or no coordinator leads now): retry, at the leader it names
	CodeUnknownJob         Code = 300 // no such job
	CodeJobExists          Code = 301 // a job of that name is running
	CodeInvalidJobSpec     Code = 302 // job spec fails validation
	CodeParallelismTooHigh Code = 303 // parallelism above max parallelism
	CodeJobNotRunning      Code = 304 // the operation needs a running job
	CodeUnknownOperator    Code = 305 // no operator registered under that name
	CodeKeyNotFound        Code = 306 // the job has no state under that key
	CodeUnknownCheckpoint  Code = 400 // no such checkpoint or savepoint
	CodeCheckpointDeclined Code = 401 // a task declined the checkpoint
	CodeCheckpointExpired  Code = 402 // the checkpoint timed out
	CodeCheckpointAborted  Code = 403 // aborted (job failing over, stopping, or superseded)
	CodeSavepointFailed    Code = 404 // all attempts of a savepoint failed
	CodeTooManyCheckpoints Code = 405 // max concurrent checkpoints reached
	CodeSavepointInUse     Code = 406 // a running job can restore only from this savepoint
	CodeOperatorMismatch   Code = 407 // the state to restore was written by another operator
	CodeInvalidLocation    Code = 500 // location outside the store or malformed
	CodeCorruptState       Code = 501 // a snapshot/savepoint/metadata object is unreadable
	CodeStorageUnavailable Code = 502 // object store or JetStream did not answer
	CodeMissingObject      Code = 503 // an object a checkpoint names is absent or of another size
	CodeDataLoss           Code = 504 // input events were evicted from their stream before they were applied
	CodeStorage            Code = 505 // a worker's local state storage refused a write (disk full)
	CodeUnauthorized       Code = 600 // not permitted
	CodeInternal           Code = 900 // a bug: report it
	CodeUnavailable        Code = 901 // the service is starting or shutting down; retry
	CodeTimeout            Code = 902 // no answer in time; retry
)

var codeNames = map[Code]string{
	CodeOK:                 "ok",
	CodeBadMessage:         "bad_message",
	CodeUnsupportedVersion: "unsupported_version",
	CodeUnknownType:        "unknown_type",
	CodeMissingField:       "missing_field",
	CodeTooLarge:           "too_large",
	CodeInvalidRange:       "invalid_range",
	CodeInvalidArgument:    "invalid_argument",
	CodeInvalidName:        "invalid_name",
	CodeUnknownWorker:      "unknown_worker",
	CodeStaleEpoch:         "stale_epoch",
	CodeNoSlot:             "no_slot",
	CodeSlotMismatch:       "slot_mismatch",
	CodeEpochAhead:         "epoch_ahead",
	CodeNotLeader:          "not_leader",
	CodeUnknownJob:         "unknown_job",
	CodeJobExists:          "job_exists",
	CodeInvalidJobSpec:     "invalid_job_spec",
	CodeParallelismTooHigh: "parallelism_too_high",
	CodeJobNotRunning:      "job_not_running",
	CodeUnknownOperator:    "unknown_operator",
	CodeKeyNotFound:        "key_not_found",
	CodeUnknownCheckpoint:  "unknown_checkpoint",
	CodeCheckpointDeclined: "checkpoint_declined",
	CodeCheckpointExpired:  "checkpoint_expired",
	CodeCheckpointAborted:  "checkpoint_aborted",
	CodeSavepointFailed:    "savepoint_failed",
	CodeTooManyCheckpoints: "too_many_checkpoints",
	CodeSavepointInUse:     "savepoint_in_use",
	CodeOperatorMismatch:   "operator_mismatch",
	CodeInvalidLocation:    "invalid_location",
	CodeCorruptState:       "corrupt_state",
	CodeStorageUnavailable: "storage_unavailable",
	CodeMissingObject:      "missing_object",
	CodeDataLoss:           "data_loss",
	CodeStorage:            "storage",
	CodeUnauthorized:       "unauthorized",
	CodeInternal:           "internal",
	CodeUnavailable:        "unavailable",
	CodeTimeout:            "timeout",
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code_%d", uint16(c))
}

// Error is an error with a code, as carried in responses. Compare errors by
// code with errors.Is(err, subjects.CodeX) or CodeOf(err), never by text.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Errorf returns an *Error with code c and a formatted message.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%d): %s", e.Code, uint16(e.Code), e.Message)
}

// Is makes errors.Is(err, code) match an *Error of that code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case Code:
		return e.Code == t
	case *Error:
		return e.Code == t.Code
	}
	return false
}

// Error makes Code usable as an errors.Is target.
func (c Code) Error() string { return c.String() }

// CodeOf returns the code of the first *Error in err's chain, CodeOK for
// nil, and CodeInternal for an error that carries no code.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// AsError converts err to an *Error for a response: an *Error in err's chain
// is kept with err's full text, anything else becomes CodeInternal.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	return &Error{Code: CodeOf(err), Message: err.Error()}
}
