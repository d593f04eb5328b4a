package testutil

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fakeTB records how a helper ended the test. Fatalf and Skipf stop the
// goroutine, as the real ones do; run the helper with fakeTB.run.
type fakeTB struct {
	testing.TB
	failed, skipped string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) run(fn func(tb testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
}

func TestCheckFor(t *testing.T) {
	calls := 0
	CheckFor(t, time.Second, time.Millisecond, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("fn called %d times, want 3", calls)
	}

	f := &fakeTB{TB: t}
	start := time.Now()
	f.run(func(tb testing.TB) {
		n := 0
		CheckFor(tb, 50*time.Millisecond, 10*time.Millisecond, func() error {
			n++
			return fmt.Errorf("attempt %d failed", n)
		})
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("CheckFor with a 50ms timeout took %v", took)
	}
	if !strings.Contains(f.failed, "failed") || !strings.Contains(f.failed, "50ms") {
		t.Errorf("CheckFor failed with %q, want the last error and the timeout", f.failed)
	}
}

func TestNeedServer(t *testing.T) {
	t.Setenv("CI", "true")
	f := &fakeTB{TB: t}
	f.run(func(tb testing.TB) { NeedServer(tb, "thing", "install thing") })
	if f.failed == "" || f.skipped != "" || !strings.Contains(f.failed, "install thing") {
		t.Errorf("in CI: failed %q, skipped %q; want a failure saying how to install", f.failed, f.skipped)
	}

	t.Setenv("CI", "")
	f = &fakeTB{TB: t}
	f.run(func(tb testing.TB) { NeedServer(tb, "thing", "install thing") })
	if f.skipped == "" || f.failed != "" || !strings.Contains(f.skipped, "install thing") {
		t.Errorf("outside CI: failed %q, skipped %q; want a skip saying how to install", f.failed, f.skipped)
	}
}

func TestRunMinIOWithoutBinary(t *testing.T) {
	t.Setenv("CI", "")
	t.Setenv("MINIO_BIN", "/nonexistent/minio")
	t.Setenv("PATH", "")
	t.Setenv("HOME", t.TempDir())
	f := &fakeTB{TB: t}
	f.run(func(tb testing.TB) { RunMinIO(tb) })
	if !strings.Contains(f.skipped, "make test") {
		t.Errorf("skipped %q (failed %q), want a skip that says how to get minio", f.skipped, f.failed)
	}
}

func TestRunMinIO(t *testing.T) {
	m := RunMinIO(t)
	live := func() error {
		resp, err := http.Get("http://" + m.Endpoint + "/minio/health/live")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	if err := live(); err != nil {
		t.Fatalf("not live after RunMinIO: %v", err)
	}
	s := m.Store(t, "smoke", "p")
	if err := s.Put(t.Context(), "k", strings.NewReader("v"), 1); err != nil {
		t.Fatal(err)
	}
	m.Kill()
	if live() == nil {
		t.Fatal("live after Kill")
	}
	m.Kill() // killing twice is fine
	m.Restart()
	if err := live(); err != nil {
		t.Fatalf("not live after Restart: %v", err)
	}
	if _, err := s.Stat(t.Context(), "k"); err != nil {
		t.Fatalf("object lost across Restart: %v", err)
	}
	if want := "s3://smoke/p?endpoint=" + m.Endpoint + "&path_style=true&region=us-east-1&secure=false"; m.Location("smoke", "p") != want {
		t.Errorf("Location = %q, want %q", m.Location("smoke", "p"), want)
	}
}
