package cli

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla-io/flotilla/objectstore"
)

func TestOpenStoreRetriesUntilTheStoreAnswers(t *testing.T) {
	calls := 0
	s, err := openStoreRetrying(t.Context(), nil, func(ctx context.Context) (objectstore.Store, error) {
		if calls++; calls < 2 {
			return nil, errors.New("dial tcp minio:9000: connection refused")
		}
		return objectstore.NewMem(), nil
	})
	if err != nil || s == nil || calls != 2 {
		t.Fatalf("got %v, %v after %d calls; want the store after 2", s, err, calls)
	}
}

func TestOpenStoreFailsAtOnceOnABadLocation(t *testing.T) {
	c := Common{Store: "s3://Not_A_Bucket"}
	start := time.Now()
	_, err := c.OpenStore(t.Context(), nil)
	if !errors.Is(err, objectstore.ErrInvalidLocation) {
		t.Fatalf("err = %v, want ErrInvalidLocation", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v: an invalid location must not be retried", took)
	}
	if _, err := (&Common{}).OpenStore(t.Context(), nil); err == nil {
		t.Error("no location: want an error")
	}
}

func TestOpenStoreGivesUpWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 800*time.Millisecond)
	defer cancel()
	calls := 0
	_, err := openStoreRetrying(ctx, nil, func(ctx context.Context) (objectstore.Store, error) {
		calls++
		return nil, fmt.Errorf("attempt %d: connection refused", calls)
	})
	if !errors.Is(err, context.DeadlineExceeded) || calls < 2 {
		t.Fatalf("err = %v after %d calls; want the deadline after a few attempts", err, calls)
	}
}
