package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/subjects"
)

// clientCmd is a client command of the user API: its flags (the shared
// connection settings and --json) and its connection.
type clientCmd struct {
	e    *env
	fs   *flag.FlagSet
	c    cli.Common
	json bool
}

func (e *env) clientCmd() *clientCmd {
	cc := &clientCmd{e: e, fs: e.flags()}
	cc.fs.BoolVar(&cc.json, "json", false, "print the raw JSON reply")
	cc.c.Register(cc.fs, false)
	return cc
}

func (cc *clientCmd) client() (*client.Client, func(), error) {
	ns, err := cc.c.Namespace()
	if err != nil {
		return nil, nil, err
	}
	nc, err := cc.c.Connect("flotilla cli", false)
	if err != nil {
		return nil, nil, err
	}
	return client.New(nc, ns), nc.Close, nil
}

// run parses args, connects, and calls f with the API client and the
// positional arguments.
func (cc *clientCmd) run(args []string, f func(api *client.Client, pos []string) error) error {
	pos, err := cc.e.parse(cc.fs, args)
	if err != nil {
		return err
	}
	api, done, err := cc.client()
	if err != nil {
		return err
	}
	defer done()
	return f(api, pos)
}

// printJSON prints m as the API sends it: every object that is a message
// (m, and each record of a list) with its type and version.
func printJSON(w io.Writer, m subjects.Message) error {
	b, err := subjects.Encode(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

func runSubmit(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	parallelism := cc.fs.Int("parallelism", 0, "parallelism (overrides the spec's)")
	from := cc.fs.String("from-savepoint", "", "savepoint or checkpoint `location` to restore from")
	allowOpChange := cc.fs.Bool("allow-operator-change", false, "restore --from-savepoint even if another operator wrote it")
	return cc.run(args, func(api *client.Client, pos []string) error {
		data, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		spec, err := subjects.ParseJobSpec(data)
		if err != nil {
			return err
		}
		info, err := api.SubmitJob(ctx, subjects.SubmitJob{Spec: spec, Parallelism: *parallelism, FromSavepoint: *from, AllowOperatorChange: *allowOpChange})
		if err != nil {
			return err
		}
		return printJob(e.stdout, info, cc.json)
	})
}

func runJobList(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, _ []string) error {
		jobs, err := api.Jobs(ctx)
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(e.stdout, &subjects.JobList{Jobs: jobs})
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tSTATE\tTASKS\tRESTARTS\tCHECKPOINT")
		for _, j := range jobs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", j.Job, j.State, len(j.Tasks), j.Restarts, j.LatestCheckpoint)
		}
		return tw.Flush()
	})
}

func runJobStatus(ctx context.Context, e *env, args []string) error {
	return runJobCall(ctx, e, args, (*client.Client).Status)
}

func runJobCancel(ctx context.Context, e *env, args []string) error {
	return runJobCall(ctx, e, args, (*client.Client).Cancel)
}

// runJobCall runs a command that calls the API for JOB and prints the
// job it answers with.
func runJobCall(ctx context.Context, e *env, args []string, call func(*client.Client, context.Context, string) (subjects.JobInfo, error)) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, pos []string) error {
		info, err := call(api, ctx, pos[0])
		if err != nil {
			return err
		}
		return printJob(e.stdout, info, cc.json)
	})
}

func printJob(w io.Writer, info subjects.JobInfo, asJSON bool) error {
	if asJSON {
		return printJSON(w, &info)
	}
	fmt.Fprintf(w, "job %s: %s (restarts %d, %.1f events/s, lag %d, last checkpoint %s)\n", info.Job, info.State, info.Restarts,
		info.Rate, info.Lag, lastCheckpoint(info, time.Now()))
	if info.Waiting != nil {
		fmt.Fprintf(w, "%s: add workers or free slots\n", info.Waiting)
	}
	for _, warning := range info.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	if in := info.Input; in != nil {
		if in.Partitions > 0 {
			fmt.Fprintf(w, "input: partitioned, %d streams %s ... %s\n", in.Partitions, in.Streams[0], in.Streams[len(in.Streams)-1])
		} else {
			fmt.Fprintf(w, "input: %s\n", in.Note)
		}
		for _, g := range in.Gaps {
			fmt.Fprintf(w, "input gap: events lost at %s, %s\n", g.Time.Format(time.RFC3339), g)
		}
	}
	return printTasks(w, info)
}

func runWorkers(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, _ []string) error {
		ws, err := api.Workers(ctx)
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(e.stdout, &subjects.WorkerList{Workers: ws})
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tINSTANCE\tHOST\tSLOTS\tFREE\tLAST HEARTBEAT\tHEALTH")
		for _, w := range ws {
			health := "ok"
			if w.Unhealthy != "" {
				health = "unhealthy: " + w.Unhealthy
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s ago\t%s\n", w.Worker, w.Instance, w.Host, w.Slots, w.FreeSlots, time.Since(w.LastHeartbeat).Round(time.Millisecond), health)
		}
		return tw.Flush()
	})
}

func runLeader(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, _ []string) error {
		info, err := api.Leader(ctx)
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(e.stdout, &info)
		}
		if info.Leader == "" {
			fmt.Fprintf(e.stdout, "no coordinator leads now (answered by %s)\n", info.Answered)
			return nil
		}
		fmt.Fprintf(e.stdout, "%s leads in term %d (answered by %s)\n", info.Leader, info.Term, info.Answered)
		return nil
	})
}

func runStateGet(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	return cc.run(args, func(api *client.Client, pos []string) error {
		res, err := api.State(ctx, pos[0], pos[1])
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(e.stdout, &res)
		}
		if !res.Found {
			return fmt.Errorf("%s: key %q has no state (key group %d, task %d)", pos[0], pos[1], res.Group, res.Task)
		}
		fmt.Fprintf(e.stdout, "%s\n", res.Value)
		return nil
	})
}
