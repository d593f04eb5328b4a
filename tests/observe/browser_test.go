package observe

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flotilla-io/flotilla/coordinator/web"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// findChromium returns the headless browser the test drives: CHROMIUM, or
// Debian's chromium package (`make tools` installs it).
func findChromium(t *testing.T) string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testutil.NeedServer(t, "chromium", "make tools (apt-get install -y chromium), or set CHROMIUM")
	return ""
}

// TestDashboardInBrowser drives the dashboard in headless Chromium against
// a running fleet: the overview shows the fleet and the job, the job's page
// shows a completed checkpoint in the duration chart, and a savepoint
// triggered with the page's button shows up in the history. It writes a
// screenshot of the job page as a test artifact (go test -artifacts).
func TestDashboardInBrowser(t *testing.T) {
	chromium := findChromium(t)
	f := newFleet(t)
	_, _, _ = f.coordinator(nil)
	f.worker("w1", 2)
	f.waitWorkers(1)
	spec := countSpec("web", 2, 300*time.Millisecond)
	f.submit(spec)
	f.publish("web", 1000, 20)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := web.Serve(ctx, "127.0.0.1:0", web.Config{Conn: f.conn(), Logger: logger()}, false)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr.String() + "/"

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 1800), chromedp.UserDataDir(t.TempDir()))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, 2*time.Minute)
	defer tcancel()

	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, actions...); err != nil {
			html, _ := chromedp.Run(bctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("%s: %v\npage: %.3000s", what, err, html)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	step("overview shows the fleet and the job",
		chromedp.Navigate(base+"#/"),
		chromedp.WaitVisible(chromedp.CSS(`#workers tbody tr`)),
		chromedp.WaitVisible(chromedp.CSS(`#jobs tr[data-job="web"]`)))
	fleet, jobState := text(`#workers tbody`), text(`#jobs tr[data-job="web"] td:nth-child(2)`)
	if !strings.Contains(fleet, "w1") || jobState != "running" {
		t.Fatalf("overview: fleet %q, job state %q", fleet, jobState)
	}

	step("the job page charts a completed checkpoint",
		chromedp.Navigate(base+"#/job/web"),
		chromedp.WaitVisible(chromedp.CSS(`#tasks tbody tr`)),
		chromedp.WaitVisible(chromedp.CSS(`svg#chart-duration circle.completed`)),
		chromedp.WaitVisible(chromedp.CSS(`svg#chart-size circle.completed`)))

	step("a savepoint triggered from the page appears in the history",
		chromedp.Click(chromedp.CSS(`#act-savepoint`)),
		chromedp.WaitVisible(chromedp.CSS(`#history tr[data-kind="savepoint"][data-outcome="completed"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#savepoints tbody tr`)))
	result := text(`#action-result`)
	sps, err := f.api.Savepoints(context.Background(), spec.Name)
	if err != nil || len(sps) != 1 {
		t.Fatalf("savepoints after the click: %d, %v", len(sps), err)
	}
	if !strings.Contains(result, sps[0].Location) {
		t.Errorf("action result %q does not name savepoint location %s", result, sps[0].Location)
	}

	step("per-task detail",
		chromedp.Click(chromedp.CSS(`#history tr[data-kind="savepoint"]`)),
		chromedp.WaitVisible(chromedp.CSS(`table.task-detail tbody tr`)))
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.ArtifactDir(), "dashboard-job.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))

	// The live feed page lists the savepoint's completion event.
	step("the live event feed",
		chromedp.Navigate(base+"#/events"),
		chromedp.WaitVisible(chromedp.CSS(`#feed`)))
	if _, err := f.api.TriggerSavepoint(context.Background(), subjects.TriggerSavepoint{Job: spec.Name}); err != nil {
		t.Fatal(err)
	}
	var feed string
	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		var err error
		if feed, err = chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#feed`))); err != nil {
			return err
		}
		if !strings.Contains(feed, "savepoint_completed") {
			return fmt.Errorf("feed: %q", feed)
		}
		return nil
	})
}
