package worker

import (
	"github.com/flotilla-io/flotilla/subjects"
)

// slotTable is the worker side of the control protocol as a pure state
// machine: the worker's slots, what each holds, and the coordinator epoch
// and registration the worker knows. It does no I/O and keeps no clock; the
// Worker calls it under its mutex and carries out what it returns (answers,
// and task attempts to stop).
//
// The rules it enforces (see docs/DESIGN.md, "Control protocol"):
//
//   - The worker learns epochs only from the answers to its registrations.
//     A message carrying an epoch lower than the one it registered with is
//     refused with CodeStaleEpoch; one carrying a higher epoch with
//     CodeEpochAhead, and it changes nothing: a forged request with epoch
//     2^40 must not make the worker refuse the real coordinator for good. A
//     new coordinator answers the worker's next heartbeat with
//     CodeUnknownWorker, and the registration that follows (carrying the
//     slot report) fences: every slot reserved or allocated under a lower
//     epoch is freed and its task stopped, except the attempts the new
//     coordinator adopts (RegisterResponse.Adopted), which move to its
//     epoch and keep running.
//   - Allocations belong to the registration they were made under. A new
//     registration (after CodeUnknownWorker, or with a new coordinator)
//     frees every slot reserved before its request was sent: the
//     coordinator has dropped those allocations and failed their tasks over.
//   - A slot runs at most one attempt, and a task (job, index) runs at most
//     one attempt on this worker: deploying a newer attempt stops the older.
type slotTable struct {
	epoch uint64 // coordinator epoch of the latest registration
	gen   uint64 // registration generation: one per register request sent
	slots []slot
}

// SlotPhase is the allocation state of a slot.
type SlotPhase uint8

// Slot phases.
const (
	// SlotFree holds nothing.
	SlotFree SlotPhase = iota
	// SlotReserved is reserved for an allocation and offered to its job's
	// master, which has not answered yet.
	SlotReserved
	// SlotAllocated is in its job's slot pool; it may run a task.
	SlotAllocated
)

var slotPhases = [...]string{"free", "reserved", "allocated"}

func (p SlotPhase) String() string {
	if int(p) < len(slotPhases) {
		return slotPhases[p]
	}
	return "unknown"
}

type slot struct {
	phase SlotPhase
	alloc string
	job   string
	epoch uint64 // of the slot request
	gen   uint64 // registration generation at reservation
	task  subjects.TaskRef
	state subjects.TaskState // of task; TaskUnknown when no task runs
	last  subjects.TaskRef   // last attempt deployed here, for cancel with release
}

func newSlotTable(n int) *slotTable { return &slotTable{slots: make([]slot, n)} }

func (s *slot) hasTask() bool { return s.task.Attempt != 0 }

func (s *slot) free() { *s = slot{} }

// nextGen starts a registration attempt and returns its generation. Call it
// before sending the register request.
func (t *slotTable) nextGen() uint64 {
	t.gen++
	return t.gen
}

// observe takes note of a coordinator epoch and fences everything held under
// a lower one. It returns the attempts to stop.
func (t *slotTable) observe(epoch uint64) []subjects.TaskRef {
	if epoch <= t.epoch {
		return nil
	}
	t.epoch = epoch
	var stop []subjects.TaskRef
	for i := range t.slots {
		s := &t.slots[i]
		if s.phase != SlotFree && s.epoch < epoch {
			if s.hasTask() {
				stop = append(stop, s.task)
			}
			s.free()
		}
	}
	return stop
}

// registered records a successful registration of generation gen with a
// coordinator of epoch epoch. The slots of adopted (allocations whose
// attempts the coordinator adopts, from a registration with a higher epoch)
// move to epoch and keep their tasks; every other slot reserved under an
// earlier registration or epoch is freed. It returns the attempts to stop
// and the attempts adopted. A registration answered with an epoch below the
// highest seen is refused with CodeStaleEpoch.
func (t *slotTable) registered(epoch, gen uint64, adopted []string) (stop, kept []subjects.TaskRef, err error) {
	if epoch < t.epoch {
		return nil, nil, subjects.Errorf(subjects.CodeStaleEpoch, "registered with epoch %d, but epoch %d was seen", epoch, t.epoch)
	}
	if epoch > t.epoch {
		for _, a := range adopted {
			if i := t.byAlloc(a); i >= 0 && t.slots[i].hasTask() && t.slots[i].epoch == t.epoch {
				s := &t.slots[i]
				s.epoch, s.gen, s.phase = epoch, gen, SlotAllocated
				kept = append(kept, s.task)
			}
		}
	}
	stop = t.observe(epoch)
	for i := range t.slots {
		s := &t.slots[i]
		if s.phase != SlotFree && s.gen < gen {
			if s.hasTask() {
				stop = append(stop, s.task)
			}
			s.free()
		}
	}
	return stop, kept, nil
}

// checkEpoch refuses a message of an epoch other than the registered one.
func (t *slotTable) checkEpoch(what string, epoch uint64) ([]subjects.TaskRef, error) {
	switch {
	case epoch < t.epoch:
		return nil, subjects.Errorf(subjects.CodeStaleEpoch, "%s of epoch %d: the worker knows epoch %d", what, epoch, t.epoch)
	case epoch > t.epoch:
		return nil, subjects.Errorf(subjects.CodeEpochAhead, "%s of epoch %d: the worker registered with epoch %d", what, epoch, t.epoch)
	}
	return nil, nil
}

func (t *slotTable) byAlloc(alloc string) int {
	for i := range t.slots {
		if t.slots[i].phase != SlotFree && t.slots[i].alloc == alloc {
			return i
		}
	}
	return -1
}

// reserve handles a slot request. It returns the reserved slot and whether
// the worker must offer it to the job master (false for a repeated request
// of an allocation already offered or accepted).
func (t *slotTable) reserve(req *subjects.SlotRequest) (index int, offer bool, stop []subjects.TaskRef, err error) {
	stop, err = t.checkEpoch("slot request", req.Epoch)
	if err != nil {
		return -1, false, nil, err
	}
	if i := t.byAlloc(req.Allocation); i >= 0 {
		if t.slots[i].job != req.Job {
			return -1, false, stop, subjects.Errorf(subjects.CodeSlotMismatch, "allocation %s holds slot %d for job %s, not %s", req.Allocation, i, t.slots[i].job, req.Job)
		}
		return i, false, stop, nil
	}
	for i := range t.slots {
		s := &t.slots[i]
		if s.phase == SlotFree {
			*s = slot{phase: SlotReserved, alloc: req.Allocation, job: req.Job, epoch: req.Epoch, gen: t.gen}
			return i, true, stop, nil
		}
	}
	return -1, false, stop, subjects.Errorf(subjects.CodeNoSlot, "all %d slots are taken", len(t.slots))
}

// offered records the job master's answer to the offer of slot index for
// alloc: accepted slots join the job's pool, others are freed. An answer
// about a slot that no longer holds alloc, or that a deployment already
// claimed, changes nothing.
func (t *slotTable) offered(index int, alloc string, accepted bool) {
	if index < 0 || index >= len(t.slots) {
		return
	}
	s := &t.slots[index]
	if s.phase != SlotReserved || s.alloc != alloc {
		return
	}
	if accepted {
		s.phase = SlotAllocated
	} else {
		s.free()
	}
}

// deploy handles a deployment. It checks that the allocation is held for
// the job under the same epoch, records the attempt in the slot (a reserved
// slot counts as accepted: the job master may deploy before its answer to
// the offer arrives), and returns the older attempts to stop. dup reports a
// repeated deployment of the attempt already in the slot.
func (t *slotTable) deploy(d *subjects.DeployTask) (stop []subjects.TaskRef, dup bool, err error) {
	stop, err = t.checkEpoch("deployment", d.Epoch)
	if err != nil {
		return nil, false, err
	}
	i := t.byAlloc(d.Allocation)
	if i < 0 {
		return stop, false, subjects.Errorf(subjects.CodeSlotMismatch, "no slot holds allocation %s", d.Allocation)
	}
	s := &t.slots[i]
	if s.job != d.Job || s.epoch != d.Epoch {
		return stop, false, subjects.Errorf(subjects.CodeSlotMismatch, "allocation %s holds slot %d for job %s at epoch %d, not job %s at epoch %d",
			d.Allocation, i, s.job, s.epoch, d.Job, d.Epoch)
	}
	if s.task == d.TaskRef {
		return stop, true, nil
	}
	// A newer attempt of the same task, here or in another slot, wins.
	for j := range t.slots {
		o := &t.slots[j]
		if o.hasTask() && o.task.Job == d.Job && o.task.Task == d.Task && o.task.Attempt > d.Attempt {
			return stop, false, subjects.Errorf(subjects.CodeStaleEpoch, "attempt %d of task %d is superseded by attempt %d in slot %d",
				d.Attempt, d.Task, o.task.Attempt, j)
		}
	}
	if s.hasTask() {
		if s.task.Attempt > d.Attempt {
			return stop, false, subjects.Errorf(subjects.CodeStaleEpoch, "slot %d runs attempt %d of task %d, newer than attempt %d",
				i, s.task.Attempt, s.task.Task, d.Attempt)
		}
		stop = append(stop, s.task)
	}
	for j := range t.slots {
		o := &t.slots[j]
		if j != i && o.hasTask() && o.task.Job == d.Job && o.task.Task == d.Task {
			stop = append(stop, o.task)
			o.task, o.state = subjects.TaskRef{}, subjects.TaskUnknown
		}
	}
	s.phase = SlotAllocated
	s.task, s.state, s.last = d.TaskRef, subjects.TaskDeploying, d.TaskRef
	return stop, false, nil
}

// taskState records a state change of an attempt. A terminal state empties
// the slot's task; the slot stays allocated to the job.
func (t *slotTable) taskState(ref subjects.TaskRef, st subjects.TaskState) {
	for i := range t.slots {
		s := &t.slots[i]
		if s.hasTask() && s.task == ref {
			if st.Terminal() {
				s.task, s.state = subjects.TaskRef{}, subjects.TaskUnknown
			} else {
				s.state = st
			}
			return
		}
	}
}

// cancel handles a cancellation: it stops the attempt if it runs here and,
// with Release, frees the slot that holds or last held it. Cancelling an
// attempt that is not here is not an error.
func (t *slotTable) cancel(c *subjects.CancelTask) ([]subjects.TaskRef, error) {
	stop, err := t.checkEpoch("cancellation", c.Epoch)
	if err != nil {
		return nil, err
	}
	for i := range t.slots {
		s := &t.slots[i]
		switch {
		case s.hasTask() && s.task == c.TaskRef:
			stop = append(stop, s.task)
			s.task, s.state = subjects.TaskRef{}, subjects.TaskUnknown
		case !s.hasTask() && s.phase != SlotFree && s.last == c.TaskRef:
		default:
			continue
		}
		if c.Release {
			s.free()
		}
		break
	}
	return stop, nil
}

// release frees the slots held for allocs (allocations the coordinator no
// longer has) and returns the attempts to stop.
func (t *slotTable) release(allocs []string) []subjects.TaskRef {
	var stop []subjects.TaskRef
	for _, a := range allocs {
		if i := t.byAlloc(a); i >= 0 {
			if t.slots[i].hasTask() {
				stop = append(stop, t.slots[i].task)
			}
			t.slots[i].free()
		}
	}
	return stop
}

// stopAll empties every slot and returns the attempts to stop, for
// shutdown.
func (t *slotTable) stopAll() []subjects.TaskRef {
	var stop []subjects.TaskRef
	for i := range t.slots {
		if t.slots[i].hasTask() {
			stop = append(stop, t.slots[i].task)
		}
		t.slots[i].free()
	}
	return stop
}

// report returns the slot report of a heartbeat.
func (t *slotTable) report() []subjects.SlotReport {
	out := make([]subjects.SlotReport, len(t.slots))
	for i, s := range t.slots {
		out[i] = subjects.SlotReport{Slot: i, Allocation: s.alloc, Job: s.job}
		if s.hasTask() {
			out[i].Task, out[i].Attempt, out[i].State = s.task.Task, s.task.Attempt, s.state
		}
	}
	return out
}

// SlotInfo is a read-only view of one slot.
type SlotInfo struct {
	Index int
	Phase SlotPhase
	// Allocation, Job and Epoch are set unless the slot is free.
	Allocation string
	Job        string
	Epoch      uint64
	// Task is the attempt running in the slot (Attempt 0: none) and
	// TaskState its state.
	Task      subjects.TaskRef
	TaskState subjects.TaskState
}

func (t *slotTable) view() []SlotInfo {
	out := make([]SlotInfo, len(t.slots))
	for i, s := range t.slots {
		out[i] = SlotInfo{Index: i, Phase: s.phase, Allocation: s.alloc, Job: s.job, Epoch: s.epoch, Task: s.task, TaskState: s.state}
	}
	return out
}
