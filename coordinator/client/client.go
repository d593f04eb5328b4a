// Package client is the Go client of flotilla's user API (the "flotilla"
// micro service) and of the savepoint trigger subject. The CLI and the
// tests use it; every error it returns for a refused request is a
// *subjects.Error with its code.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/flotilla-io/flotilla/subjects"
)

// Client calls the user API over a NATS connection it does not own.
type Client struct {
	nc *nats.Conn
	ns subjects.Namespace
}

// New returns a client of the fleet in namespace ns.
func New(nc *nats.Conn, ns subjects.Namespace) *Client { return &Client{nc: nc, ns: ns} }

// call requests subject with req and decodes the reply into resp. A reply
// that is a bare Response with an error (e.g. from a decode failure on the
// server) is returned as that error.
//
// The request is sent again while no coordinator leads (the leader died
// and a standby has not taken over yet, or the leader's term ended
// mid-request: every retryInterval), and when an attempt gets no answer in
// time: a leader that is paused rather than dead (SIGSTOP, a suspended VM)
// keeps its subscriptions on the server until the server finds the
// connection stale, and swallows the requests routed to it, while the new
// leader answers the others. Attempts get longer (1 s, 1.5 s, 2 s, ...)
// so that a slow answer still arrives. When ctx ends the error is
// subjects.CodeNotLeader naming the leader, if one is known, or
// CodeTimeout; with no coordinator running at all it fails at once with
// CodeUnavailable.
//
// A request that changes something is sent again only with a request id
// (newRequestID), the same in every attempt: the leader carries it out
// once and answers every attempt with its outcome, and a later leader
// answers a submission it finds recorded (subjects.SubmitJob.RequestID).
func (c *Client) call(ctx context.Context, subject string, req, resp subjects.Message) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30e9)
		defer cancel()
	}
	for attempt := firstAttempt; ; attempt += firstAttempt / 2 {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := c.callOnce(actx, subject, req, resp)
		cancel()
		code := subjects.CodeOf(err)
		if code != subjects.CodeNotLeader && code != subjects.CodeTimeout || ctx.Err() != nil {
			return err
		}
		if code == subjects.CodeNotLeader {
			select {
			case <-ctx.Done():
				return err
			case <-time.After(retryInterval):
			}
		}
	}
}

// retryInterval is how often call retries while no coordinator leads.
const retryInterval = 250 * time.Millisecond

// firstAttempt bounds the first attempt of a request; each further attempt
// may take half as long again as the first more.
const firstAttempt = time.Second

// newRequestID returns id, or a new request id if id is empty (the caller
// chose none).
func newRequestID(id string) string {
	if id == "" {
		return nuid.Next()
	}
	return id
}

// leaderWait is how long Leader waits for the leader's own answer once a
// standby answered.
const leaderWait = 250 * time.Millisecond

// Leader asks the coordinators who leads; any of them answers, leader or
// standby. The leader's own answer wins: a standby's view of the lease may
// be a moment old (a takeover just happened), so after a standby's answer
// Leader waits up to leaderWait for the leader's, and otherwise returns the
// standby's answer naming the highest term. An error with CodeUnavailable
// means no coordinator answered.
func (c *Client) Leader(ctx context.Context) (subjects.LeaderInfo, error) {
	var info subjects.LeaderInfo
	inbox := c.nc.NewRespInbox()
	answers := make(chan *nats.Msg, 16)
	sub, err := c.nc.ChanSubscribe(inbox, answers)
	if err != nil {
		return info, subjects.Errorf(subjects.CodeUnavailable, "asking who leads: %v", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(c.ns.Leader(), inbox, nil); err != nil {
		return info, subjects.Errorf(subjects.CodeUnavailable, "asking who leads: %v", err)
	}
	var (
		best  *subjects.LeaderInfo
		after <-chan time.Time // set at the first answer
	)
	for {
		select {
		case msg := <-answers:
			var a subjects.LeaderInfo
			if err := subjects.Decode(msg.Data, &a); err != nil {
				if best == nil {
					return a, err
				}
				continue
			}
			if a.Error == nil && a.Leading {
				return a, nil
			}
			if best == nil || (a.Error == nil && (best.Error != nil || a.Term > best.Term)) {
				best = &a
			}
			if after == nil {
				after = time.After(leaderWait)
			}
		case <-after:
			return *best, errOf(best.Error)
		case <-ctx.Done():
			if best != nil {
				return *best, errOf(best.Error)
			}
			return info, subjects.Errorf(subjects.CodeUnavailable, "no coordinator answers on %s: is one running? (%v)", c.ns.Leader(), ctx.Err())
		}
	}
}

// notLeader is the error for a request nobody served although a
// coordinator runs: none leads now, or the leader is not serving yet.
func (c *Client) notLeader(ctx context.Context, subject string) error {
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := c.Leader(lctx)
	switch {
	case err != nil:
		return subjects.Errorf(subjects.CodeUnavailable, "no coordinator answers on %s: is it running?", subject)
	case info.Leader == "":
		return subjects.Errorf(subjects.CodeNotLeader, "no coordinator leads now (coordinator %s stands by; one takes over when the lease expires): retry", info.Answered)
	}
	return subjects.Errorf(subjects.CodeNotLeader, "coordinator %s holds the lease (term %d) but does not serve %s: it is starting, or it died and a standby takes over when the lease expires: retry", info.Leader, info.Term, subject)
}

func (c *Client) callOnce(ctx context.Context, subject string, req, resp subjects.Message) error {
	var b []byte // a nil req sends an empty body (the list endpoints)
	if req != nil {
		var err error
		if b, err = subjects.Encode(req); err != nil {
			return err
		}
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return c.notLeader(ctx, subject)
		}
		return subjects.Errorf(subjects.CodeTimeout, "%s: %v", subject, err)
	}
	if err := subjects.Decode(msg.Data, resp); err != nil {
		var r subjects.Response
		if subjects.Decode(msg.Data, &r) == nil && r.Error != nil {
			return r.Error
		}
		return fmt.Errorf("client: reply on %s: %w", subject, err)
	}
	return nil
}

func errOf(e *subjects.Error) error {
	if e == nil {
		return nil
	}
	return e
}

// Submit submits a job. parallelism overrides the spec's when positive;
// fromSavepoint names a savepoint or checkpoint location to restore from.
func (c *Client) Submit(ctx context.Context, spec subjects.JobSpec, parallelism int, fromSavepoint string) (subjects.JobInfo, error) {
	return c.SubmitJob(ctx, subjects.SubmitJob{Spec: spec, Parallelism: parallelism, FromSavepoint: fromSavepoint})
}

// SubmitJob submits a job with every option of the request. A request
// without a RequestID gets one.
func (c *Client) SubmitJob(ctx context.Context, req subjects.SubmitJob) (subjects.JobInfo, error) {
	req.RequestID = newRequestID(req.RequestID)
	var info subjects.JobInfo
	err := c.call(ctx, c.ns.API(subjects.APIJobSubmit), &req, &info)
	if err == nil {
		err = errOf(info.Error)
	}
	return info, err
}

// Jobs lists the jobs.
func (c *Client) Jobs(ctx context.Context) ([]subjects.JobInfo, error) {
	var list subjects.JobList
	err := c.call(ctx, c.ns.API(subjects.APIJobList), nil, &list)
	if err == nil {
		err = errOf(list.Error)
	}
	return list.Jobs, err
}

// Status describes a job.
func (c *Client) Status(ctx context.Context, job string) (subjects.JobInfo, error) {
	return c.jobCall(ctx, subjects.APIJobStatus, subjects.JobRequest{Job: job})
}

// Cancel cancels a job.
func (c *Client) Cancel(ctx context.Context, job string) (subjects.JobInfo, error) {
	return c.jobCall(ctx, subjects.APIJobCancel, subjects.JobRequest{Job: job, RequestID: newRequestID("")})
}

func (c *Client) jobCall(ctx context.Context, endpoint string, req subjects.JobRequest) (subjects.JobInfo, error) {
	var info subjects.JobInfo
	err := c.call(ctx, c.ns.API(endpoint), &req, &info)
	if err == nil {
		err = errOf(info.Error)
	}
	return info, err
}

// Workers lists the registered workers.
func (c *Client) Workers(ctx context.Context) ([]subjects.WorkerInfo, error) {
	var list subjects.WorkerList
	err := c.call(ctx, c.ns.API(subjects.APIWorkerList), nil, &list)
	if err == nil {
		err = errOf(list.Error)
	}
	return list.Workers, err
}

// State returns key's current value in job's state, from the task that
// owns it. A key with no state is an error with subjects.CodeKeyNotFound
// (and res.Found false).
func (c *Client) State(ctx context.Context, job, key string) (subjects.StateResult, error) {
	var res subjects.StateResult
	err := c.call(ctx, c.ns.API(subjects.APIStateGet), &subjects.StateQuery{Job: job, Key: key}, &res)
	if err == nil {
		err = errOf(res.Error)
	}
	return res, err
}

func savepointErr(res subjects.SavepointResult, err error) (subjects.SavepointResult, error) {
	if err == nil {
		err = errOf(res.Error)
	}
	return res, err
}

// TriggerSavepoint takes a savepoint of job and waits for its outcome.
// target (optional) is a location inside the coordinator's store; format
// is statebackend.FormatCanonical (default, zero) or FormatNative. A request
// without a RequestID gets one.
func (c *Client) TriggerSavepoint(ctx context.Context, t subjects.TriggerSavepoint) (subjects.SavepointResult, error) {
	t.RequestID = newRequestID(t.RequestID)
	var res subjects.SavepointResult
	return savepointErr(res, c.call(ctx, c.ns.API(subjects.APISavepoint), &t, &res))
}

// Stop takes a savepoint of job and then ends it; if the savepoint fails,
// the job keeps running and the error is returned.
func (c *Client) Stop(ctx context.Context, job string) (subjects.SavepointResult, error) {
	var res subjects.SavepointResult
	return savepointErr(res, c.call(ctx, c.ns.API(subjects.APIJobStop), &subjects.JobRequest{Job: job, RequestID: newRequestID("")}, &res))
}

// Rescale stops job with a savepoint and resubmits it at parallelism p from
// that savepoint.
func (c *Client) Rescale(ctx context.Context, job string, p int) (subjects.SavepointResult, error) {
	var res subjects.SavepointResult
	return savepointErr(res, c.call(ctx, c.ns.API(subjects.APIJobRescale), &subjects.RescaleJob{Job: job, Parallelism: p, RequestID: newRequestID("")}, &res))
}

// Checkpoints lists job's retained completed checkpoints with their
// statistics, oldest first.
func (c *Client) Checkpoints(ctx context.Context, job string) ([]subjects.CheckpointRecord, error) {
	return c.list(ctx, subjects.APICheckpointList, job)
}

// Savepoints lists job's savepoints, oldest first.
func (c *Client) Savepoints(ctx context.Context, job string) ([]subjects.CheckpointRecord, error) {
	return c.list(ctx, subjects.APISavepointList, job)
}

func (c *Client) list(ctx context.Context, endpoint, job string) ([]subjects.CheckpointRecord, error) {
	var list subjects.CheckpointList
	err := c.call(ctx, c.ns.API(endpoint), &subjects.JobRequest{Job: job}, &list)
	if err == nil {
		err = errOf(list.Error)
	}
	return list.Checkpoints, err
}

// DeleteSavepoint deletes the savepoint at location.
func (c *Client) DeleteSavepoint(ctx context.Context, location string) error {
	var resp subjects.Response
	if err := c.call(ctx, c.ns.API(subjects.APISavepointDelete), &subjects.SavepointDelete{Location: location, RequestID: newRequestID("")}, &resp); err != nil {
		return err
	}
	return resp.Err()
}

// History returns job's newest limit checkpoint and savepoint attempts
// (completed, failed and aborted; 0: the server's default limit), oldest
// first, and whether older ones exist.
func (c *Client) History(ctx context.Context, job string, limit int) (subjects.CheckpointHistory, error) {
	var h subjects.CheckpointHistory
	err := c.call(ctx, c.ns.API(subjects.APICheckpointHistory), &subjects.HistoryRequest{Job: job, Limit: limit}, &h)
	if err == nil {
		err = errOf(h.Error)
	}
	return h, err
}
