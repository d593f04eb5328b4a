package worker

import (
	"fmt"
	"strings"
	"testing"

	"github.com/flotilla-io/flotilla/subjects"
)

// slotTrace drives a slotTable and renders every step's outcome, so that a
// scenario reads as a protocol trace.
type slotTrace struct {
	t   *testing.T
	tbl *slotTable
	out strings.Builder
}

func refs(rs []subjects.TaskRef) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%s/%d#%d", r.Job, r.Task, r.Attempt))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func code(err error) string {
	if err == nil {
		return "ok"
	}
	return subjects.CodeOf(err).String()
}

func (s *slotTrace) logf(format string, args ...any) { fmt.Fprintf(&s.out, format+"\n", args...) }

func (s *slotTrace) register(epoch uint64, adopted ...string) {
	gen := s.tbl.nextGen()
	stop, kept, err := s.tbl.registered(epoch, gen, adopted)
	if len(adopted) == 0 {
		s.logf("register epoch=%d: %s stop=%s", epoch, code(err), refs(stop))
		return
	}
	s.logf("register epoch=%d adopt=%v: %s stop=%s kept=%s", epoch, adopted, code(err), refs(stop), refs(kept))
}

func (s *slotTrace) slot(epoch uint64, alloc, job string) int {
	i, offer, stop, err := s.tbl.reserve(&subjects.SlotRequest{Epoch: epoch, Worker: "w", Allocation: alloc, Job: job})
	s.logf("slot %s %s epoch=%d: %s slot=%d offer=%v stop=%s", alloc, job, epoch, code(err), i, offer, refs(stop))
	return i
}

func (s *slotTrace) deploy(epoch uint64, alloc, job string, task int, attempt uint64) {
	stop, dup, err := s.tbl.deploy(&subjects.DeployTask{Epoch: epoch, Allocation: alloc, TaskRef: subjects.TaskRef{Job: job, Task: task, Attempt: attempt}})
	s.logf("deploy %s %s/%d#%d epoch=%d: %s dup=%v stop=%s", alloc, job, task, attempt, epoch, code(err), dup, refs(stop))
}

func (s *slotTrace) cancel(epoch uint64, job string, task int, attempt uint64, release bool) {
	stop, err := s.tbl.cancel(&subjects.CancelTask{Epoch: epoch, TaskRef: subjects.TaskRef{Job: job, Task: task, Attempt: attempt}, Release: release})
	s.logf("cancel %s/%d#%d release=%v: %s stop=%s", job, task, attempt, release, code(err), refs(stop))
}

func (s *slotTrace) slots() {
	var parts []string
	for _, v := range s.tbl.view() {
		p := fmt.Sprintf("%d:%s", v.Index, v.Phase)
		if v.Phase != SlotFree {
			p += fmt.Sprintf("(%s %s e%d", v.Allocation, v.Job, v.Epoch)
			if v.Task.Attempt != 0 {
				p += fmt.Sprintf(" %d#%d %s", v.Task.Task, v.Task.Attempt, v.TaskState)
			}
			p += ")"
		}
		parts = append(parts, p)
	}
	s.logf("  slots %s", strings.Join(parts, " "))
}

func (s *slotTrace) check(want string) {
	s.t.Helper()
	got := s.out.String()
	if strings.TrimSpace(got) != strings.TrimSpace(want) {
		s.t.Errorf("trace:\n%s\nwant:\n%s", got, want)
	}
}

func TestSlotTableTrace(t *testing.T) {
	s := &slotTrace{t: t, tbl: newSlotTable(2)}
	s.register(1)
	i := s.slot(1, "a1", "clicks")
	s.slot(1, "a1", "clicks") // repeated request: same slot, no second offer
	s.slot(1, "a2", "views")
	s.slot(1, "a3", "clicks") // full
	s.tbl.offered(i, "a1", true)
	s.tbl.offered(1, "a2", false) // rejected: freed
	s.slots()
	s.deploy(1, "a9", "clicks", 0, 1) // unknown allocation
	s.deploy(1, "a1", "views", 0, 1)  // allocation of another job
	s.deploy(1, "a1", "clicks", 0, 1)
	s.deploy(1, "a1", "clicks", 0, 1) // repeated
	s.tbl.taskState(subjects.TaskRef{Job: "clicks", Task: 0, Attempt: 1}, subjects.TaskRunning)
	s.slots()
	// The job master deploys before the offer's answer arrives.
	s.slot(1, "a4", "clicks")
	s.deploy(1, "a4", "clicks", 1, 2)
	s.tbl.offered(1, "a4", false) // a late answer does not undo the deployment
	s.slots()
	// A newer attempt of task 0 in another slot stops the older one.
	s.cancel(1, "clicks", 1, 2, true)
	s.slot(1, "a5", "clicks")
	s.deploy(1, "a5", "clicks", 0, 3)
	s.deploy(1, "a1", "clicks", 0, 2) // older attempt: refused
	s.slots()
	// Messages of an older epoch are refused; a new registration at a
	// higher epoch stops everything held before it.
	s.register(2)
	s.slots()
	s.deploy(1, "a5", "clicks", 0, 4)
	s.cancel(1, "clicks", 0, 3, false)
	s.slot(1, "a6", "clicks")
	s.register(1) // a stale coordinator answering late
	// Same epoch, new registration (after unknown_worker): allocations of
	// the earlier registration are void.
	s.slot(2, "b1", "clicks")
	s.tbl.offered(0, "b1", true)
	s.deploy(2, "b1", "clicks", 0, 2<<20|1)
	s.register(2)
	s.slots()
	// A message of a higher epoch than registered (a forged one, or a new
	// coordinator's before the worker registered with it) changes nothing:
	// the registered coordinator is still obeyed, and only a registration
	// moves the epoch and fences.
	s.slot(2, "b2", "clicks")
	s.deploy(2, "b2", "clicks", 0, 2<<20|2)
	s.slot(1<<40, "forged", "clicks")
	s.cancel(1<<40, "clicks", 0, 2<<20|2, true)
	s.slots()
	s.slot(2, "b3", "clicks")
	s.register(3)
	s.slot(3, "c1", "clicks")
	s.slots()
	s.check(`
register epoch=1: ok stop=[]
slot a1 clicks epoch=1: ok slot=0 offer=true stop=[]
slot a1 clicks epoch=1: ok slot=0 offer=false stop=[]
slot a2 views epoch=1: ok slot=1 offer=true stop=[]
slot a3 clicks epoch=1: no_slot slot=-1 offer=false stop=[]
  slots 0:allocated(a1 clicks e1) 1:free
deploy a9 clicks/0#1 epoch=1: slot_mismatch dup=false stop=[]
deploy a1 views/0#1 epoch=1: slot_mismatch dup=false stop=[]
deploy a1 clicks/0#1 epoch=1: ok dup=false stop=[]
deploy a1 clicks/0#1 epoch=1: ok dup=true stop=[]
  slots 0:allocated(a1 clicks e1 0#1 running) 1:free
slot a4 clicks epoch=1: ok slot=1 offer=true stop=[]
deploy a4 clicks/1#2 epoch=1: ok dup=false stop=[]
  slots 0:allocated(a1 clicks e1 0#1 running) 1:allocated(a4 clicks e1 1#2 deploying)
cancel clicks/1#2 release=true: ok stop=[clicks/1#2]
slot a5 clicks epoch=1: ok slot=1 offer=true stop=[]
deploy a5 clicks/0#3 epoch=1: ok dup=false stop=[clicks/0#1]
deploy a1 clicks/0#2 epoch=1: stale_epoch dup=false stop=[]
  slots 0:allocated(a1 clicks e1) 1:allocated(a5 clicks e1 0#3 deploying)
register epoch=2: ok stop=[clicks/0#3]
  slots 0:free 1:free
deploy a5 clicks/0#4 epoch=1: stale_epoch dup=false stop=[]
cancel clicks/0#3 release=false: stale_epoch stop=[]
slot a6 clicks epoch=1: stale_epoch slot=-1 offer=false stop=[]
register epoch=1: stale_epoch stop=[]
slot b1 clicks epoch=2: ok slot=0 offer=true stop=[]
deploy b1 clicks/0#2097153 epoch=2: ok dup=false stop=[]
register epoch=2: ok stop=[clicks/0#2097153]
  slots 0:free 1:free
slot b2 clicks epoch=2: ok slot=0 offer=true stop=[]
deploy b2 clicks/0#2097154 epoch=2: ok dup=false stop=[]
slot forged clicks epoch=1099511627776: epoch_ahead slot=-1 offer=false stop=[]
cancel clicks/0#2097154 release=true: epoch_ahead stop=[]
  slots 0:allocated(b2 clicks e2 0#2097154 deploying) 1:free
slot b3 clicks epoch=2: ok slot=1 offer=true stop=[]
register epoch=3: ok stop=[clicks/0#2097154]
slot c1 clicks epoch=3: ok slot=0 offer=true stop=[]
  slots 0:reserved(c1 clicks e3) 1:free
`)
}

func TestSlotReport(t *testing.T) {
	tbl := newSlotTable(2)
	tbl.registered(5, tbl.nextGen(), nil)
	if _, _, _, err := tbl.reserve(&subjects.SlotRequest{Epoch: 5, Worker: "w", Allocation: "x", Job: "j"}); err != nil {
		t.Fatal(err)
	}
	ref := subjects.TaskRef{Job: "j", Task: 3, Attempt: 7}
	if _, _, err := tbl.deploy(&subjects.DeployTask{Epoch: 5, Allocation: "x", TaskRef: ref}); err != nil {
		t.Fatal(err)
	}
	got := tbl.report()
	want := []subjects.SlotReport{{Slot: 0, Allocation: "x", Job: "j", Task: 3, Attempt: 7, State: subjects.TaskDeploying}, {Slot: 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("report %+v, want %+v", got, want)
	}
	tbl.taskState(ref, subjects.TaskFailed)
	if r := tbl.report()[0]; r.Attempt != 0 || r.Allocation != "x" {
		t.Errorf("after failure: %+v (the slot stays allocated, without a task)", r)
	}
	// Cancel with release frees the slot that last held the attempt.
	if _, err := tbl.cancel(&subjects.CancelTask{Epoch: 5, TaskRef: ref, Release: true}); err != nil {
		t.Fatal(err)
	}
	if r := tbl.report()[0]; r.Allocation != "" {
		t.Errorf("after cancel with release: %+v", r)
	}
}

// TestBarrierLog: a repeated barrier is ignored, and a forged barrier with
// an id far ahead does not make the task ignore the real ones after it.
func TestBarrierLog(t *testing.T) {
	var l barrierLog
	var got []string
	for _, id := range []uint64{1, 1, 2, 1 << 40, 3, 1 << 40, 4, 3} {
		got = append(got, fmt.Sprintf("%d:%v", id, l.take(id)))
	}
	want := "1:true 1:false 2:true 1099511627776:true 3:true 1099511627776:false 4:true 3:false"
	if strings.Join(got, " ") != want {
		t.Fatalf("barriers %s, want %s", strings.Join(got, " "), want)
	}
	for id := uint64(10); id < 40; id++ {
		if !l.take(id) {
			t.Fatalf("barrier %d refused", id)
		}
	}
}

// TestSlotTableAdoption: a coordinator that takes over adopts the attempts
// it lists; the worker moves their slots to the new epoch and keeps them,
// and fences everything else it held (a reserved slot, an attempt not
// listed). Adoption applies only to a registration with a higher epoch.
func TestSlotTableAdoption(t *testing.T) {
	s := &slotTrace{t: t, tbl: newSlotTable(4)}
	s.register(1)
	s.slot(1, "a1", "clicks")
	s.deploy(1, "a1", "clicks", 0, 1<<20|1)
	s.slot(1, "a2", "clicks")
	s.deploy(1, "a2", "clicks", 1, 1<<20|2)
	s.slot(1, "a3", "clicks")
	s.slot(1, "a4", "views")
	s.deploy(1, "a4", "views", 0, 1<<20|3)
	s.register(2, "a1", "a3", "a4", "zz")
	s.slots()
	s.cancel(1, "clicks", 0, 1<<20|1, false)
	s.cancel(2, "views", 0, 1<<20|3, true)
	s.slots()
	s.register(2, "a1")
	s.slots()
	s.check(`
register epoch=1: ok stop=[]
slot a1 clicks epoch=1: ok slot=0 offer=true stop=[]
deploy a1 clicks/0#1048577 epoch=1: ok dup=false stop=[]
slot a2 clicks epoch=1: ok slot=1 offer=true stop=[]
deploy a2 clicks/1#1048578 epoch=1: ok dup=false stop=[]
slot a3 clicks epoch=1: ok slot=2 offer=true stop=[]
slot a4 views epoch=1: ok slot=3 offer=true stop=[]
deploy a4 views/0#1048579 epoch=1: ok dup=false stop=[]
register epoch=2 adopt=[a1 a3 a4 zz]: ok stop=[clicks/1#1048578] kept=[clicks/0#1048577 views/0#1048579]
  slots 0:allocated(a1 clicks e2 0#1048577 deploying) 1:free 2:free 3:allocated(a4 views e2 0#1048579 deploying)
cancel clicks/0#1048577 release=false: stale_epoch stop=[]
cancel views/0#1048579 release=true: ok stop=[views/0#1048579]
  slots 0:allocated(a1 clicks e2 0#1048577 deploying) 1:free 2:free 3:free
register epoch=2 adopt=[a1]: ok stop=[clicks/0#1048577] kept=[]
  slots 0:free 1:free 2:free 3:free
`)
}
