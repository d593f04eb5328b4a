//go:build !unix

package statebackend

import "errors"

// FreeBytes is not implemented on this platform: backends rely on Pebble's
// own write errors there.
func FreeBytes(dir string) (uint64, error) {
	return 0, errors.New("statebackend: free space unknown on this platform")
}
