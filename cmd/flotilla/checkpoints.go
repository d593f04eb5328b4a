package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/subjects"
)

// runSavepoint is `flotilla savepoint JOB`.
func runSavepoint(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	wait := cc.fs.Bool("wait", false, "show progress (tasks acked, bytes uploaded) until the savepoint completes")
	target := cc.fs.String("target", "", "`location` to write the savepoint under (inside the coordinator's store)")
	format := cc.fs.String("format", "canonical", "canonical (portable, one file per task) or native (Pebble files)")
	pos, err := e.parse(cc.fs, args)
	if err != nil {
		return err
	}
	t := subjects.TriggerSavepoint{Job: pos[0], Target: *target}
	if err := t.Format.UnmarshalText([]byte(*format)); err != nil {
		return usageErr("-format: %v", err)
	}
	ns, err := cc.c.Namespace()
	if err != nil {
		return err
	}
	nc, err := cc.c.Connect("flotilla cli", false)
	if err != nil {
		return err
	}
	defer nc.Close()
	if *wait {
		stop, err := showProgress(nc, ns, pos[0], e.stderr)
		if err != nil {
			return err
		}
		defer stop()
	}
	res, err := client.New(nc, ns).TriggerSavepoint(ctx, t)
	if err != nil {
		return err
	}
	if cc.json {
		return printJSON(e.stdout, &res)
	}
	fmt.Fprintf(e.stdout, "savepoint %d of %s: %s\n", res.Checkpoint, res.Job, res.Location)
	return nil
}

// runSavepointDelete is `flotilla savepoint delete LOCATION`.
func runSavepointDelete(ctx context.Context, e *env, args []string) error {
	return e.clientCmd().run(args, func(api *client.Client, pos []string) error {
		if err := api.DeleteSavepoint(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "deleted savepoint %s\n", pos[0])
		return nil
	})
}

// showProgress prints acks of the job's savepoints as they arrive, from
// the barrier and ack subjects.
func showProgress(nc *nats.Conn, ns subjects.Namespace, job string, w io.Writer) (func(), error) {
	var mu sync.Mutex
	kinds := map[uint64]subjects.CheckpointKind{}
	acked := map[uint64]int{}
	bytes := map[uint64]int64{}
	start := time.Now()
	bsub, err := nc.Subscribe(ns.Barrier(job), func(m *nats.Msg) {
		var b subjects.Barrier
		if subjects.Decode(m.Data, &b) == nil {
			mu.Lock()
			kinds[b.Checkpoint] = b.Kind
			mu.Unlock()
			if b.Kind == subjects.KindSavepoint {
				fmt.Fprintf(w, "savepoint %d triggered (%s)\n", b.Checkpoint, b.Format)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	asub, err := nc.Subscribe(ns.JobWorkers(job, "ack"), func(m *nats.Msg) {
		var a subjects.Ack
		if subjects.Decode(m.Data, &a) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if kinds[a.Checkpoint] != subjects.KindSavepoint {
			return
		}
		acked[a.Checkpoint]++
		bytes[a.Checkpoint] += a.Handle.Uploaded
		fmt.Fprintf(w, "savepoint %d: task %d acked, %d tasks, %s uploaded, %s\n", a.Checkpoint, a.Task,
			acked[a.Checkpoint], human(bytes[a.Checkpoint]), time.Since(start).Round(time.Millisecond))
	})
	if err != nil {
		_ = bsub.Unsubscribe()
		return nil, err
	}
	return func() { _ = bsub.Unsubscribe(); _ = asub.Unsubscribe() }, nc.Flush()
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// runCheckpoints is `flotilla checkpoints JOB`.
func runCheckpoints(ctx context.Context, e *env, args []string) error {
	return runCheckpointList(ctx, e, args, (*client.Client).Checkpoints)
}

// runSavepoints is `flotilla savepoints JOB`.
func runSavepoints(ctx context.Context, e *env, args []string) error {
	return runCheckpointList(ctx, e, args, (*client.Client).Savepoints)
}

func runCheckpointList(ctx context.Context, e *env, args []string,
	list func(*client.Client, context.Context, string) ([]subjects.CheckpointRecord, error)) error {
	cc := e.clientCmd()
	tasks := cc.fs.Bool("tasks", false, "show per-task statistics")
	hist := cc.fs.Bool("history", false, "every attempt (completed, failed, aborted) from the durable history, not only the retained checkpoints")
	limit := cc.fs.Int("limit", 0, fmt.Sprintf("with --history: the newest N attempts (default %d, max %d)", subjects.DefaultHistoryLimit, subjects.MaxHistoryLimit))
	return cc.run(args, func(api *client.Client, pos []string) error {
		if *hist {
			return runHistory(ctx, api, pos[0], *limit, *tasks, cc.json, e.stdout)
		}
		recs, err := list(api, ctx, pos[0])
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(e.stdout, &subjects.CheckpointList{Checkpoints: recs})
		}
		return printCheckpoints(e.stdout, recs, *tasks)
	})
}

func printCheckpoints(stdout io.Writer, recs []subjects.CheckpointRecord, tasks bool) error {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tFORMAT\tTRIGGERED\tDURATION\tSIZE\tUPLOADED\tTASKS\tLOCATION")
	for _, r := range recs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, r.Kind, r.Format, r.Triggered.Local().Format(time.DateTime),
			r.Completed.Sub(r.Triggered).Round(time.Millisecond), human(r.Size), human(r.Uploaded), len(r.Tasks), r.Location)
		if tasks {
			for _, t := range r.Tasks {
				fmt.Fprintf(tw, "\t  task %d\t%s\tsync %s\tasync %s\t%s\t%s\t%s\t%s\n", t.Task, t.Handle.Range, t.Sync.D(), t.Async.D(),
					human(t.Handle.Size), human(t.Handle.Uploaded), t.Worker, t.Handle.Manifest)
			}
		}
	}
	return tw.Flush()
}

// runStop is `flotilla job stop JOB --savepoint`.
func runStop(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	withSavepoint := cc.fs.Bool("savepoint", true, "take a savepoint first (the job stops only if it succeeds); -savepoint=false cancels")
	return cc.run(args, func(api *client.Client, pos []string) error {
		if !*withSavepoint {
			info, err := api.Cancel(ctx, pos[0])
			if err != nil {
				return err
			}
			return printJob(e.stdout, info, cc.json)
		}
		res, err := api.Stop(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("job %s keeps running: %w", pos[0], err)
		}
		fmt.Fprintf(e.stdout, "job %s stopped with savepoint %s\n", pos[0], res.Location)
		return nil
	})
}

// runRescale is `flotilla job rescale JOB P`.
func runRescale(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, pos []string) error {
		p, err := strconv.Atoi(pos[1])
		if err != nil || p < 1 {
			return usageErr("parallelism %q must be a positive number", pos[1])
		}
		res, err := api.Rescale(ctx, pos[0], p)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "job %s rescaled to %d through savepoint %s\n", pos[0], p, res.Location)
		return nil
	})
}
