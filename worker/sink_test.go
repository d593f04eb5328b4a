package worker

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestPubRetryable: the stream's answers that mean "ask again" are told
// from those that mean "never" (a limit, a wrong subject).
func TestPubRetryable(t *testing.T) {
	for _, tc := range []struct {
		api  jetstream.APIError
		want bool
	}{
		{jetstream.APIError{Code: 409, ErrorCode: 10158, Description: "duplicate message id is in process"}, true},
		{jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{jetstream.APIError{Code: 400, ErrorCode: 10077, Description: "maximum messages exceeded"}, false},
		{jetstream.APIError{Code: 400, ErrorCode: 10054, Description: "maximum message size exceeded"}, false},
	} {
		if got := pubRetryable(&tc.api); got != tc.want {
			t.Errorf("%v: retryable %v, want %v", tc.api.Error(), got, tc.want)
		}
	}
}
