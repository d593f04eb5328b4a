package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestS3CredentialsStayOutOfLogsAndMetadata runs a fleet on MinIO, the
// coordinator taking the S3 credentials from the environment (as `flotilla
// coordinator` does) and the workers from options, through checkpoints,
// savepoints, refused requests and an object store outage; then it looks
// for the secret key everywhere the fleet writes: every log line at debug
// level, every object in the bucket (the _metadata records included), every
// record of the coordinator's KV buckets, every event, and the user API's
// answers. It must be in none of them.
func TestS3CredentialsStayOutOfLogsAndMetadata(t *testing.T) {
	m := testutil.RunMinIO(t)
	ctx := context.Background()
	secret := m.SecretKey
	loc := m.Location("flotilla", "fleet")
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	logs := &fleettest.Buffer{}
	log := logger(logs)

	coordStore, err := (&cli.Common{Store: loc}).OpenStore(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	workerStore, err := objectstore.Open(ctx, loc, m.Options())
	if err != nil {
		t.Fatal(err)
	}
	srv := testutil.RunNATS(t)
	c := cli.Common{NATS: srv.ClientURL()}
	coordNC, _ := dial(t, c, "flotilla coordinator", true)
	stopCoord := startCoordinator(t, coordNC, coordStore, log.With("process", "coordinator"))
	var stops []func()
	for _, w := range []string{"w1", "w2"} {
		nc, _ := dial(t, c, "flotilla worker", true)
		stops = append(stops, startWorker(t, nc, w, workerStore, log.With("process", w)))
	}
	clientNC, _ := dial(t, c, "flotilla cli", false)
	api := client.New(clientNC, subjects.Namespace{})
	waitWorkers(t, api, 2)

	if _, err := api.Submit(ctx, countSpec("clicks", 2, 300*time.Millisecond), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	publish(t, clientNC, 1000, 30, 1, truth)
	checkState(t, api, "clicks", truth)
	waitCheckpoints(t, api, 1)
	if sp, err := api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks"}); err != nil || !strings.Contains(sp.Location, "savepoints/clicks/") {
		t.Fatalf("savepoint: %+v, %v", sp, err)
	}
	if sp, err := api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks", Target: "manual"}); err != nil {
		t.Fatalf("savepoint to a target: %+v, %v", sp, err)
	}

	// Refused requests whose answers and log lines name locations.
	refused := map[string]func() error{
		"credentials in a savepoint target": func() error {
			_, err := api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks",
				Target: "s3://" + m.AccessKey + ":" + secret + "@flotilla/stolen?endpoint=" + m.Endpoint})
			return err
		},
		"a target outside the store": func() error {
			_, err := api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks", Target: "s3://elsewhere/x"})
			return err
		},
		"a savepoint that does not exist": func() error {
			_, err := api.Submit(ctx, countSpec("clicks2", 1, 0), 0, "savepoints/none")
			return err
		},
		"credentials in a store location": func() error {
			_, err := (&cli.Common{Store: "s3://" + m.AccessKey + ":" + secret + "@flotilla/x?endpoint=" + m.Endpoint}).OpenStore(ctx, log)
			return err
		},
		"credentials in a location's query": func() error {
			_, err := objectstore.Open(ctx, loc+"&secret_key="+secret, objectstore.Options{})
			return err
		},
		"a wrong secret key": func() error {
			_, err := objectstore.Open(ctx, loc, objectstore.Options{AccessKey: m.AccessKey, SecretKey: secret + "-wrong"})
			return err
		},
	}
	for what, f := range refused {
		err := f()
		if err == nil {
			t.Errorf("%s: accepted", what)
			continue
		}
		log.Info("refused", "what", what, "err", err)
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the secret key: %v", what, err)
		}
	}

	// An outage of the object store: uploads and metadata writes fail and
	// their errors are logged, declined and reported as events.
	killedAt := len(logs.String())
	m.Kill()
	testutil.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if since := logs.String()[killedAt:]; !strings.Contains(since, "checkpoint aborted") || !strings.Contains(since, m.Endpoint) {
			return errors.New("no checkpoint failed on the object store yet")
		}
		return nil
	})
	m.Restart()
	latest := func() uint64 {
		cps := checkpoints(t, api)
		if len(cps) == 0 {
			return 0
		}
		return cps[len(cps)-1].ID
	}
	before := latest()
	publish(t, clientNC, 500, 30, 2, truth)
	checkState(t, api, "clicks", truth)
	testutil.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if latest() <= before {
			return errors.New("no checkpoint since the outage")
		}
		return nil
	})

	// The API's answers, then the fleet stops, so that its last words are
	// in the logs too.
	var answers strings.Builder
	for _, f := range []func() (any, error){
		func() (any, error) { return api.Checkpoints(ctx, "clicks") },
		func() (any, error) { return api.Savepoints(ctx, "clicks") },
		func() (any, error) { return api.Status(ctx, "clicks") },
		func() (any, error) { return api.Workers(ctx) },
	} {
		v, err := f()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v)
		answers.Write(b)
	}
	for _, stop := range stops {
		stop()
	}
	stopCoord()

	found := map[string]string{} // where -> a sample of what was scanned
	scan := func(where string, data []byte) {
		if strings.Contains(string(data), secret) {
			t.Errorf("the secret key is in %s", where)
		}
		if _, ok := found[where]; !ok {
			found[where] = string(data[:min(len(data), 80)])
		}
	}
	scan("the API's answers", []byte(answers.String()))
	scan("the logs", []byte(logs.String()))

	objs, err := workerStore.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	metadata := 0
	for _, o := range objs {
		rc, err := workerStore.Get(ctx, o.Key, 0, -1)
		if errors.Is(err, objectstore.ErrNotFound) {
			continue // retention deleted it meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		scan("object "+o.Key, append([]byte(o.Key+"\n"), b...))
		if strings.HasSuffix(o.Key, "/_metadata") {
			metadata++
		}
	}

	js, err := jetstream.New(clientNC)
	if err != nil {
		t.Fatal(err)
	}
	records := 0
	for _, bucket := range []string{"FLOTILLA_CHECKPOINTS", "FLOTILLA_JOBS", "FLOTILLA_COORDINATOR"} {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k := range keys.Keys() {
			e, err := kv.Get(ctx, k)
			if err != nil {
				continue // deleted meanwhile
			}
			scan(fmt.Sprintf("KV %s %s", bucket, k), e.Value())
			records++
		}
	}
	cons, err := js.OrderedConsumer(ctx, "FLOTILLA_EVENTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	events := 0
	for {
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			scan("event "+msg.Subject(), msg.Data())
			n++
		}
		if n == 0 {
			break
		}
		events += n
	}

	// What was scanned is what the fleet writes: the store's location in
	// the logs, metadata objects, records and events.
	if !strings.Contains(logs.String(), loc) || metadata < 3 || records < 3 || events < 5 {
		t.Errorf("scanned too little: location in the logs %v, %d metadata objects, %d KV records, %d events",
			strings.Contains(logs.String(), loc), metadata, records, events)
	}
	t.Logf("scanned %d bytes of logs, %d objects (%d _metadata), %d KV records, %d events",
		len(logs.String()), len(objs), metadata, records, events)
}

func checkpoints(t *testing.T, api *client.Client) []subjects.CheckpointRecord {
	t.Helper()
	cps, err := api.Checkpoints(context.Background(), "clicks")
	if err != nil {
		t.Fatal(err)
	}
	return cps
}

func waitCheckpoints(t *testing.T, api *client.Client, n int) {
	t.Helper()
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if got := len(checkpoints(t, api)); got < n {
			return fmt.Errorf("%d checkpoints, want %d", got, n)
		}
		return nil
	})
}
