package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/subjects"
)

// clientFlags parses a client command's flags and positional arguments and
// connects to the user API.
type clientCmd struct {
	name string
	fs   *flag.FlagSet
	c    cli.Common
	json bool
}

func newClientCmd(name string, stderr io.Writer) *clientCmd {
	cc := &clientCmd{name: name, fs: flag.NewFlagSet("flotilla "+name, flag.ContinueOnError)}
	cc.fs.SetOutput(stderr)
	cc.c.Register(cc.fs, false)
	cc.fs.BoolVar(&cc.json, "json", false, "print the raw JSON reply")
	return cc
}

// parse parses args, flags before or after the positional arguments, and
// checks the positional argument count.
func (cc *clientCmd) parse(args []string, positional ...string) ([]string, error) {
	pos, err := parseInterspersed(cc.fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != len(positional) {
		return nil, usageErr("flotilla %s %s", cc.name, strings.Join(positional, " "))
	}
	return pos, nil
}

// parseInterspersed parses fs's flags wherever they stand among args and
// returns the positional arguments ("--" ends the flags).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
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

// run parses args for the positional arguments named, connects, and calls
// f with the API client and the positional arguments.
func (cc *clientCmd) run(args []string, positional []string, f func(api *client.Client, pos []string) error) error {
	pos, err := cc.parse(args, positional...)
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

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runJob(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("flotilla job submit|list|status|cancel|stop|rescale ...")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "stop":
		return runStop(ctx, args, stdout, stderr)
	case "rescale":
		return runRescale(ctx, args, stdout, stderr)
	}
	cc := newClientCmd("job "+sub, stderr)
	switch sub {
	case "submit":
		parallelism := cc.fs.Int("parallelism", 0, "parallelism (overrides the spec's)")
		from := cc.fs.String("from-savepoint", "", "savepoint or checkpoint location to restore from")
		return cc.run(args, []string{"FILE"}, func(api *client.Client, pos []string) error {
			data, err := os.ReadFile(pos[0])
			if err != nil {
				return err
			}
			spec, err := subjects.ParseJobSpec(data)
			if err != nil {
				return err
			}
			info, err := api.Submit(ctx, spec, *parallelism, *from)
			if err != nil {
				return err
			}
			return printJob(stdout, info, cc.json)
		})
	case "list":
		return cc.run(args, nil, func(api *client.Client, _ []string) error {
			jobs, err := api.Jobs(ctx)
			if err != nil {
				return err
			}
			if cc.json {
				return printJSON(stdout, jobs)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tSTATE\tTASKS\tRESTARTS\tCHECKPOINT")
			for _, j := range jobs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", j.Job, j.State, len(j.Tasks), j.Restarts, j.LatestCheckpoint)
			}
			return tw.Flush()
		})
	case "status", "cancel":
		return cc.run(args, []string{"JOB"}, func(api *client.Client, pos []string) error {
			call := api.Status
			if sub == "cancel" {
				call = api.Cancel
			}
			info, err := call(ctx, pos[0])
			if err != nil {
				return err
			}
			return printJob(stdout, info, cc.json)
		})
	}
	return usageErr("unknown job command %q (submit, list, status, cancel, stop, rescale)", sub)
}

func printJob(w io.Writer, info subjects.JobInfo, asJSON bool) error {
	if asJSON {
		return printJSON(w, info)
	}
	fmt.Fprintf(w, "job %s: %s (restarts %d, latest checkpoint %d)\n", info.Job, info.State, info.Restarts, info.LatestCheckpoint)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tKEY GROUPS\tWORKER\tATTEMPT\tSTATE\tSKIPPED")
	for _, t := range info.Tasks {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\n", t.Task, t.Range, t.Worker, t.Attempt, t.State, t.Skipped)
	}
	return tw.Flush()
}

func runWorkers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cc := newClientCmd("workers", stderr)
	return cc.run(args, nil, func(api *client.Client, _ []string) error {
		ws, err := api.Workers(ctx)
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(stdout, ws)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tINSTANCE\tHOST\tSLOTS\tFREE\tLAST HEARTBEAT")
		for _, w := range ws {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s ago\n", w.Worker, w.Instance, w.Host, w.Slots, w.FreeSlots, time.Since(w.LastHeartbeat).Round(time.Millisecond))
		}
		return tw.Flush()
	})
}

func runState(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "get" {
		return usageErr("flotilla state get JOB KEY")
	}
	cc := newClientCmd("state get", stderr)
	return cc.run(args[1:], []string{"JOB", "KEY"}, func(api *client.Client, pos []string) error {
		res, err := api.State(ctx, pos[0], pos[1])
		if err != nil {
			return err
		}
		if cc.json {
			return printJSON(stdout, res)
		}
		if !res.Found {
			return fmt.Errorf("%s: key %q has no state (key group %d, task %d)", pos[0], pos[1], res.Group, res.Task)
		}
		fmt.Fprintf(stdout, "%s\n", res.Value)
		return nil
	})
}
