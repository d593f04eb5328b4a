package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
)

// `flotilla job status` and `flotilla top` show the figures the dashboard
// shows: every task's events in adding up to what was published, its lag,
// and the last checkpoint with its age.
func TestStatusAndTopShowFigures(t *testing.T) {
	f := newFleet(t)
	f.submit(t, "topjob")
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := 0; i < n; i++ {
		if _, err := js.Publish(context.Background(), "clicks.k"+strconv.Itoa(i%7), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	eventsIn := regexp.MustCompile(`(?m)^\d+\s+\[\d+-\d+\]\s+w1\s+\d+\s+running\s+[\d.]+\s+(\d+)\s+(\d+)\s+(\d+)`)
	checkpoint := regexp.MustCompile(`last checkpoint #\d+, [\d.]+m?s ago`)
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		out, errOut, code := runCLI(t, "job", "status", "topjob")
		if code != 0 {
			return fmt.Errorf("job status: exit %d: %s", code, errOut)
		}
		total := 0
		for _, m := range eventsIn.FindAllStringSubmatch(out, -1) {
			if m[1] != "0" {
				return fmt.Errorf("lag %s:\n%s", m[1], out)
			}
			in, _ := strconv.Atoi(m[2])
			total += in
		}
		if total != n || !checkpoint.MatchString(out) || !strings.Contains(out, "EVENTS/S") {
			return fmt.Errorf("job status shows %d events in, want %d, and the last checkpoint's age:\n%s", total, n, out)
		}
		return nil
	})
	out, errOut, code := runCLI(t, "top", "--once", "--job", "topjob")
	if code != 0 {
		t.Fatalf("top: exit %d: %s", code, errOut)
	}
	row := regexp.MustCompile(`(?m)^topjob\s+running\s+2\s+0\s+[\d.]+\s+0\s+#\d+, [\d.]+m?s ago$`)
	if !strings.Contains(out, "workers 1  slots 2 (0 free)") || !row.MatchString(out) || len(eventsIn.FindAllString(out, -1)) != 2 {
		t.Fatalf("top:\n%s", out)
	}
}
