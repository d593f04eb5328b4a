package coordinator

import (
	"testing"

	"github.com/flotilla-io/flotilla/subjects"
)

// TestCheckRestoredOperator: state of another operator is refused unless
// allowed; records of older builds, which name no operator, pass.
func TestCheckRestoredOperator(t *testing.T) {
	count := &subjects.OperatorInfo{Type: "count", StateVersion: 1}
	rec := func(op *subjects.OperatorInfo) subjects.CheckpointRecord {
		return subjects.CheckpointRecord{Job: "clicks", Location: "savepoints/clicks/sp-3",
			Tasks: []subjects.TaskCheckpoint{{Task: 0, Operator: op}, {Task: 1, Operator: op}}}
	}
	spec := func(op string) subjects.JobSpec {
		return subjects.JobSpec{Name: "j", Operator: subjects.OperatorSpec{Type: op}}
	}
	for _, c := range []struct {
		name  string
		from  subjects.CheckpointRecord
		spec  subjects.JobSpec
		allow bool
		want  subjects.Code
	}{
		{"same operator", rec(count), spec("count"), false, subjects.CodeOK},
		{"another operator", rec(count), spec("sum"), false, subjects.CodeOperatorMismatch},
		{"another operator, allowed", rec(count), spec("sum"), true, subjects.CodeOK},
		{"record of an older build", rec(nil), spec("sum"), false, subjects.CodeOK},
	} {
		err := checkRestoredOperator(c.from, c.spec, c.allow)
		if got := subjects.CodeOf(err); (err == nil) != (c.want == subjects.CodeOK) || (err != nil && got != c.want) {
			t.Errorf("%s: %v, want %s", c.name, err, c.want)
		}
	}
}
