package checkpoint

import (
	"fmt"
	"strings"
)

// MaxMissing bounds the objects a MissingObjectsError (and so an abort)
// names; tasks forget the rest at a later abort.
const MaxMissing = 256

// MissingObjectsError is the outcome of a metadata write that found objects
// named in the acks absent from the store, or of another size than acked.
// MetadataWritten aborts the checkpoint with CodeMissingObject and names
// them in the abort, so that tasks stop referencing them and upload their
// files again.
type MissingObjectsError struct {
	// Keys are the missing objects, at most MaxMissing.
	Keys []string
	// Details describe the first few ("k: absent", "k: 10 bytes, acked 12").
	Details []string
	// Total is the number of missing objects, Keys included.
	Total int
}

func (e *MissingObjectsError) Error() string {
	return fmt.Sprintf("%d object(s) named in the acks are not in the store: %s", e.Total, strings.Join(e.Details, "; "))
}
