package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/flotilla-io/flotilla/coordinator"
)

// runVersion is `flotilla version`: the build, from the information the Go
// toolchain records in the binary.
func runVersion(_ context.Context, e *env, args []string) error {
	if _, err := e.parse(e.flags(), args); err != nil {
		return err
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{GoVersion: runtime.Version()}
	}
	printVersion(e.stdout, bi)
	return nil
}

// printVersion writes the module's path and version, the commit it was
// built from (with its time, and whether the tree had changes) when the
// toolchain recorded it, the Go version and platform, and the version of
// the user API a coordinator of this build serves.
func printVersion(w io.Writer, bi *debug.BuildInfo) {
	version := bi.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	fmt.Fprintf(w, "flotilla %s\n", version)
	if bi.Main.Path != "" {
		fmt.Fprintf(w, "module   %s\n", bi.Main.Path)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		fmt.Fprintf(w, "commit   %s", rev)
		if t := settings["vcs.time"]; t != "" {
			fmt.Fprintf(w, " (%s)", t)
		}
		if settings["vcs.modified"] == "true" {
			fmt.Fprint(w, " with uncommitted changes")
		}
		fmt.Fprintln(w)
	}
	goos, goarch := settings["GOOS"], settings["GOARCH"]
	if goos == "" {
		goos, goarch = runtime.GOOS, runtime.GOARCH
	}
	fmt.Fprintf(w, "go       %s %s/%s\n", bi.GoVersion, goos, goarch)
	fmt.Fprintf(w, "api      %s (the coordinator's %q micro service)\n", coordinator.Version, "flotilla")
}
