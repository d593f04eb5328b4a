package testutil

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when the test binary dies, so that
// a crashed or interrupted test run leaves no server behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
