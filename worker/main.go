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

	"github.com/nats-io/nats.go"

	"flotilla/objectstore"
	"flotilla/subjects"
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
// Flags default to the environment: NATS_URL, FLOTILLA_PREFIX,
// FLOTILLA_STORE, FLOTILLA_DATA, FLOTILLA_WORKER_NAME.
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

// Flags are the command-line settings of Main.
type Flags struct {
	NATS     string
	Prefix   string
	Store    string
	DataDir  string
	Name     string
	Slots    int
	LogLevel string
}

// ParseFlags parses Main's arguments.
func ParseFlags(args []string, output io.Writer) (Flags, error) {
	f := Flags{}
	fs := flag.NewFlagSet("flotilla worker", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&f.NATS, "nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma separated")
	fs.StringVar(&f.Prefix, "prefix", envOr("FLOTILLA_PREFIX", subjects.DefaultPrefix), "subject prefix of the fleet")
	fs.StringVar(&f.Store, "store", os.Getenv("FLOTILLA_STORE"), "object store location for checkpoints (file:///dir or s3://bucket/prefix?endpoint=...)")
	fs.StringVar(&f.DataDir, "data", envOr("FLOTILLA_DATA", "flotilla-worker"), "directory for the worker's identity and task state")
	fs.StringVar(&f.Name, "name", os.Getenv("FLOTILLA_WORKER_NAME"), "worker name (default: kept in <data>/"+IDFile+")")
	fs.IntVar(&f.Slots, "slots", 1, "number of task slots")
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
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

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ns, err := subjects.NewNamespace(f.Prefix)
	if err != nil {
		return err
	}
	store, err := objectstore.Open(ctx, f.Store, objectstore.Options{})
	if err != nil {
		return err
	}
	nc, err := nats.Connect(f.NATS, nats.Name("flotilla worker"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer nc.Close()
	w, err := New(Config{Conn: nc, Namespace: ns, DataDir: f.DataDir, Slots: f.Slots, Name: f.Name, Store: store, Logger: logger})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
