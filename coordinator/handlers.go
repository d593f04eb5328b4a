package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/flotilla-io/flotilla/coordinator/engine"
	"github.com/flotilla-io/flotilla/coordinator/jobmaster"
	"github.com/flotilla-io/flotilla/subjects"
)

// Version is reported by the user API service.
const Version = "0.1.0"

// microResponder adapts a micro.Request to subjects.ErrorResponder: a
// refused request keeps its typed JSON body and counts among the
// service's errors (`nats micro stats`), with the code and description
// in the Nats-Service-Error-Code and Nats-Service-Error headers.
type microResponder struct{ micro.Request }

func (r microResponder) Respond(b []byte) error { return r.Request.Respond(b) }

func (r microResponder) RespondError(e *subjects.Error, body []byte) error {
	code, desc := serviceError(e)
	return r.Request.Error(code, desc, body)
}

// serviceError returns the values of the Nats-Service-Error-Code and
// Nats-Service-Error headers for e.
func serviceError(e *subjects.Error) (code, description string) {
	return strconv.Itoa(int(e.Code)), strings.Join(strings.Fields(e.Code.String()+": "+e.Message), " ") // one line
}

// laterResponder answers a micro request after its handler has returned (a
// savepoint's outcome, which takes as long as the savepoint). It publishes
// to the reply subject itself: the service reads a request's error mark
// when the handler returns, so marking it later would race, and such a
// refusal does not count in the stats (the refusals known at once are
// answered from the handler and do). An error still carries the error
// headers.
type laterResponder struct {
	nc    *nats.Conn
	reply string
}

func later(nc *nats.Conn, r micro.Request) laterResponder { return laterResponder{nc, r.Reply()} }

func (r laterResponder) Respond(b []byte) error { return r.nc.Publish(r.reply, b) }

func (r laterResponder) RespondError(e *subjects.Error, body []byte) error {
	code, desc := serviceError(e)
	return r.nc.PublishMsg(&nats.Msg{Subject: r.reply, Data: body,
		Header: nats.Header{micro.ErrorCodeHeader: []string{code}, micro.ErrorHeader: []string{desc}}})
}

// subscribe installs the control-plane subscriptions and the user API.
func (c *leader) subscribe() ([]*nats.Subscription, micro.Service, error) {
	var subs []*nats.Subscription
	sub := func(subject string, h nats.MsgHandler) error {
		s, err := c.nc.Subscribe(subject, h)
		if err == nil {
			subs = append(subs, s)
		}
		return err
	}
	err := errors.Join(
		sub(c.ns.Register(), c.onRegister),
		sub(c.ns.HeartbeatAll(), c.onHeartbeat),
		sub(c.ns.JobWildcard("offer"), c.onOffer),
		sub(c.ns.JobWildcard("status"), c.onStatus),
		sub(c.ns.JobWildcard("ack"), c.onAck),
		sub(c.ns.JobWildcard("decline"), c.onDecline),
		sub(c.ns.TriggerSavepointAll(), c.onTriggerSavepoint),
	)
	if err != nil {
		return subs, nil, fmt.Errorf("coordinator: subscribe: %w", err)
	}
	svc, err := c.addService()
	if err != nil {
		return subs, nil, err
	}
	return subs, svc, c.nc.Flush()
}

func (c *leader) onRegister(msg *nats.Msg) {
	var req subjects.RegisterRequest
	if err := subjects.Decode(msg.Data, &req); err != nil {
		subjects.Reply(msg, &subjects.RegisterResponse{Error: subjects.AsError(err)})
		return
	}
	c.feed(engine.Register{Req: req, Reply: msg})
}

func (c *leader) onHeartbeat(msg *nats.Msg) {
	var hb subjects.Heartbeat
	if err := subjects.Decode(msg.Data, &hb); err != nil {
		subjects.Reply(msg, &subjects.HeartbeatResponse{Error: subjects.AsError(err)})
		return
	}
	// The subject names the worker, so that subject permissions can bind a
	// NATS user to the worker it may heartbeat for: the body must agree.
	if err := subjects.CheckSpeaker(msg.Subject, hb.Worker); err != nil {
		subjects.Reply(msg, &subjects.HeartbeatResponse{Error: subjects.AsError(err)})
		return
	}
	c.feed(engine.Heartbeat{HB: hb, Reply: msg})
}

func (c *leader) onOffer(msg *nats.Msg) {
	var o subjects.SlotOffer
	err := subjects.Decode(msg.Data, &o)
	if err == nil {
		err = subjects.CheckSpeaker(msg.Subject, o.Worker)
	}
	if err != nil {
		subjects.Reply(msg, &subjects.OfferResponse{Error: subjects.AsError(err)})
		return
	}
	c.feed(engine.Offer{Offer: o, Reply: msg})
}

func (c *leader) onStatus(msg *nats.Msg) {
	var st subjects.TaskStatus
	err := subjects.Decode(msg.Data, &st)
	if err == nil {
		err = subjects.CheckSpeaker(msg.Subject, st.Worker)
	}
	if err != nil {
		c.log.Warn("bad task status", "subject", msg.Subject, "err", err)
		return
	}
	c.feed(engine.Status{Status: st})
}

// call runs f on the loop and waits for its result. If the term ends
// first it panics with termEnded, which the API's handlers (guard) answer
// with CodeNotLeader.
func call[T any](c *leader, f func(now time.Time) T) T {
	ch := make(chan T, 1)
	c.enqueue(func(now time.Time) { ch <- f(now) })
	select {
	case v := <-ch:
		return v
	case <-c.done:
		panic(termEnded{})
	}
}

// ask steps the engine with the event ev makes of a reply token and waits
// for the engine's reply, and says whether it repeats the answer of a
// request already carried out (engine.Reply.Repeat). If the term ends
// first it panics with termEnded, as call does.
func ask[T subjects.Message](c *leader, ev func(reply any) engine.Event) (T, bool) {
	ch := make(chan engine.Reply, 1)
	c.feed(ev(ch))
	select {
	case r := <-ch:
		return r.Msg.(T), r.Repeat
	case <-c.done:
		panic(termEnded{})
	}
}

// termEnded is call's panic when the term ended while a request waited.
type termEnded struct{}

// guard answers a request whose handler found the term ended with
// CodeNotLeader, which clients retry.
func guard(h micro.HandlerFunc) micro.HandlerFunc {
	return func(r micro.Request) {
		defer func() {
			if v := recover(); v != nil {
				if _, ok := v.(termEnded); !ok {
					panic(v)
				}
				subjects.Reply(microResponder{r}, &subjects.Response{Error: subjects.Errorf(subjects.CodeNotLeader, "the leader's term ended: retry")})
			}
		}()
		h(r)
	}
}

func (c *leader) addService() (micro.Service, error) {
	svc, err := micro.AddService(c.nc, micro.Config{
		Name: subjects.ServiceName, Version: Version,
		Description: "flotilla user API: jobs, workers, savepoints, checkpoints, state",
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: user API: %w", err)
	}
	g := svc.AddGroup(c.ns.APIGroup())
	add := func(endpoint string, h micro.HandlerFunc) error {
		return g.AddEndpoint(strings.ReplaceAll(endpoint, ".", "_"), guard(h), micro.WithEndpointSubject(endpoint))
	}
	err = errors.Join(
		add(subjects.APIJobSubmit, c.apiSubmit),
		add(subjects.APIJobList, c.apiJobList),
		add(subjects.APIJobStatus, c.apiJobStatus),
		add(subjects.APIJobCancel, c.apiJobCancel),
		add(subjects.APIWorkerList, c.apiWorkerList),
		add(subjects.APIStateGet, c.apiStateGet),
		add(subjects.APIJobStop, c.apiJobStop),
		add(subjects.APIJobRescale, c.apiJobRescale),
		add(subjects.APISavepoint, c.apiSavepoint),
		add(subjects.APISavepointList, c.apiSavepointList),
		add(subjects.APISavepointDelete, c.apiSavepointDelete),
		add(subjects.APICheckpointList, c.apiCheckpointList),
		add(subjects.APICheckpointHistory, c.apiCheckpointHistory),
	)
	if err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("coordinator: user API: %w", err)
	}
	return svc, nil
}

func (c *leader) apiSubmit(r micro.Request) {
	var req subjects.SubmitJob
	if err := subjects.Decode(r.Data(), &req); err != nil {
		subjects.Reply(microResponder{r}, &subjects.JobInfo{Error: subjects.AsError(err)})
		return
	}
	info, err := c.submit(req.Spec, req.FromSavepoint, req.AllowOperatorChange, req.RequestID)
	if err != nil {
		info = subjects.JobInfo{Job: req.Spec.Name, Error: subjects.AsError(err)}
	}
	subjects.Reply(microResponder{r}, &info)
}

// submit starts a new run of a job, from a savepoint or checkpoint location
// if from is set. It runs off the loop: it reads JetStream and the store. A
// submission with the request id of one already carried out (sent again by
// its client) is answered with the run it started (engine.Submit).
func (c *leader) submit(spec subjects.JobSpec, from string, allowOperatorChange bool, requestID string) (subjects.JobInfo, error) {
	if err := c.checkOperator(spec); err != nil {
		return subjects.JobInfo{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.RequestTimeout)
	defer cancel()
	var restore []jobmaster.RestorePoint
	var fromKey string
	var fromRec *subjects.CheckpointRecord
	if from != "" {
		key, err := c.resolveLocation(from)
		if err != nil {
			return subjects.JobInfo{}, err
		}
		sp, err := c.readMetadata(ctx, key)
		if err != nil {
			return subjects.JobInfo{}, err
		}
		if sp.MaxParallelism != spec.MaxParallelism {
			return subjects.JobInfo{}, subjects.Errorf(subjects.CodeInvalidArgument,
				"%s was taken with max_parallelism %d; a job restoring it must keep it (spec has %d)", from, sp.MaxParallelism, spec.MaxParallelism)
		}
		if err := checkRestoredOperator(sp, spec, allowOperatorChange); err != nil {
			return subjects.JobInfo{}, err
		}
		fromKey, restore, fromRec = key, engine.RestorePoints(sp), &sp
		restore[0].AllowOperatorChange = allowOperatorChange
	}
	spec, err := c.resolveInput(spec)
	if err != nil {
		return subjects.JobInfo{}, err
	}
	if fromRec != nil && fromRec.Input != "" && fromRec.Input != subjects.InputID(&spec) {
		return subjects.JobInfo{}, subjects.Errorf(subjects.CodeInvalidArgument,
			"%s holds input positions of %s, and this job reads %s: its events would be skipped or replayed; restore it into a job with the same source stream, layout and partitions",
			from, fromRec.Input, subjects.InputID(&spec))
	}
	warnings, err := c.ensureInput(spec)
	if err != nil {
		return subjects.JobInfo{}, err
	}
	if err := c.store.Claim(ctx, spec.Name, c.epoch); err != nil {
		return subjects.JobInfo{}, subjects.Errorf(subjects.CodeNotLeader, "claiming %q: %v", spec.Name, err)
	}
	jc, _, err := c.store.Load(ctx, spec.Name, false)
	if err != nil {
		return subjects.JobInfo{}, subjects.Errorf(subjects.CodeStorageUnavailable, "reading checkpoints of %q: %v", spec.Name, err)
	}
	answer, repeat := ask[*subjects.JobInfo](c, func(reply any) engine.Event {
		return engine.Submit{Spec: spec, From: from, FromKey: fromKey, AllowOperatorChange: allowOperatorChange,
			Checkpoints: engine.RunCheckpoints{Latest: jc.Highest, Restore: restore, From: fromRec}, Reply: reply, RequestID: requestID}
	})
	info := *answer
	info.Warnings = warnings
	if info.Error != nil {
		return info, nil
	}
	// The run's record is durable before the user hears of the run.
	if err := c.persist.flush(ctx, spec.Name); err != nil {
		info.Warnings = append(info.Warnings, fmt.Sprintf("the job's record is not yet written to the metadata store (%v); it is retried", err))
	}
	if !repeat {
		// Records of the job's earlier runs are never restored by this run:
		// forget them (their files are reclaimed by the orphan sweep), but
		// keep the one this run restores from. A submission sent again did
		// that the first time (and jc may by now hold the run's own).
		for _, old := range jc.Checkpoints {
			if old.Location != fromKey {
				_ = c.store.Remove(ctx, c.epoch, old)
			}
		}
	}
	return info, nil
}

// checkRestoredOperator refuses to restore state another operator wrote (Flink
// matches state to operators by id and refuses state it cannot map), unless
// the user said the change is intended. Records of older builds name no
// operator and pass.
func checkRestoredOperator(from subjects.CheckpointRecord, spec subjects.JobSpec, allow bool) error {
	op, ok := from.Operator()
	if !ok || op.Type == spec.Operator.Type || allow {
		return nil
	}
	return subjects.Errorf(subjects.CodeOperatorMismatch,
		"%s holds the state of operator %q (state version %d) of job %q; job %q runs operator %q, which would misread it. If the change is intended, submit with --allow-operator-change (allow_operator_change)",
		from.Location, op.Type, op.StateVersion, from.Job, spec.Name, spec.Operator.Type)
}

// checkOperator rejects a job whose operator no registered worker has and
// that is not built in.
func (c *leader) checkOperator(spec subjects.JobSpec) error {
	for _, op := range subjects.BuiltinOperators {
		if op == spec.Operator.Type {
			return nil
		}
	}
	known := call(c, func(time.Time) bool { return c.eng.HasOperator(spec.Operator.Type) })
	if !known {
		return subjects.Errorf(subjects.CodeUnknownOperator, "operator %q is not built in and no registered worker has it (built in: %s)",
			spec.Operator.Type, strings.Join(subjects.BuiltinOperators, ", "))
	}
	return nil
}

func (c *leader) jobRequest(r micro.Request) (subjects.JobRequest, bool) {
	var req subjects.JobRequest
	if err := subjects.Decode(r.Data(), &req); err != nil {
		subjects.Reply(microResponder{r}, &subjects.JobInfo{Error: subjects.AsError(err)})
		return req, false
	}
	return req, true
}

func unknownJob(job string) *subjects.Error {
	return subjects.Errorf(subjects.CodeUnknownJob, "no job named %q", job)
}

func (c *leader) apiJobStatus(r micro.Request) {
	req, ok := c.jobRequest(r)
	if !ok {
		return
	}
	info := call(c, func(time.Time) subjects.JobInfo {
		info, _ := c.eng.JobInfo(req.Job)
		return info
	})
	subjects.Reply(microResponder{r}, &info)
}

func (c *leader) apiJobCancel(r micro.Request) {
	req, ok := c.jobRequest(r)
	if !ok {
		return
	}
	info, _ := ask[*subjects.JobInfo](c, func(reply any) engine.Event {
		return engine.CancelJob{Job: req.Job, Reply: reply, RequestID: req.RequestID}
	})
	subjects.Reply(microResponder{r}, info)
}

func (c *leader) apiJobList(r micro.Request) {
	list := call(c, func(time.Time) subjects.JobList {
		out := subjects.JobList{Jobs: c.eng.Jobs()}
		for i := range out.Jobs {
			out.Jobs[i].Spec = nil
		}
		return out
	})
	subjects.Reply(microResponder{r}, &list)
}

func (c *leader) apiWorkerList(r micro.Request) {
	list := call(c, func(time.Time) subjects.WorkerList {
		return subjects.WorkerList{Workers: c.eng.Workers()}
	})
	subjects.Reply(microResponder{r}, &list)
}

func (c *leader) apiStateGet(r micro.Request) {
	var q subjects.StateQuery
	if err := subjects.Decode(r.Data(), &q); err != nil {
		subjects.Reply(microResponder{r}, &subjects.StateResult{Error: subjects.AsError(err)})
		return
	}
	if err := subjects.ValidateName("job", q.Job); err != nil {
		subjects.Reply(microResponder{r}, &subjects.StateResult{Error: subjects.AsError(err)})
		return
	}
	type lookup struct {
		g   int
		err *subjects.Error
	}
	l := call(c, func(time.Time) lookup {
		g, err := c.eng.StateLookup(q.Job, q.Key)
		return lookup{g: g, err: err}
	})
	if l.err != nil {
		subjects.Reply(microResponder{r}, &subjects.StateResult{Job: q.Job, Key: q.Key, Group: l.g, Error: l.err})
		return
	}
	g := l.g
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, c.ns.StateQuery(q.Job, g), subjects.MustEncode(&q))
	if err != nil {
		subjects.Reply(microResponder{r}, &subjects.StateResult{Job: q.Job, Key: q.Key, Group: g,
			Error: subjects.Errorf(subjects.CodeUnavailable, "the task owning key group %d of %q did not answer (restarting?): %v", g, q.Job, err)})
		return
	}
	var res subjects.StateResult
	if err := subjects.Decode(msg.Data, &res); err != nil {
		res = subjects.StateResult{Job: q.Job, Key: q.Key, Group: g,
			Error: subjects.Errorf(subjects.CodeOf(err), "the answer of the task owning key group %d of %q: %v", g, q.Job, err)}
	} else if !res.Found && res.Error == nil {
		res.Error = subjects.Errorf(subjects.CodeKeyNotFound, "job %q has no state under key %q (key group %d, task %d)", q.Job, q.Key, res.Group, res.Task)
	}
	subjects.Reply(microResponder{r}, &res)
}

// savepointRefused answers a savepoint, stop or rescale request at once,
// from the handler, if its job does not exist or is not running (unless
// its request id was seen: the engine answers that one as before), and
// returns whether it did.
func (c *leader) savepointRefused(r micro.Request, job, requestID string) bool {
	err := subjects.AsError(subjects.ValidateName("job", job))
	if err == nil {
		err = call(c, func(time.Time) *subjects.Error { return c.eng.Refusal(job, requestID) })
	}
	if err != nil {
		subjects.Reply(microResponder{r}, &subjects.SavepointResult{Job: job, Error: err})
	}
	return err != nil
}

func (c *leader) apiJobStop(r micro.Request) {
	req, ok := c.jobRequest(r)
	if !ok || c.savepointRefused(r, req.Job, req.RequestID) {
		return
	}
	c.triggerSavepoint(subjects.TriggerSavepoint{Job: req.Job, Stop: true, RequestID: req.RequestID}, later(c.nc, r), 0)
}

func (c *leader) apiJobRescale(r micro.Request) {
	var req subjects.RescaleJob
	if err := subjects.Decode(r.Data(), &req); err != nil {
		subjects.Reply(microResponder{r}, &subjects.SavepointResult{Error: subjects.AsError(err)})
		return
	}
	maxP := call(c, func(time.Time) int { return c.eng.MaxParallelism(req.Job) })
	if maxP > 0 && req.Parallelism > maxP {
		subjects.Reply(microResponder{r}, &subjects.SavepointResult{Job: req.Job,
			Error: subjects.Errorf(subjects.CodeParallelismTooHigh, "parallelism %d is above max_parallelism %d", req.Parallelism, maxP)})
		return
	}
	if c.savepointRefused(r, req.Job, req.RequestID) {
		return
	}
	c.triggerSavepoint(subjects.TriggerSavepoint{Job: req.Job, RequestID: req.RequestID}, later(c.nc, r), req.Parallelism)
}

// resubmit resubmits a job stopped with a savepoint at a new parallelism,
// restoring from that savepoint (engine.Resubmit), and feeds the outcome
// back (engine.Resubmitted), which answers the requesters. If the term
// ends first it answers them itself.
func (c *leader) resubmit(f engine.Resubmit) {
	res := f.Result
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(termEnded); !ok {
				panic(v)
			}
			res.Error = subjects.Errorf(subjects.CodeNotLeader, "job stopped with savepoint %s, but the leader's term ended before resubmitting it at parallelism %d: submit it from the savepoint", res.Location, f.Spec.Parallelism)
			for _, to := range f.To {
				r := res
				subjects.Reply(to.(subjects.Responder), &r)
			}
		}
	}()
	if _, err := c.submit(f.Spec, res.Location, false, ""); err != nil {
		res.Error = subjects.Errorf(subjects.CodeOf(err), "job stopped with savepoint %s, but resubmitting at parallelism %d failed: %v", res.Location, f.Spec.Parallelism, err)
	}
	c.feed(engine.Resubmitted{Request: f.Request, Result: res})
}

func (c *leader) apiSavepoint(r micro.Request) {
	var t subjects.TriggerSavepoint
	if err := subjects.Decode(r.Data(), &t); err != nil {
		subjects.Reply(microResponder{r}, &subjects.SavepointResult{Error: subjects.AsError(err)})
		return
	}
	if c.savepointRefused(r, t.Job, t.RequestID) {
		return
	}
	c.triggerSavepoint(t, later(c.nc, r), 0)
}

func (c *leader) listCheckpoints(r micro.Request, savepoints bool) {
	req, ok := c.jobRequest(r)
	if !ok {
		return
	}
	// A job this coordinator runs answers from its checkpoint coordinator,
	// which decides retention (JetStream lags while subsumed records are
	// being deleted); other jobs from JetStream.
	type retained struct {
		list  []subjects.CheckpointRecord
		known bool
	}
	ret := call(c, func(time.Time) retained {
		list, known := c.eng.Retained(req.Job)
		return retained{list, known}
	})
	list, known := ret.list, ret.known
	if savepoints {
		list = nil
	}
	if list == nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
		defer cancel()
		jc, _, err := c.store.Load(ctx, req.Job, false)
		if err != nil {
			subjects.Reply(microResponder{r}, &subjects.CheckpointList{Error: subjects.Errorf(subjects.CodeStorageUnavailable, "%v", err)})
			return
		}
		// A job this coordinator does not know and that left no record
		// (the records of a job whose run was forgotten still list) does
		// not exist: the same answer as every other endpoint's.
		if !known && jc.Latest == 0 && len(jc.Checkpoints) == 0 && len(jc.Savepoints) == 0 {
			subjects.Reply(microResponder{r}, &subjects.CheckpointList{Error: unknownJob(req.Job)})
			return
		}
		list = jc.Checkpoints
		if savepoints {
			list = jc.Savepoints
		}
	}
	out := subjects.CheckpointList{Checkpoints: []subjects.CheckpointRecord{}}
	for _, rec := range list {
		rec.Location = c.locationOf(rec.Location)
		out.Checkpoints = append(out.Checkpoints, rec)
	}
	subjects.Reply(microResponder{r}, &out)
}

func (c *leader) apiCheckpointList(r micro.Request) { c.listCheckpoints(r, false) }
func (c *leader) apiSavepointList(r micro.Request)  { c.listCheckpoints(r, true) }

// opSavepointDelete is the operation savepoint deletions are remembered
// under (engine.Answered).
const opSavepointDelete = "savepoint_delete"

// apiSavepointDelete deletes a savepoint: its JetStream record, then every
// object under its location. Only savepoints can be deleted this way. A
// request with a request id this term already answered (sent again by its
// client) is answered as before.
func (c *leader) apiSavepointDelete(r micro.Request) {
	var req subjects.SavepointDelete
	if err := subjects.Decode(r.Data(), &req); err != nil {
		subjects.Reply(microResponder{r}, &subjects.Response{Error: subjects.AsError(err)})
		return
	}
	if m := call(c, func(time.Time) subjects.Message {
		m, _ := c.eng.Answer(opSavepointDelete, req.RequestID)
		return m
	}); m != nil {
		subjects.Reply(microResponder{r}, m)
		return
	}
	answer := func(resp *subjects.Response) {
		if req.RequestID != "" {
			kept := *resp // Reply stamps resp's header
			c.feed(engine.Answered{Op: opSavepointDelete, RequestID: req.RequestID, Msg: &kept})
		}
		subjects.Reply(microResponder{r}, resp)
	}
	fail := func(err error) { answer(&subjects.Response{Error: subjects.AsError(err)}) }
	key, err := c.resolveLocation(req.Location)
	if err != nil {
		fail(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, found, err := c.store.SavepointByLocation(ctx, key)
	if err != nil {
		fail(subjects.Errorf(subjects.CodeStorageUnavailable, "%v", err))
		return
	}
	if !found {
		md, err := c.readMetadata(ctx, key)
		if err != nil {
			fail(err)
			return
		}
		if md.Kind != subjects.KindSavepoint {
			fail(subjects.Errorf(subjects.CodeInvalidArgument, "%s is a %s, not a savepoint; checkpoints are deleted by retention", req.Location, md.Kind))
			return
		}
		rec = md
	}
	// A savepoint owns its files (a native one copies what checkpoints
	// uploaded), and the first checkpoint of a run restored from it copies
	// them in turn. Until then the run can restore only from the savepoint.
	// Files that retained checkpoints of older builds still name are kept.
	type users struct {
		inUse      string
		referenced map[string]bool
	}
	u := call(c, func(time.Time) users {
		inUse, referenced := c.eng.SavepointUsers(rec.Location)
		return users{inUse: inUse, referenced: referenced}
	})
	if u.inUse != "" {
		fail(subjects.Errorf(subjects.CodeSavepointInUse, "job %q restored from %s and has completed no checkpoint since: it can restore from nothing else yet; delete the savepoint once a checkpoint completed", u.inUse, req.Location))
		return
	}
	if err := c.store.Remove(ctx, c.epoch, rec); err != nil {
		fail(subjects.Errorf(subjects.CodeStorageUnavailable, "%v", err))
		return
	}
	if err := c.co.holds(ctx, c.epoch); err != nil {
		fail(subjects.Errorf(subjects.CodeNotLeader, "savepoint record deleted, but not its objects: %v", err))
		return
	}
	objs, err := c.cfg.Store.List(ctx, key+"/")
	if err == nil {
		keys := make([]string, 0, len(objs))
		for _, o := range objs {
			if !u.referenced[o.Key] {
				keys = append(keys, o.Key)
			}
		}
		err = c.cfg.Store.Delete(ctx, keys...)
	}
	if err != nil {
		fail(subjects.Errorf(subjects.CodeStorageUnavailable, "savepoint record deleted, but deleting its objects failed: %v", err))
		return
	}
	c.log.Info("savepoint deleted", "location", c.locationOf(key), "objects", len(objs))
	answer(&subjects.Response{})
}
