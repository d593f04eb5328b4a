package resource

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/flotilla-io/flotilla/internal/tracetest"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestScenarios runs the trace scenarios in testdata/. Commands:
//
//	register w1 slots=2 [ops=count,sum]   a worker registers
//	heartbeat w1 [instance=X] [slots=0:a1-1,1:] [unhealthy=why]   a heartbeat with a slot report
//	storage-failed w1                      a task failed there for lack of disk space
//	tick 5s                                advance the clock and tick
//	demand job=clicks slots=3 [op=count]   a job master's demand
//	answered a1-1 slot=0                   a worker answered a slot request
//	failed a1-1                            a slot request failed
//	release a1-1                           the job master released a slot
//	register w1 slots=2 adopt=0:a0-3:clicks  ... adopting what it runs
//	workers                                list workers
//
// Each prints the actions (or the response) that resulted; rewrite with
// go test ./coordinator/resource -rewrite.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		m := New(Config{Epoch: 1, HeartbeatInterval: time.Second, HeartbeatTimeout: 5 * time.Second, SlotRequestTimeout: 3 * time.Second})
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(k string) string { return tracetest.Arg(d, k) }
			num := func(k string) int { return tracetest.Int(d, k) }
			first := tracetest.First(d)
			switch d.Cmd {
			case "register":
				var ops []string
				if o := arg("ops"); o != "" {
					ops = strings.Split(o, ",")
				}
				var adopted []Allocation
				if a := arg("adopt"); a != "" {
					// adopt=0:a0-3:clicks,1:a0-4:clicks
					for _, p := range strings.Split(a, ",") {
						f := strings.Split(p, ":")
						slot, _ := strconv.Atoi(f[0])
						adopted = append(adopted, Allocation{ID: f[1], Job: f[2], Worker: first, Slot: slot})
					}
				}
				resp, acts := m.Register(&subjects.RegisterRequest{Worker: first, Slots: num("slots"), Operators: ops}, adopted, now)
				out := fmt.Sprintf("-> instance=%s epoch=%d\n", resp.Instance, resp.Epoch)
				if len(resp.Adopted) > 0 {
					out = fmt.Sprintf("-> instance=%s epoch=%d adopted=%v\n", resp.Instance, resp.Epoch, resp.Adopted)
				}
				return out + format(acts)
			case "heartbeat":
				inst := arg("instance")
				if inst == "" {
					for _, w := range m.Workers() {
						if w.Worker == first {
							inst = w.Instance
						}
					}
					if inst == "" {
						inst = "none"
					}
				}
				hb := &subjects.Heartbeat{Worker: first, Instance: inst, Epoch: 1, Leaving: arg("leaving") != "", Unhealthy: arg("unhealthy")}
				if s := arg("slots"); s != "" {
					for _, p := range strings.Split(s, ",") {
						var slot int
						parts := strings.SplitN(p, ":", 2)
						fmt.Sscan(parts[0], &slot)
						hb.Slots = append(hb.Slots, subjects.SlotReport{Slot: slot, Allocation: parts[1]})
					}
				}
				resp, acts := m.Heartbeat(hb, now)
				out := "-> ok\n"
				if len(resp.Release) > 0 {
					out = fmt.Sprintf("-> ok release=%v\n", resp.Release)
				}
				if resp.Error != nil {
					out = fmt.Sprintf("-> error %s\n", resp.Error.Code)
				}
				return out + format(acts)
			case "tick":
				now = now.Add(tracetest.Duration(t, d))
				return fmt.Sprintf("t=%s\n", now.Sub(start)) + format(m.Tick(now))
			case "demand":
				return format(m.SetDemand(arg("job"), num("slots"), arg("op"), now))
			case "answered":
				m.SlotRequestAnswered(first, num("slot"))
				return "ok\n"
			case "failed":
				return format(m.SlotRequestFailed(first, now))
			case "release":
				return format(m.Release(first, now))
			case "storage-failed":
				m.StorageFailed(first, now)
				return "ok\n"
			case "workers":
				var b strings.Builder
				for _, w := range m.Workers() {
					fmt.Fprintf(&b, "%s instance=%s slots=%d free=%d", w.Worker, w.Instance, w.Slots, w.FreeSlots)
					if w.Unhealthy != "" {
						fmt.Fprintf(&b, " unhealthy=%q", w.Unhealthy)
					}
					b.WriteString("\n")
				}
				return b.String()
			}
			t.Fatalf("unknown command %q", d.Cmd)
			return ""
		})
	})
}

func format(acts []Action) string {
	if len(acts) == 0 {
		return "(no actions)\n"
	}
	var b strings.Builder
	for _, a := range acts {
		switch a := a.(type) {
		case SendSlotRequest:
			fmt.Fprintf(&b, "slot-request %s alloc=%s job=%s\n", a.Req.Worker, a.Req.Allocation, a.Req.Job)
		case SlotsShort:
			fmt.Fprintf(&b, "short %s: %s\n", a.Job, a.Shortage)
		case SlotsMet:
			fmt.Fprintf(&b, "met %s\n", a.Job)
		case WorkerJoined:
			fmt.Fprintf(&b, "joined %s slots=%d\n", a.Info.Worker, a.Info.Slots)
		case WorkerLost:
			var ids []string
			for _, al := range a.Allocations {
				ids = append(ids, al.ID+"("+al.Job+")")
			}
			sort.Strings(ids)
			fmt.Fprintf(&b, "lost %s (%s) allocations=[%s]\n", a.Worker, a.Reason, strings.Join(ids, " "))
		default:
			fmt.Fprintf(&b, "%T\n", a)
		}
	}
	return b.String()
}
