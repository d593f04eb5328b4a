package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/subjects"
)

// runTop is `flotilla top`: the fleet, its jobs and (with --job) one job's
// tasks, with the figures the dashboard shows, refreshed every interval.
func runTop(ctx context.Context, e *env, args []string) error {
	cc := e.clientCmd()
	job := cc.fs.String("job", "", "also show this job's tasks")
	every := cc.fs.Duration("interval", 2*time.Second, "refresh interval")
	once := cc.fs.Bool("once", false, "print one frame and exit (no screen clearing)")
	return cc.run(args, func(api *client.Client, _ []string) error {
		if *every <= 0 {
			return usageErr("-interval must be positive")
		}
		t := time.NewTicker(*every)
		defer t.Stop()
		for {
			if !*once {
				fmt.Fprint(e.stdout, "\x1b[H\x1b[2J") // home, clear screen
			}
			if err := topFrame(ctx, api, *job, e.stdout, time.Now()); err != nil {
				return err
			}
			if *once {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
}

// topFrame prints one frame of `flotilla top`.
func topFrame(ctx context.Context, api *client.Client, job string, w io.Writer, now time.Time) error {
	ws, err := api.Workers(ctx)
	if err != nil {
		return err
	}
	jobs, err := api.Jobs(ctx)
	if err != nil {
		return err
	}
	slots, free := 0, 0
	for _, wk := range ws {
		slots += wk.Slots
		free += wk.FreeSlots
	}
	fmt.Fprintf(w, "flotilla top  %s  workers %d  slots %d (%d free)\n\n", now.Format(time.TimeOnly), len(ws), slots, free)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATE\tTASKS\tRESTARTS\tEVENTS/S\tLAG\tLAST CHECKPOINT")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%d\t%s\n", j.Job, j.State, len(j.Tasks), j.Restarts, j.Rate, j.Lag, lastCheckpoint(j, now))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if job == "" {
		return nil
	}
	info, err := api.Status(ctx, job)
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	return printTasks(w, info)
}

// lastCheckpoint says which checkpoint completed last and how long ago.
func lastCheckpoint(j subjects.JobInfo, now time.Time) string {
	if j.LatestCheckpoint == 0 {
		return "none"
	}
	if j.LastCheckpointAt.IsZero() {
		return fmt.Sprintf("#%d", j.LatestCheckpoint)
	}
	return fmt.Sprintf("#%d, %s ago", j.LatestCheckpoint, now.Sub(j.LastCheckpointAt).Round(100*time.Millisecond))
}

// printTasks prints a job's tasks with their figures.
func printTasks(w io.Writer, info subjects.JobInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tKEY GROUPS\tWORKER\tATTEMPT\tSTATE\tEVENTS/S\tLAG\tEVENTS IN\tOUTPUTS\tSKIPPED\tSTATE SIZE")
	for _, t := range info.Tasks {
		rate, lag, in, outs, size := "-", "-", "-", "-", "-"
		if s := t.Stats; s != nil {
			rate, lag = fmt.Sprintf("%.1f", s.Rate), strconv.FormatUint(s.Lag, 10)
			in, outs, size = strconv.FormatUint(s.EventsIn, 10), strconv.FormatUint(s.Outputs, 10), human(int64(s.StateBytes))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", t.Task, t.Range, t.Worker, t.Attempt, t.State, rate, lag, in, outs, t.Skipped, size)
	}
	return tw.Flush()
}
