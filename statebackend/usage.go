package statebackend

// DiskUsage returns the bytes the state's Pebble DB takes on disk (tables,
// WAL and manifests). It may be called from any goroutine while the backend
// is open.
func (b *Backend) DiskUsage() uint64 { return b.db.Metrics().DiskSpaceUsage() }
