package subjects

import (
	"encoding/json"
	"regexp"
	"strings"
	"time"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// JobSpec is a job as a user submits it (JSON). It is persisted with the job
// and travels in every DeployTask, so fields are only ever added.
//
//	{"name": "clicks", "parallelism": 2, "max_parallelism": 128,
//	 "source": {"stream": "CLICKS", "subjects": ["clicks.*"], "key": {"subject_token": 2}},
//	 "operator": {"type": "count"},
//	 "sink": {"subject": "counts.clicks"},
//	 "checkpoint": {"interval": "10s", "timeout": "1m", "retained": 3}}
type JobSpec struct {
	Name           string         `json:"name"`
	Parallelism    int            `json:"parallelism,omitempty"`
	MaxParallelism int            `json:"max_parallelism,omitempty"`
	Source         SourceSpec     `json:"source"`
	Operator       OperatorSpec   `json:"operator"`
	Sink           SinkSpec       `json:"sink,omitempty"`
	Checkpoint     CheckpointSpec `json:"checkpoint,omitempty"`
	Restart        RestartSpec    `json:"restart,omitempty"`
	// Replicas is the replica count of the job's own streams (its source
	// stream); 0: the coordinator's (--replicas). An existing stream is
	// raised to it, never lowered.
	Replicas int `json:"replicas,omitempty"`
}

// SourceSpec names the JetStream stream a job reads and how a key is taken
// from each event.
type SourceSpec struct {
	// Stream is the JetStream stream; created on submit if it does not exist.
	Stream string `json:"stream"`
	// Subjects are the subjects producers publish to, e.g. "clicks.*".
	// Exactly one pattern today: the stream's subject transform partitions
	// one pattern by key.
	Subjects []string `json:"subjects"`
	Key      KeySpec  `json:"key"`
	// Layout is how the input is stored: "auto" (default: "partitioned" if
	// the NATS account maps the source subject by key group, "stream"
	// otherwise), "partitioned" (refused without the mapping) or "stream"
	// (one stream named Stream, read whole by every task). The coordinator
	// resolves "auto" on submit; the job keeps that layout.
	Layout string `json:"layout,omitempty"`
	// Partitions is the number of partition streams, "<stream>-p<j>", each
	// holding a contiguous range of key groups (default 32, at most
	// max_parallelism). Up to this parallelism every task reads only its own
	// events.
	Partitions int `json:"partitions,omitempty"`
	// MaxMsgs, MaxBytes and MaxAge limit each input stream the coordinator
	// creates (0: unlimited). Evicting events no checkpoint covers is data
	// loss; see OnGap.
	MaxMsgs  int64    `json:"max_msgs,omitempty"`
	MaxBytes int64    `json:"max_bytes,omitempty"`
	MaxAge   Duration `json:"max_age,omitempty"`
	// OnGap is what a task does when events it has not applied were evicted
	// from its input: "fail" (default) fails the job with a data_loss error
	// naming the groups and sequences; "continue" records the gap (events,
	// job status) and goes on.
	OnGap string `json:"on_gap,omitempty"`
}

// KeySpec says where an event's key is. Today the key is one subject token
// (1-based, as in NATS's {{wildcard(n)}} and {{partition(M,n)}}), which must
// be a '*' wildcard in every source subject: that is what lets NATS itself
// partition the stream by key group.
type KeySpec struct {
	SubjectToken int `json:"subject_token"`
}

// OperatorSpec selects the operator a job's tasks run and configures it.
type OperatorSpec struct {
	// Type is a built-in operator (count, sum, latest, dedupe, window) or
	// one registered in the worker binary with worker.Register.
	Type string `json:"type"`
	// Field is the JSON field summed by "sum" and "window" with aggregate
	// "sum" (a dotted path into the event's JSON body).
	Field string `json:"field,omitempty"`
	// Size is the tumbling window length of "window".
	Size Duration `json:"size,omitempty"`
	// Aggregate is "count" (default) or "sum", for "window".
	Aggregate string `json:"aggregate,omitempty"`
	// Config is free-form configuration for custom operators.
	Config json.RawMessage `json:"config,omitempty"`
}

// SinkSpec names where state changes are published (empty: nowhere).
type SinkSpec struct {
	Subject string `json:"subject,omitempty"`
	// DeadLetter is where events the operator cannot use are published,
	// each with its body unchanged and the reason, the source subject and
	// sequence in headers (HdrDeadLetterReason and friends), under the
	// message id DeadLetterMsgID. Empty: such events are only counted.
	DeadLetter string `json:"dead_letter,omitempty"`
	// Emit chooses which value changes are published: EmitEveryChange
	// (default) publishes each one; EmitLatest publishes, per key and per
	// round of up to a worker's batch size of events, only the key's last
	// value (count publishes 3, not 1, 2, 3). Other outputs (window,
	// dedupe, custom operators' Emit) are always published.
	Emit string `json:"emit,omitempty"`
}

// Sink emit modes (SinkSpec.Emit).
const (
	EmitEveryChange = "every_change"
	EmitLatest      = "latest"
)

// CheckpointSpec configures periodic checkpoints, after Flink's
// CheckpointConfig. A zero Interval disables periodic checkpoints
// (savepoints still work).
type CheckpointSpec struct {
	Interval      Duration `json:"interval,omitempty"`
	Timeout       Duration `json:"timeout,omitempty"`
	MinPause      Duration `json:"min_pause,omitempty"`
	MaxConcurrent int      `json:"max_concurrent,omitempty"`
	// TolerableFailures is how many consecutive checkpoint failures are
	// tolerated before the job's tasks are failed over (default 3; 0 fails
	// over on the first, as Flink does by default).
	TolerableFailures *int `json:"tolerable_failures,omitempty"`
	Retained          int  `json:"retained,omitempty"`
	// SavepointRetries is how often a failed savepoint is retried before it
	// is reported failed.
	SavepointRetries *int `json:"savepoint_retries,omitempty"`
}

// RestartSpec is the exponential-delay restart strategy applied when a task
// fails or its worker is lost.
type RestartSpec struct {
	InitialDelay Duration `json:"initial_delay,omitempty"`
	MaxDelay     Duration `json:"max_delay,omitempty"`
}

// Defaults for fields a spec leaves out.
const (
	DefaultCheckpointTimeout = time.Minute
	DefaultMaxConcurrent     = 1
	DefaultTolerableFailures = 3
	DefaultRetained          = 3
	DefaultSavepointRetries  = 2
	DefaultRestartInitial    = time.Second
	DefaultRestartMaxDelay   = time.Minute
	maxRetained              = 100
	maxSourceSubjects        = 16
)

// BuiltinOperators are the operators every worker has.
var BuiltinOperators = []string{"count", "sum", "latest", "dedupe", "window"}

// WithDefaults returns s with every omitted field set to its default.
func (s JobSpec) WithDefaults() JobSpec {
	if s.MaxParallelism == 0 {
		s.MaxParallelism = keygroup.DefaultMaxParallelism
	}
	if s.Parallelism == 0 {
		s.Parallelism = 1
	}
	c := &s.Checkpoint
	if c.Timeout == 0 {
		c.Timeout = Duration(DefaultCheckpointTimeout)
	}
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.Retained == 0 {
		c.Retained = DefaultRetained
	}
	if c.TolerableFailures == nil {
		n := DefaultTolerableFailures
		c.TolerableFailures = &n
	}
	if c.SavepointRetries == nil {
		n := DefaultSavepointRetries
		c.SavepointRetries = &n
	}
	if s.Restart.InitialDelay == 0 {
		s.Restart.InitialDelay = Duration(DefaultRestartInitial)
	}
	if s.Restart.MaxDelay == 0 {
		s.Restart.MaxDelay = Duration(DefaultRestartMaxDelay)
	}
	if s.Source.Layout == "" {
		s.Source.Layout = LayoutAuto
	}
	if s.Source.Partitions == 0 {
		s.Source.Partitions = min(DefaultPartitions, s.MaxParallelism)
	}
	if s.Source.OnGap == "" {
		s.Source.OnGap = OnGapFail
	}
	if s.Operator.Type == "window" && s.Operator.Aggregate == "" {
		s.Operator.Aggregate = "count"
	}
	return s
}

var (
	streamRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	subjectRE = regexp.MustCompile(`^[^\s.*>]+(\.[^\s.*>]+|\.\*)*(\.>)?$|^\*(\.[^\s.*>]+|\.\*)*(\.>)?$`)
	fieldRE   = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

func specErr(format string, args ...any) *Error {
	return Errorf(CodeInvalidJobSpec, "job spec: "+format, args...)
}

// Validate checks a spec that WithDefaults has filled in. Every problem is an
// *Error with CodeInvalidJobSpec (or CodeInvalidName, CodeParallelismTooHigh)
// whose message names the field.
func (s *JobSpec) Validate() error {
	if err := ValidateName("job", s.Name); err != nil {
		return err
	}
	if s.MaxParallelism < 1 || s.MaxParallelism > keygroup.MaxMaxParallelism {
		return specErr("max_parallelism %d out of range [1, %d]", s.MaxParallelism, keygroup.MaxMaxParallelism)
	}
	if s.Parallelism < 1 {
		return specErr("parallelism %d must be at least 1", s.Parallelism)
	}
	if s.Parallelism > s.MaxParallelism {
		return Errorf(CodeParallelismTooHigh, "parallelism %d is above max_parallelism %d", s.Parallelism, s.MaxParallelism)
	}
	if s.Replicas < 0 || s.Replicas > 5 {
		return specErr("replicas %d out of range [0, 5] (0: the coordinator's)", s.Replicas)
	}
	if err := s.Source.validate(); err != nil {
		return err
	}
	if p := s.Source.Partitions; p < 1 || p > s.MaxParallelism {
		return specErr("source.partitions %d out of range [1, max_parallelism %d]", p, s.MaxParallelism)
	}
	if err := s.Operator.validate(); err != nil {
		return err
	}
	if s.Sink.Subject != "" && (!subjectRE.MatchString(s.Sink.Subject) || strings.ContainsAny(s.Sink.Subject, "*>")) {
		return specErr("sink.subject %q is not a valid subject without wildcards", s.Sink.Subject)
	}
	if s.Sink.DeadLetter != "" && (!subjectRE.MatchString(s.Sink.DeadLetter) || strings.ContainsAny(s.Sink.DeadLetter, "*>")) {
		return specErr("sink.dead_letter %q is not a valid subject without wildcards", s.Sink.DeadLetter)
	}
	switch s.Sink.Emit {
	case "", EmitEveryChange, EmitLatest:
	default:
		return specErr("sink.emit %q: want %s or %s", s.Sink.Emit, EmitEveryChange, EmitLatest)
	}
	c := s.Checkpoint
	switch {
	case c.Interval < 0 || c.Timeout <= 0 || c.MinPause < 0:
		return specErr("checkpoint interval, timeout and min_pause must not be negative, and timeout must be set")
	case c.Interval > 0 && c.Interval.D() < 10*time.Millisecond:
		return specErr("checkpoint.interval %s is below 10ms", c.Interval.D())
	case c.MaxConcurrent < 1 || c.MaxConcurrent > 16:
		return specErr("checkpoint.max_concurrent %d out of range [1, 16]", c.MaxConcurrent)
	case c.TolerableFailures != nil && *c.TolerableFailures < 0:
		return specErr("checkpoint.tolerable_failures %d is negative", *c.TolerableFailures)
	case c.Retained < 1 || c.Retained > maxRetained:
		return specErr("checkpoint.retained %d out of range [1, %d]", c.Retained, maxRetained)
	case c.SavepointRetries != nil && (*c.SavepointRetries < 0 || *c.SavepointRetries > 10):
		return specErr("checkpoint.savepoint_retries %d out of range [0, 10]", *c.SavepointRetries)
	case s.Restart.InitialDelay < 0 || s.Restart.MaxDelay < s.Restart.InitialDelay:
		return specErr("restart delays: initial %s, max %s", s.Restart.InitialDelay.D(), s.Restart.MaxDelay.D())
	}
	return nil
}

func (s *SourceSpec) validate() error {
	if !streamRE.MatchString(s.Stream) {
		return specErr("source.stream %q: want 1-64 of [A-Za-z0-9_-]", s.Stream)
	}
	if len(s.Subjects) != 1 {
		return specErr("source.subjects: want exactly one subject pattern (a stream partitions one pattern by key), got %d", len(s.Subjects))
	}
	k := s.Key.SubjectToken
	if k < 1 {
		return specErr("source.key.subject_token is required (1-based position of the key's subject token)")
	}
	switch s.Layout {
	case LayoutAuto, LayoutPartitioned, LayoutStream:
	default:
		return specErr("source.layout %q: want auto, partitioned or stream", s.Layout)
	}
	switch s.OnGap {
	case OnGapFail, OnGapContinue:
	default:
		return specErr("source.on_gap %q: want fail or continue", s.OnGap)
	}
	if s.MaxMsgs < 0 || s.MaxBytes < 0 || s.MaxAge < 0 {
		return specErr("source.max_msgs, max_bytes and max_age must not be negative")
	}
	if s.MaxAge > 0 && s.MaxAge.D() < time.Second {
		return specErr("source.max_age %s is below 1s", s.MaxAge.D())
	}
	for _, subj := range s.Subjects {
		if !subjectRE.MatchString(subj) {
			return specErr("source.subjects: %q is not a valid subject", subj)
		}
		toks := strings.Split(subj, ".")
		if k > len(toks) || toks[k-1] != "*" {
			return specErr("source.key.subject_token %d must be a '*' wildcard in %q", k, subj)
		}
		if toks[len(toks)-1] == ">" {
			return specErr("source.subjects: %q: '>' is not supported, use '*' tokens", subj)
		}
	}
	return nil
}

func (o *OperatorSpec) validate() error {
	if o.Type == "" {
		return specErr("operator.type is required (one of %s, or a custom operator)", strings.Join(BuiltinOperators, ", "))
	}
	if !nameRE.MatchString(o.Type) {
		return specErr("operator.type %q: want 1-64 of [A-Za-z0-9_-]", o.Type)
	}
	if o.Field != "" && !fieldRE.MatchString(o.Field) {
		return specErr("operator.field %q is not a dotted field path", o.Field)
	}
	switch o.Type {
	case "sum":
		if o.Field == "" {
			return specErr("operator sum needs field")
		}
	case "window":
		if o.Size <= 0 {
			return specErr("operator window needs size, e.g. \"1m\"")
		}
		switch o.Aggregate {
		case "count":
		case "sum":
			if o.Field == "" {
				return specErr("operator window with aggregate sum needs field")
			}
		default:
			return specErr("operator.aggregate %q: want count or sum", o.Aggregate)
		}
	}
	return nil
}

// ParseJobSpec reads a spec from JSON, fills defaults and validates it.
// Unknown fields are an error here (unlike on the wire), so that a typo in a
// hand-written spec is reported rather than ignored.
func ParseJobSpec(data []byte) (JobSpec, error) {
	var s JobSpec
	if len(data) > MaxMessageSize {
		return s, Errorf(CodeTooLarge, "job spec is %d bytes, max %d", len(data), MaxMessageSize)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, specErr("%s", jsonError(err))
	}
	s = s.WithDefaults()
	return s, s.Validate()
}
