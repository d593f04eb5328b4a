package worker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
)

// A second worker on a data directory in use is refused at once, in the
// same process and from another process, with an error naming the
// directory; the running worker is unaffected.
func TestDataDirLocked(t *testing.T) {
	if dir := os.Getenv("FLOTILLA_TEST_SECOND_WORKER"); dir != "" {
		// The second process: a worker started the way `flotilla worker` is.
		os.Exit(Main([]string{"-data", dir, "-store", "mem://", "-slots", "1"}))
	}
	s := testutil.RunNATS(t)
	dir := t.TempDir()
	w1 := testWorker(t, s, Config{DataDir: dir})
	testutil.CheckFor(t, waitLong, 10*time.Millisecond, func() error {
		if _, err := os.Stat(dir + "/" + LockFile); err != nil {
			return err
		}
		return nil
	})

	w2, err := New(Config{Conn: testutil.Connect(t, s), Store: objectstore.NewMem(), DataDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w2.Run(ctx); err == nil || !strings.Contains(err.Error(), "in use by another worker") {
		t.Fatalf("second worker in this process: %v", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestDataDirLocked$")
	cmd.Env = append(os.Environ(), "FLOTILLA_TEST_SECOND_WORKER="+dir, "NATS_URL="+s.ClientURL())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), "in use by another worker") {
		t.Fatalf("second worker process: exit %d (%v) after %s, stderr:\n%s", code, err, took, stderr.String())
	}
	t.Logf("second worker process exited with code 1 after %s: %s", took.Round(time.Millisecond), strings.TrimSpace(stderr.String()))
	if _, err := os.Stat(w1.tasksDir()); err != nil {
		t.Errorf("the running worker's task directory: %v", err)
	}
}
