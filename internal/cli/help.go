package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Help is what a command's --help prints: its command line, positional
// arguments included, what it does, then its own flags and the settings
// every flotilla process shares.
type Help struct {
	// Line is the command line, e.g. "flotilla state get JOB KEY [flags]".
	Line string
	// About says what the command does, in one or more lines.
	About string
}

// Print writes the help of the command whose flags are fs to w.
func (h Help) Print(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", h.Line, strings.TrimSpace(h.About))
	own, shared := splitFlags(fs)
	if hasFlags(own) {
		fmt.Fprintln(w, "\nFlags:")
		own.SetOutput(w)
		own.PrintDefaults()
	}
	if hasFlags(shared) {
		fmt.Fprintln(w, "\nNATS, prefix, store and logging (settings every flotilla process shares):")
		shared.SetOutput(w)
		shared.PrintDefaults()
	}
}

// Usage sets fs's usage message to h, written to fs's output.
func (h Help) Usage(fs *flag.FlagSet) { fs.Usage = func() { h.Print(fs.Output(), fs) } }

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// splitFlags returns fs's flags in two sets: the command's own and those
// Common.Register adds.
func splitFlags(fs *flag.FlagSet) (own, shared *flag.FlagSet) {
	own, shared = flag.NewFlagSet("", flag.ContinueOnError), flag.NewFlagSet("", flag.ContinueOnError)
	common := commonFlags()
	fs.VisitAll(func(f *flag.Flag) {
		to := own
		if common[f.Name] {
			to = shared
		}
		to.Var(f.Value, f.Name, f.Usage)
		to.Lookup(f.Name).DefValue = f.DefValue
	})
	return own, shared
}

// commonFlags is the set of the names of the flags Common.Register adds.
var commonFlags = sync.OnceValue(func() map[string]bool {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	new(Common).Register(fs, true)
	names := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { names[f.Name] = true })
	return names
})
