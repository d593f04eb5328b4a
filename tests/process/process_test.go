// Package process tests flotilla with workers as real OS processes of the
// flotilla binary, killed with SIGKILL.
package process

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

func flotillaBinary(t *testing.T) string { return testutil.FlotillaBinary(t) }

type proc struct {
	t    *testing.T
	name string
	args []string
	env  []string
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

// startProc starts the flotilla binary with args; it is killed when the
// test ends, and its output is logged if the test failed.
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	p := &proc{t: t, name: name, args: args, env: env}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

func (p *proc) start() {
	p.cmd = exec.Command(flotillaBinary(p.t), p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	if p.out == nil {
		p.out = &bytes.Buffer{}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// runCoordinator runs a coordinator in this process, on an object store
// in a directory of its own, until the returned stop is called or the test
// ends; it returns once the coordinator is ready.
func runCoordinator(t *testing.T, srv *server.Server) (storeDir string, stop func()) {
	t.Helper()
	storeDir = t.TempDir()
	store, err := objectstore.NewFS(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	co, err := coordinator.New(coordinator.Config{Conn: testutil.Connect(t, srv), Store: store,
		MapInput:          srv.GlobalAccount().AddMapping,
		HeartbeatInterval: 200 * time.Millisecond, HeartbeatTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	<-co.Ready()
	return storeDir, stop
}

// startWorker starts `flotilla worker` as a process.
func startWorker(t *testing.T, natsURL, store, name, dataDir string) *proc {
	return startProc(t, "worker "+name, nil, "worker", "-nats", natsURL, "-store", store, "-name", name,
		"-data", dataDir, "-slots", "1", "-log-level", "warn")
}

func TestKilledWorkerProcess(t *testing.T) {
	srv := testutil.RunNATS(t)
	storeDir, _ := runCoordinator(t, srv)
	ctx := context.Background()
	nc := testutil.Connect(t, srv)

	loc := "file://" + storeDir
	w1 := startWorker(t, srv.ClientURL(), loc, "p1", t.TempDir())
	startWorker(t, srv.ClientURL(), loc, "p2", t.TempDir())
	api := client.New(nc, subjects.Namespace{})
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ws, err := api.Workers(ctx)
		if err == nil && len(ws) != 2 {
			err = fmt.Errorf("%d workers", len(ws))
		}
		return err
	})
	spec := subjects.JobSpec{Name: "clicks", Parallelism: 2,
		Source:   subjects.SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator: subjects.OperatorSpec{Type: "count"}}
	if _, err := api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	truth := map[string]int64{}
	r := rand.New(rand.NewPCG(7, 7))
	publish := func(n int) {
		for i := 0; i < n; i++ {
			k := fmt.Sprintf("k%d", r.IntN(30))
			if _, err := js.Publish(ctx, "clicks."+k, nil); err != nil {
				t.Fatal(err)
			}
			truth[k]++
		}
	}
	publish(500)
	// A spare worker, then SIGKILL p1 while events keep arriving.
	startWorker(t, srv.ClientURL(), loc, "p3", t.TempDir())
	w1.kill()
	publish(500)
	testutil.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		info, err := api.Status(ctx, "clicks")
		if err != nil {
			return err
		}
		for _, task := range info.Tasks {
			if task.Worker == "p1" || task.State != subjects.TaskRunning {
				return fmt.Errorf("task %d on %q is %s", task.Task, task.Worker, task.State)
			}
		}
		return fleettest.Counts(ctx, api, "clicks", truth)
	})
}
