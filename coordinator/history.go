package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/internal/replicas"
	"github.com/flotilla-io/flotilla/subjects"
)

// Defaults of the checkpoint history's retention.
const (
	DefaultHistoryPerJob = 1000
	DefaultHistoryMaxAge = 30 * 24 * time.Hour
)

// history keeps every checkpoint and savepoint attempt (completed, failed,
// aborted) in a JetStream stream, one subject per job
// (subjects.Namespace.History), with bounded retention: at most perJob
// attempts per job and none older than maxAge. Unlike Flink's checkpoint
// statistics it survives coordinator restarts and failover.
//
// An attempt is recorded after it ended; a coordinator that dies in
// between loses that one record, never a checkpoint.
type history struct {
	js     jetstream.JetStream
	ns     subjects.Namespace
	stream string
}

func openHistory(ctx context.Context, js jetstream.JetStream, ns subjects.Namespace, p replicas.Policy, perJob int, maxAge time.Duration) (*history, error) {
	name := metastore.BucketName(ns, metastore.StreamHistory)
	if _, _, err := replicas.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name: name, Subjects: []string{ns.HistoryAll()}, Storage: jetstream.FileStorage,
		MaxMsgsPerSubject: int64(perJob), MaxAge: maxAge, Discard: jetstream.DiscardOld,
		Description: "flotilla checkpoint and savepoint attempts, per job",
	}, p, true); err != nil {
		return nil, fmt.Errorf("coordinator: checkpoint history stream: %w", err)
	}
	return &history{js: js, ns: ns, stream: name}, nil
}

// record appends a to its job's history.
func (h *history) record(ctx context.Context, a subjects.CheckpointAttempt) error {
	b, err := subjects.Encode(&a)
	if err != nil {
		return err
	}
	// Retried through leader elections; the message id makes a retry of a
	// publish that was stored after all a duplicate the stream drops.
	id := fmt.Sprintf("%s.%d", a.Job, a.ID)
	return metastore.Retry(ctx, metastore.Transient, func(ctx context.Context) error {
		_, err := h.js.Publish(ctx, h.ns.History(a.Job), b, jetstream.WithMsgID(id))
		return err
	})
}

// read returns job's newest limit attempts, oldest first, and whether older
// ones exist. Records that do not decode (written by a newer build) are
// skipped.
func (h *history) read(ctx context.Context, job string, limit int) ([]subjects.CheckpointAttempt, bool, error) {
	cons, err := h.js.OrderedConsumer(ctx, h.stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{h.ns.History(job)}})
	if err != nil {
		return nil, false, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, false, err
	}
	total := info.NumPending
	var out []subjects.CheckpointAttempt
	for seen := uint64(0); seen < total; {
		batch, err := cons.Fetch(int(min(total-seen, 256)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, false, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var a subjects.CheckpointAttempt
			if subjects.Decode(m.Data(), &a) == nil {
				out = append(out, a)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, false, err
		}
		if n == 0 {
			break // the rest aged out while reading
		}
		seen += uint64(n)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	truncated := len(out) > limit
	if truncated {
		out = out[len(out)-limit:]
	}
	return out, truncated, nil
}

// historyTimeout bounds the retries of one history record.
const historyTimeout = time.Minute

// recordAttempt observes an ended checkpoint attempt in the metrics and
// appends it to the history, off the loop. Loop only.
func (c *leader) recordAttempt(a subjects.CheckpointAttempt) {
	c.metrics.attempt(a)
	a.Location = c.locationOf(a.Location)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), historyTimeout)
		defer cancel()
		if err := c.hist.record(ctx, a); err != nil {
			c.log.Warn("recording checkpoint history", "job", a.Job, "id", a.ID, "err", err)
		}
	}()
}

// apiCheckpointHistory answers a HistoryRequest from the history stream.
func (c *leader) apiCheckpointHistory(r micro.Request) {
	var req subjects.HistoryRequest
	if err := subjects.Decode(r.Data(), &req); err != nil {
		subjects.Reply(microResponder{r}, &subjects.CheckpointHistory{Error: subjects.AsError(err)})
		return
	}
	out, err := c.co.History(context.Background(), req.Job, req.Limit)
	if err != nil {
		out.Error = subjects.AsError(err)
	}
	subjects.Reply(microResponder{r}, &out)
}

// History returns job's newest limit checkpoint attempts (0: the default
// limit), oldest first, cut further to what fits in one reply.
func (c *Coordinator) History(ctx context.Context, job string, limit int) (subjects.CheckpointHistory, error) {
	out := subjects.CheckpointHistory{Attempts: []subjects.CheckpointAttempt{}}
	if err := subjects.ValidateName("job", job); err != nil {
		return out, err
	}
	if limit <= 0 {
		limit = subjects.DefaultHistoryLimit
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	list, truncated, err := c.hist.read(ctx, job, limit)
	if err != nil {
		return out, subjects.Errorf(subjects.CodeStorageUnavailable, "reading the checkpoint history of %q: %v", job, err)
	}
	out.Attempts, out.Truncated = append(out.Attempts, list...), truncated
	for len(out.Attempts) > 1 {
		b, err := subjects.Encode(&out)
		if err == nil && len(b) < subjects.MaxMessageSize-1024 {
			break
		}
		drop := max(1, len(out.Attempts)/10)
		out.Attempts, out.Truncated = out.Attempts[drop:], true
	}
	return out, nil
}
