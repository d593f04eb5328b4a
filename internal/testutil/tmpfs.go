package testutil

import (
	"fmt"
	"os/exec"
	"testing"
)

// MountTmpfs mounts a tmpfs of size (mount's syntax: "32m") on a fresh
// temp dir, returns the dir, and unmounts it when the test ends (cleanups
// registered later, such as closing what lives there, run first). Mounting
// needs root: without it the test is skipped, or fails when CI=true.
func MountTmpfs(tb testing.TB, size string) string {
	tb.Helper()
	dir := tb.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		NeedServer(tb, "a tmpfs mount", fmt.Sprintf("run the test as root (mount -t tmpfs: %v: %s)", err, out))
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}
