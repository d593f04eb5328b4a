// Package compose tests the cluster a user runs with Docker Compose
// (compose/docker-compose.yml) end to end on a real Docker engine: NATS,
// MinIO, a coordinator and three workers in containers, driven from the host
// through the published ports as a user would.
//
// The images are built here without pulling anything (compose/images: FROM
// scratch around static binaries built on this machine) and handed to the
// compose file through NATS_IMAGE, MINIO_IMAGE and FLOTILLA_IMAGE. Every run
// uses its own compose project, image tags and random host ports, and tears
// everything down (`down -v`) whatever happens.
//
// Without a Docker engine (or without compose) the test skips, except in CI
// (CI=true), where it fails. Set FLOTILLA_COMPOSE to choose the compose
// command (e.g. "docker-compose"); by default it is `docker compose` if that
// works, else `docker-compose`.
package compose

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

const (
	job    = "clicks"
	stream = "CLICKS"
	// bucket and prefix are those of the compose file's default FLOTILLA_STORE.
	bucket = "flotilla"
	prefix = "checkpoints"
)

func TestComposeCluster(t *testing.T) {
	c := newCluster(t, "docker-compose.yml")

	// Start order must not matter: the coordinator and the workers come up
	// first, with neither NATS nor MinIO there, and wait for them.
	c.compose("up", "-d", "--no-build", "--no-deps", "--scale", "worker=3", "coordinator", "coordinator-2", "worker")
	testutil.CheckFor(t, time.Minute, 500*time.Millisecond, func() error {
		if logs := c.compose("logs", "--no-color", "coordinator"); !strings.Contains(logs, "waiting for the object store") {
			return errors.New("the coordinator has not reported waiting for the object store yet")
		}
		return nil
	})
	c.compose("up", "-d", "--no-build", "--no-deps", "nats", "minio")
	c.connect()

	t.Log("NATS syncs every JetStream write")
	c.checkSyncAlways()

	t.Log("three workers register")
	c.waitWorkers(3, nil)

	t.Log("a count job with parallelism 3 runs on them")
	spec := subjects.JobSpec{Name: job, Parallelism: 3,
		Source:     subjects.SourceSpec{Stream: stream, Subjects: []string{"clicks.*"}, Key: subjects.KeySpec{SubjectToken: 2}},
		Operator:   subjects.OperatorSpec{Type: "count"},
		Checkpoint: subjects.CheckpointSpec{Interval: subjects.Duration(2 * time.Second)},
		Restart:    subjects.RestartSpec{InitialDelay: subjects.Duration(500 * time.Millisecond), MaxDelay: subjects.Duration(5 * time.Second)},
	}
	if _, err := c.api.Submit(c.ctx, spec, 0, ""); err != nil {
		t.Fatalf("submit: %v", err)
	}
	info := c.waitRunning(3, nil)
	c.publish(600)
	c.waitState()

	t.Log("a savepoint, triggered by a plain NATS request")
	sp := c.triggerSavepoint()
	c.checkSavepointObjects(sp)
	c.checkSavepointRecord(sp)

	t.Log("docker kill of a worker mid-stream: the job recovers with exact state")
	victim := info.Tasks[0]
	container := c.containerOf(victim.Worker)
	c.publish(200)
	killed := make(chan error, 1)
	go func() { // while the events below are published
		out, err := run(c.ctx, time.Minute, nil, "docker", "kill", container)
		if err != nil {
			err = fmt.Errorf("docker kill %s: %v: %s", container, err, out)
		}
		killed <- err
	}()
	c.publish(400)
	if err := <-killed; err != nil {
		t.Fatal(err)
	}
	info = c.waitRunning(3, func(ti subjects.TaskInfo) error {
		if ti.Worker == victim.Worker {
			return fmt.Errorf("task %d is still on the killed worker %s", ti.Task, ti.Worker)
		}
		if ti.Task == victim.Task && ti.Attempt <= victim.Attempt {
			return fmt.Errorf("task %d still at attempt %d", ti.Task, ti.Attempt)
		}
		return nil
	})
	c.waitState()

	t.Log("--scale worker=3 brings the killed worker back, as itself")
	c.compose("up", "-d", "--no-build", "--no-deps", "--scale", "worker=3", "worker")
	c.waitWorkers(3, func(ws []subjects.WorkerInfo) error {
		if !slices.ContainsFunc(ws, func(w subjects.WorkerInfo) bool { return w.Worker == victim.Worker }) {
			return fmt.Errorf("%s (killed) has not registered again", victim.Worker)
		}
		return nil
	})

	t.Log("docker stop of a worker: it leaves, the job follows")
	stopped := info.Tasks[0].Worker
	c.docker("stop", "--time", "20", c.containerOf(stopped))
	c.publish(200)
	c.waitRunning(3, func(ti subjects.TaskInfo) error {
		if ti.Worker == stopped {
			return fmt.Errorf("task %d is on %s, which was stopped", ti.Task, ti.Worker)
		}
		return nil
	})
	c.waitState()

	t.Log("--scale worker=3 again: three workers")
	c.compose("up", "-d", "--no-build", "--no-deps", "--scale", "worker=3", "worker")
	c.waitWorkers(3, nil)
	c.waitRunning(3, nil)

	t.Log("docker kill of the leading coordinator: the other takes over, the job recovers with exact state")
	c.killLeader()
	c.publish(200)
	c.waitRunning(3, nil)
	c.waitState()

	t.Log("a worker outside compose, on the host, joins through the published ports")
	host := c.startHostWorker()
	c.waitWorkers(4, func(ws []subjects.WorkerInfo) error {
		if !slices.ContainsFunc(ws, func(w subjects.WorkerInfo) bool { return w.Worker == host }) {
			return fmt.Errorf("%s has not registered", host)
		}
		return nil
	})

	t.Log("the job restarts from the savepoint at parallelism 4")
	if _, err := c.api.Cancel(c.ctx, job); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	testutil.CheckFor(t, time.Minute, 250*time.Millisecond, func() error {
		info, err := c.api.Status(c.ctx, job)
		if err == nil && !info.State.Terminal() {
			err = fmt.Errorf("job is %s", info.State)
		}
		return err
	})
	c.publish(100) // arrive while no job runs: the restored job reads them
	if _, err := c.api.Submit(c.ctx, spec, 4, sp.Location); err != nil {
		t.Fatalf("submit from savepoint %s: %v", sp.Location, err)
	}
	c.waitRunning(4, nil)
	c.waitState()
}

// cluster is one compose project under test and the host's view of it.
type cluster struct {
	t        *testing.T
	ctx      context.Context
	compCmd  []string // the compose command: docker compose, or docker-compose
	files    []string // compose/docker-compose.yml, and the files on top of it
	project  string
	env      []string // the environment compose runs with
	user     string   // MinIO root user and password
	password string

	nc    *nats.Conn
	js    jetstream.JetStream
	api   *client.Client
	store objectstore.Store // the compose cluster's store, through the published port
	minio string            // host:port of MinIO's S3 API on the host

	rng   *rand.Rand
	truth map[string]int64 // events published per key
	sent  int              // events published, for their message ids
}

// newCluster checks for Docker and compose, builds the images and arranges
// the teardown. Nothing runs yet.
func newCluster(t *testing.T, composeFiles ...string) *cluster {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	if out, err := run(ctx, 30*time.Second, nil, "docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		testutil.NeedServer(t, "Docker", fmt.Sprintf("install Docker and start its engine (`docker info` failed: %v: %s)", err, strings.TrimSpace(out)))
	}
	compCmd := composeCommand(ctx)
	if compCmd == nil {
		testutil.NeedServer(t, "Docker Compose", "install the `docker compose` plugin or docker-compose, or set FLOTILLA_COMPOSE")
	}
	minioBin, err := testutil.FindMinIO()
	if err != nil {
		testutil.NeedServer(t, "minio", testutil.MinIOHowToGet)
	}
	var files []string
	for _, f := range composeFiles {
		file, err := filepath.Abs(filepath.Join("..", "..", "compose", f))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, file)
	}
	c := &cluster{
		t: t, ctx: ctx, compCmd: compCmd, files: files,
		project:  "flotillatest" + randomHex(4),
		user:     "flotilla-test",
		password: randomHex(16),
		rng:      rand.New(rand.NewPCG(1, 2)),
		truth:    map[string]int64{},
	}
	t.Logf("compose: %s, project %s", strings.Join(compCmd, " "), c.project)

	images := map[string]string{
		"flotilla": "flotilla-test/flotilla:" + c.project,
		"nats":     "flotilla-test/nats:" + c.project,
		"minio":    "flotilla-test/minio:" + c.project,
	}
	// Cleanups run last-registered first: the images go after the project.
	t.Cleanup(func() {
		for _, tag := range images {
			_, _ = run(context.Background(), time.Minute, nil, "docker", "rmi", tag)
		}
	})
	start := time.Now()
	out, err := run(ctx, 10*time.Minute, nil, "go", "run", "github.com/flotilla-io/flotilla/compose/images",
		"-flotilla", images["flotilla"], "-nats", images["nats"], "-minio", images["minio"], "-minio-bin", minioBin)
	if err != nil {
		t.Fatalf("building the images: %v\n%s", err, out)
	}
	t.Logf("images built in %v", time.Since(start).Round(time.Second))

	c.env = append(withoutComposeSettings(os.Environ()),
		"FLOTILLA_IMAGE="+images["flotilla"],
		"NATS_IMAGE="+images["nats"],
		"MINIO_IMAGE="+images["minio"],
		"MINIO_ROOT_USER="+c.user,
		"MINIO_ROOT_PASSWORD="+c.password,
		"FLOTILLA_BIND=127.0.0.1",
		// 0: Docker picks free host ports; compose port tells which.
		"FLOTILLA_NATS_PORT=0",
		"FLOTILLA_NATS_MONITOR_PORT=0",
		"FLOTILLA_MINIO_PORT=0",
		"FLOTILLA_MINIO_CONSOLE_PORT=0",
		"FLOTILLA_HTTP_PORT=0",
		"FLOTILLA_WORKER_SLOTS=2",
		"FLOTILLA_LOG_LEVEL=info",
	)
	t.Cleanup(func() {
		if t.Failed() {
			// The coordinators' lines come last: when a report keeps only
			// the start and the end of the output, they are what stays.
			out, _ := c.composeErr(context.Background(), "logs", "--no-color", "--tail=40", "nats", "minio", "worker")
			t.Logf("compose logs of the servers and workers (tail):\n%s", out)
			out, _ = c.composeErr(context.Background(), "logs", "--no-color", "--tail=120", "coordinator", "coordinator-2")
			t.Logf("compose logs of the coordinators (tail):\n%s", out)
			// Every line of every service, and the job's status, are kept
			// as an artifact (go test -artifacts).
			all, _ := c.composeErr(context.Background(), "logs", "--no-color", "--timestamps")
			if c.api != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				info, err := c.api.Status(ctx, job)
				cancel()
				status, _ := json.MarshalIndent(info, "", "  ")
				all = fmt.Sprintf("job status (err %v):\n%s\n\n%s", err, status, all)
			}
			if c.js != nil {
				all = c.stateReport() + "\n" + all
			}
			path := filepath.Join(t.ArtifactDir(), "compose.log")
			if err := os.WriteFile(path, []byte(all), 0o644); err == nil {
				t.Logf("full compose logs: %s", path)
			}
		}
		if c.nc != nil {
			c.nc.Close()
		}
		if out, err := c.composeErr(context.Background(), "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		// down -v must leave nothing of the project behind.
		label := "label=com.docker.compose.project=" + c.project
		for _, ls := range [][]string{{"container", "ls", "--all"}, {"volume", "ls"}, {"network", "ls"}} {
			out, err := run(context.Background(), time.Minute, nil, "docker", append(ls, "--quiet", "--filter", label)...)
			if err == nil && strings.TrimSpace(out) != "" {
				t.Errorf("after down -v, %ss of project %s remain: %s", ls[0], c.project, strings.Fields(out))
			}
		}
	})
	return c
}

// composeCommand returns the compose command to use, or nil if there is none.
func composeCommand(ctx context.Context) []string {
	candidates := [][]string{{"docker", "compose"}, {"docker-compose"}}
	if s := strings.Fields(os.Getenv("FLOTILLA_COMPOSE")); len(s) > 0 {
		candidates = [][]string{s}
	}
	for _, cmd := range candidates {
		if _, err := run(ctx, 30*time.Second, nil, cmd[0], append(cmd[1:], "version")...); err == nil {
			return cmd
		}
	}
	return nil
}

// withoutComposeSettings drops the variables the compose file reads, so a
// developer's own settings do not leak into the test's cluster.
func withoutComposeSettings(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "FLOTILLA_") || strings.HasPrefix(k, "MINIO_") || strings.HasPrefix(k, "NATS_") ||
			strings.HasPrefix(k, "AWS_") || k == "COMPOSE_FILE" || k == "COMPOSE_PROJECT_NAME" || k == "COMPOSE_PROFILES" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// compose runs the compose command on the project and fails the test if it
// fails.
func (c *cluster) compose(args ...string) string {
	c.t.Helper()
	out, err := c.composeErr(c.ctx, args...)
	if err != nil {
		c.t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) composeErr(ctx context.Context, args ...string) (string, error) {
	full := append(slices.Clone(c.compCmd[1:]), "-p", c.project)
	for _, f := range c.files {
		full = append(full, "-f", f)
	}
	return run(ctx, 5*time.Minute, c.env, c.compCmd[0], append(full, args...)...)
}

// docker runs a docker command and fails the test if it fails.
func (c *cluster) docker(args ...string) string {
	c.t.Helper()
	out, err := run(c.ctx, 2*time.Minute, nil, "docker", args...)
	if err != nil {
		c.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// port returns the host address a service's container port is published on.
func (c *cluster) port(service string, port int) string {
	c.t.Helper()
	var addr string
	testutil.CheckFor(c.t, time.Minute, 250*time.Millisecond, func() error {
		out, err := c.composeErr(c.ctx, "port", service, fmt.Sprint(port))
		if err != nil {
			return fmt.Errorf("compose port %s %d: %v: %s", service, port, err, out)
		}
		lines := strings.Fields(out)
		if len(lines) == 0 {
			return fmt.Errorf("compose port %s %d: nothing published", service, port)
		}
		host, p, err := net.SplitHostPort(lines[len(lines)-1])
		if err != nil || p == "0" {
			return fmt.Errorf("compose port %s %d: %q", service, port, out)
		}
		if host == "0.0.0.0" || host == "" {
			host = "127.0.0.1"
		}
		addr = net.JoinHostPort(host, p)
		return nil
	})
	return addr
}

// connect connects the host to the cluster: NATS, the user API, JetStream
// and the object store, all through the published ports.
func (c *cluster) connect() {
	c.t.Helper()
	natsURL := "nats://" + c.port("nats", 4222)
	nc, err := nats.Connect(natsURL, nats.Name("compose test"), nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	if err != nil {
		c.t.Fatalf("connecting to %s: %v", natsURL, err)
	}
	c.nc = nc
	testutil.CheckFor(c.t, time.Minute, 100*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("not connected to %s", natsURL)
		}
		return nil
	})
	if c.js, err = jetstream.New(nc); err != nil {
		c.t.Fatal(err)
	}
	c.api = client.New(nc, subjects.Namespace{})

	c.minio = c.port("minio", 9000)
	testutil.CheckFor(c.t, time.Minute, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		defer cancel()
		s, err := objectstore.Open(ctx, c.storeLocation(), objectstore.Options{AccessKey: c.user, SecretKey: c.password})
		c.store = s
		return err
	})
}

// storeLocation is the compose cluster's store as seen from the host.
func (c *cluster) storeLocation() string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&secure=false&path_style=true&region=us-east-1", bucket, prefix, c.minio)
}

// checkSyncAlways checks, on the monitoring port, that the NATS server runs
// with compose/nats.conf's sync_interval: always.
func (c *cluster) checkSyncAlways() {
	c.t.Helper()
	url := "http://" + c.port("nats", 8222) + "/varz"
	var varz struct {
		JetStream struct {
			Config struct {
				SyncAlways bool   `json:"sync_always"`
				StoreDir   string `json:"store_dir"`
			} `json:"config"`
		} `json:"jetstream"`
	}
	testutil.CheckFor(c.t, time.Minute, 250*time.Millisecond, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&varz)
	})
	if !varz.JetStream.Config.SyncAlways {
		c.t.Fatalf("NATS JetStream runs without sync_always (config %+v): checkpoint metadata could be acknowledged before it is on disk", varz.JetStream.Config)
	}
}

// waitWorkers waits until exactly n workers are registered and check, if
// given, accepts them.
func (c *cluster) waitWorkers(n int, check func([]subjects.WorkerInfo) error) {
	c.t.Helper()
	testutil.CheckFor(c.t, 3*time.Minute, 250*time.Millisecond, func() error {
		ws, err := c.api.Workers(c.ctx)
		if err != nil {
			return err
		}
		if len(ws) != n {
			names := make([]string, len(ws))
			for i, w := range ws {
				names[i] = w.Worker
			}
			return fmt.Errorf("%d workers registered (%v), want %d", len(ws), names, n)
		}
		if check != nil {
			return check(ws)
		}
		return nil
	})
}

// waitRunning waits until the job runs n tasks, every one running and
// accepted by check if given, and returns the job's status.
func (c *cluster) waitRunning(n int, check func(subjects.TaskInfo) error) subjects.JobInfo {
	c.t.Helper()
	var info subjects.JobInfo
	testutil.CheckFor(c.t, 2*time.Minute, 250*time.Millisecond, func() error {
		var err error
		if info, err = c.api.Status(c.ctx, job); err != nil {
			return err
		}
		if info.State != subjects.JobRunning || len(info.Tasks) != n {
			return fmt.Errorf("job is %s with %d tasks, want running with %d", info.State, len(info.Tasks), n)
		}
		for _, ti := range info.Tasks {
			if ti.State != subjects.TaskRunning {
				return fmt.Errorf("task %d on %q is %s", ti.Task, ti.Worker, ti.State)
			}
			if check != nil {
				if err := check(ti); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return info
}

// publish publishes n events from the host, each counted in the ground
// truth once JetStream has acknowledged it.
func (c *cluster) publish(n int) {
	c.t.Helper()
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("user%d", c.rng.IntN(40))
		id := fmt.Sprintf("ev-%d", c.sent)
		// A stream whose leader was just lost answers nothing until a new
		// one is elected: a producer retries with the same message id,
		// which the stream's duplicate window makes harmless.
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		var err error
		for {
			_, err = c.js.Publish(ctx, "clicks."+key, []byte(`{"page":"/"}`), jetstream.WithMsgID(id))
			if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
				continue
			}
			break
		}
		cancel()
		if err != nil {
			c.t.Fatalf("publishing event %d: %v", i, err)
		}
		c.sent++
		c.truth[key]++
	}
}

// waitState waits until every key's state, read through the user API from
// whichever task owns it, equals the ground truth.
func (c *cluster) waitState() {
	c.t.Helper()
	testutil.CheckFor(c.t, 2*time.Minute, 500*time.Millisecond, func() error {
		for key, want := range c.truth {
			res, err := c.api.State(c.ctx, job, key)
			if err != nil && !errors.Is(err, subjects.CodeKeyNotFound) {
				return fmt.Errorf("state of %s: %w", key, err)
			}
			var got int64
			if res.Found {
				if err := json.Unmarshal(res.Value, &got); err != nil {
					return fmt.Errorf("state of %s: %q: %v", key, res.Value, err)
				}
			}
			if got != want {
				return fmt.Errorf("state of %s = %d, want %d", key, got, want)
			}
		}
		return nil
	})
}

// triggerSavepoint requests a savepoint the way the README does with the
// nats CLI: a request with an empty body on the job's trigger subject. It
// returns the outcome, failing the test on an error reply.
func (c *cluster) triggerSavepoint() subjects.SavepointResult {
	c.t.Helper()
	subject := subjects.Namespace{}.TriggerSavepoint(job)
	msg, err := c.nc.Request(subject, nil, 2*time.Minute)
	if err != nil {
		c.t.Fatalf("request %s: %v", subject, err)
	}
	var res subjects.SavepointResult
	if err := subjects.Decode(msg.Data, &res); err != nil {
		c.t.Fatalf("reply on %s: %v: %s", subject, err, msg.Data)
	}
	if res.Error != nil {
		c.t.Fatalf("savepoint failed: %v (code %s)", res.Error, res.Error.Code)
	}
	if res.Checkpoint == 0 || res.Location == "" {
		c.t.Fatalf("savepoint result without id or location: %s", msg.Data)
	}
	if res.Job != "" && res.Job != job {
		c.t.Fatalf("savepoint of job %q, want %q", res.Job, job)
	}
	c.t.Logf("savepoint %d at %s", res.Checkpoint, res.Location)
	return res
}

// savepointDir is where the coordinator writes savepoint id of the job, as
// a key of its store.
func savepointDir(id uint64) string { return fmt.Sprintf("savepoints/%s/sp-%d", job, id) }

// checkSavepointObjects checks that the savepoint is in MinIO: its
// _metadata and a file from each task, under savepoints/<job>/.
func (c *cluster) checkSavepointObjects(sp subjects.SavepointResult) {
	c.t.Helper()
	dir := savepointDir(sp.Checkpoint)
	if !strings.Contains(sp.Location, dir) {
		c.t.Errorf("savepoint location %s does not name %s", sp.Location, dir)
	}
	objs, err := c.store.List(c.ctx, dir+"/")
	if err != nil {
		c.t.Fatalf("listing %s in MinIO: %v", dir, err)
	}
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	if !slices.Contains(keys, dir+"/_metadata") {
		c.t.Fatalf("no %s/_metadata in MinIO; the savepoint holds %v", dir, keys)
	}
	if len(keys) < 1+3 {
		c.t.Errorf("savepoint %s holds %v: want _metadata and the files of 3 tasks", dir, keys)
	}
	if _, err := c.store.Stat(c.ctx, dir+"/_metadata"); err != nil {
		c.t.Errorf("stat %s/_metadata: %v", dir, err)
	}
}

// checkSavepointRecord checks that the savepoint is committed in JetStream:
// its record in the checkpoints bucket.
func (c *cluster) checkSavepointRecord(sp subjects.SavepointResult) {
	c.t.Helper()
	kv, err := c.js.KeyValue(c.ctx, "FLOTILLA_CHECKPOINTS")
	if err != nil {
		c.t.Fatalf("checkpoints bucket: %v", err)
	}
	key := fmt.Sprintf("%s.sp.%d", job, sp.Checkpoint)
	e, err := kv.Get(c.ctx, key)
	if err != nil {
		c.t.Fatalf("savepoint record %s: %v", key, err)
	}
	var rec subjects.CheckpointRecord
	if err := subjects.Decode(e.Value(), &rec); err != nil {
		c.t.Fatalf("savepoint record %s: %v: %s", key, err, e.Value())
	}
	if rec.Job != job || rec.ID != sp.Checkpoint || rec.Kind != subjects.KindSavepoint || rec.Parallelism != 3 {
		c.t.Errorf("savepoint record %s: job %q id %d kind %s parallelism %d; want %s %d savepoint 3",
			key, rec.Job, rec.ID, rec.Kind, rec.Parallelism, job, sp.Checkpoint)
	}
	if !strings.Contains(rec.Location, savepointDir(sp.Checkpoint)) {
		c.t.Errorf("savepoint record %s: location %s, want one naming %s", key, rec.Location, savepointDir(sp.Checkpoint))
	}
}

// containerOf returns the id of the compose worker container that runs
// worker (a worker reports its host name, which Docker sets to the
// container's short id).
// killLeader kills the container of the leading coordinator and waits
// until the other one leads, within the default lease TTL + 2 s.
func (c *cluster) killLeader() {
	c.t.Helper()
	var before subjects.LeaderInfo
	testutil.CheckFor(c.t, time.Minute, 250*time.Millisecond, func() error {
		var err error
		before, err = c.api.Leader(c.ctx)
		if err == nil && before.Leader == "" {
			err = fmt.Errorf("no coordinator leads: %+v", before)
		}
		return err
	})
	// A coordinator's default name starts with its host name, which is
	// its container's short id.
	host, _, _ := strings.Cut(before.Leader, "-")
	var container string
	for _, id := range strings.Fields(c.compose("ps", "-q", "coordinator", "coordinator-2")) {
		if host != "" && strings.HasPrefix(id, host) {
			container = id
		}
	}
	if container == "" {
		c.t.Fatalf("the leader %s is in no coordinator container", before.Leader)
	}
	c.docker("kill", container)
	killed := time.Now()
	testutil.CheckFor(c.t, time.Minute, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(c.ctx, time.Second)
		defer cancel()
		info, err := c.api.Leader(ctx)
		if err == nil && (!info.Leading || info.Leader == before.Leader || info.Term <= before.Term) {
			err = fmt.Errorf("leader %q term %d (answered by %s, leading %v)", info.Leader, info.Term, info.Answered, info.Leading)
		}
		return err
	})
	took := time.Since(killed)
	c.t.Logf("the standby leads %s after the leader (term %d) was killed", took.Round(time.Millisecond), before.Term)
	if bound := coordinator.DefaultLeaseTTL + 2*time.Second; took > bound {
		c.t.Errorf("takeover took %s, above the lease TTL (%s) + 2 s", took.Round(time.Millisecond), coordinator.DefaultLeaseTTL)
	}
}

func (c *cluster) containerOf(worker string) string {
	c.t.Helper()
	ws, err := c.api.Workers(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	i := slices.IndexFunc(ws, func(w subjects.WorkerInfo) bool { return w.Worker == worker })
	if i < 0 {
		c.t.Fatalf("worker %s is not registered", worker)
	}
	host := ws[i].Host
	ids := strings.Fields(c.compose("ps", "-q", "worker"))
	for _, id := range ids {
		if host != "" && strings.HasPrefix(id, host) {
			return id
		}
	}
	c.t.Fatalf("worker %s (host %q) is none of the worker containers %v", worker, host, ids)
	return ""
}

// startHostWorker runs `flotilla worker` on the host, pointed at the
// published ports, until the test ends, and returns its name.
func (c *cluster) startHostWorker() string {
	c.t.Helper()
	dir := c.t.TempDir()
	bin := filepath.Join(dir, "flotilla")
	if out, err := run(c.ctx, 5*time.Minute, nil, "go", "build", "-o", bin, "github.com/flotilla-io/flotilla/cmd/flotilla"); err != nil {
		c.t.Fatalf("go build: %v\n%s", err, out)
	}
	name := "host-" + randomHex(3)
	cmd := exec.Command(bin, "worker",
		"-nats", c.nc.ConnectedUrl(),
		"-store", c.storeLocation(),
		"-name", name,
		"-data", filepath.Join(dir, "data"),
		"-slots", "2",
		"-log-level", "info")
	cmd.Env = append(withoutComposeSettings(os.Environ()),
		"AWS_ACCESS_KEY_ID="+c.user, "AWS_SECRET_ACCESS_KEY="+c.password)
	out := &fleettest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if c.t.Failed() {
			c.t.Logf("host worker %s output:\n%s", name, out.String())
		}
	})
	return name
}

// run runs name with args and env (nil: the test's), bounded by timeout,
// and returns its combined output.
func run(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = cryptorand.Read(b)
	return hex.EncodeToString(b)
}

// stateReport compares, for each key, the events published, the events
// its input stream holds and the job's state: which of the three falls
// short says whether the producer, the stream or the job lost events.
func (c *cluster) stateReport() string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stored := map[string]uint64{}
	var b strings.Builder
	names := c.js.StreamNames(ctx)
	for name := range names.Name() {
		if !strings.HasPrefix(name, stream) {
			continue
		}
		s, err := c.js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(&b, "stream %s: %v\n", name, err)
			continue
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			fmt.Fprintf(&b, "stream %s: %v\n", name, err)
			continue
		}
		st := info.State
		leader := ""
		if info.Cluster != nil {
			leader = info.Cluster.Leader
		}
		fmt.Fprintf(&b, "stream %s: leader %s, %d messages, seq %d-%d\n", name, leader, st.Msgs, st.FirstSeq, st.LastSeq)
		// The tasks' consumers: one that lags with no pull request
		// waiting is a reader that stopped asking.
		consumers := s.ListConsumers(ctx)
		for ci := range consumers.Info() {
			leader := ""
			if ci.Cluster != nil {
				leader = ci.Cluster.Leader
			}
			fmt.Fprintf(&b, "  consumer %s on %s: delivered stream seq %d, pending %d, waiting pulls %d, last active %v\n",
				ci.Name, leader, ci.Delivered.Stream, ci.NumPending, ci.NumWaiting, ci.Delivered.Last)
		}
		if err := consumers.Err(); err != nil {
			fmt.Fprintf(&b, "  consumers: %v\n", err)
		}
		for subj, n := range st.Subjects {
			parts := strings.Split(subj, ".")
			stored[parts[len(parts)-1]] += n
		}
	}
	for key, want := range c.truth {
		var got int64
		if res, err := c.api.State(ctx, job, key); err == nil && res.Found {
			_ = json.Unmarshal(res.Value, &got)
		}
		mark := ""
		if got != want || stored[key] != uint64(want) {
			mark = "  <-"
		}
		fmt.Fprintf(&b, "key %s: published %d, stored %d, state %d%s\n", key, want, stored[key], got, mark)
	}
	return b.String()
}
