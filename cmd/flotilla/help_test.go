package main

import (
	"bytes"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/flotilla-io/flotilla/coordinator"
)

// runCLI runs the flotilla command line with args and returns what it
// printed and its exit code.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// Every command and every group of commands answers --help, -h and
// `flotilla help ...` on stdout with exit 0, and a command's help shows
// its positional arguments.
func TestHelpOfEveryCommand(t *testing.T) {
	for _, c := range commands {
		if c.main != nil {
			continue // worker: its own flags, tested below
		}
		words := strings.Fields(c.path)
		want := "Usage: " + c.line() + "\n"
		for _, args := range [][]string{
			append(append([]string{}, words...), "--help"),
			append(append([]string{}, words...), "-h"),
			append([]string{"help"}, words...),
		} {
			out, errOut, code := runCLI(t, args...)
			if code != 0 || !strings.HasPrefix(out, want) || errOut != "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 0 and %q", args, code, out, errOut, want)
			}
		}
		if c.args != "" && !strings.Contains(c.line(), c.args) {
			t.Errorf("%s: usage line %q lacks %q", c.path, c.line(), c.args)
		}
	}
	// worker.Main writes to the process's stderr.
	stderr, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = stderr
	_, _, wcode := runCLI(t, "worker", "--help")
	os.Stderr = saved
	if out, _ := os.ReadFile(stderr.Name()); wcode != 0 || !strings.HasPrefix(string(out), "Usage: flotilla worker [flags]\n") {
		t.Errorf("worker --help: exit %d, %q", wcode, out)
	}
	for _, group := range []string{"job", "state"} {
		for _, args := range [][]string{{group, "--help"}, {group, "-h"}, {group, "help"}, {"help", group}} {
			out, errOut, code := runCLI(t, args...)
			if code != 0 || !strings.Contains(out, "flotilla "+group+" ") || errOut != "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
			}
		}
	}
	out, _, code := runCLI(t, "job")
	if code != 2 || !strings.Contains(out, "flotilla job submit FILE") || !strings.Contains(out, "flotilla job rescale JOB PARALLELISM") {
		t.Errorf("job: exit %d, %q", code, out)
	}
	_, errOut, code := runCLI(t, "job", "frob")
	if code != 2 || !strings.Contains(errOut, `unknown job command "frob"`) || !strings.Contains(errOut, "flotilla job status JOB") {
		t.Errorf("job frob: exit %d, %q", code, errOut)
	}
	_, errOut, code = runCLI(t, "state", "get", "clicks")
	if code != 2 || !strings.Contains(errOut, "flotilla state get JOB KEY") {
		t.Errorf("state get with one argument: exit %d, %q", code, errOut)
	}
	_, errOut, code = runCLI(t, "job", "status", "--bogus", "x")
	if code != 2 || !strings.Contains(errOut, "flag provided but not defined: -bogus (flotilla job status --help") {
		t.Errorf("bad flag: exit %d, %q", code, errOut)
	}
	// The help of a client command lists the shared connection flags
	// apart, natscli's among them.
	out, _, _ = runCLI(t, "state", "get", "--help")
	for _, want := range []string{"\nFlags:\n  -json", "settings every flotilla process shares", "-context name", "-s string", "-server string", "-no-context"} {
		if !strings.Contains(out, want) {
			t.Errorf("state get --help lacks %q:\n%s", want, out)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runCLI(t, "version")
	if code != 0 || !strings.Contains(out, "module   github.com/flotilla-io/flotilla\n") || !strings.Contains(out, "go       go1.") {
		t.Errorf("version: exit %d\n%s", code, out)
	}
	var b bytes.Buffer
	printVersion(&b, &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/flotilla-io/flotilla", Version: "v0.2.0"},
		Settings: []debug.BuildSetting{{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "arm64"}, {Key: "vcs.revision", Value: "4515d08"},
			{Key: "vcs.time", Value: "2026-11-29T23:40:29Z"}, {Key: "vcs.modified", Value: "true"}}})
	want := "flotilla v0.2.0\nmodule   github.com/flotilla-io/flotilla\ncommit   4515d08 (2026-11-29T23:40:29Z) with uncommitted changes\n" +
		"go       go1.26.8 linux/arm64\napi      " + coordinator.Version + " (the coordinator's \"flotilla\" micro service)\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
