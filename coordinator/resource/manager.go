// Package resource is the coordinator's resource manager, after Flink's
// ResourceManager and SlotManager: it knows the registered workers and their
// slots, declares workers lost when their heartbeats stop, and turns each
// job's demand for slots into slot requests to workers.
//
// Manager is a pure state machine in the style of etcd's raft: it never
// touches the network or a clock. The caller feeds it events (Register,
// Heartbeat, SlotRequestFailed, SetDemand, Release, Tick) with the current
// time and carries out the Actions it returns, in order. It must be used from
// one goroutine.
package resource

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/flotilla-io/flotilla/subjects"
)

// Config is the manager's configuration.
type Config struct {
	// Epoch is the coordinator's fencing token, stamped on every request.
	Epoch uint64
	// HeartbeatInterval and HeartbeatTimeout are handed to workers; a worker
	// silent for HeartbeatTimeout is lost.
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// SlotRequestTimeout bounds how long a requested slot may stay unconfirmed
	// (neither offered nor reported) before it is requested elsewhere.
	SlotRequestTimeout time.Duration
}

// Defaults of Config.
const (
	DefaultHeartbeatInterval  = 2 * time.Second
	DefaultHeartbeatTimeout   = 10 * time.Second
	DefaultSlotRequestTimeout = 10 * time.Second
)

// Action is something the caller must do.
type Action interface{ isAction() }

// SendSlotRequest: request Req on subjects.SlotRequest(Worker). An error or
// no answer must be fed back as SlotRequestFailed.
type SendSlotRequest struct{ Req subjects.SlotRequest }

// WorkerJoined: a worker registered (possibly again, with a new instance).
type WorkerJoined struct{ Info subjects.WorkerInfo }

// WorkerLost: a worker's instance is gone; every allocation on it is void
// and its tasks must be failed over. Allocations lists them.
type WorkerLost struct {
	Worker, Instance string
	Allocations      []Allocation
	Reason           string
}

// SlotsShort: job's demand cannot be met; Shortage says by how much. It is
// returned when a job becomes short and whenever the numbers change.
type SlotsShort struct {
	Job      string
	Shortage subjects.SlotShortage
}

// SlotsMet: a job that was short of slots has them all (allocated or
// requested).
type SlotsMet struct{ Job string }

func (SlotsShort) isAction()      {}
func (SlotsMet) isAction()        {}
func (SendSlotRequest) isAction() {}
func (WorkerJoined) isAction()    {}
func (WorkerLost) isAction()      {}

// Allocation is a slot handed to a job.
type Allocation struct {
	ID     string
	Job    string
	Worker string
	Slot   int // -1 until the worker answers the slot request
}

type worker struct {
	info      subjects.WorkerInfo
	operators map[string]bool
	slots     []string // allocation id per slot, "" if free (as far as we know)
	lastSeen  time.Time
	// failures counts the worker's slot requests that failed or went
	// unanswered in a row; no slot is requested from it before retryAt.
	failures int
	retryAt  time.Time
	// storageFailed is when a task last failed there for lack of disk
	// space: for StorageFailurePenalty other workers are preferred.
	storageFailed time.Time
}

// StorageFailurePenalty is how long after a task failed for lack of disk
// space on a worker other workers are preferred for new slots (the worker
// reports itself unhealthy while it has too little room; this covers the
// time until its next heartbeat says so, and a worker whose disk the task's
// own state filled, which has room again once that state is gone).
const StorageFailurePenalty = 5 * time.Minute

// Slot request backoff: a worker whose slot requests fail (it does not
// answer, or answers with an error) is asked again only after
// SlotBackoffInitial, doubling per failure in a row up to SlotBackoffMax,
// and workers that answer are preferred. A registered worker that never
// answers (a crashed one, or a forged registration) costs one request per
// SlotBackoffMax instead of a busy loop.
const (
	SlotBackoffInitial = 100 * time.Millisecond
	SlotBackoffMax     = 30 * time.Second
)

func (w *worker) storageFailedWithin(now time.Time) bool {
	return !w.storageFailed.IsZero() && now.Sub(w.storageFailed) < StorageFailurePenalty
}

func (w *worker) failed(now time.Time) {
	w.failures++
	d := SlotBackoffInitial << min(w.failures-1, 16)
	w.retryAt = now.Add(min(d, SlotBackoffMax))
}

type allocation struct {
	Allocation
	requested time.Time
	confirmed bool // the worker answered the slot request or reported the slot
}

type demand struct {
	slots    int
	operator string
	short    *subjects.SlotShortage // last reported, nil when met
}

// Manager is the resource manager. Create it with New.
type Manager struct {
	cfg       Config
	workers   map[string]*worker
	allocs    map[string]*allocation
	demand    map[string]demand
	instances uint64
	allocSeq  uint64
}

// New returns a manager with no workers.
func New(cfg Config) *Manager {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if cfg.SlotRequestTimeout <= 0 {
		cfg.SlotRequestTimeout = DefaultSlotRequestTimeout
	}
	if cfg.Epoch == 0 {
		panic("resource: epoch must be set")
	}
	return &Manager{cfg: cfg, workers: map[string]*worker{}, allocs: map[string]*allocation{}, demand: map[string]demand{}}
}

// Register handles a worker's registration. A worker already registered
// under another instance (it restarted) is first declared lost. adopted are
// the allocations of the worker's running attempts that the job masters
// adopt (a leader that took over): they are the worker's from the start,
// confirmed, and the answer lists them so that the worker keeps them.
func (m *Manager) Register(req *subjects.RegisterRequest, adopted []Allocation, now time.Time) (subjects.RegisterResponse, []Action) {
	var acts []Action
	if old, ok := m.workers[req.Worker]; ok {
		acts = append(acts, m.lose(old, "registered again"))
	}
	m.instances++
	w := &worker{
		info: subjects.WorkerInfo{Worker: req.Worker, Instance: fmt.Sprintf("%d-%d", m.cfg.Epoch, m.instances),
			Host: req.Host, Slots: req.Slots, FreeSlots: req.Slots, LastHeartbeat: now},
		operators: map[string]bool{},
		slots:     make([]string, req.Slots),
		lastSeen:  now,
	}
	for _, op := range req.Operators {
		w.operators[op] = true
	}
	m.workers[req.Worker] = w
	var kept []string
	for _, a := range adopted {
		if a.Worker != req.Worker || a.Slot < 0 || a.Slot >= len(w.slots) || w.slots[a.Slot] != "" || m.allocs[a.ID] != nil {
			continue
		}
		m.allocs[a.ID] = &allocation{Allocation: a, requested: now, confirmed: true}
		w.slots[a.Slot] = a.ID
		kept = append(kept, a.ID)
	}
	m.refreshFree(w)
	acts = append(acts, WorkerJoined{Info: w.info})
	acts = append(acts, m.schedule(now)...)
	return subjects.RegisterResponse{
		Instance:          w.info.Instance,
		Epoch:             m.cfg.Epoch,
		HeartbeatInterval: subjects.Duration(m.cfg.HeartbeatInterval),
		HeartbeatTimeout:  subjects.Duration(m.cfg.HeartbeatTimeout),
		Adopted:           kept,
	}, acts
}

// Heartbeat handles a worker's heartbeat and slot report. An unknown worker
// or instance is answered with CodeUnknownWorker, which makes it register.
func (m *Manager) Heartbeat(hb *subjects.Heartbeat, now time.Time) (subjects.HeartbeatResponse, []Action) {
	w, ok := m.workers[hb.Worker]
	if !ok || w.info.Instance != hb.Instance {
		return subjects.HeartbeatResponse{Epoch: m.cfg.Epoch,
			Error: subjects.Errorf(subjects.CodeUnknownWorker, "worker %s instance %s is not registered", hb.Worker, hb.Instance)}, nil
	}
	if hb.Leaving {
		return subjects.HeartbeatResponse{Epoch: m.cfg.Epoch}, append([]Action{m.lose(w, "shut down")}, m.schedule(now)...)
	}
	w.lastSeen = now
	w.info.LastHeartbeat = now
	w.info.Unhealthy = hb.Unhealthy
	// Reconcile the slot report: what the worker holds wins for allocations
	// we know; a slot we believe requested but the worker reports free after
	// the request timed out is given up. A slot held for an allocation we no
	// longer have (released when its job ended or failed, or dropped after
	// its request timed out) is one the worker would keep forever while we
	// count it free: the answer tells the worker to free it. Allocation ids
	// are never reused, so an unknown one can never become valid again.
	resp := subjects.HeartbeatResponse{Epoch: m.cfg.Epoch}
	for _, s := range hb.Slots {
		if s.Slot < 0 || s.Slot >= len(w.slots) || s.Allocation == "" {
			continue
		}
		if a, ok := m.allocs[s.Allocation]; ok && a.Worker == w.info.Worker {
			a.confirmed, a.Slot = true, s.Slot
			w.slots[s.Slot] = a.ID
		} else {
			resp.Release = append(resp.Release, s.Allocation)
		}
	}
	return resp, m.schedule(now)
}

// StorageFailed records that a task failed on worker for lack of disk
// space: other workers are preferred for new slots for a while, and the
// worker counts as unhealthy until a heartbeat says otherwise.
func (m *Manager) StorageFailed(worker string, now time.Time) {
	if w, ok := m.workers[worker]; ok {
		w.storageFailed = now
		if w.info.Unhealthy == "" {
			w.info.Unhealthy = "a task's state storage was full"
		}
	}
}

// SlotRequestAnswered records the slot a worker reserved for an allocation.
func (m *Manager) SlotRequestAnswered(alloc string, slot int) {
	a, ok := m.allocs[alloc]
	if !ok {
		return
	}
	w := m.workers[a.Worker]
	if w == nil || slot < 0 || slot >= len(w.slots) {
		return
	}
	a.Slot, a.confirmed = slot, true
	w.slots[slot] = alloc
	w.failures, w.retryAt = 0, time.Time{}
	m.refreshFree(w)
}

// SlotRequestFailed voids an allocation whose request failed or was not
// answered, so that the demand is requested again, and backs off from the
// worker it was sent to.
func (m *Manager) SlotRequestFailed(alloc string, now time.Time) []Action {
	if a, ok := m.allocs[alloc]; ok {
		if w := m.workers[a.Worker]; w != nil {
			w.failed(now)
		}
	}
	m.drop(alloc)
	return m.schedule(now)
}

// SetDemand sets how many slots job wants in total (allocated or pending)
// and the operator they must support. Zero removes the job's demand but
// keeps its allocations until Released.
func (m *Manager) SetDemand(job string, slots int, operator string, now time.Time) []Action {
	if slots <= 0 {
		delete(m.demand, job)
		return nil
	}
	d := m.demand[job]
	d.slots, d.operator = slots, operator
	m.demand[job] = d
	return m.schedule(now)
}

// Release frees an allocation (the job master rejected the offer, or no
// longer needs the slot).
func (m *Manager) Release(alloc string, now time.Time) []Action {
	m.drop(alloc)
	return m.schedule(now)
}

// Tick declares lost every worker silent for longer than the heartbeat
// timeout, voids slot requests that were never confirmed, and schedules.
func (m *Manager) Tick(now time.Time) []Action {
	var acts []Action
	for _, id := range m.workerIDs() {
		w := m.workers[id]
		if now.Sub(w.lastSeen) > m.cfg.HeartbeatTimeout {
			acts = append(acts, m.lose(w, fmt.Sprintf("no heartbeat for %s", now.Sub(w.lastSeen).Round(time.Millisecond))))
		}
	}
	for _, id := range m.allocIDs() {
		a := m.allocs[id]
		if !a.confirmed && now.Sub(a.requested) > m.cfg.SlotRequestTimeout {
			if w := m.workers[a.Worker]; w != nil {
				w.failed(now)
			}
			m.drop(id)
		}
	}
	return append(acts, m.schedule(now)...)
}

// Allocation returns the allocation with id, if it exists.
func (m *Manager) Allocation(id string) (Allocation, bool) {
	a, ok := m.allocs[id]
	if !ok {
		return Allocation{}, false
	}
	return a.Allocation, true
}

// Workers lists the registered workers, sorted by name.
func (m *Manager) Workers() []subjects.WorkerInfo {
	out := make([]subjects.WorkerInfo, 0, len(m.workers))
	for _, id := range m.workerIDs() {
		out = append(out, m.workers[id].info)
	}
	return out
}

// HasOperator reports whether some registered worker can run operator.
func (m *Manager) HasOperator(operator string) bool {
	for _, w := range m.workers {
		if w.operators[operator] {
			return true
		}
	}
	return false
}

// HeartbeatTimeout returns how long a worker may stay silent before it is
// lost.
func (m *Manager) HeartbeatTimeout() time.Duration { return m.cfg.HeartbeatTimeout }

// Epoch returns the coordinator epoch the manager was created with.
func (m *Manager) Epoch() uint64 { return m.cfg.Epoch }

func (m *Manager) lose(w *worker, reason string) WorkerLost {
	lost := WorkerLost{Worker: w.info.Worker, Instance: w.info.Instance, Reason: reason}
	for _, id := range m.allocIDs() {
		if a := m.allocs[id]; a.Worker == w.info.Worker {
			lost.Allocations = append(lost.Allocations, a.Allocation)
			delete(m.allocs, id)
		}
	}
	delete(m.workers, w.info.Worker)
	return lost
}

func (m *Manager) drop(alloc string) {
	a, ok := m.allocs[alloc]
	if !ok {
		return
	}
	delete(m.allocs, alloc)
	if w := m.workers[a.Worker]; w != nil {
		for i, s := range w.slots {
			if s == alloc {
				w.slots[i] = ""
			}
		}
		m.refreshFree(w)
	}
}

// schedule requests slots for every job whose demand exceeds its
// allocations, spreading a job's slots over workers (least loaded first)
// so that one lost worker takes as few of its tasks as possible.
func (m *Manager) schedule(now time.Time) []Action {
	var acts []Action
	jobs := make([]string, 0, len(m.demand))
	for j := range m.demand {
		jobs = append(jobs, j)
	}
	sort.Strings(jobs)
	for _, job := range jobs {
		d := m.demand[job]
		have := 0
		for _, a := range m.allocs {
			if a.Job == job {
				have++
			}
		}
		for ; have < d.slots; have++ {
			w := m.pickWorker(job, d.operator, now)
			if w == nil {
				break // not enough slots: the job waits until workers join
			}
			m.allocSeq++
			id := "a" + strconv.FormatUint(m.cfg.Epoch, 10) + "-" + strconv.FormatUint(m.allocSeq, 10)
			m.allocs[id] = &allocation{Allocation: Allocation{ID: id, Job: job, Worker: w.info.Worker, Slot: -1}, requested: now}
			m.refreshFree(w)
			acts = append(acts, SendSlotRequest{Req: subjects.SlotRequest{Epoch: m.cfg.Epoch, Worker: w.info.Worker, Allocation: id, Job: job}})
		}
		// Report a shortage when it starts or changes, and its end.
		switch {
		case have < d.slots:
			s := subjects.SlotShortage{Needed: d.slots, Free: have}
			if d.short == nil || *d.short != s {
				d.short = &s
				m.demand[job] = d
				acts = append(acts, SlotsShort{Job: job, Shortage: s})
			}
		case d.short != nil:
			d.short = nil
			m.demand[job] = d
			acts = append(acts, SlotsMet{Job: job})
		}
	}
	return acts
}

// pickWorker picks the worker of the next slot of job: one with a free slot
// and the operator, not backing off, not unhealthy; a worker where no task
// failed for lack of disk space within StorageFailurePenalty before one
// where one did; a worker whose last slot request succeeded before one whose
// requests failed; then the one holding the fewest of the job's slots; then
// the one with the most free slots.
func (m *Manager) pickWorker(job, operator string, now time.Time) *worker {
	var best *worker
	bestJobSlots := 0
	for _, id := range m.workerIDs() {
		w := m.workers[id]
		if w.info.FreeSlots == 0 || (operator != "" && len(w.operators) > 0 && !w.operators[operator]) || now.Before(w.retryAt) || w.info.Unhealthy != "" {
			continue
		}
		n := 0
		for _, a := range m.allocs {
			if a.Worker == id && a.Job == job {
				n++
			}
		}
		better := best == nil
		if !better {
			ws, bs := w.storageFailedWithin(now), best.storageFailedWithin(now)
			wf, bf := w.failures > 0, best.failures > 0
			better = (!ws && bs) || (ws == bs && ((!wf && bf) || (wf == bf && (n < bestJobSlots || (n == bestJobSlots && w.info.FreeSlots > best.info.FreeSlots)))))
		}
		if better {
			best, bestJobSlots = w, n
		}
	}
	return best
}

// refreshFree recomputes a worker's free slots: its slot count less the
// allocations on it (confirmed or pending).
func (m *Manager) refreshFree(w *worker) {
	used := 0
	for _, a := range m.allocs {
		if a.Worker == w.info.Worker {
			used++
		}
	}
	w.info.FreeSlots = max(len(w.slots)-used, 0)
}

func (m *Manager) workerIDs() []string {
	ids := make([]string, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (m *Manager) allocIDs() []string {
	ids := make([]string, 0, len(m.allocs))
	for id := range m.allocs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
