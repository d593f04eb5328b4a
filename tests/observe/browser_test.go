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

	// The page re-renders every two seconds, so the test never holds a DOM
	// node across calls: it waits, reads and clicks with one JavaScript
	// expression each.
	page := func() string {
		html, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector("main").outerHTML`))
		return html
	}
	navigate := func(url string) {
		t.Helper()
		if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
			t.Fatalf("navigate to %s: %v", url, err)
		}
	}
	waitFor := func(what, sel string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](fmt.Sprintf("!!document.querySelector(%q)", sel),
			chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
			t.Fatalf("%s (%s): %v\npage: %.3000s", what, sel, err, page())
		}
	}
	click := func(sel string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](fmt.Sprintf("(e => (e.click(), true))(document.querySelector(%q))", sel))); err != nil {
			t.Fatalf("click %s: %v\npage: %.3000s", sel, err, page())
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf("document.querySelector(%q).textContent", sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}

	navigate(base + "#/")
	waitFor("the overview shows the fleet", `#workers tbody tr`)
	waitFor("the overview shows the job", `#jobs tr[data-job="web"]`)
	fleet, jobState := text(`#workers tbody`), text(`#jobs tr[data-job="web"] td:nth-child(2)`)
	if !strings.Contains(fleet, "w1") || jobState != "running" {
		t.Fatalf("overview: fleet %q, job state %q", fleet, jobState)
	}

	navigate(base + "#/job/web")
	waitFor("the job page lists its tasks", `#tasks tbody tr`)
	waitFor("the duration chart shows a completed checkpoint", `svg#chart-duration circle.completed[data-kind="checkpoint"]`)
	waitFor("the size chart shows a completed checkpoint", `svg#chart-size circle.completed[data-kind="checkpoint"]`)

	click(`#act-savepoint`)
	waitFor("the savepoint triggered from the page appears in the history", `#history tr[data-kind="savepoint"][data-outcome="completed"]`)
	waitFor("and in the savepoints", `#savepoints tbody tr`)
	waitFor("the action reports its outcome", `#action-result:not(:empty)`)
	result := text(`#action-result`)
	sps, err := f.api.Savepoints(context.Background(), spec.Name)
	if err != nil || len(sps) != 1 {
		t.Fatalf("savepoints after the click: %d, %v", len(sps), err)
	}
	if !strings.Contains(result, sps[0].Location) {
		t.Errorf("action result %q does not name savepoint location %s", result, sps[0].Location)
	}

	click(`#history tr[data-kind="savepoint"]`)
	waitFor("the savepoint's per-task detail", `table.task-detail tbody tr`)
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.ArtifactDir(), "dashboard-job.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))

	// The live feed page lists the next savepoint's completion event.
	navigate(base + "#/events")
	waitFor("the live event feed", `#feed`)
	if _, err := f.api.TriggerSavepoint(context.Background(), subjects.TriggerSavepoint{Job: spec.Name}); err != nil {
		t.Fatal(err)
	}
	var feed string
	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		var err error
		if feed, err = chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector("#feed").textContent`)); err != nil {
			return err
		}
		if !strings.Contains(feed, "savepoint_completed") {
			return fmt.Errorf("feed: %q", feed)
		}
		return nil
	})
}
