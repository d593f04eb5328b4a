package main

import (
	"context"

	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/devcluster"
)

func runDev(ctx context.Context, e *env, args []string) error {
	fs := e.flags()
	cfg := devcluster.Config{Out: e.stdout}
	fs.StringVar(&cfg.Listen, "listen", cli.Env("FLOTILLA_DEV_LISTEN", "127.0.0.1:4222"), "NATS client address of the embedded server")
	fs.StringVar(&cfg.DataDir, "data", cli.Env("FLOTILLA_DATA", devcluster.DefaultDataDir()), "directory for JetStream, the object store and worker state")
	fs.IntVar(&cfg.Workers, "workers", 2, "number of workers")
	fs.IntVar(&cfg.Slots, "slots", 2, "slots per worker")
	fs.BoolVar(&cfg.Demo, "demo", false, "submit an example job, publish sample events and print what happens")
	fs.StringVar(&cfg.HTTP, "http", cli.Env("FLOTILLA_HTTP", devcluster.DefaultHTTP), "serve the dashboard on this address (\"\": off; env FLOTILLA_HTTP)")
	fs.StringVar(&cfg.Metrics, "metrics", cli.Env("FLOTILLA_METRICS", devcluster.DefaultMetrics), "serve Prometheus metrics of every part on this address at /metrics (\"\": off; env FLOTILLA_METRICS)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	if _, err := e.parse(fs, args); err != nil {
		return err
	}
	c := cli.Common{LogLevel: *logLevel}
	log, err := c.Logger(e.stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	return devcluster.Run(ctx, cfg)
}
