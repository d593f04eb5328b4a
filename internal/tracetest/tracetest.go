// Package tracetest holds the argument helpers of flotilla's datadriven
// trace tests (testdata scenarios of the coordinator's state machines).
package tracetest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// Arg returns the values of argument key joined by commas, "true" for a
// key given without values, and "" when it is absent.
func Arg(d *datadriven.TestData, key string) string {
	for _, a := range d.CmdArgs {
		if a.Key == key {
			if len(a.Vals) == 0 {
				return "true"
			}
			return strings.Join(a.Vals, ",")
		}
	}
	return ""
}

// Int returns argument key as a number (0 when absent).
func Int(d *datadriven.TestData, key string) int {
	var n int
	fmt.Sscan(Arg(d, key), &n)
	return n
}

// First returns the first argument's key: the command's object, as in
// "ack 3" or "register w1".
func First(d *datadriven.TestData) string {
	if len(d.CmdArgs) == 0 {
		return ""
	}
	return d.CmdArgs[0].Key
}

// Duration parses the first argument as a duration, as in "tick 5s".
func Duration(tb testing.TB, d *datadriven.TestData) time.Duration {
	dur, err := time.ParseDuration(First(d))
	if err != nil {
		d.Fatalf(tb, "%v", err)
	}
	return dur
}

// Attempt prints a task attempt number as e<epoch>.<n> (attempts are
// epoch<<20 | n).
func Attempt(a uint64) string { return fmt.Sprintf("e%d.%d", a>>20, a&(1<<20-1)) }

// ParseAttempt reads an attempt printed by Attempt.
func ParseAttempt(s string) uint64 {
	var e, n uint64
	fmt.Sscanf(s, "e%d.%d", &e, &n)
	return e<<20 | n
}
