package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// fleet is an in-process nats-server, a coordinator and a worker, for
// running the command line against. NATS_URL points the commands at the
// server; natscli contexts are read from an empty directory.
type fleet struct {
	srv *server.Server
	api *client.Client
	nc  *nats.Conn
	dir string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	srv := testutil.RunNATS(t)
	store, err := objectstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{srv: srv, nc: testutil.Connect(t, srv), dir: t.TempDir()}
	f.api = client.New(f.nc, subjects.Namespace{})
	t.Setenv("NATS_URL", srv.ClientURL())
	t.Setenv("XDG_CONFIG_HOME", f.dir)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	co, err := coordinator.New(coordinator.Config{Conn: testutil.Connect(t, srv), Store: store, Logger: log,
		HeartbeatInterval: 200 * time.Millisecond, HeartbeatTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.start(t, co.Run)
	select {
	case <-co.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("coordinator not ready")
	}
	w, err := worker.New(worker.Config{Conn: testutil.Connect(t, srv), DataDir: t.TempDir(), Name: "w1", Slots: 2, Store: store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.start(t, w.Run)
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		ws, err := f.api.Workers(context.Background())
		if err == nil && len(ws) != 1 {
			err = fmt.Errorf("%d workers registered", len(ws))
		}
		return err
	})
	return f
}

func (f *fleet) start(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// submit submits a count job over clicks.* with checkpoints every 100 ms
// through the command line and waits until it runs.
func (f *fleet) submit(t *testing.T, job string) {
	t.Helper()
	spec := fmt.Sprintf(`{"name": %q, "parallelism": 2, "source": {"stream": "CLICKS", "subjects": ["clicks.*"], "key": {"subject_token": 2}},
		"operator": {"type": "count"}, "sink": {"subject": "counts.clicks"}, "checkpoint": {"interval": "100ms", "timeout": "10s", "retained": 2}}`, job)
	path := filepath.Join(f.dir, job+".json")
	if err := os.WriteFile(path, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCLI(t, "job", "submit", path); code != 0 {
		t.Fatalf("submit: exit %d\n%s%s", code, out, errOut)
	}
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(context.Background(), job)
		if err == nil && info.State != subjects.JobRunning {
			err = fmt.Errorf("job %s is %s", job, info.State)
		}
		return err
	})
}

// Every command about a job answers a job that does not exist the same
// way: unknown_job, exit 1. A key without state is key_not_found.
func TestUnknownJobEverywhere(t *testing.T) {
	f := newFleet(t)
	for _, args := range [][]string{
		{"job", "status", "nojob"}, {"job", "cancel", "nojob"}, {"job", "stop", "nojob"}, {"job", "rescale", "nojob", "2"},
		{"savepoint", "nojob"}, {"savepoints", "nojob"}, {"checkpoints", "nojob"}, {"state", "get", "nojob", "alice"},
	} {
		out, errOut, code := runCLI(t, args...)
		if code != 1 || out != "" || !strings.Contains(errOut, "unknown_job (300): ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and unknown_job (300)", args, code, out, errOut)
		}
	}
	f.submit(t, "clicks")
	js, err := f.nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish("clicks.alice", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if out, errOut, code := runCLI(t, "state", "get", "clicks", "alice"); code != 0 || out != "1\n" {
			return fmt.Errorf("state get clicks alice: exit %d, %q %q", code, out, errOut)
		}
		return nil
	})
	out, errOut, code := runCLI(t, "state", "get", "clicks", "bob")
	if code != 1 || out != "" || !strings.Contains(errOut, `key_not_found (306): job "clicks" has no state under key "bob"`) {
		t.Errorf("state get of a key without state: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A job that exists but has no savepoint lists none.
	if out, errOut, code := runCLI(t, "savepoints", "clicks"); code != 0 || !strings.HasPrefix(out, "ID") {
		t.Errorf("savepoints of a running job: exit %d, %q %q", code, out, errOut)
	}
}

// What --json prints is the API's reply, and every object in it that is
// a message (the reply, each job of a list, each checkpoint record) has
// its real type and version.
func TestJSONOutputIsTyped(t *testing.T) {
	f := newFleet(t)
	f.submit(t, "clicks")
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		recs, err := f.api.Checkpoints(context.Background(), "clicks")
		if err == nil && len(recs) == 0 {
			err = fmt.Errorf("no checkpoint yet")
		}
		return err
	})
	if _, errOut, code := runCLI(t, "savepoint", "clicks"); code != 0 {
		t.Fatalf("savepoint: %s", errOut)
	}
	type object struct {
		Type        string            `json:"type"`
		V           int               `json:"v"`
		Jobs        []json.RawMessage `json:"jobs"`
		Checkpoints []json.RawMessage `json:"checkpoints"`
	}
	check := func(what, data, wantType string) object {
		t.Helper()
		var o object
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, data)
		}
		if o.Type != wantType || o.V != subjects.Version {
			t.Errorf("%s: type %q v %d, want %q v %d\n%s", what, o.Type, o.V, wantType, subjects.Version, data)
		}
		return o
	}
	for _, c := range []struct {
		args        []string
		want, items string
	}{
		{[]string{"job", "list"}, "job_list", "job_info"},
		{[]string{"checkpoints", "clicks", "--tasks"}, "checkpoint_list", "checkpoint_record"},
		{[]string{"savepoints", "clicks"}, "checkpoint_list", "checkpoint_record"},
		{[]string{"job", "status", "clicks"}, "job_info", ""},
		{[]string{"workers"}, "worker_list", ""},
	} {
		out, errOut, code := runCLI(t, append(c.args, "--json")...)
		if code != 0 {
			t.Errorf("%q: exit %d: %s", c.args, code, errOut)
			continue
		}
		o := check(strings.Join(c.args, " "), out, c.want)
		items := append(o.Jobs, o.Checkpoints...)
		if c.items != "" && len(items) == 0 {
			t.Errorf("%q: no items:\n%s", c.args, out)
		}
		for i, item := range items {
			check(fmt.Sprintf("%s item %d", strings.Join(c.args, " "), i), string(item), c.items)
		}
	}
}

// A refused request is an error in the service's statistics (`nats micro
// stats flotilla`) and still gets its typed JSON body.
func TestRefusedRequestsCountAsErrors(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	spec := subjects.JobSpec{Name: "bad", Parallelism: 1,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "nosuchop"}, Sink: subjects.SinkSpec{Subject: "counts.clicks"}}
	const refused = 20
	for i := 0; i < refused; i++ {
		if _, err := f.api.Submit(ctx, spec, 0, ""); subjects.CodeOf(err) != subjects.CodeUnknownOperator {
			t.Fatalf("submit %d: %v, want unknown_operator", i, err)
		}
	}
	for _, job := range []string{"nojob", "other"} {
		if _, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: job}); err == nil {
			t.Fatalf("savepoint of %s: accepted", job)
		}
	}
	// The headers say what the body says.
	msg, err := f.nc.Request(subjects.Namespace{}.API(subjects.APIJobStatus), []byte(`{"job":"nojob"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info subjects.JobInfo
	if err := subjects.Decode(msg.Data, &info); err != nil || info.Error == nil || info.Error.Code != subjects.CodeUnknownJob {
		t.Errorf("status of nojob: %s (%v)", msg.Data, err)
	}
	if code, desc := msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader); code != "300" || desc != `unknown_job: no job named "nojob"` {
		t.Errorf("status of nojob: headers %q %q", code, desc)
	}

	// The service counts a request once its handler has returned, which
	// is after the reply was sent: poll.
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		reply, err := f.nc.Request("$SRV.STATS."+subjects.ServiceName, nil, 5*time.Second)
		if err != nil {
			return err
		}
		var stats micro.Stats
		if err := json.Unmarshal(reply.Data, &stats); err != nil {
			return err
		}
		got := map[string]micro.EndpointStats{}
		for _, e := range stats.Endpoints {
			got[e.Name] = *e
		}
		for _, c := range []struct {
			endpoint         string
			requests, errors int
			lastErrorStart   string
		}{
			{subjects.APIJobSubmit, refused, refused, "305:unknown_operator: "},
			{subjects.APISavepoint, 2, 2, `300:unknown_job: no job named "other"`},
			{subjects.APIJobStatus, 1, 1, "300:unknown_job: "},
		} {
			e := got[strings.ReplaceAll(c.endpoint, ".", "_")]
			if e.NumRequests != c.requests || e.NumErrors != c.errors || !strings.HasPrefix(e.LastError, c.lastErrorStart) {
				return fmt.Errorf("%s: %d requests, %d errors, last %q; want %d, %d, %q...", c.endpoint, e.NumRequests, e.NumErrors, e.LastError,
					c.requests, c.errors, c.lastErrorStart)
			}
		}
		return nil
	})
}

// A natscli context points the command line at the fleet: by name, as
// NATS_CONTEXT, or selected; -s and --server override its URL.
func TestCommandsUseNATSContexts(t *testing.T) {
	f := newFleet(t)
	os.Unsetenv("NATS_URL")
	ctxDir := filepath.Join(f.dir, "nats", "context")
	if err := os.MkdirAll(ctxDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, url := range map[string]string{"fleet": f.srv.ClientURL(), "elsewhere": "nats://127.0.0.1:1"} {
		if err := os.WriteFile(filepath.Join(ctxDir, name+".json"), []byte(`{"url": "`+url+`"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"workers", "--context", "fleet"},
		{"workers", "--context", "elsewhere", "-s", f.srv.ClientURL()},
		{"workers", "--server", f.srv.ClientURL(), "--context=elsewhere"},
	} {
		if out, errOut, code := runCLI(t, args...); code != 0 || !strings.Contains(out, "w1") {
			t.Errorf("%q: exit %d, %q %q", args, code, out, errOut)
		}
	}
	if _, errOut, code := runCLI(t, "workers", "--context", "elsewhere"); code != 1 || !strings.Contains(errOut, "nats://127.0.0.1:1") {
		t.Errorf("context elsewhere: exit %d, %q", code, errOut)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "nats", "context.txt"), []byte("fleet"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runCLI(t, "workers"); code != 0 || !strings.Contains(out, "w1") {
		t.Errorf("selected context: exit %d, %q %q", code, out, errOut)
	}
}
