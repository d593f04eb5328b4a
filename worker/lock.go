package worker

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// LockFile is the name, in DataDir, of the file a running worker holds
// locked.
const LockFile = "LOCK"

// lockDataDir locks dir for this worker until the returned closer is
// closed. The lock (Pebble's file lock: fcntl on Unix, LockFileEx on
// Windows) is released by the kernel when the process dies, so a crashed
// worker never leaves its directory locked; within one process a second
// lock of the same directory is refused too.
func lockDataDir(dir string) (io.Closer, error) {
	p := filepath.Join(dir, LockFile)
	l, err := vfs.Default.Lock(p)
	if err != nil {
		return nil, fmt.Errorf("worker: data directory %s is in use by another worker (cannot lock %s: %v); give each worker its own -data directory", dir, p, err)
	}
	return l, nil
}
