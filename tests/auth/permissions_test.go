package auth

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// configFile is the example server configuration under test.
var configFile = filepath.Join("..", "..", "compose", "auth", "nats-auth.conf")

// passwordVars are the environment variables the configuration reads the
// users' passwords from.
var passwordVars = map[string]string{
	"coordinator": "FLOTILLA_COORDINATOR_PASSWORD",
	"worker":      "FLOTILLA_WORKER_PASSWORD",
	"worker-1":    "FLOTILLA_WORKER_1_PASSWORD",
	"worker-2":    "FLOTILLA_WORKER_2_PASSWORD",
	"client":      "FLOTILLA_CLIENT_PASSWORD",
	"producer":    "FLOTILLA_PRODUCER_PASSWORD",
}

// authServer runs a nats-server loaded from the example configuration, on
// a random port with a fresh store, and returns how each user connects.
func authServer(t *testing.T) (*server.Server, func(user string) cli.Common) {
	t.Helper()
	for user, v := range passwordVars {
		t.Setenv(v, "secret-of-"+user)
	}
	opts, err := server.ProcessConfigFile(configFile)
	if err != nil {
		t.Fatalf("%s: %v", configFile, err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	if !opts.JetStream || !opts.SyncAlways {
		t.Fatalf("%s: JetStream %v, sync always %v; want both", configFile, opts.JetStream, opts.SyncAlways)
	}
	srv := testutil.RunNATSWithOptions(t, opts)
	as := func(user string) cli.Common {
		return cli.Common{NATS: srv.ClientURL(), User: user, Password: "secret-of-" + user, InboxPrefix: "_INBOX." + user}
	}
	return srv, as
}

// TestFleetUnderSubjectPermissions runs a coordinator, two workers, a
// producer and a client, each as its own user of the example configuration:
// the fleet works (state is exact, checkpoints and a savepoint triggered by
// the client complete) without a single permissions violation, and what a
// role must not do fails with one.
func TestFleetUnderSubjectPermissions(t *testing.T) {
	_, as := authServer(t)
	ctx := context.Background()
	store, err := objectstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	logs := &fleettest.Buffer{}
	log := logger(logs)

	coordNC, coordErrs := dial(t, as("coordinator"), "flotilla coordinator", true)
	w1NC, w1Errs := dial(t, as("worker-1"), "flotilla worker", true)
	w2NC, w2Errs := dial(t, as("worker-2"), "flotilla worker", true)
	sharedNC, sharedErrs := dial(t, as("worker"), "flotilla worker", true)
	clientNC, clientErrs := dial(t, as("client"), "flotilla cli", false)
	producerNC, producerErrs := dial(t, as("producer"), "producer", false)
	fleet := map[string]*asyncErrors{"coordinator": coordErrs, "worker-1": w1Errs, "worker-2": w2Errs,
		"worker": sharedErrs, "client": clientErrs, "producer": producerErrs}

	// The sink's stream, created by an administrator (here: the
	// coordinator's user, which may use the JetStream API), so that the
	// workers' outputs go through JetStream with acknowledgements.
	admin, err := jetstream.New(coordNC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateStream(ctx, jetstream.StreamConfig{Name: "COUNTS", Subjects: []string{"counts.>"}}); err != nil {
		t.Fatal(err)
	}

	startWorker(t, w1NC, "worker-1", store, log.With("process", "worker-1"))
	startWorker(t, w2NC, "worker-2", store, log.With("process", "worker-2"))
	// The shared worker user, for workers that name themselves.
	startWorker(t, sharedNC, "w-7f3a", store, log.With("process", "w-7f3a"))
	startCoordinator(t, coordNC, store, log.With("process", "coordinator"))
	api := client.New(clientNC, subjects.Namespace{})
	waitWorkers(t, api, 3)

	// Six tasks fill the three workers' two slots each.
	if _, err := api.Submit(ctx, countSpec("clicks", 6, 300*time.Millisecond), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	publish(t, producerNC, 2000, 40, 1, truth)
	checkState(t, api, "clicks", truth)

	info, err := api.Status(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	placed := map[string]int{}
	for _, task := range info.Tasks {
		placed[task.Worker]++
	}
	if placed["worker-1"] != 2 || placed["worker-2"] != 2 || placed["w-7f3a"] != 2 {
		t.Errorf("tasks per worker: %v, want 2 on each", placed)
	}

	// Periodic checkpoints complete: barriers, acks, the metadata write and
	// the KV commit all pass the permissions.
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		cps, err := api.Checkpoints(ctx, "clicks")
		if err == nil && len(cps) == 0 {
			err = errors.New("no completed checkpoint yet")
		}
		return err
	})

	// The client triggers a savepoint the plain NATS way (`nats req
	// flotilla.trigger.savepoint.clicks ''`) and gets its location.
	msg, err := clientNC.Request(subjects.Namespace{}.TriggerSavepoint("clicks"), nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sp subjects.SavepointResult
	if err := subjects.Decode(msg.Data, &sp); err != nil || sp.Error != nil || sp.Location == "" {
		t.Fatalf("savepoint: %s (%v)", msg.Data, err)
	}
	sps, err := api.Savepoints(ctx, "clicks")
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, r := range sps {
		listed = listed || r.Location == sp.Location
	}
	if !listed {
		t.Fatalf("savepoint %s not among %+v", sp.Location, sps)
	}
	publish(t, producerNC, 500, 40, 2, truth)
	checkState(t, api, "clicks", truth)

	// A rescale (stop with a savepoint, cancel the tasks, restore at the new
	// parallelism) and its late answer to the client pass too.
	if res, err := api.Rescale(ctx, "clicks", 3); err != nil || res.Location == "" {
		t.Fatalf("rescale: %+v, %v", res, err)
	}
	publish(t, producerNC, 500, 40, 3, truth)
	checkState(t, api, "clicks", truth)

	// The sink stream got the outputs through JetStream.
	counts, err := admin.Stream(ctx, "COUNTS")
	if err != nil {
		t.Fatal(err)
	}
	if n := counts.CachedInfo().State.Msgs; n == 0 {
		t.Error("no outputs in the sink stream")
	}

	// Nothing the fleet did was refused.
	for who, errs := range fleet {
		for _, err := range errs.all() {
			if errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s: %v", who, err)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	t.Run("client", func(t *testing.T) {
		nc, errs := dial(t, as("client"), "probe client", false)
		ns := subjects.Namespace{}
		reg := body(&subjects.RegisterRequest{Worker: "rogue", Slots: 8, Operators: []string{"count"}})
		ack := body(&subjects.Ack{Worker: "worker-1", TaskRef: subjects.TaskRef{Job: "clicks", Task: 0, Attempt: 1}, Checkpoint: 1})
		deploy := body(&subjects.DeployTask{Worker: "worker-1"})
		barrier := body(&subjects.Barrier{Job: "clicks", Checkpoint: 99, Kind: subjects.KindCheckpoint})

		// Requests: refused by the server (not merely unanswered).
		for _, r := range []struct {
			subject string
			data    []byte
		}{
			{ns.Register(), reg},
			{ns.Deploy("worker-1"), deploy},
			{ns.Cancel("worker-1"), nil},
			{ns.SlotRequest("worker-2"), nil},
			{ns.Offer("clicks", "worker-1"), nil},
			{"$JS.API.STREAM.INFO.KV_FLOTILLA_CHECKPOINTS", nil},
			{"$JS.API.DIRECT.GET.KV_FLOTILLA_CHECKPOINTS.$KV.FLOTILLA_CHECKPOINTS.clicks.latest", nil},
			{"$JS.API.STREAM.PURGE.KV_FLOTILLA_CHECKPOINTS", nil},
			{"$JS.API.STREAM.DELETE.CLICKS", nil},
		} {
			if _, err := nc.Request(r.subject, r.data, 250*time.Millisecond); err == nil {
				t.Errorf("request on %s answered", r.subject)
			}
			errs.violation(t, "Publish", r.subject)
		}
		// Publishes.
		for _, p := range []struct {
			subject string
			data    []byte
			refused string // the subject the violation names, when not subject
		}{
			{ns.Ack("clicks", "worker-1"), ack, ""},
			{ns.Decline("clicks", "worker-1"), ack, ""},
			{ns.TaskStatus("clicks", "worker-1"), nil, ""},
			{ns.Barrier("clicks"), barrier, ""},
			{ns.Complete("clicks"), nil, ""},
			{ns.Heartbeat("worker-1"), nil, ""},
			{"$KV.FLOTILLA_CHECKPOINTS.clicks.latest", []byte(`{"id":999}`), ""},
			{"$KV.FLOTILLA_JOBS.clicks", nil, ""},
			// The account maps the input: the server checks the mapped
			// subject ($FK.<group>.clicks.<key>, user-0 in group 7).
			{"clicks.user-0", []byte(`{"n":1}`), "$FK.7.clicks.user-0"},
			{"_INBOX.coordinator.forged", nil, ""},
		} {
			if err := nc.Publish(p.subject, p.data); err != nil {
				t.Fatal(err)
			}
			if p.refused == "" {
				p.refused = p.subject
			}
			errs.violation(t, "Publish", p.refused)
		}
		// The checkpoints bucket through the JetStream client: refused.
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		kctx, cancel := context.WithTimeout(ctx, time.Second)
		if _, err := js.KeyValue(kctx, "FLOTILLA_CHECKPOINTS"); err == nil {
			t.Error("client opened the checkpoints bucket")
		}
		cancel()
		// Subscriptions that would let it impersonate the coordinator or a
		// worker, or read others' replies.
		for _, s := range []string{ns.Register(), ns.API(subjects.APIJobSubmit), ns.Deploy("worker-1"),
			ns.StateQuery("clicks", 3), ns.JobWildcard("ack"), "_INBOX.coordinator.>", "_INBOX.>", "$KV.FLOTILLA_CHECKPOINTS.>"} {
			if _, err := nc.SubscribeSync(s); err != nil {
				t.Fatal(err)
			}
			errs.violation(t, "Subscription", s)
		}
	})

	t.Run("worker", func(t *testing.T) {
		nc, errs := dial(t, as("worker-1"), "probe worker-1", false)
		ns := subjects.Namespace{}
		barrier := body(&subjects.Barrier{Job: "clicks", Checkpoint: 99, Kind: subjects.KindCheckpoint})
		for _, subject := range []string{ns.Deploy("worker-2"), ns.Cancel("worker-2"), ns.SlotRequest("worker-2"),
			"$JS.API.STREAM.INFO.KV_FLOTILLA_CHECKPOINTS", "$JS.API.CONSUMER.CREATE.KV_FLOTILLA_CHECKPOINTS.x",
			"$JS.API.STREAM.DELETE.CLICKS"} {
			if _, err := nc.Request(subject, barrier, 250*time.Millisecond); err == nil {
				t.Errorf("request on %s answered", subject)
			}
			errs.violation(t, "Publish", subject)
		}
		// Nor may it ack, decline, report status or offer slots as
		// worker-2: those subjects name the worker that speaks.
		for _, subject := range []string{ns.Barrier("clicks"), ns.Complete("clicks"), ns.Abort("clicks"),
			ns.Heartbeat("worker-2"), ns.Events(subjects.EventWorkerLost, "worker-2"), "$KV.FLOTILLA_CHECKPOINTS.clicks.latest",
			ns.Ack("clicks", "worker-2"), ns.Decline("clicks", "worker-2"), ns.TaskStatus("clicks", "worker-2")} {
			if err := nc.Publish(subject, barrier); err != nil {
				t.Fatal(err)
			}
			errs.violation(t, "Publish", subject)
		}
		if _, err := nc.Request(ns.Offer("clicks", "worker-2"), nil, 250*time.Millisecond); err == nil {
			t.Error("worker-1 offered a slot as worker-2")
		}
		errs.violation(t, "Publish", ns.Offer("clicks", "worker-2"))
		// On its own subjects, a body that names worker-2 is refused by
		// the coordinator (an offer is answered with invalid_argument).
		offer := subjects.MustEncode(&subjects.SlotOffer{Epoch: 1, Worker: "worker-2", Instance: "x", Job: "clicks",
			Slots: []subjects.OfferedSlot{{Slot: 0, Allocation: "a"}}})
		if msg, err := nc.Request(ns.Offer("clicks", "worker-1"), offer, 5*time.Second); err != nil {
			t.Fatal(err)
		} else {
			var resp subjects.OfferResponse
			if err := subjects.Decode(msg.Data, &resp); err != nil || resp.Error == nil || resp.Error.Code != subjects.CodeInvalidArgument {
				t.Errorf("worker-2's offer on worker-1's subject: %s (%v)", msg.Data, err)
			}
		}
		// On its own heartbeat subject it cannot speak for another worker
		// (which would keep a dead worker-2 alive): the coordinator checks
		// that the subject and the body name the same worker.
		ws, err := api.Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, w := range ws {
			if w.Worker != "worker-2" {
				continue
			}
			found = true
			hb := subjects.MustEncode(&subjects.Heartbeat{Worker: "worker-2", Instance: w.Instance})
			msg, err := nc.Request(ns.Heartbeat("worker-1"), hb, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var resp subjects.HeartbeatResponse
			if err := subjects.Decode(msg.Data, &resp); err != nil || resp.Error == nil || resp.Error.Code != subjects.CodeInvalidArgument {
				t.Errorf("worker-2's heartbeat on worker-1's subject: %s (%v)", msg.Data, err)
			}
		}
		if !found {
			t.Errorf("worker-2 not registered: %+v", ws)
		}
		// Another worker's slot requests and deployments, the coordinator's
		// subjects and others' replies are out of reach.
		for _, s := range []string{ns.Deploy("worker-2"), "flotilla.worker.*.deploy", ns.Register(), ns.JobWildcard("ack"),
			"_INBOX.worker-2.>", "_INBOX.coordinator.>"} {
			if _, err := nc.SubscribeSync(s); err != nil {
				t.Fatal(err)
			}
			errs.violation(t, "Subscription", s)
		}
	})

	t.Run("producer", func(t *testing.T) {
		nc, errs := dial(t, as("producer"), "probe producer", false)
		for _, subject := range []string{subjects.Namespace{}.TriggerSavepoint("clicks"), "counts.clicks", "$JS.API.STREAM.PURGE.CLICKS"} {
			if err := nc.Publish(subject, nil); err != nil {
				t.Fatal(err)
			}
			errs.violation(t, "Publish", subject)
		}
	})

	// The fleet is unharmed by all of the above and still exact.
	publish(t, producerNC, 300, 40, 4, truth)
	checkState(t, api, "clicks", truth)
	for who, errs := range fleet {
		for _, err := range errs.all() {
			if errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("%s: %v", who, err)
			}
		}
	}
}

// body is m as JSON, unvalidated: what a rogue process could send.
func body(m any) []byte {
	b, _ := json.Marshal(m)
	return b
}
