//go:build !linux

package testutil

import "os/exec"

// setDeathSignal does nothing outside Linux: a server outlives a test binary
// that is killed before its cleanups run.
func setDeathSignal(cmd *exec.Cmd) {}
