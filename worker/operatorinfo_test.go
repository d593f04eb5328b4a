package worker

import (
	"testing"

	"github.com/flotilla-io/flotilla/statebackend"
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

// TestCheckRestoredOperator: a deployment restoring state of another
// operator type or state version is refused with operator_mismatch unless
// the change is allowed; records of older builds (no operator) and fresh
// starts pass.
func TestCheckRestoredOperator(t *testing.T) {
	h := []statebackend.Handle{{}}
	deploy := func(op *subjects.OperatorInfo, restore []statebackend.Handle, allow bool) *subjects.DeployTask {
		return &subjects.DeployTask{TaskRef: subjects.TaskRef{Job: "j", Task: 0, Attempt: 1}, RestoredFrom: 7,
			Spec: subjects.JobSpec{Operator: subjects.OperatorSpec{Type: "count"}}, Restore: restore, RestoredOperator: op, AllowOperatorChange: allow}
	}
	v1 := &subjects.OperatorInfo{Type: "count", StateVersion: 1}
	v3 := &subjects.OperatorInfo{Type: "count", StateVersion: 3}
	sum := &subjects.OperatorInfo{Type: "sum", StateVersion: 1}
	for _, c := range []struct {
		name string
		d    *subjects.DeployTask
		op   Operator
		want subjects.Code
	}{
		{"same type and version", deploy(v1, h, false), countOp{}, subjects.CodeOK},
		{"state version 1 into version 3", deploy(v1, h, false), versionedOp{}, subjects.CodeOperatorMismatch},
		{"state version 3 into version 1", deploy(v3, h, false), countOp{}, subjects.CodeOperatorMismatch},
		{"another version, allowed", deploy(v1, h, true), versionedOp{}, subjects.CodeOK},
		{"another type", deploy(sum, h, false), countOp{}, subjects.CodeOperatorMismatch},
		{"record of an older build", deploy(nil, h, false), versionedOp{}, subjects.CodeOK},
		{"fresh start", deploy(v1, nil, false), versionedOp{}, subjects.CodeOK},
	} {
		err := checkRestoredOperator(c.d, c.op)
		if got := subjects.CodeOf(err); (err == nil) != (c.want == subjects.CodeOK) || (err != nil && got != c.want) {
			t.Errorf("%s: %v, want %s", c.name, err, c.want)
		}
	}
}
