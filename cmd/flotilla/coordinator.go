package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flotilla-io/flotilla/coordinator"
	"github.com/flotilla-io/flotilla/coordinator/web"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/metrics"
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
	httpAddr := fs.String("http", os.Getenv("FLOTILLA_HTTP"), "serve the dashboard and its REST API on this address, e.g. 127.0.0.1:8081 (env FLOTILLA_HTTP; default off)")
	httpToken := fs.String("http-token", os.Getenv("FLOTILLA_HTTP_TOKEN"), "token the dashboard requires (bearer, or basic-auth password); required with NATS authentication (env FLOTILLA_HTTP_TOKEN)")
	metricsAddr := fs.String("metrics", os.Getenv("FLOTILLA_METRICS"), "serve Prometheus metrics on this address at /metrics, e.g. 127.0.0.1:9090 (env FLOTILLA_METRICS; default off)")
	histPerJob := fs.Int("history-per-job", envInt("FLOTILLA_HISTORY_PER_JOB", coordinator.DefaultHistoryPerJob), "checkpoint attempts kept per job in the history (env FLOTILLA_HISTORY_PER_JOB)")
	name := fs.String("name", os.Getenv("FLOTILLA_COORDINATOR_NAME"), "this coordinator's name in the leader lease; every coordinator needs its own (env FLOTILLA_COORDINATOR_NAME; default host, pid and a random suffix)")
	leaseTTL := fs.Duration("lease-ttl", envDuration("FLOTILLA_LEASE_TTL", coordinator.DefaultLeaseTTL), "the leader lease's time to live: a standby takes over about this long after the leader died; fixed when the lease bucket is created, and an existing bucket's wins (env FLOTILLA_LEASE_TTL)")
	histMaxAge := fs.Duration("history-max-age", envDuration("FLOTILLA_HISTORY_MAX_AGE", coordinator.DefaultHistoryMaxAge), "age after which checkpoint history records are dropped (env FLOTILLA_HISTORY_MAX_AGE)")
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
	reg := metrics.NewRegistry()
	store = metrics.ObjectStore(store, reg)
	nc, err := c.Connect("flotilla coordinator", true, cli.LogConnection(log))
	if err != nil {
		return err
	}
	defer nc.Close()
	co, err := coordinator.New(coordinator.Config{Conn: nc, Namespace: ns, Store: store, Logger: log,
		HeartbeatInterval: *hbInterval, HeartbeatTimeout: *hbTimeout, Replicas: *replicas, Placement: placement,
		OrphanGrace: *grace, OrphanSweepInterval: *sweepEvery, HistoryPerJob: *histPerJob, HistoryMaxAge: *histMaxAge,
		Name: *name, LeaseTTL: *leaseTTL})
	if err != nil {
		return err
	}
	reg.MustRegister(co.Collector(), metrics.NATS(nc))
	if *metricsAddr != "" {
		addr, err := metrics.Serve(ctx, *metricsAddr, reg, log)
		if err != nil {
			return fmt.Errorf("-metrics: %w", err)
		}
		log.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	if *httpAddr != "" {
		addr, err := web.Serve(ctx, *httpAddr, web.Config{Conn: nc, Namespace: ns, Token: *httpToken, Logger: log}, c.Authenticated())
		if err != nil {
			return fmt.Errorf("-http: %w", err)
		}
		log.Info("serving the dashboard", "url", "http://"+addr.String()+"/")
	}
	return co.Run(ctx)
}

func envInt(key string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return n
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(key)); err == nil {
		return d
	}
	return def
}
