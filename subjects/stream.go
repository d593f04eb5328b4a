package subjects

import (
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// This file holds the one convention by which a job's source stream is
// partitioned by key group. The coordinator creates the stream with
// SourceTransform on submit; tasks consume it with KeyGroupFilters and read
// each stored subject back with ParseKeyedSubject and KeyToken.
//
// A producer publishes to a source subject, e.g. "clicks.u42". The stream's
// subject transform stores the event as
//
//	$FK.<group>.<original subject>      e.g. $FK.17.clicks.u42
//
// where <group> is NATS's {{partition(M, w)}} of the key token, the same
// FNV-1a hash as keygroup.Of, so NATS, the coordinator and the tasks agree
// on every event's key group.

// KeyedPrefix is the first token of every subject a partitioned source stream
// stores.
const KeyedPrefix = "$FK"

// KeyGroupFilter returns the subject filter matching the stored events of
// key group g: "$FK.<g>.>".
func KeyGroupFilter(g int) string {
	return KeyedPrefix + "." + strconv.Itoa(g) + ".>"
}

// KeyGroupFilters returns the consumer filter subjects of the stored events
// of the groups in r, for a job with max parallelism m: one filter per group,
// or none (the whole stream, which the server reads fastest) when r is
// every group.
func KeyGroupFilters(r keygroup.Range, m int) []string {
	if r.Start == 0 && r.End == m-1 {
		return nil
	}
	out := make([]string, 0, r.Len())
	for g := r.Start; g <= r.End; g++ {
		out = append(out, KeyGroupFilter(g))
	}
	return out
}

// ParseKeyedSubject splits a stored subject "$FK.<group>.<original>" into
// its key group and original subject. Anything else is a CodeBadMessage
// error.
func ParseKeyedSubject(stored string) (group int, original string, err error) {
	rest, ok := strings.CutPrefix(stored, KeyedPrefix+".")
	if !ok {
		return 0, "", Errorf(CodeBadMessage, "stored subject %q does not start with %s.", stored, KeyedPrefix)
	}
	tok, original, ok := strings.Cut(rest, ".")
	if !ok || original == "" {
		return 0, "", Errorf(CodeBadMessage, "stored subject %q has no original subject", stored)
	}
	group, err = strconv.Atoi(tok)
	if err != nil || group < 0 || group >= keygroup.MaxMaxParallelism {
		return 0, "", Errorf(CodeBadMessage, "stored subject %q: invalid key group %q", stored, tok)
	}
	return group, original, nil
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

// SourceTransform returns the subject transform of a job's source stream:
// from the spec's single source subject to
// "$FK.{{partition(M,w)}}.<subject with its i-th '*' as {{wildcard(i)}}>",
// w being the wildcard index of the key token. The spec must have been
// validated; a spec with more or fewer than one source subject gets
// CodeInvalidJobSpec, since a stream has one transform.
func SourceTransform(spec *JobSpec) (jetstream.SubjectTransformConfig, error) {
	src := spec.Source
	if len(src.Subjects) != 1 {
		return jetstream.SubjectTransformConfig{}, specErr("source.subjects: a key-partitioned source needs exactly one subject, got %d", len(src.Subjects))
	}
	m := spec.MaxParallelism
	if m < 1 || m > keygroup.MaxMaxParallelism {
		return jetstream.SubjectTransformConfig{}, specErr("max_parallelism %d out of range [1, %d]", m, keygroup.MaxMaxParallelism)
	}
	toks := strings.Split(src.Subjects[0], ".")
	k := src.Key.SubjectToken
	if k < 1 || k > len(toks) || toks[k-1] != "*" {
		return jetstream.SubjectTransformConfig{}, specErr("source.key.subject_token %d must be a '*' wildcard in %q", k, src.Subjects[0])
	}
	var dest strings.Builder
	dest.WriteString(KeyedPrefix + ".")
	wild, keyWild := 0, 0
	var rest strings.Builder
	for i, t := range toks {
		if i > 0 {
			rest.WriteByte('.')
		}
		switch t {
		case "*":
			wild++
			if i == k-1 {
				keyWild = wild
			}
			rest.WriteString("{{wildcard(" + strconv.Itoa(wild) + ")}}")
		case ">":
			return jetstream.SubjectTransformConfig{}, specErr("source.subjects: %q: '>' is not supported, use '*' tokens", src.Subjects[0])
		default:
			rest.WriteString(t)
		}
	}
	dest.WriteString("{{partition(" + strconv.Itoa(m) + "," + strconv.Itoa(keyWild) + ")}}.")
	dest.WriteString(rest.String())
	return jetstream.SubjectTransformConfig{Source: src.Subjects[0], Destination: dest.String()}, nil
}

// OutputMsgID returns the Nats-Msg-Id of output n (0-based) of the event at
// stream sequence seq of key group group of job:
// "<job>.<group>.<seq>" for the first output and "<job>.<group>.<seq>.<n>"
// for later ones. It is deterministic, so that JetStream's duplicate window
// drops the outputs of replayed events.
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
	// HdrSourceSeq is the event's sequence in its source stream.
	HdrSourceSeq = "Flotilla-Source-Seq"
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
