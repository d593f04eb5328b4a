package subjects

import (
	"encoding/json"
	"testing"

	"github.com/flotilla-io/flotilla/statebackend"
)

// A list's records are messages of their own on the wire: Encode stamps
// their type and version as it stamps the list's.
func TestEncodeStampsTheRecordsOfAList(t *testing.T) {
	for _, c := range []struct {
		m     Container
		field string
		want  Type
	}{
		{&JobList{Jobs: []JobInfo{{Job: "a"}, {Job: "b"}}}, "jobs", TypeJobInfo},
		{&CheckpointList{Checkpoints: []CheckpointRecord{{Job: "a", ID: 1, Kind: KindSavepoint, Format: statebackend.FormatCanonical}}}, "checkpoints", TypeCheckpointRecord},
	} {
		b, err := Encode(c.m)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]json.RawMessage
		var records []Header
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(got[c.field], &records); err != nil || len(records) == 0 {
			t.Fatalf("%s: no records (%v): %s", c.m.MsgType(), err, b)
		}
		for i, h := range records {
			if h.Type != c.want || h.V != Version {
				t.Errorf("%s record %d: type %s v %d, want %s v %d", c.m.MsgType(), i, h.Type, h.V, c.want, Version)
			}
		}
	}
}

type recorder struct {
	body    []byte
	errored *Error
}

func (r *recorder) Respond(b []byte) error { r.body = b; return nil }

func (r *recorder) RespondError(e *Error, b []byte) error { r.body, r.errored = b, e; return nil }

// A reply carrying an error goes through RespondError, with the same
// typed body a plain Respond would send.
func TestReplyMarksErrors(t *testing.T) {
	var r recorder
	Reply(&r, &JobInfo{Job: "a"})
	if r.errored != nil || r.body == nil {
		t.Errorf("a success: marked %v", r.errored)
	}
	for _, m := range []Failer{
		&JobInfo{Error: Errorf(CodeUnknownJob, "no job")},
		&JobList{Error: Errorf(CodeUnavailable, "x")},
		&WorkerList{Error: Errorf(CodeUnavailable, "x")},
		&CheckpointList{Error: Errorf(CodeUnknownJob, "x")},
		&SavepointResult{Error: Errorf(CodeSavepointFailed, "x")},
		&StateResult{Error: Errorf(CodeKeyNotFound, "x")},
		&Response{Error: Errorf(CodeInvalidLocation, "x")},
	} {
		r = recorder{}
		Reply(&r, m)
		if r.errored != m.Failure() {
			t.Errorf("%s: marked %v, want %v", m.MsgType(), r.errored, m.Failure())
		}
		fresh := New(m.MsgType()).(Failer)
		if err := Decode(r.body, fresh); err != nil || fresh.Failure() == nil || fresh.Failure().Code != m.Failure().Code {
			t.Errorf("%s: body %s (%v)", m.MsgType(), r.body, err)
		}
	}
}
