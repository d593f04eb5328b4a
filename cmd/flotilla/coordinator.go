package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/internal/cli"
)

func runCoordinator(ctx context.Context, e *env, args []string) error {
	var c cli.Common
	fs := e.flags()
	c.Register(fs, true)
	hbInterval := fs.Duration("heartbeat-interval", 2*time.Second, "how often workers heartbeat")
	hbTimeout := fs.Duration("heartbeat-timeout", 10*time.Second, "silence after which a worker is lost")
	envReplicas, err := strconv.Atoi(cli.Env("FLOTILLA_REPLICAS", "0"))
	if err != nil {
		return usageErr("FLOTILLA_REPLICAS=%q: not a number", os.Getenv("FLOTILLA_REPLICAS"))
	}
	replicas := fs.Int("replicas", envReplicas,
		"replicas of every JetStream stream and KV bucket flotilla creates; 0: 3 on a cluster that can place 3, else 1 (env FLOTILLA_REPLICAS)")
	placeCluster := fs.String("placement-cluster", os.Getenv("FLOTILLA_PLACEMENT_CLUSTER"), "JetStream cluster to place flotilla's streams in (env FLOTILLA_PLACEMENT_CLUSTER)")
	placeTags := fs.String("placement-tags", os.Getenv("FLOTILLA_PLACEMENT_TAGS"), "comma-separated server tags to place flotilla's streams on (env FLOTILLA_PLACEMENT_TAGS)")
	grace := fs.Duration("orphan-grace", time.Hour, "age after which the orphan sweep deletes an unreferenced checkpoint object")
	sweepEvery := fs.Duration("orphan-sweep-interval", 10*time.Minute, "how often the orphan sweep runs")
	if _, err := e.parse(fs, args); err != nil {
		return err
	}
	var placement *jetstream.Placement
	if *placeCluster != "" || *placeTags != "" {
		placement = &jetstream.Placement{Cluster: *placeCluster}
		if *placeTags != "" {
			placement.Tags = strings.Split(*placeTags, ",")
		}
	}
	log, err := c.Logger(e.stderr)
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
		HeartbeatInterval: *hbInterval, HeartbeatTimeout: *hbTimeout, Replicas: *replicas, Placement: placement,
		OrphanGrace: *grace, OrphanSweepInterval: *sweepEvery})
	if err != nil {
		return err
	}
	return co.Run(ctx)
}
