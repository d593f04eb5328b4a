package subjects

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/statebackend"
	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

func testSpec() JobSpec {
	s := JobSpec{
		Name: "clicks", Parallelism: 2,
		Source:   SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: KeySpec{SubjectToken: 2}},
		Operator: OperatorSpec{Type: "count"},
		Sink:     SinkSpec{Subject: "counts.clicks"},
	}
	return s.WithDefaults()
}

func testHandle() statebackend.Handle {
	return statebackend.Handle{Version: statebackend.HandleVersion, Format: statebackend.FormatNative, Manifest: "clicks/chk-1/task-0-1/MANIFEST",
		Range: keygroup.Range{Start: 0, End: 63}, Size: 10, Uploaded: 10, Files: []string{"clicks/chk-1/task-0-1/MANIFEST", "clicks/shared/a.sst"}}
}

// validMessages returns one valid message of every type.
func validMessages() []Message {
	ref := TaskRef{Job: "clicks", Task: 1, Attempt: 3}
	spec := testSpec()
	return []Message{
		&RegisterRequest{Worker: "w1", Slots: 2, Operators: BuiltinOperators},
		&RegisterResponse{Instance: "i1", Epoch: 7, HeartbeatInterval: Duration(2 * time.Second), HeartbeatTimeout: Duration(10 * time.Second)},
		&Heartbeat{Worker: "w1", Instance: "i1", Epoch: 7, Slots: []SlotReport{{Slot: 0, Allocation: "a1", Job: "clicks", Task: 1, Attempt: 3, State: TaskRunning}, {Slot: 1}}},
		&HeartbeatResponse{Error: Errorf(CodeUnknownWorker, "who are you")},
		&SlotRequest{Epoch: 7, Worker: "w1", Allocation: "a1", Job: "clicks"},
		&SlotResponse{Slot: 1},
		&SlotOffer{Epoch: 7, Worker: "w1", Instance: "i1", Job: "clicks", Slots: []OfferedSlot{{Slot: 1, Allocation: "a1"}}},
		&OfferResponse{Accepted: []string{"a1"}},
		&DeployTask{Epoch: 7, Worker: "w1", Allocation: "a1", TaskRef: ref, Parallelism: 2, Range: keygroup.ForTask(1, 2, 128), Spec: spec, Restore: []statebackend.Handle{testHandle()}, RestoredFrom: 4},
		&CancelTask{Epoch: 7, Worker: "w1", TaskRef: ref},
		&Response{},
		&TaskStatus{Worker: "w1", TaskRef: ref, State: TaskFailed, Error: Errorf(CodeCorruptState, "bad sst")},
		&Barrier{Epoch: 7, Job: "clicks", Checkpoint: 5, Kind: KindCheckpoint, Format: statebackend.FormatNative, Target: "clicks/chk-5", Shared: "clicks/shared", Timestamp: time.Unix(100, 0).UTC()},
		&Ack{Worker: "w1", TaskRef: ref, Checkpoint: 5, Handle: testHandle(), Sync: Duration(time.Millisecond), Async: Duration(time.Second)},
		&Decline{Worker: "w1", TaskRef: ref, Checkpoint: 5, Reason: Errorf(CodeStorageUnavailable, "s3 down")},
		&Complete{Epoch: 7, Job: "clicks", Checkpoint: 5, Kind: KindCheckpoint},
		&Abort{Epoch: 7, Job: "clicks", Checkpoint: 5, Reason: Errorf(CodeCheckpointExpired, "late")},
		&TriggerSavepoint{Job: "clicks", Target: "file:///sp", Format: statebackend.FormatCanonical},
		&SavepointResult{Job: "clicks", Checkpoint: 6, Location: "file:///sp/clicks/sp-6"},
		&StateQuery{Job: "clicks", Key: "user-1"},
		&StateResult{Job: "clicks", Key: "user-1", Group: 3, Found: true, Value: json.RawMessage(`42`)},
		&Event{Kind: EventCheckpointCompleted, Time: time.Unix(100, 0).UTC(), Job: "clicks", Checkpoint: 5},
		&SubmitJob{Spec: spec, Parallelism: 2},
		&JobRequest{Job: "clicks"},
		&JobInfo{Job: "clicks", State: JobRunning, Spec: &spec, Tasks: []TaskInfo{{Task: 0, Range: keygroup.Range{Start: 0, End: 63}, Worker: "w1", Attempt: 1, State: TaskRunning}}},
		&JobList{Jobs: []JobInfo{{Job: "clicks", State: JobRunning}}},
		&WorkerList{Workers: []WorkerInfo{{Worker: "w1", Instance: "i1", Slots: 2, FreeSlots: 1}}},
		&RescaleJob{Job: "clicks", Parallelism: 4},
		&CheckpointList{},
		&CheckpointRecord{Job: "clicks", ID: 5, Kind: KindCheckpoint, Format: statebackend.FormatNative, Location: "clicks/chk-5", Parallelism: 1, MaxParallelism: 128, Tasks: []TaskCheckpoint{{Task: 0, Handle: testHandle()}}},
		&SavepointDelete{Location: "file:///sp/clicks/sp-6"},
		testAttempt(),
		&HistoryRequest{Job: "clicks", Limit: 10},
		&CheckpointHistory{Attempts: []CheckpointAttempt{*testAttempt()}, Truncated: true},
		&JobRecord{Spec: spec, State: JobRunning, Submitted: time.Unix(100, 0).UTC(), FirstID: 3, Term: 7},
		&LatestPointer{ID: 5, Kind: KindCheckpoint, Location: "clicks/chk-5", Term: 7},
		&LeaderLease{Holder: "c1", Term: 7, Acquired: time.Unix(100, 0).UTC()},
		&LeaderInfo{Leader: "c1", Term: 7, Answered: "c2"},
	}
}

func TestEveryTypeRoundTrips(t *testing.T) {
	msgs := validMessages()
	if len(msgs) != int(numTypes)-1 {
		t.Fatalf("validMessages has %d messages, want one of each of %d types", len(msgs), numTypes-1)
	}
	seen := map[Type]bool{}
	for _, m := range msgs {
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("encode %s: %v", m.MsgType(), err)
		}
		seen[m.MsgType()] = true
		got := New(m.MsgType())
		if err := Decode(b, got); err != nil {
			t.Fatalf("decode %s: %v\n%s", m.MsgType(), err, b)
		}
		again, _ := Encode(got)
		if string(again) != string(b) {
			t.Errorf("%s does not round-trip:\n%s\n%s", m.MsgType(), b, again)
		}
		if !strings.HasPrefix(string(b), `{"type":"`+m.MsgType().String()+`","v":1`) {
			t.Errorf("%s: header not first: %s", m.MsgType(), b)
		}
	}
	for ty := Type(1); ty < numTypes; ty++ {
		if !seen[ty] || New(ty) == nil || New(ty).MsgType() != ty {
			t.Errorf("type %s: missing from New or from the test", ty)
		}
	}
}

func TestDecodeRejectsBadInputWithCodes(t *testing.T) {
	huge := `{"type":"ack","v":1,"worker":"` + strings.Repeat("x", MaxMessageSize) + `"}`
	cases := []struct {
		name string
		in   string
		into Message
		code Code
	}{
		{"not json", `{"type":`, new(Ack), CodeBadMessage},
		{"wrong field type", `{"type":"heartbeat","v":1,"worker":7}`, new(Heartbeat), CodeBadMessage},
		{"future version", `{"type":"ack","v":2}`, new(Ack), CodeUnsupportedVersion},
		{"no version", `{"type":"ack"}`, new(Ack), CodeUnsupportedVersion},
		{"wrong type", `{"type":"barrier","v":1}`, new(Ack), CodeUnknownType},
		{"unknown type", `{"type":"launch_missiles","v":1}`, new(Ack), CodeUnknownType},
		{"empty internal", ``, new(Ack), CodeBadMessage},
		{"too large", huge, new(Ack), CodeTooLarge},
		{"missing worker", `{"type":"register","v":1,"slots":1}`, new(RegisterRequest), CodeInvalidName},
		{"bad worker name", `{"type":"register","v":1,"worker":"a.b","slots":1}`, new(RegisterRequest), CodeInvalidName},
		{"negative slots", `{"type":"register","v":1,"worker":"w","slots":-1}`, new(RegisterRequest), CodeInvalidArgument},
		{"ack without checkpoint", `{"type":"ack","v":1,"worker":"w","job":"j","task":0,"attempt":1}`, new(Ack), CodeMissingField},
		{"bad key-group range", deployWithRange(`{"start":64,"end":10}`), new(DeployTask), CodeInvalidRange},
		{"range past M", deployWithRange(`{"start":0,"end":128}`), new(DeployTask), CodeInvalidRange},
		{"unknown task state", `{"type":"task_status","v":1,"worker":"w","job":"j","task":0,"attempt":1,"state":"dancing"}`, new(TaskStatus), CodeBadMessage},
		{"trigger bad job", `{"job":"a b"}`, new(TriggerSavepoint), CodeInvalidName},
		{"trigger unknown format", `{"format":"zip"}`, new(TriggerSavepoint), CodeBadMessage},
		{"trigger bad request id", `{"request_id":"a.b"}`, new(TriggerSavepoint), CodeInvalidArgument},
		{"cancel request id too long", `{"job":"j","request_id":"` + strings.Repeat("x", MaxRequestID+1) + `"}`, new(JobRequest), CodeInvalidArgument},
		{"rescale request id with a space", `{"job":"j","parallelism":2,"request_id":"a b"}`, new(RescaleJob), CodeInvalidArgument},
		{"delete request id with a wildcard", `{"location":"sp","request_id":"*"}`, new(SavepointDelete), CodeInvalidArgument},
		{"submit request id with a dot", `{"request_id":"x.y","spec":{"name":"j","parallelism":1,"source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"}}}`, new(SubmitJob), CodeInvalidArgument},
		{"submit parallelism above max", `{"spec":{"name":"j","parallelism":300,"source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"}}}`, new(SubmitJob), CodeParallelismTooHigh},
	}
	for _, c := range cases {
		err := Decode([]byte(c.in), c.into)
		if CodeOf(err) != c.code || !errors.Is(err, c.code) {
			t.Errorf("%s: got %v (code %s), want code %s", c.name, err, CodeOf(err), c.code)
		}
	}
}

func deployWithRange(r string) string {
	d := validMessages()[8].(*DeployTask)
	b := MustEncode(d)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	m["range"] = json.RawMessage(r)
	out, _ := json.Marshal(m)
	return string(out)
}

func TestLenientMessagesAcceptHandTypedBodies(t *testing.T) {
	var tr TriggerSavepoint
	for _, body := range []string{"", "  \n", "{}", `{"format":"native"}`} {
		tr = TriggerSavepoint{}
		if err := Decode([]byte(body), &tr); err != nil {
			t.Fatalf("%q: %v", body, err)
		}
	}
	if tr.Format != statebackend.FormatNative {
		t.Errorf("format = %v", tr.Format)
	}
	// A request id is optional, and a nuid passes.
	var jr JobRequest
	if err := Decode([]byte(`{"job":"j","request_id":"XTcV1EZsk0KuWbqCw5qN1d"}`), &jr); err != nil || jr.RequestID != "XTcV1EZsk0KuWbqCw5qN1d" {
		t.Fatalf("request id: %v %+v", err, jr)
	}
	var q StateQuery
	if err := Decode([]byte(`{"key":"user-1"}`), &q); err != nil || q.Key != "user-1" {
		t.Fatalf("state query: %v %+v", err, q)
	}
	if err := Decode([]byte(`{}`), &StateQuery{}); CodeOf(err) != CodeMissingField {
		t.Errorf("empty state query: %v", err)
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	if _, err := Encode(&Ack{Worker: "w"}); err == nil {
		t.Fatal("encoded an invalid ack")
	}
}

func TestJobSpecValidation(t *testing.T) {
	good := `{"name": "clicks", "parallelism": 2, "max_parallelism": 128,
	 "source": {"stream": "CLICKS", "subjects": ["clicks.*"], "key": {"subject_token": 2}},
	 "operator": {"type": "count"}, "sink": {"subject": "counts.clicks"},
	 "checkpoint": {"interval": "10s", "timeout": "1m", "retained": 3}}`
	s, err := ParseJobSpec([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if s.Checkpoint.Interval.D() != 10*time.Second || s.Checkpoint.MaxConcurrent != 1 || s.Restart.InitialDelay.D() != time.Second {
		t.Errorf("defaults: %+v", s)
	}
	bad := map[string]struct {
		spec string
		code Code
	}{
		"unknown field":       {`{"name":"j","paralelism":2}`, CodeInvalidJobSpec},
		"no name":             {`{"source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"}}`, CodeInvalidName},
		"key not a wildcard":  {`{"name":"j","source":{"stream":"S","subjects":["a.b"],"key":{"subject_token":2}},"operator":{"type":"count"}}`, CodeInvalidJobSpec},
		"key past the end":    {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":3}},"operator":{"type":"count"}}`, CodeInvalidJobSpec},
		"no operator":         {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}}}`, CodeInvalidJobSpec},
		"sum without field":   {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"sum"}}`, CodeInvalidJobSpec},
		"window without size": {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"window"}}`, CodeInvalidJobSpec},
		"bad duration":        {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"},"checkpoint":{"interval":"often"}}`, CodeInvalidJobSpec},
		"sink wildcard":       {`{"name":"j","source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"},"sink":{"subject":"out.*"}}`, CodeInvalidJobSpec},
		"too parallel":        {`{"name":"j","parallelism":9,"max_parallelism":8,"source":{"stream":"S","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"}}`, CodeParallelismTooHigh},
		"stream with dot":     {`{"name":"j","source":{"stream":"S.x","subjects":["a.*"],"key":{"subject_token":2}},"operator":{"type":"count"}}`, CodeInvalidJobSpec},
		"not json":            {`name: j`, CodeInvalidJobSpec},
	}
	for name, c := range bad {
		_, err := ParseJobSpec([]byte(c.spec))
		if CodeOf(err) != c.code {
			t.Errorf("%s: got %v, want code %s", name, err, c.code)
		}
	}
}

func TestSubjects(t *testing.T) {
	var n Namespace
	// Everything a worker says names it last, and the wildcards match.
	for _, c := range []struct{ got, want string }{
		{n.Ack("clicks", "w1"), "flotilla.job.clicks.ack.w1"},
		{n.Decline("clicks", "w1"), "flotilla.job.clicks.decline.w1"},
		{n.Offer("clicks", "w1"), "flotilla.job.clicks.offer.w1"},
		{n.TaskStatus("clicks", "w1"), "flotilla.job.clicks.status.w1"},
		{n.JobWildcard("ack"), "flotilla.job.*.ack.*"},
		{n.JobWorkers("clicks", "ack"), "flotilla.job.clicks.ack.*"},
	} {
		if c.got != c.want {
			t.Errorf("subject %s, want %s", c.got, c.want)
		}
	}
	if err := CheckSpeaker(n.Ack("clicks", "w1"), "w1"); err != nil {
		t.Errorf("w1 on its own subject: %v", err)
	}
	if err := CheckSpeaker(n.Ack("clicks", "w1"), "w2"); CodeOf(err) != CodeInvalidArgument {
		t.Errorf("w2 on w1's subject: %v", err)
	}
	p, err := NewNamespace("acme.flotilla")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.StateQuery("clicks", 17); got != "acme.flotilla.job.clicks.state.17" {
		t.Errorf("state = %s", got)
	}
	if got := p.Events(EventWorkerLost, "w1"); got != "acme.flotilla.events.worker_lost.w1" {
		t.Errorf("events = %s", got)
	}
	for _, bad := range []string{"a..b", "a.*", ">", "a b"} {
		if _, err := NewNamespace(bad); CodeOf(err) != CodeInvalidArgument {
			t.Errorf("prefix %q: %v", bad, err)
		}
	}
}

func TestErrorCodesHaveNames(t *testing.T) {
	for c, name := range codeNames {
		if c.String() != name || name == "" {
			t.Errorf("code %d", c)
		}
	}
	err := error(Errorf(CodeUnknownJob, "no job %q", "x"))
	wrapped := errors.Join(errors.New("context"), err)
	if !errors.Is(wrapped, CodeUnknownJob) || CodeOf(wrapped) != CodeUnknownJob {
		t.Errorf("code lost through wrapping: %v", wrapped)
	}
	if CodeOf(errors.New("plain")) != CodeInternal {
		t.Error("plain error is not internal")
	}
}

func testAttempt() *CheckpointAttempt {
	return &CheckpointAttempt{Job: "clicks", ID: 5, Kind: KindSavepoint, Trigger: TriggerStop, Outcome: OutcomeFailed,
		Location: "savepoints/clicks/sp-5", Parallelism: 2, Triggered: time.Unix(100, 0).UTC(), Ended: time.Unix(101, 0).UTC(),
		Duration: Duration(time.Second), Size: 10, Uploaded: 10, Failure: Errorf(CodeCheckpointDeclined, "task 1 declined"),
		Tasks: []TaskAttempt{{Task: 0, Worker: "w1", Acked: true, Sync: Duration(time.Millisecond), Async: Duration(time.Second), Size: 10, Uploaded: 10}, {Task: 1, Worker: "w2"}}}
}
