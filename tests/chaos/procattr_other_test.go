//go:build unix && !linux

package chaos

import "os/exec"

// setDeathSignal does nothing outside Linux: a process outlives a test
// binary that is killed before its cleanups run.
func setDeathSignal(cmd *exec.Cmd) {}
