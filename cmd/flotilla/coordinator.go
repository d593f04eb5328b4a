package main

import (
	"context"
	"flag"
	"io"
	"time"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/cli"
)

func runCoordinator(ctx context.Context, args []string, stderr io.Writer) error {
	var c cli.Common
	fs := flag.NewFlagSet("flotilla coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.Register(fs, true)
	hbInterval := fs.Duration("heartbeat-interval", 2*time.Second, "how often workers heartbeat")
	hbTimeout := fs.Duration("heartbeat-timeout", 10*time.Second, "silence after which a worker is lost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments %q", fs.Args())
	}
	log, err := c.Logger(stderr)
	if err != nil {
		return err
	}
	ns, err := c.Namespace()
	if err != nil {
		return err
	}
	store, err := c.OpenStore(ctx, log)
	if err != nil {
		return err
	}
	nc, err := c.Connect("flotilla coordinator", true, cli.LogConnection(log))
	if err != nil {
		return err
	}
	defer nc.Close()
	co, err := coordinator.New(coordinator.Config{Conn: nc, Namespace: ns, Store: store, Logger: log,
		HeartbeatInterval: *hbInterval, HeartbeatTimeout: *hbTimeout})
	if err != nil {
		return err
	}
	return co.Run(ctx)
}
