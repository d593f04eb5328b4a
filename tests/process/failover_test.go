package process

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// leaseTTL is the coordinators' lease TTL in the failover tests.
const leaseTTL = 2 * time.Second

// startCoordinatorProc starts `flotilla coordinator` named name. The orphan
// sweep runs every second with a grace of 2 s, so that a stale leader that
// swept with its own view would delete files the new leader's checkpoints
// need.
func startCoordinatorProc(t *testing.T, name, natsURL, store string) *proc {
	return startProc(t, "coordinator "+name, nil, "coordinator", "-nats", natsURL, "-store", store, "-log-level", "info",
		"-name", name, "-lease-ttl", leaseTTL.String(), "-heartbeat-interval", "200ms", "-heartbeat-timeout", "1s",
		"-orphan-grace", "2s", "-orphan-sweep-interval", "1s")
}

// leaders asks every coordinator who leads and returns every answer.
func leaders(t *testing.T, nc *nats.Conn) []subjects.LeaderInfo {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subjects.Namespace{}.Leader(), inbox, nil); err != nil {
		t.Fatal(err)
	}
	var out []subjects.LeaderInfo
	for {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			return out
		}
		var info subjects.LeaderInfo
		if err := subjects.Decode(msg.Data, &info); err != nil {
			t.Fatal(err)
		}
		out = append(out, info)
	}
}

// waitLeader waits until exactly one coordinator says it leads, it is
// want, and every other answer names it; it returns the term.
func waitLeader(t *testing.T, nc *nats.Conn, want string, timeout time.Duration) uint64 {
	t.Helper()
	var term uint64
	testutil.CheckFor(t, timeout, 50*time.Millisecond, func() error {
		infos := leaders(t, nc)
		acting := 0
		for _, in := range infos {
			if in.Leading {
				acting++
				if in.Answered != want {
					return fmt.Errorf("%s leads, want %s", in.Answered, want)
				}
				term = in.Term
			}
		}
		if acting != 1 {
			return fmt.Errorf("%d of %d coordinators lead: %+v", acting, len(infos), infos)
		}
		for _, in := range infos {
			if in.Leader != want {
				return fmt.Errorf("%s says %q leads", in.Answered, in.Leader)
			}
		}
		return nil
	})
	return term
}

// checkpointAfter waits for a checkpoint of job above id and returns the
// job's status then.
func checkpointAfter(t *testing.T, api *client.Client, id uint64, timeout time.Duration) subjects.JobInfo {
	t.Helper()
	var info subjects.JobInfo
	testutil.CheckFor(t, timeout, 50*time.Millisecond, func() error {
		var err error
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err = api.Status(ctx, "clicks")
		if err == nil && info.LatestCheckpoint <= id {
			err = fmt.Errorf("latest checkpoint %d", info.LatestCheckpoint)
		}
		return err
	})
	return info
}

// restarted counts the tasks whose attempt changed between two statuses.
func restarted(before, after subjects.JobInfo) int {
	n := 0
	for i, task := range after.Tasks {
		if i < len(before.Tasks) && before.Tasks[i].Attempt != task.Attempt {
			n++
		}
	}
	return n
}

// firstTriggered returns when the first retained checkpoint above id was
// triggered, as its record says.
func firstTriggered(t *testing.T, api *client.Client, id uint64) time.Time {
	t.Helper()
	cps, err := api.Checkpoints(context.Background(), "clicks")
	if err != nil {
		t.Fatal(err)
	}
	var first *subjects.CheckpointRecord
	for i := range cps {
		if cps[i].ID > id && (first == nil || cps[i].ID < first.ID) {
			first = &cps[i]
		}
	}
	if first == nil {
		t.Fatalf("no retained checkpoint above %d", id)
	}
	return first.Triggered
}

// attempts lists a status's task attempts.
func attempts(info subjects.JobInfo) string {
	var out []string
	for _, task := range info.Tasks {
		out = append(out, fmt.Sprintf("%d:%d", task.Task, task.Attempt))
	}
	return "[" + strings.Join(out, " ") + "]"
}

// TestCoordinatorFailover runs two coordinator processes against one
// nats-server: one leads and the other stands by. The leader is killed
// with SIGKILL; the standby takes over within the lease TTL + 2 s and the
// job carries on. The killed one comes back as a standby; then the leader
// is SIGSTOPped until its lease expired and the other took over, and woken:
// it stops acting at once, and nothing it had started (commits, barriers,
// deployments, retention and orphan-sweep deletions, with a sweep grace of
// 2 s) harms the job. Events are published throughout; at the end every
// key's count equals the ground truth, the deduplicating sink holds one
// output per event, and every file of every retained checkpoint exists.
func TestCoordinatorFailover(t *testing.T) {
	seed := uint64(1)
	if s := os.Getenv("FLOTILLA_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	srv := testutil.RunNATS(t)
	storeDir := t.TempDir()
	store := "file://" + storeDir
	url := srv.ClientURL()
	nc := testutil.Connect(t, srv)
	api := client.New(nc, subjects.Namespace{})
	ctx := context.Background()

	c1 := startCoordinatorProc(t, "c1", url, store)
	term1 := waitLeader(t, nc, "c1", 30*time.Second)
	c2 := startCoordinatorProc(t, "c2", url, store)
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := len(leaders(t, nc)); n != 2 {
			return fmt.Errorf("%d coordinators answer", n)
		}
		return nil
	})
	if term := waitLeader(t, nc, "c1", time.Second); term != term1 {
		t.Fatalf("term changed from %d to %d when a standby started", term1, term)
	}
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("p%d", i)
		startProc(t, "worker "+name, nil, "worker", "-nats", url, "-store", store,
			"-name", name, "-data", t.TempDir(), "-slots", "2", "-log-level", "warn")
	}
	fleettest.WaitWorkers(t, api, 2)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	submitSinkCount(t, ctx, api, js, 2)

	// A steady stream of events with a known ground truth, for the whole
	// test (about 20 s).
	const events = 10000
	published := publishSteadily(t, js, seed, events, 100, 100, 200*time.Millisecond)

	// 1. kill -9 the leader.
	before := checkpointAfter(t, api, 2, 30*time.Second)
	killed := time.Now()
	c1.kill()
	// While nobody serves the API, a request fails, once its timeout is
	// spent on retries, with the retryable not_leader naming the leader
	// the standby knows of.
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = api.Status(sctx, "clicks")
	cancel()
	if subjects.CodeOf(err) != subjects.CodeNotLeader || !strings.Contains(err.Error(), "c1") {
		t.Errorf("a request right after the leader died: %v, want not_leader naming c1", err)
	}
	t.Logf("a request while nobody leads: %v", err)
	term2 := waitLeader(t, nc, "c2", leaseTTL+2*time.Second+5*time.Second)
	takeover := time.Since(killed)
	loaded := checkpointAfter(t, api, 0, 10*time.Second) // what c2 loaded
	after := checkpointAfter(t, api, loaded.LatestCheckpoint, 30*time.Second)
	firstCheckpoint := time.Since(killed)
	if term2 <= term1 {
		t.Fatalf("term %d after %d", term2, term1)
	}
	if takeover > leaseTTL+2*time.Second {
		t.Errorf("c2 took over %s after c1 was killed, above lease TTL + 2 s", takeover.Round(time.Millisecond))
	}
	triggered := firstTriggered(t, api, loaded.LatestCheckpoint).Sub(killed)
	if triggered > leaseTTL+2*time.Second {
		t.Errorf("the new leader triggered its first checkpoint %s after c1 was killed, above lease TTL + 2 s", triggered.Round(time.Millisecond))
	}
	if n := restarted(before, after); n != 0 {
		t.Errorf("kill -9 leader: %d of %d tasks restarted, want 0 (attempts %s -> %s)", n, len(after.Tasks), attempts(before), attempts(after))
	}
	t.Logf("kill -9 leader: c2 leads (term %d) after %s; first checkpoint of the new term triggered after %s, completed after %s; %d of %d tasks restarted",
		term2, takeover.Round(time.Millisecond), triggered.Round(time.Millisecond), firstCheckpoint.Round(time.Millisecond), restarted(before, after), len(after.Tasks))

	// 2. c1 comes back as a standby; then c2 is paused past its lease.
	c1.start()
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := len(leaders(t, nc)); n != 2 {
			return fmt.Errorf("%d coordinators answer", n)
		}
		return nil
	})
	waitLeader(t, nc, "c2", time.Second)
	before = checkpointAfter(t, api, after.LatestCheckpoint+1, 30*time.Second)
	paused := time.Now()
	if err := c2.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	term3 := waitLeader(t, nc, "c1", leaseTTL+2*time.Second+5*time.Second)
	takeover = time.Since(paused)
	after = checkpointAfter(t, api, before.LatestCheckpoint, 30*time.Second)
	firstCheckpoint = time.Since(paused)
	t.Logf("SIGSTOP leader: c1 leads (term %d) after %s; first checkpoint of the new term completed after %s; %d of %d tasks restarted",
		term3, takeover.Round(time.Millisecond), firstCheckpoint.Round(time.Millisecond), restarted(before, after), len(after.Tasks))
	if n := restarted(before, after); n != 0 {
		t.Errorf("SIGSTOP leader: %d of %d tasks restarted, want 0 (attempts %s -> %s)", n, len(after.Tasks), attempts(before), attempts(after))
	}
	if takeover > leaseTTL+2*time.Second {
		t.Errorf("c1 took over %s after c2 was paused, above lease TTL + 2 s", takeover.Round(time.Millisecond))
	}
	// Let the new leader complete checkpoints (and its retention delete
	// files) and the paused one's sweep grace pass, then wake it.
	after = checkpointAfter(t, api, after.LatestCheckpoint+3, 30*time.Second)
	time.Sleep(2 * time.Second)
	if err := c2.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	woke := time.Now()
	// The woken coordinator stands by, and only c1 acts, for a while.
	for time.Since(woke) < 3*time.Second {
		waitLeader(t, nc, "c1", 2*time.Second)
		time.Sleep(200 * time.Millisecond)
	}
	truth := published()
	final := checkpointAfter(t, api, after.LatestCheckpoint+2, 30*time.Second)

	fleettest.WaitCounts(t, api, "clicks", truth, time.Minute)
	waitSinkExact(t, ctx, js, events)
	// The job goes on checkpointing, and retention deletes the oldest
	// retained checkpoint's files once a newer one completes: a listing
	// and the files' stats race with it, so a missing file counts only
	// if every listing for 30 s names it.
	var cps []subjects.CheckpointRecord
	files := 0
	testutil.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		var err error
		if cps, err = api.Checkpoints(ctx, "clicks"); err != nil {
			return err
		}
		files = 0
		for _, cp := range cps {
			for _, task := range cp.Tasks {
				for _, f := range task.Handle.Files {
					if _, err := os.Stat(filepath.Join(storeDir, filepath.FromSlash(f))); err != nil {
						return fmt.Errorf("checkpoint %d (term %d or later): %v", cp.ID, term3, err)
					}
					files++
				}
			}
		}
		return nil
	})
	t.Logf("after waking the paused leader: checkpoints up to %d, %d retained with %d files, all present; %d keys exact, sink exact",
		final.LatestCheckpoint, len(cps), files, len(truth))
	c2.kill()
	var woken []string
	for _, line := range strings.Split(c2.out.String(), "\n") {
		if strings.Contains(line, "stepping down") || strings.Contains(line, "fenced") || strings.Contains(line, "not deleting") ||
			strings.Contains(line, "lease is no longer held") {
			woken = append(woken, line)
		}
	}
	if len(woken) == 0 {
		t.Errorf("the woken coordinator did not report stepping down:\n%s", c2.out.String())
	}
	t.Logf("the woken coordinator:\n%s", strings.Join(woken, "\n"))
}
