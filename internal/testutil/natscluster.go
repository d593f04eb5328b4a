package testutil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSServerBinary builds the nats-server of go.mod (its module root is a
// main package) once per test binary and returns its path, for tests that
// run servers as processes they can kill -9.
func NATSServerBinary(tb testing.TB) string {
	tb.Helper()
	return GoBinary(tb, "github.com/nats-io/nats-server/v2", "nats-server")
}

// FlotillaBinary builds cmd/flotilla once per test binary and returns its
// path, for tests that run coordinators and workers as processes.
func FlotillaBinary(tb testing.TB) string {
	tb.Helper()
	return GoBinary(tb, "github.com/flotilla-io/flotilla/cmd/flotilla", "flotilla")
}

type built struct {
	once sync.Once
	path string
	err  error
}

var binaries sync.Map // package path -> *built

// GoBinary builds the main package pkg into a file named name, once per
// test binary, and returns its path.
func GoBinary(tb testing.TB, pkg, name string) string {
	tb.Helper()
	v, _ := binaries.LoadOrStore(pkg, &built{})
	b := v.(*built)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "flotilla-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		if out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.path
}

// NATSCluster is a JetStream cluster of nats-server processes on loopback,
// each on file storage syncing every write (sync_interval: always), which a
// test kills (SIGKILL), restarts and cuts off from the others.
//
// Every connection between the servers, and every client connection, runs
// through a TCP relay in the test process, so Isolate cuts a node off from
// its peers and its clients without privileges or packet filters: the
// relays close the node's connections and refuse new ones until Heal. The
// servers advertise no route or client address of their own, so nothing
// bypasses the relays.
//
// Its methods may be called from any goroutine.
type NATSCluster struct {
	t     testing.TB
	bin   string
	mu    sync.Mutex // serializes Start, Kill and reads of which nodes run
	Nodes []*NATSNode
}

// NATSNode is one server of a NATSCluster.
type NATSNode struct {
	Name    string
	URL     string // the client relay's address
	conf    string
	log     string
	monitor string // http://host:port of the monitoring endpoint
	cmd     *exec.Cmd
	done    chan struct{}
	relays  []*relay // every relay that carries this node's traffic
}

// StartNATSCluster starts n servers named n1..nN in one cluster and waits
// until JetStream has a meta leader.
func StartNATSCluster(tb testing.TB, n int) *NATSCluster {
	tb.Helper()
	return StartNATSClusterWith(tb, NATSServerBinary(tb), n)
}

// StartNATSClusterWith is StartNATSCluster with the nats-server binary at
// bin; extra lines (a subject mapping, say) go into every node's config.
func StartNATSClusterWith(tb testing.TB, bin string, n int, extra ...string) *NATSCluster {
	tb.Helper()
	c := &NATSCluster{t: tb, bin: bin}
	dir := tb.TempDir()
	ports := freePorts(tb, 3*n) // distinct
	clientPorts, clusterPorts, httpPorts := ports[:n], ports[n:2*n], ports[2*n:]
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, &NATSNode{Name: fmt.Sprintf("n%d", i+1),
			monitor: fmt.Sprintf("http://127.0.0.1:%d", httpPorts[i])})
	}
	// Relays: one for each node's clients, one for each ordered pair of
	// nodes (i's routes to j).
	routes := make([][]string, n)
	for i, node := range c.Nodes {
		r := startRelay(tb, fmt.Sprintf("127.0.0.1:%d", clientPorts[i]))
		node.relays = append(node.relays, r)
		node.URL = "nats://" + r.addr
		for j := range c.Nodes {
			if i == j {
				continue
			}
			r := startRelay(tb, fmt.Sprintf("127.0.0.1:%d", clusterPorts[j]))
			node.relays = append(node.relays, r)
			c.Nodes[j].relays = append(c.Nodes[j].relays, r)
			routes[i] = append(routes[i], "nats-route://"+r.addr)
		}
	}
	for i, node := range c.Nodes {
		store := filepath.Join(dir, node.Name)
		node.conf = filepath.Join(dir, node.Name+".conf")
		node.log = filepath.Join(dir, node.Name+".log")
		cfg := fmt.Sprintf(`server_name: %s
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 1MB
jetstream {
  store_dir: %q
  sync_interval: always
}
cluster {
  name: flotilla-test
  listen: "127.0.0.1:%d"
  # Peers reach this node only through the test's relays.
  advertise: "127.0.0.1:1"
  no_advertise: true
  routes: [%s]
}
%s
`, node.Name, clientPorts[i], httpPorts[i], store, clusterPorts[i], strings.Join(routes[i], ", "), strings.Join(extra, "\n"))
		if err := os.WriteFile(node.conf, []byte(cfg), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range c.Nodes {
		c.Start(i)
	}
	tb.Cleanup(func() {
		for i := range c.Nodes {
			c.Kill(i)
		}
	})
	c.WaitMetaLeader(time.Minute)
	return c
}

// URLs returns every node's client URL, comma-separated, as nats.Connect
// takes them.
func (c *NATSCluster) URLs() string {
	var us []string
	for _, n := range c.Nodes {
		us = append(us, n.URL)
	}
	return strings.Join(us, ",")
}

// Connect returns a client connection to the cluster that reconnects
// forever, closed when the test ends.
func (c *NATSCluster) Connect(opts ...nats.Option) *nats.Conn {
	c.t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(c.URLs(), opts...)
	if err != nil {
		c.t.Fatalf("connect to the cluster: %v", err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

// Start starts node i (again), on the same store.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.Nodes[i]
	if n.cmd != nil {
		return
	}
	f, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "-c", n.conf)
	cmd.Stdout, cmd.Stderr = f, f
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		c.t.Fatalf("start %s: %v", n.Name, err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}(n.done)
}

// Kill kills node i with SIGKILL and waits until it is gone.
func (c *NATSCluster) Kill(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.Nodes[i]
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
}

// Running reports whether node i runs.
func (c *NATSCluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Nodes[i].cmd != nil
}

// Isolate cuts node i off from every other node and every client.
func (c *NATSCluster) Isolate(i int) {
	for _, r := range c.Nodes[i].relays {
		r.cut(true)
	}
}

// Heal ends every isolation.
func (c *NATSCluster) Heal() {
	for _, n := range c.Nodes {
		for _, r := range n.relays {
			r.cut(false)
		}
	}
}

// Index returns the index of the node named name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, n := range c.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// MetaLeader returns the index of the JetStream meta leader as a running
// node reports it, or an error when none knows one or, with allCurrent,
// when a running peer is not current with it.
func (c *NATSCluster) MetaLeader() (int, error) { return c.metaLeader(false) }

func (c *NATSCluster) metaLeader(allCurrent bool) (int, error) {
	var errs []error
	for i, n := range c.Nodes {
		if !c.Running(i) {
			continue
		}
		var jsz struct {
			Meta *struct {
				Leader   string `json:"leader"`
				Replicas []struct {
					Name    string `json:"name"`
					Current bool   `json:"current"`
				} `json:"replicas"`
			} `json:"meta_cluster"`
		}
		if err := getJSON(n.monitor+"/jsz", &jsz); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			continue
		}
		if jsz.Meta == nil || c.Index(jsz.Meta.Leader) < 0 {
			errs = append(errs, fmt.Errorf("%s: no meta leader", n.Name))
			continue
		}
		leader := c.Index(jsz.Meta.Leader)
		if n.Name != jsz.Meta.Leader && allCurrent {
			continue // the leader's view counts
		}
		if allCurrent {
			current := 1
			for _, p := range jsz.Meta.Replicas {
				if i := c.Index(p.Name); i >= 0 && c.Running(i) && p.Current {
					current++
				}
			}
			if current < c.running() {
				errs = append(errs, fmt.Errorf("%s: %d of %d running servers current", n.Name, current, c.running()))
				continue
			}
		}
		return leader, nil
	}
	return -1, errors.Join(errs...)
}

func (c *NATSCluster) running() int {
	n := 0
	for i := range c.Nodes {
		if c.Running(i) {
			n++
		}
	}
	return n
}

// WaitMetaLeader waits until a meta leader is known and every running
// server is current with it.
func (c *NATSCluster) WaitMetaLeader(timeout time.Duration) int {
	c.t.Helper()
	leader := -1
	CheckFor(c.t, timeout, 100*time.Millisecond, func() error {
		var err error
		leader, err = c.metaLeader(true)
		return err
	})
	return leader
}

// StreamLeader returns the index of the node leading stream name.
func (c *NATSCluster) StreamLeader(ctx context.Context, js jetstream.JetStream, name string) (int, error) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return -1, err
	}
	ci := s.CachedInfo().Cluster
	if ci == nil || c.Index(ci.Leader) < 0 {
		return -1, fmt.Errorf("stream %s has no leader", name)
	}
	return c.Index(ci.Leader), nil
}

// LogPath returns the path of node i's log.
func (c *NATSCluster) LogPath(i int) string { return c.Nodes[i].log }

// Log returns node i's log, for failure messages.
func (c *NATSCluster) Log(i int) string {
	b, _ := os.ReadFile(c.Nodes[i].log)
	return string(b)
}

func getJSON(url string, v any) error {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// freePorts returns n loopback ports that are free now.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	// Below the kernel's ephemeral range (32768 and up by default): the
	// relays, and every other socket of the test, bind ephemeral ports
	// after these were chosen and before the servers bind them, and must
	// not take one of them.
	const lo, hi = 20000, 32000
	seen := map[int]bool{}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			tb.Fatalf("no %d free ports in %d-%d", n, lo, hi)
		}
		p := lo + rand.IntN(hi-lo)
		if seen[p] {
			continue
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		ports = append(ports, p)
	}
	return ports
}

// relay forwards TCP connections from its address to target until cut.
type relay struct {
	addr   string
	target string
	ln     net.Listener

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
}

func startRelay(tb testing.TB, target string) *relay {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &relay{addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	tb.Cleanup(func() {
		ln.Close()
		r.cut(true)
	})
	go r.serve()
	return r
}

func (r *relay) serve() {
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		go r.pipe(in)
	}
}

func (r *relay) pipe(in net.Conn) {
	if !r.track(in) {
		in.Close()
		return
	}
	out, err := net.DialTimeout("tcp", r.target, 2*time.Second)
	if err != nil || !r.track(out) {
		in.Close()
		if out != nil {
			out.Close()
		}
		return
	}
	go func() {
		_, _ = io.Copy(out, in)
		out.Close()
		in.Close()
	}()
	_, _ = io.Copy(in, out)
	in.Close()
	out.Close()
	r.mu.Lock()
	delete(r.conns, in)
	delete(r.conns, out)
	r.mu.Unlock()
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

// cut closes every connection and refuses new ones (down), or lets them
// through again.
func (r *relay) cut(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
	if down {
		for c := range r.conns {
			c.Close()
		}
		clear(r.conns)
	}
}

// Relay is a TCP relay in the test process that a test cuts to partition
// a process from a server: its clients connect to Addr instead of the
// server's address.
type Relay struct{ r *relay }

// StartRelay starts a relay to target (host:port); it stops with the test.
func StartRelay(tb testing.TB, target string) *Relay { return &Relay{r: startRelay(tb, target)} }

// Addr is the relay's address (host:port).
func (r *Relay) Addr() string { return r.r.addr }

// Cut closes every connection through the relay and refuses new ones
// (down), or lets them through again.
func (r *Relay) Cut(down bool) { r.r.cut(down) }
