//go:build linux

package chaos

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when the test binary dies, so that
// an interrupted run leaves no process behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
