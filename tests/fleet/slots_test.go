package fleet

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/checkpoint"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// TestFailedJobGivesSlotsBack: a job that fails (here: restored from a
// savepoint whose files are gone) gives its slots back on the workers too,
// so that a resubmit of the job gets them and runs.
func TestFailedJobGivesSlotsBack(t *testing.T) {
	f := newFleet(t)
	f.startCoordinator()
	f.startWorker("w1", 2)
	f.waitWorkers(1)
	ctx := context.Background()
	spec := countSpec("clicks", 2)
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	f.publish(200, 20, 41, truth)
	f.checkState("clicks", truth, 30*time.Second)
	sp, err := f.api.TriggerSavepoint(ctx, subjects.TriggerSavepoint{Job: "clicks"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.Cancel(ctx, "clicks"); err != nil {
		t.Fatal(err)
	}

	// Delete the savepoint's state files, keep its metadata: a restore of
	// it is accepted, and then every task fails to read its state.
	key, err := objectstore.KeyOf(f.store.Location(), sp.Location)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := f.store.List(ctx, key+"/")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, "/"+checkpoint.MetadataName) {
			if err := f.store.Delete(ctx, o.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.api.Submit(ctx, spec, 0, sp.Location); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := f.api.Status(ctx, "clicks")
		if err == nil && info.State != subjects.JobFailed {
			err = fmt.Errorf("job is %s", info.State)
		}
		return err
	})

	// The resubmitted job gets both slots of the only worker and counts
	// from the start of the stream.
	if _, err := f.api.Submit(ctx, spec, 0, ""); err != nil {
		t.Fatal(err)
	}
	f.checkState("clicks", truth, 30*time.Second)
}
