//go:build unix

package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/subjects"
)

// binaries are built once per test binary, without the race detector: the
// processes under test run as users run them.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildBinaries builds cmd/flotilla and the nats-server of go.mod (its
// module root is a main package) into a directory shared by the tests of
// this binary, and returns the paths of both.
func buildBinaries(t *testing.T) (flotilla, natsServer string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "flotilla-chaos-bin")
		if buildErr != nil {
			return
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, pkg := range []string{"github.com/flotilla-io/flotilla/cmd/flotilla", "github.com/nats-io/nats-server/v2"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, []string{"flotilla", "nats-server"}[i]), pkg).CombinedOutput()
				if err != nil {
					errs[i] = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				}
			}()
		}
		wg.Wait()
		buildErr = errors.Join(errs...)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "flotilla"), filepath.Join(binDir, "nats-server")
}

// proc is one OS process of the cluster under test, which the harness
// kills, restarts, pauses and resumes. Its output is appended to a log
// file, across restarts.
//
// start, kill, pause and resume are called from the test goroutine only;
// the exit of a process the harness did not kill is recorded as a crash
// (see crashes), since no process of the cluster may end by itself.
type proc struct {
	t    *testing.T
	name string
	path string
	args []string
	env  []string
	log  string // log file

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	killing bool
	paused  bool
	starts  int
	crashed []string
}

// newProc returns a process that is not started yet. It is killed when
// the test ends.
func newProc(t *testing.T, logDir, name, path string, env []string, args ...string) *proc {
	p := &proc{t: t, name: name, path: path, args: args, env: env,
		log: filepath.Join(logDir, sanitize(name)+".log")}
	t.Cleanup(p.kill)
	return p
}

// cleanEnv returns the test's environment without the settings of NATS,
// flotilla, MinIO and AWS a developer may have set: the processes get
// theirs from the harness alone.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "NATS_"), strings.HasPrefix(kv, "FLOTILLA_"),
			strings.HasPrefix(kv, "MINIO_"), strings.HasPrefix(kv, "AWS_"):
		default:
			env = append(env, kv)
		}
	}
	return env
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// start starts the process; it must not be running.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.t.Fatalf("%s: started twice", p.name)
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	p.starts++
	fmt.Fprintf(f, "==== %s: start %d at %s\n", p.name, p.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(cleanEnv(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		p.t.Fatalf("%s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.paused = cmd, done, false
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		if !p.killing {
			p.crashed = append(p.crashed, fmt.Sprintf("%s exited by itself at %s: %v (see %s)",
				p.name, time.Now().Format(time.RFC3339Nano), err, filepath.Base(p.log)))
		}
		p.mu.Unlock()
		close(done)
	}()
}

// kill sends SIGKILL, as a crash would, and waits until the process has
// exited. Killing a process that is not running does nothing.
func (p *proc) kill() {
	if done := p.stop(syscall.SIGKILL); done != nil {
		<-done
		p.mu.Lock()
		p.cmd, p.done, p.killing, p.paused = nil, nil, false, false
		p.mu.Unlock()
	}
}

// dump makes a running Go process print every goroutine's stack to its log
// and exit (SIGQUIT), and waits (up to 10 s) until it has: what a process
// that stopped making progress was waiting for.
func (p *proc) dump() {
	if done := p.stop(syscall.SIGQUIT); done != nil {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}
}

// stop sends sig to the running process (resuming it first if paused, so
// that it can act on sig) as an exit the harness caused, and returns the
// channel closed when it has exited; nil if it is not running.
func (p *proc) stop(sig syscall.Signal) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	p.killing = true
	if p.paused && sig != syscall.SIGKILL {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = p.cmd.Process.Signal(sig)
	return p.done
}

// pause stops the process with SIGSTOP: it keeps its sockets and memory
// but does nothing, like a process stuck in a long GC pause or a VM that
// was suspended.
func (p *proc) pause() { p.signal(syscall.SIGSTOP, true) }

// resume continues a paused process with SIGCONT.
func (p *proc) resume() { p.signal(syscall.SIGCONT, false) }

func (p *proc) signal(sig syscall.Signal, paused bool) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		p.t.Fatalf("%s: %v while not running", p.name, sig)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: %v: %v", p.name, sig, err)
	}
	p.paused = paused
}

// ensureRunning restarts the process if it exited by itself (the crash is
// kept in crashes) and resumes it if it is paused. It reports whether it
// had to do anything.
func (p *proc) ensureRunning() bool {
	p.t.Helper()
	p.mu.Lock()
	exited, paused := false, p.paused
	if p.cmd != nil {
		select {
		case <-p.done:
			exited = true
		default:
		}
	}
	running := p.cmd != nil && !exited
	if exited {
		p.cmd, p.done = nil, nil
	}
	p.mu.Unlock()
	switch {
	case !running:
		p.start()
		return true
	case paused:
		p.resume()
		return true
	}
	return false
}

// crashes returns the exits the harness did not cause.
func (p *proc) crashes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.crashed...)
}

// tail returns the last n bytes of the process's log.
func (p *proc) tail(n int64) string {
	f, err := os.Open(p.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// natsServer is a nats-server process with JetStream on file storage that
// syncs every write (flotilla's metadata must not be acknowledged before it
// is on disk), on a fixed loopback port and store directory, so that a
// restart recovers the same streams at the same address.
type natsServer struct {
	*proc
	url string
}

// newNATSServer prepares a server (not started) on a port that is free now.
// The port is below the usual ephemeral range (32768 and up), so that no
// client connection takes it as its local port while the server is down.
func newNATSServer(t *testing.T, logDir, bin string, r *rand.Rand) *natsServer {
	t.Helper()
	port := 0
	for i := 0; i < 100 && port == 0; i++ {
		p := 20000 + r.IntN(10000)
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
			l.Close()
			port = p
		}
	}
	if port == 0 {
		t.Fatal("no free port for nats-server")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	store := filepath.Join(dir, "jetstream")
	// The mapping partitions the jobs' input by key group (both jobs read
	// clicks.* with the same max parallelism).
	spec := specs()[0].WithDefaults()
	cfg := fmt.Sprintf("listen: \"127.0.0.1:%d\"\nmax_payload: 1MB\njetstream {\n  store_dir: %q\n  sync_interval: always\n}\n%s\n",
		port, store, subjects.MappingConfig(&spec))
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return &natsServer{proc: newProc(t, logDir, "nats-server", bin, nil, "-c", conf),
		url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
}

// waitReady waits until the server accepts connections and JetStream
// answers, which after a restart means it has recovered its streams.
func (s *natsServer) waitReady() {
	s.t.Helper()
	testutil.CheckFor(s.t, 2*time.Minute, 50*time.Millisecond, func() error {
		nc, err := nats.Connect(s.url, nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
}
