package subjects

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// This file holds the one convention by which a job's input is laid out in
// JetStream, so that a task reads only its own events without the server
// filtering messages for it.
//
// A producer publishes to a source subject, e.g. "clicks.u42". An account
// subject mapping (InputMapping) rewrites it at publish time to
//
//	$FK.<group>.<original subject>      e.g. $FK.17.clicks.u42
//
// where <group> is NATS's {{partition(M, w)}} of the key token: the same
// FNV-1a hash as keygroup.Of, so NATS, the coordinator and the tasks agree on
// every event's key group. The job's input is P partition streams
// (PartitionStream); partition j stores the literal group subjects of its
// contiguous range of groups, keygroup.Partition(j, P, M). A task owns whole
// partitions (keygroup.ForTaskIn) and reads each with an unfiltered
// consumer: read amplification 1 for parallelism up to P.
//
// Without the mapping (a server flotilla was not set up on) the job reads one
// stream capturing the source subject itself (LayoutStream), every task
// reading all of it and skipping other tasks' events, and says so.

// KeyedPrefix is the first token of every mapped input subject.
const KeyedPrefix = "$FK"

// Input layouts (SourceSpec.Layout).
const (
	// LayoutAuto (or empty) lets the coordinator choose on submit:
	// partitioned if the server maps the source subject, stream otherwise.
	LayoutAuto = "auto"
	// LayoutPartitioned reads P partition streams; submit refuses it when
	// the server has no mapping.
	LayoutPartitioned = "partitioned"
	// LayoutStream reads one stream, Source.Stream, unpartitioned.
	LayoutStream = "stream"
)

// Gap policies (SourceSpec.OnGap): what a task does when events it has not
// applied are no longer in its input stream (evicted by the stream's limits).
const (
	OnGapFail     = "fail"
	OnGapContinue = "continue"
)

// DefaultPartitions is the number of partition streams of a job that does not
// say otherwise (at most max_parallelism): parallelism up to 32 reads every
// event exactly once.
const DefaultPartitions = 32

// keyWildcard returns the wildcard index (1-based among the '*' tokens) of
// the key token of the spec's source subject, and the subject's tokens.
func keyWildcard(src *SourceSpec) (int, []string, error) {
	if len(src.Subjects) != 1 {
		return 0, nil, specErr("source.subjects: want exactly one subject pattern, got %d", len(src.Subjects))
	}
	toks := strings.Split(src.Subjects[0], ".")
	k := src.Key.SubjectToken
	if k < 1 || k > len(toks) || toks[k-1] != "*" {
		return 0, nil, specErr("source.key.subject_token %d must be a '*' wildcard in %q", k, src.Subjects[0])
	}
	w := 0
	for i, t := range toks {
		if t == ">" {
			return 0, nil, specErr("source.subjects: %q: '>' is not supported, use '*' tokens", src.Subjects[0])
		}
		if t == "*" && i < k {
			w++
		}
	}
	return w, toks, nil
}

// InputMapping returns the account subject mapping that partitions the
// spec's source subject by key group: from "clicks.*" to
// "$FK.{{partition(M,1)}}.clicks.{{wildcard(1)}}".
func InputMapping(spec *JobSpec) (src, dest string, err error) {
	m := spec.MaxParallelism
	if m < 1 || m > keygroup.MaxMaxParallelism {
		return "", "", specErr("max_parallelism %d out of range [1, %d]", m, keygroup.MaxMaxParallelism)
	}
	w, toks, err := keyWildcard(&spec.Source)
	if err != nil {
		return "", "", err
	}
	var d strings.Builder
	d.WriteString(KeyedPrefix + ".{{partition(" + strconv.Itoa(m) + "," + strconv.Itoa(w) + ")}}")
	wild := 0
	for _, t := range toks {
		d.WriteByte('.')
		if t == "*" {
			wild++
			d.WriteString("{{wildcard(" + strconv.Itoa(wild) + ")}}")
		} else {
			d.WriteString(t)
		}
	}
	return spec.Source.Subjects[0], d.String(), nil
}

// MappingConfig returns the mapping as a nats-server configuration block.
func MappingConfig(spec *JobSpec) string {
	src, dest, err := InputMapping(spec)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("mappings { %q: %q }", src, dest)
}

// GroupSubject returns the mapped subject pattern of key group g:
// "$FK.<g>.clicks.*". A group of -1 gives the pattern of every group.
func GroupSubject(spec *JobSpec, g int) string {
	tok := "*"
	if g >= 0 {
		tok = strconv.Itoa(g)
	}
	return KeyedPrefix + "." + tok + "." + spec.Source.Subjects[0]
}

// Partitions returns the number of partition streams of the spec's input: 0
// when it is not partitioned.
func (s *JobSpec) Partitions() int {
	if s.Source.Layout != LayoutPartitioned {
		return 0
	}
	return s.Source.Partitions
}

// TaskRange returns the key groups of task i of parallelism p of the job:
// whole partitions while p <= the partition count.
func TaskRange(spec *JobSpec, i, p int) keygroup.Range {
	return keygroup.ForTaskIn(i, p, spec.MaxParallelism, spec.Partitions())
}

// PartitionStream returns the name of partition j of the job's input:
// "<stream>-p<j>", j zero-padded to the width of the partition count.
func PartitionStream(spec *JobSpec, j int) string {
	width := len(strconv.Itoa(spec.Source.Partitions - 1))
	return fmt.Sprintf("%s-p%0*d", spec.Source.Stream, width, j)
}

// InputStream is one stream a task reads: its name, its index among the
// job's partitions (0 for an unpartitioned input) and the key groups stored
// in it.
type InputStream struct {
	Name   string
	Part   int
	Groups keygroup.Range
}

// InputStreams returns the streams a task owning groups r reads: the
// partitions overlapping r, or the job's one stream.
func InputStreams(spec *JobSpec, r keygroup.Range) []InputStream {
	m, parts := spec.MaxParallelism, spec.Partitions()
	if parts == 0 {
		return []InputStream{{Name: spec.Source.Stream, Groups: keygroup.Range{Start: 0, End: m - 1}}}
	}
	var out []InputStream
	for j := keygroup.PartitionOf(r.Start, parts, m); j <= keygroup.PartitionOf(r.End, parts, m); j++ {
		out = append(out, InputStream{Name: PartitionStream(spec, j), Part: j, Groups: keygroup.Partition(j, parts, m)})
	}
	return out
}

// InputStreamConfigs returns the configuration of every stream of the job's
// input, as the coordinator creates them: the partition streams, each
// capturing the literal subjects of its groups, or the one stream capturing
// the source subject and its mapped form (so that a mapping added while the
// job runs loses nothing). Limits come from the spec.
func InputStreamConfigs(spec *JobSpec) []jetstream.StreamConfig {
	src := &spec.Source
	base := jetstream.StreamConfig{
		Storage: jetstream.FileStorage, MaxMsgs: src.MaxMsgs, MaxBytes: src.MaxBytes, MaxAge: src.MaxAge.D(),
	}
	if base.MaxMsgs == 0 {
		base.MaxMsgs = -1
	}
	if base.MaxBytes == 0 {
		base.MaxBytes = -1
	}
	parts := spec.Partitions()
	if parts == 0 {
		c := base
		c.Name = src.Stream
		c.Subjects = []string{src.Subjects[0], GroupSubject(spec, -1)}
		c.Description = "flotilla input of job " + spec.Name + " (not partitioned)"
		return []jetstream.StreamConfig{c}
	}
	out := make([]jetstream.StreamConfig, 0, parts)
	for j := 0; j < parts; j++ {
		c := base
		c.Name = PartitionStream(spec, j)
		r := keygroup.Partition(j, parts, spec.MaxParallelism)
		for g := r.Start; g <= r.End; g++ {
			c.Subjects = append(c.Subjects, GroupSubject(spec, g))
		}
		c.Description = fmt.Sprintf("flotilla input of job %s: partition %d of %d, key groups %s", spec.Name, j, parts, r)
		out = append(out, c)
	}
	return out
}

// InputID names the sequence space of a job's applied marks: the layout,
// the partition count and the stream. Marks restored from a checkpoint of
// another input would skip or replay events, so a restore must match it.
func InputID(spec *JobSpec) string {
	if p := spec.Partitions(); p > 0 {
		return fmt.Sprintf("%s/%d/%s", LayoutPartitioned, p, spec.Source.Stream)
	}
	return LayoutStream + "/" + spec.Source.Stream
}

// InputInfo describes a job's input in `job status`.
type InputInfo struct {
	Layout     string   `json:"layout"`
	Partitions int      `json:"partitions,omitempty"`
	Streams    []string `json:"streams"`
	// Mapping is the account subject mapping that partitions the input.
	Mapping string `json:"mapping"`
	// Note says, for an input that is not partitioned, why and how to make
	// it so.
	Note string `json:"note,omitempty"`
	// Gaps are events the job's tasks found evicted and continued past
	// (source.on_gap "continue").
	Gaps []InputGap `json:"gaps,omitempty"`
}

// DescribeInput returns the InputInfo of a job whose layout is resolved.
func DescribeInput(spec *JobSpec) InputInfo {
	info := InputInfo{Layout: spec.Source.Layout, Partitions: spec.Partitions(), Mapping: MappingConfig(spec)}
	for _, c := range InputStreamConfigs(spec) {
		info.Streams = append(info.Streams, c.Name)
	}
	if info.Partitions == 0 {
		info.Note = UnpartitionedNote(spec)
	}
	return info
}

// UnpartitionedNote is what the log and `job status` say about a job whose
// input is one stream.
func UnpartitionedNote(spec *JobSpec) string {
	return fmt.Sprintf("input not partitioned: every task reads all of stream %s and skips other tasks' events "+
		"(read amplification = parallelism, %d). To partition it, add this subject mapping to the account "+
		"that publishes %s (server config, or `nsc add mapping` for an operator-mode account), "+
		"then resubmit the job: %s", spec.Source.Stream, spec.Parallelism, spec.Source.Subjects[0], MappingConfig(spec))
}

// InputGap is a range of input sequences of one stream that were evicted
// before the job's tasks applied them: events lost to the stream's limits.
type InputGap struct {
	Stream string         `json:"stream"`
	Groups keygroup.Range `json:"groups"`
	// First and Last are the missing stream sequences, inclusive.
	First uint64    `json:"first"`
	Last  uint64    `json:"last"`
	Time  time.Time `json:"time,omitempty"`
}

func (g InputGap) String() string {
	return fmt.Sprintf("stream %s sequences %d-%d (key groups %s)", g.Stream, g.First, g.Last, g.Groups)
}

// ParseInputSubject decodes a stored input subject: "$FK.<group>.<original>"
// (mapped) or the original subject itself (an unpartitioned stream). It
// returns the event's key (token keyToken of the original subject) and key
// group of m groups; for a mapped subject the group must be the key's. Any
// other shape is a CodeBadMessage error.
func ParseInputSubject(stored string, keyToken, m int) (group int, key, original string, err error) {
	original = stored
	group = -1
	if rest, ok := strings.CutPrefix(stored, KeyedPrefix+"."); ok {
		tok, orig, ok := strings.Cut(rest, ".")
		if !ok || orig == "" {
			return 0, "", "", Errorf(CodeBadMessage, "stored subject %q has no original subject", stored)
		}
		g, err := strconv.Atoi(tok)
		if err != nil || g < 0 || g >= m {
			return 0, "", "", Errorf(CodeBadMessage, "stored subject %q: invalid key group %q", stored, tok)
		}
		group, original = g, orig
	}
	key, err = KeyToken(original, keyToken)
	if err != nil {
		return 0, "", "", err
	}
	kg := keygroup.Of([]byte(key), m)
	if group >= 0 && kg != group {
		return 0, "", "", Errorf(CodeBadMessage, "key %q is in key group %d, the mapping filed it under %d (a mapping with another partition count?)", key, kg, group)
	}
	return kg, key, original, nil
}

// KeyToken returns token pos (1-based, as KeySpec.SubjectToken) of subject:
// an event's key, taken from its original subject.
func KeyToken(subject string, pos int) (string, error) {
	if pos < 1 {
		return "", Errorf(CodeInvalidArgument, "key token position %d", pos)
	}
	rest := subject
	for i := 1; ; i++ {
		tok, next, more := strings.Cut(rest, ".")
		if i == pos {
			if tok == "" {
				return "", Errorf(CodeBadMessage, "subject %q: empty key token %d", subject, pos)
			}
			return tok, nil
		}
		if !more {
			return "", Errorf(CodeBadMessage, "subject %q has no token %d", subject, pos)
		}
		rest = next
	}
}

// OutputMsgID returns the Nats-Msg-Id of output n (0-based) of the event at
// stream sequence seq of key group group of job:
// "<job>.<group>.<seq>" for the first output and "<job>.<group>.<seq>.<n>"
// for later ones. It is deterministic, so that JetStream's duplicate window
// drops the outputs of replayed events. A group's sequences are those of the
// one stream that stores it.
func OutputMsgID(job string, group int, seq uint64, n int) string {
	id := job + "." + strconv.Itoa(group) + "." + strconv.FormatUint(seq, 10)
	if n > 0 {
		id += "." + strconv.Itoa(n)
	}
	return id
}

// TimerOutputMsgID returns the Nats-Msg-Id of output n (0-based) of the
// timer at unix nanoseconds at of key key in key group group of job:
// "<job>.<group>.<key>.t<at>" for the first output and
// "<job>.<group>.<key>.t<at>.<n>" for later ones. A key is one subject
// token (no dots), so these never collide with OutputMsgID's. It is
// deterministic, so that a timer fired again after a restore publishes
// under the same ids.
func TimerOutputMsgID(job string, group int, key string, at int64, n int) string {
	id := job + "." + strconv.Itoa(group) + "." + key + ".t" + strconv.FormatInt(at, 10)
	if n > 0 {
		id += "." + strconv.Itoa(n)
	}
	return id
}

// Headers of a dead-lettered event (SinkSpec.DeadLetter). The message's
// body is the event's body, unchanged.
const (
	// HdrDeadLetterReason says why the operator could not use the event.
	HdrDeadLetterReason = "Flotilla-Reason"
	// HdrSourceSubject is the subject the event was published to.
	HdrSourceSubject = "Flotilla-Source-Subject"
	// HdrSourceSeq is the event's sequence in its source stream, named by
	// HdrSourceStream (a partition stream: sequences are per partition).
	HdrSourceSeq    = "Flotilla-Source-Seq"
	HdrSourceStream = "Flotilla-Source-Stream"
	// HdrJob names the job that skipped the event.
	HdrJob = "Flotilla-Job"
)

// DeadLetterMsgID returns the Nats-Msg-Id of the dead letter of the event at
// stream sequence seq of key group group of job ("<job>.<group>.<seq>.dead";
// group -1 when the event's group is unknown, written "-"). It is
// deterministic, so that a replayed skip is dropped by the duplicate window.
func DeadLetterMsgID(job string, group int, seq uint64) string {
	g := "-"
	if group >= 0 {
		g = strconv.Itoa(group)
	}
	return job + "." + g + "." + strconv.FormatUint(seq, 10) + ".dead"
}
