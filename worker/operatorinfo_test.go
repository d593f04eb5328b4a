package worker

import (
	"testing"

	"github.com/flotilla-io/flotilla/subjects"
)

type versionedOp struct{ countOp }

func (versionedOp) StateVersion() int { return 3 }

// TestOperatorInfo: the state version an ack records is the operator's own
// when it says one (StateVersioner), else 1.
func TestOperatorInfo(t *testing.T) {
	for _, c := range []struct {
		op   Operator
		want subjects.OperatorInfo
	}{
		{countOp{}, subjects.OperatorInfo{Type: "count", StateVersion: 1}},
		{versionedOp{}, subjects.OperatorInfo{Type: "count", StateVersion: 3}},
	} {
		if got := operatorInfo("count", c.op); *got != c.want {
			t.Errorf("operatorInfo(%T) = %+v, want %+v", c.op, *got, c.want)
		}
	}
}
