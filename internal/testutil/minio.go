package testutil

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/objectstore"
)

// MinIOVersion is the MinIO release the tests are written against; `make
// test` installs it.
const MinIOVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"

// MinIOHowToGet tells a developer how to get the minio binary.
const MinIOHowToGet = "run `make test` (it installs it), or " +
	"`GOBIN=$HOME/.cache/flotilla/bin go install github.com/minio/minio@" + MinIOVersion + "`, " +
	"or set MINIO_BIN to a minio binary"

// minioStartTimeout bounds how long RunMinIO and Restart wait for the server
// to report live.
const minioStartTimeout = 60 * time.Second

// MinIO is a real MinIO server, a child process of the test binary, on a
// loopback port with a private data directory and random root credentials.
// It is killed when the test that started it ends.
//
// Methods may be called from any goroutine, but Kill and Restart fail the
// test through tb and so belong on the test's goroutine, like tb.Fatal.
type MinIO struct {
	// Endpoint is "127.0.0.1:port", the same across Restart.
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey string
	SecretKey string
	// DataDir is the server's data directory, kept across Restart.
	DataDir string

	tb       testing.TB
	bin      string
	certsDir string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	logs *tailBuffer
}

// RunMinIO starts a MinIO server and waits until it is live. The server is
// killed, and its data removed, when tb ends. Without a minio binary (see
// FindMinIO) the test is skipped, or failed in CI (see NeedServer).
func RunMinIO(tb testing.TB) *MinIO {
	tb.Helper()
	bin, err := FindMinIO()
	if err != nil {
		if errors.Is(err, errNoMinIO) {
			NeedServer(tb, "minio", MinIOHowToGet)
		}
		tb.Fatal(err)
	}
	m := &MinIO{
		AccessKey: "flotilla-" + randomHex(6),
		SecretKey: randomHex(20),
		DataDir:   tb.TempDir(),
		tb:        tb,
		bin:       bin,
		certsDir:  tb.TempDir(), // empty: no TLS, and no certificates of the user's
		logs:      &tailBuffer{max: 64 << 10},
	}
	// Registered after TempDir, so it runs before the data is removed.
	tb.Cleanup(func() {
		m.stop()
		if tb.Failed() {
			tb.Logf("minio %s output (tail):\n%s", m.Endpoint, m.logs.String())
		}
	})
	// A free port can be taken by someone else between our probe and the
	// server's bind; try a few.
	for attempt := 0; ; attempt++ {
		m.Endpoint = freeLoopbackAddr(tb)
		err := m.start()
		if err == nil {
			return m
		}
		if attempt == 2 {
			tb.Fatalf("minio: %v\noutput:\n%s", err, m.logs.String())
		}
		tb.Logf("minio on %s did not start (%v); retrying on another port", m.Endpoint, err)
	}
}

var errNoMinIO = errors.New("minio binary not found")

// FindMinIO returns the minio binary to run: $MINIO_BIN if set (which must
// then exist), else minio on $PATH, else $HOME/.cache/flotilla/bin/minio
// (where `make test` installs it).
func FindMinIO() (string, error) {
	if bin := os.Getenv("MINIO_BIN"); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
		// The Makefile exports MINIO_BIN even before the install has run:
		// fall through to the other places, but say where we looked.
		if p, err := lookMinIO(); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("%w: MINIO_BIN=%s does not exist", errNoMinIO, bin)
	}
	return lookMinIO()
}

func lookMinIO() (string, error) {
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "flotilla", "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errNoMinIO
}

// Location returns the s3:// location of bucket (and prefix, which may be
// empty) on this server, for objectstore.Open with Options().
func (m *MinIO) Location(bucket, prefix string) string {
	u := url.URL{Scheme: "s3", Host: bucket}
	if prefix != "" {
		u.Path = "/" + prefix
	}
	// The endpoint is "127.0.0.1:port": nothing in it needs escaping.
	u.RawQuery = "endpoint=" + m.Endpoint + "&path_style=true&region=us-east-1&secure=false"
	return u.String()
}

// Options returns the root credentials as objectstore.Options.
func (m *MinIO) Options() objectstore.Options {
	return objectstore.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey}
}

// Store opens the store at Location(bucket, prefix), creating the bucket if
// needed, and fails tb if it cannot.
func (m *MinIO) Store(tb testing.TB, bucket, prefix string) objectstore.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := objectstore.Open(ctx, m.Location(bucket, prefix), m.Options())
	if err != nil {
		tb.Fatalf("minio: opening %s: %v", m.Location(bucket, prefix), err)
	}
	return s
}

// Kill kills the server with SIGKILL, as a crash would, and waits until it
// has exited. Killing a server that is not running does nothing.
func (m *MinIO) Kill() {
	m.tb.Helper()
	m.stop()
}

// Restart starts the server again after Kill, on the same port and data
// directory and with the same credentials, and waits until it is live. It
// kills a running server first.
func (m *MinIO) Restart() {
	m.tb.Helper()
	m.stop()
	// The old process's port may linger for a moment; retry briefly.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = m.start(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	m.tb.Fatalf("minio: restart on %s: %v\noutput:\n%s", m.Endpoint, err, m.logs.String())
}

// start starts the process and waits until it reports live, or fails.
func (m *MinIO) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return errors.New("already running")
	}
	cmd := exec.Command(m.bin, "server",
		"--address", m.Endpoint,
		"--certs-dir", m.certsDir,
		"--quiet",
		m.DataDir)
	cmd.Env = append(withoutMinIOEnv(os.Environ()),
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CALLHOME_ENABLE=off",
	)
	cmd.Stdout = m.logs
	cmd.Stderr = m.logs
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	m.cmd, m.done = cmd, done
	if err := waitLive(m.Endpoint, done, minioStartTimeout); err != nil {
		_ = cmd.Process.Kill()
		<-done
		m.cmd, m.done = nil, nil
		return err
	}
	return nil
}

// stop kills the process, if running, and waits for it to exit.
func (m *MinIO) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd, m.done = nil, nil
}

// waitLive polls MinIO's liveness endpoint until it answers 200, the process
// exits, or timeout passes.
func waitLive(endpoint string, exited <-chan struct{}, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	liveURL := "http://" + endpoint + "/minio/health/live"
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		resp, err := client.Get(liveURL)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", liveURL, resp.Status)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("not live after %v: %v", timeout, lastErr)
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before it was live (last probe: %v)", lastErr)
		case <-tick.C:
		}
	}
}

// withoutMinIOEnv drops MINIO_* variables, so that a developer's MinIO
// settings do not leak into the test server.
func withoutMinIOEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "MINIO_") {
			out = append(out, kv)
		}
	}
	return out
}

// freeLoopbackAddr returns "127.0.0.1:port" for a port that was free a moment
// ago, below the ephemeral range (see freePorts).
func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePorts(tb, 1)[0])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// tailBuffer keeps the last max bytes written to it, for showing a server's
// output when a test fails.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
