// Package testutil holds helpers shared by flotilla's tests: real servers
// started on loopback ports (MinIO here, NATS alongside), and bounded polling
// instead of sleeps.
//
// Nothing here is API; it is imported by _test.go files only.
package testutil

import (
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"
)

// InCI reports whether the tests run in continuous integration, where a
// missing server binary is a broken setup rather than a reason to skip. It is
// true when the environment variable CI parses as a true boolean ("true",
// "1", ...), as CI services set it.
func InCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// NeedServer ends the test because the server program what (for example
// "minio") cannot be found. In CI (see InCI) it fails the test, since CI must
// have every server; elsewhere it skips it, so that `go test ./...` works on a
// bare machine. howToGet tells the reader how to install what and is part of
// the message. NeedServer never returns: like tb.Fatal and tb.Skip it must be
// called from the goroutine running the test.
func NeedServer(tb testing.TB, what, howToGet string) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("%s not found (required when CI=true): %s", what, howToGet)
	}
	tb.Skipf("%s not found, skipping: %s", what, howToGet)
}

// CheckFor calls fn every interval until it returns nil, and fails the test
// with fn's last error once timeout has passed without success. fn is always
// called at least once. CheckFor must be called from the goroutine running the
// test; fn runs on that goroutine too.
func CheckFor(tb testing.TB, timeout, interval time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("CheckFor: still failing after %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}

// Logger returns a text logger writing to w at level, or at debug level
// when FLOTILLA_TEST_LOG is set.
func Logger(w io.Writer, level slog.Level) *slog.Logger {
	if os.Getenv("FLOTILLA_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
