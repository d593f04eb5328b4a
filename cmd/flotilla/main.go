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
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/worker"
)

// command is one command of the binary. The table commands is the one
// registry: dispatch, the command list of `flotilla --help` and each
// command's own --help all come from it.
type command struct {
	// path is the command's words after "flotilla", e.g. "job submit".
	path string
	// args names the positional arguments, e.g. "JOB KEY".
	args string
	// brief is the one line of the command list; about, when set, is the
	// longer text of the command's own help.
	brief, about string
	// run runs the command; main, for a command that parses its own
	// flags and exits on its own (worker), instead.
	run  func(ctx context.Context, e *env, args []string) error
	main func(args []string) int
}

var commands = []*command{
	{path: "dev", brief: "NATS, object store, coordinator and two workers in one process", run: runDev,
		about: "Run a whole fleet in one process: an embedded nats-server with JetStream, a local-directory\nobject store, a coordinator and workers. Other processes (the nats CLI, more workers) can join."},
	{path: "coordinator", brief: "run a coordinator (any number: one leads, the others stand by)", run: runCoordinator},
	{path: "leader", brief: "which coordinator leads, in which term", run: runLeader},
	{path: "worker", brief: "run a worker (flotilla worker --help)", main: worker.Main},
	{path: "job submit", args: "FILE", brief: "submit the job spec in FILE", run: runSubmit,
		about: "Submit the job spec (JSON) in FILE; see examples/clicks.json."},
	{path: "job list", brief: "list jobs", run: runJobList},
	{path: "job status", args: "JOB", brief: "a job's state and tasks", run: runJobStatus},
	{path: "job cancel", args: "JOB", brief: "cancel a job", run: runJobCancel},
	{path: "job stop", args: "JOB", brief: "take a savepoint, then stop (keeps running if it fails)", run: runStop},
	{path: "job rescale", args: "JOB PARALLELISM", brief: "stop with a savepoint and resubmit at PARALLELISM", run: runRescale},
	{path: "savepoint", args: "JOB", brief: "take a savepoint of JOB", run: runSavepoint,
		about: "Take a savepoint of JOB and print its location (flotilla savepoint delete LOCATION deletes one)."},
	{path: "savepoint delete", args: "LOCATION", brief: "delete the savepoint at LOCATION", run: runSavepointDelete},
	{path: "savepoints", args: "JOB", brief: "list a job's savepoints", run: runSavepoints},
	{path: "checkpoints", args: "JOB", brief: "a job's retained checkpoints and their statistics", run: runCheckpoints},
	{path: "workers", brief: "list registered workers", run: runWorkers},
	{path: "top", brief: "fleet, jobs and (--job) tasks with events/s, lag and last checkpoint age, refreshed", run: runTop},
	{path: "state get", args: "JOB KEY", brief: "a key's current value", run: runStateGet},
	{path: "version", brief: "the build: module version, commit, Go version", run: runVersion},
}

const usageTail = `
A savepoint can also be triggered with a plain NATS message:
  nats pub flotilla.trigger.savepoint.JOB ''     (nats req ... to get the outcome)

Every command takes --help ("flotilla help COMMAND" too). Connection settings
come from flags, the environment (NATS_URL, NATS_CREDS, NATS_NKEY,
NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CERT/NATS_KEY/NATS_CA,
NATS_INBOX_PREFIX, FLOTILLA_PREFIX, FLOTILLA_STORE) or a natscli context
(--context NAME or NATS_CONTEXT; by default the one "nats context select"
chose). -s and --server are --nats.
`

// line is the command line of c, for usage messages.
func (c *command) line() string {
	return strings.Join(strings.Fields("flotilla "+c.path+" "+c.args+" [flags]"), " ")
}

// usage writes the list of the commands under group ("" for all).
func usage(w io.Writer, group string) {
	if group == "" {
		fmt.Fprint(w, "flotilla runs stateful workers on NATS.\n\n")
	}
	fmt.Fprintln(w, "Usage:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		if group == "" || strings.HasPrefix(c.path, group+" ") {
			fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSuffix(c.line(), " [flags]"), c.brief)
		}
	}
	tw.Flush()
	if group == "" {
		fmt.Fprint(w, usageTail)
	} else {
		fmt.Fprintf(w, "\nEach takes --help.\n")
	}
}

// lookup finds the command args start with: the one with the longest
// path. It returns the rest of args, or the group args name ("job",
// "state") when they name no command of it.
func lookup(args []string) (cmd *command, rest []string, group string) {
	for _, c := range commands {
		words := strings.Fields(c.path)
		if len(args) < len(words) || strings.Join(args[:len(words)], " ") != c.path {
			continue
		}
		if cmd == nil || len(words) > len(strings.Fields(cmd.path)) {
			cmd, rest = c, args[len(words):]
		}
	}
	if cmd == nil && len(args) > 0 {
		for _, c := range commands {
			if strings.HasPrefix(c.path, args[0]+" ") {
				return nil, args[1:], args[0]
			}
		}
	}
	return cmd, rest, ""
}

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "-help" || arg == "--help"
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || isHelp(args[0]) {
		if len(args) > 1 && args[0] == "help" {
			// flotilla help COMMAND is flotilla COMMAND --help.
			return run(append(args[1:], "--help"), stdout, stderr)
		}
		usage(stdout, "")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, rest, group := lookup(args)
	switch {
	case group != "" && (len(rest) == 0 || isHelp(rest[0])):
		usage(stdout, group)
		if len(rest) == 0 {
			return 2
		}
		return 0
	case group != "":
		fmt.Fprintf(stderr, "flotilla: unknown %s command %q\n\n", group, rest[0])
		usage(stderr, group)
		return 2
	case cmd == nil:
		fmt.Fprintf(stderr, "flotilla: unknown command %q\n\n", args[0])
		usage(stderr, "")
		return 2
	case cmd.main != nil:
		return cmd.main(rest)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, &env{cmd: cmd, stdout: stdout, stderr: stderr}, rest)
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

// env is what a command runs with: itself and where to write.
type env struct {
	cmd            *command
	stdout, stderr io.Writer
}

// flags returns a flag set for the command. Parse it with e.parse.
func (e *env) flags() *flag.FlagSet {
	fs := flag.NewFlagSet("flotilla "+e.cmd.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // e.parse reports errors and prints help
	fs.Usage = func() {}
	return fs
}

// help returns the command's help.
func (e *env) help() cli.Help {
	about := e.cmd.about
	if about == "" {
		about = strings.ToUpper(e.cmd.brief[:1]) + e.cmd.brief[1:] + "."
	}
	return cli.Help{Line: e.cmd.line(), About: about}
}

// parse parses args, flags before or after the positional arguments, and
// checks that there are as many positional arguments as the command
// names. --help prints the command's help to stdout.
func (e *env) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		e.help().Print(e.stdout, fs)
		return nil, err
	}
	if err != nil {
		return nil, usageErr("%v (flotilla %s --help for the flags)", err, e.cmd.path)
	}
	if want := strings.Fields(e.cmd.args); len(pos) != len(want) {
		return nil, usageErr("%s (flotilla %s --help for more)", e.cmd.line(), e.cmd.path)
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

var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}
