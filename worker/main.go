package worker

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/metrics"
)

// Main runs a worker from command-line arguments (without the program
// name) until SIGINT or SIGTERM, and returns the process exit code. It is
// the body of `flotilla worker` and of custom worker binaries, which
// Register their operators first:
//
//	func main() {
//		worker.Register("myop", newMyOp)
//		os.Exit(worker.Main(os.Args[1:]))
//	}
//
// Flags default to the environment: NATS_URL, the NATS credentials and TLS
// settings every flotilla command takes (NATS_CREDS, NATS_NKEY,
// NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CERT/NATS_KEY/NATS_CA,
// NATS_INBOX_PREFIX), FLOTILLA_PREFIX, FLOTILLA_STORE, FLOTILLA_DATA,
// FLOTILLA_WORKER_NAME.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, args, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "flotilla worker:", err)
		return 1
	}
	return 0
}

// Flags are the command-line settings of Main: the settings every flotilla
// process shares (NATS URL, credentials and TLS, prefix, store, logging)
// and the worker's own.
type Flags struct {
	cli.Common
	DataDir string
	Name    string
	Slots   int
	// Metrics is the address to serve Prometheus metrics on ("": off).
	Metrics string
	// ShutdownTimeout bounds how long the worker waits for its tasks to
	// stop after SIGTERM (Config.ShutdownTimeout).
	ShutdownTimeout time.Duration
}

// ParseFlags parses Main's arguments.
func ParseFlags(args []string, output io.Writer) (Flags, error) {
	f := Flags{}
	fs := flag.NewFlagSet("flotilla worker", flag.ContinueOnError)
	fs.SetOutput(output)
	cli.Help{Line: "flotilla worker [flags]", About: "Run a worker: it registers with the coordinator, offers its slots and runs the tasks deployed to it."}.Usage(fs)
	f.Common.Register(fs, true)
	fs.StringVar(&f.DataDir, "data", cli.Env("FLOTILLA_DATA", "flotilla-worker"), "directory for the worker's identity and task state")
	fs.StringVar(&f.Name, "name", os.Getenv("FLOTILLA_WORKER_NAME"), "worker name (default: kept in <data>/"+IDFile+")")
	fs.IntVar(&f.Slots, "slots", 1, "number of task slots")
	fs.StringVar(&f.Metrics, "metrics", os.Getenv("FLOTILLA_METRICS"), "serve Prometheus metrics on this address at /metrics, e.g. 127.0.0.1:9091 (env FLOTILLA_METRICS; default off)")
	fs.DurationVar(&f.ShutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "after SIGTERM, how long to wait for tasks to stop before exiting anyway")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if f.Store == "" {
		return f, errors.New("no object store: set -store or FLOTILLA_STORE")
	}
	return f, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger, err := f.Logger(stderr)
	if err != nil {
		return err
	}
	ns, err := f.Namespace()
	if err != nil {
		return err
	}
	// Like the coordinator, wait for a store that does not answer yet (MinIO
	// down or still starting): start order must not matter.
	store, err := f.OpenStore(ctx, logger)
	if err != nil {
		return err
	}
	reg := metrics.NewRegistry()
	store = metrics.ObjectStore(store, reg)
	nc, err := f.Connect("flotilla worker", true, cli.LogConnection(logger))
	if err != nil {
		return err
	}
	defer closeConn(nc, logger)
	w, err := New(Config{Conn: nc, Namespace: ns, DataDir: f.DataDir, Slots: f.Slots, Name: f.Name, Store: store, Logger: logger, ShutdownTimeout: f.ShutdownTimeout})
	if err != nil {
		return err
	}
	reg.MustRegister(w.Collector(), metrics.NATS(nc))
	if f.Metrics != "" {
		addr, err := metrics.Serve(ctx, f.Metrics, reg, logger)
		if err != nil {
			return fmt.Errorf("-metrics: %w", err)
		}
		logger.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	return w.Run(ctx)
}

// connCloseWait bounds closing the NATS connection at exit: Close flushes
// what is buffered, which waits on a server that takes no bytes.
const connCloseWait = 2 * time.Second

// closeConn closes nc, waiting at most connCloseWait: the process exits
// either way.
func closeConn(nc *nats.Conn, log *slog.Logger) {
	closed := make(chan struct{})
	go func() {
		nc.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(connCloseWait):
		log.Warn("NATS connection did not close in time; exiting anyway", "waited", connCloseWait)
	}
}
