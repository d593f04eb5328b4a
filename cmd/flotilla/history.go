package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/subjects"
)

// runHistory is `flotilla checkpoints JOB --history`: every checkpoint and
// savepoint attempt kept in the durable history, oldest first.
func runHistory(ctx context.Context, api *client.Client, job string, limit int, tasks, asJSON bool, stdout io.Writer) error {
	h, err := api.History(ctx, job, limit)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, &h)
	}
	printHistory(stdout, h, tasks)
	return nil
}

func printHistory(stdout io.Writer, h subjects.CheckpointHistory, tasks bool) {
	if h.Truncated {
		fmt.Fprintf(stdout, "(older attempts not shown; --limit up to %d)\n", subjects.MaxHistoryLimit)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tTRIGGER\tOUTCOME\tTRIGGERED\tDURATION\tSIZE\tUPLOADED\tACKED\tFAILURE / LOCATION")
	for _, a := range h.Attempts {
		acked := 0
		for _, t := range a.Tasks {
			if t.Acked {
				acked++
			}
		}
		last := a.Location
		if a.Failure != nil {
			last = a.Failure.Code.String() + ": " + a.Failure.Message
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", a.ID, a.Kind, a.Trigger, a.Outcome,
			a.Triggered.Local().Format(time.DateTime), a.Duration.D().Round(time.Millisecond), human(a.Size), human(a.Uploaded),
			acked, len(a.Tasks), last)
		if tasks {
			for _, t := range a.Tasks {
				if !t.Acked {
					fmt.Fprintf(tw, "\t  task %d\tnot acked\t\t\t\t\t\t\t%s\n", t.Task, t.Worker)
					continue
				}
				fmt.Fprintf(tw, "\t  task %d\tsync %s\tasync %s\t\t\t%s\t%s\t\t%s\n", t.Task, t.Sync.D(), t.Async.D(),
					human(t.Size), human(t.Uploaded), t.Worker)
			}
		}
	}
	_ = tw.Flush()
}
