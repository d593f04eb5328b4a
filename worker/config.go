package worker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// Config configures a worker.
type Config struct {
	// Conn is the NATS connection. The worker does not close it. It should
	// reconnect forever (nats.MaxReconnects(-1)): a worker outlives NATS
	// restarts.
	Conn *nats.Conn
	// Namespace is the fleet's subject prefix.
	Namespace subjects.Namespace
	// DataDir holds the worker's identity (worker-id) and its tasks' state
	// (tasks/<job>-<task>-<attempt>/). Required.
	DataDir string
	// Slots is the number of tasks the worker runs at once; zero means 1.
	Slots int
	// Name is the worker's identity. Empty means the one kept in
	// DataDir/worker-id, generated on first start.
	Name string
	// Store holds checkpoints and savepoints. Required.
	Store objectstore.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Host is reported at registration; empty means os.Hostname.
	Host string

	// RequestTimeout bounds each request to the coordinator (registration,
	// slot offers); zero means 5 s. Heartbeats wait at most one interval.
	RequestTimeout time.Duration
	// BatchSize is how many events a task applies in one round before it
	// publishes their outputs and looks at checkpoint messages; zero means
	// 512.
	BatchSize int
	// FlushInterval is how long a task lets state changes wait in its
	// write-back cache before committing them to Pebble; state queries see
	// committed state, so they lag by up to this. Zero means 100 ms.
	FlushInterval time.Duration
	// Clock is the tasks' processing time, which fires their timers; nil
	// means the system clock.
	Clock Clock
	// StateCacheEntries and StateCacheBytes bound a task's write-back state
	// cache; a task whose cache exceeds either commits at once and empties
	// it. Zero means DefaultStateCacheEntries and DefaultStateCacheBytes.
	StateCacheEntries int
	StateCacheBytes   int
	// MaxPendingOutputs bounds each task's outputs published but not yet
	// confirmed by JetStream; zero means 1024.
	MaxPendingOutputs int
	// MemTableSize is the Pebble memtable size of each task's state; zero
	// means statebackend.DefaultMemTableSize. Smaller memtables flush (and
	// compact) sooner.
	MemTableSize uint64

	// ShutdownTimeout bounds how long Run waits, once its context is done,
	// for its tasks to stop: tasks still running then (stuck in a NATS or
	// disk call) are abandoned, named in an error log, and Run returns.
	// Zero means 10 s.
	ShutdownTimeout time.Duration
	// InputStopTimeout bounds how long a stopping task waits for its input
	// consumers; zero means 2 s. InputHeartbeat is the idle heartbeat of
	// each input's pull (a consumer the server is silent about for longer
	// is recreated); zero means the client library's default (15 s).
	InputStopTimeout time.Duration
	InputHeartbeat   time.Duration
	// InputStallTimeout is how long an input's reader may wait for events
	// while its stream holds later ones before the task fails with a
	// stalled input (and restarts with new consumers); zero means 20 s.
	InputStallTimeout time.Duration
}

// Defaults of Config's tuning fields.
const (
	DefaultRequestTimeout    = 5 * time.Second
	DefaultBatchSize         = 512
	DefaultFlushInterval     = 100 * time.Millisecond
	DefaultMaxPendingOutputs = 1024
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultInputStopTimeout  = 2 * time.Second
	DefaultInputStallTimeout = 20 * time.Second

	// Registration backoff bounds: the worker retries registration with
	// capped, jittered exponential backoff between these.
	minRegisterBackoff = 100 * time.Millisecond
	maxRegisterBackoff = 5 * time.Second
)

// IDFile is the name, in DataDir, of the file keeping the worker's identity.
const IDFile = "worker-id"

func (c Config) withDefaults() (Config, error) {
	if c.Conn == nil {
		return c, errors.New("worker: Config.Conn is required")
	}
	if c.Store == nil {
		return c, errors.New("worker: Config.Store is required")
	}
	if c.DataDir == "" {
		return c, errors.New("worker: Config.DataDir is required")
	}
	if c.Slots == 0 {
		c.Slots = 1
	}
	if c.Slots < 0 || c.Slots > 1024 {
		return c, fmt.Errorf("worker: %d slots, want 1 to 1024", c.Slots)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	if c.StateCacheEntries <= 0 {
		c.StateCacheEntries = DefaultStateCacheEntries
	}
	if c.StateCacheBytes <= 0 {
		c.StateCacheBytes = DefaultStateCacheBytes
	}
	if c.MaxPendingOutputs <= 0 {
		c.MaxPendingOutputs = DefaultMaxPendingOutputs
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.InputStopTimeout <= 0 {
		c.InputStopTimeout = DefaultInputStopTimeout
	}
	if c.InputStallTimeout <= 0 {
		c.InputStallTimeout = DefaultInputStallTimeout
	}
	return c, nil
}

// identity returns the worker's name: name if set, else the one kept in
// dir/worker-id, which it creates with a fresh random name if missing.
func identity(dir, name string) (string, error) {
	if name != "" {
		if err := subjects.ValidateName("worker", name); err != nil {
			return "", err
		}
		return name, nil
	}
	p := filepath.Join(dir, IDFile)
	b, err := os.ReadFile(p)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if err := subjects.ValidateName("worker", id); err != nil {
			return "", fmt.Errorf("worker: %s: %w", p, err)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("worker: identity: %w", err)
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("worker: identity: %w", err)
	}
	id := "w-" + hex.EncodeToString(r[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("worker: identity: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("worker: identity: %w", err)
	}
	return id, nil
}
