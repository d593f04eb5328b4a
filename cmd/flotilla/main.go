// Command flotilla is the one flotilla binary: coordinator, worker, the
// embedded dev cluster, and the client commands of the user API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/flotilla-io/flotilla/worker"
)

const usage = `flotilla runs stateful workers on NATS.

Usage:
  flotilla dev [--demo]                 NATS, object store, coordinator and two workers in one process
  flotilla coordinator                  run the coordinator
  flotilla worker --slots N --data DIR  run a worker
  flotilla job submit FILE [--parallelism P] [--from-savepoint LOCATION]
  flotilla job list
  flotilla job status JOB
  flotilla job cancel JOB
  flotilla job stop JOB [--savepoint]   take a savepoint, then stop (stays running if it fails)
  flotilla job rescale JOB P            stop with a savepoint and resubmit at parallelism P
  flotilla savepoint JOB [--wait] [--format canonical|native] [--target LOCATION]
  flotilla savepoint delete LOCATION
  flotilla savepoints JOB               list savepoints
  flotilla checkpoints JOB [--tasks]    retained checkpoints and their statistics
  flotilla workers                      list registered workers
  flotilla state get JOB KEY            a key's current value

A savepoint can also be triggered with a plain NATS message:
  nats pub flotilla.trigger.savepoint.JOB ''     (nats req ... to get the outcome)

Every command takes --help. Connection settings come from flags or the
environment: NATS_URL, NATS_CREDS, NATS_NKEY, NATS_USER/NATS_PASSWORD,
NATS_TOKEN, NATS_CERT/NATS_KEY/NATS_CA, NATS_INBOX_PREFIX, FLOTILLA_PREFIX,
FLOTILLA_STORE.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "worker":
		return worker.Main(rest)
	case "coordinator":
		err = runCoordinator(ctx, rest, stderr)
	case "dev":
		err = runDev(ctx, rest, stdout, stderr)
	case "job":
		err = runJob(ctx, rest, stdout, stderr)
	case "workers":
		err = runWorkers(ctx, rest, stdout, stderr)
	case "state":
		err = runState(ctx, rest, stdout, stderr)
	case "savepoint":
		err = runSavepoint(ctx, rest, stdout, stderr)
	case "savepoints", "checkpoints":
		err = runCheckpointList(ctx, cmd, rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "flotilla: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "flotilla:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "flotilla:", err)
		return 1
	}
}

var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}
