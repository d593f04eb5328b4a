package subjects

import (
	"fmt"
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

func TestSourceTransformMatchesKeyGroup(t *testing.T) {
	for _, tc := range []struct {
		subject string
		token   int
		m       int
		publish func(key string) string
	}{
		{"clicks.*", 2, 128, func(k string) string { return "clicks." + k }},
		{"orders.*.*.created", 3, 7, func(k string) string { return "orders.eu." + k + ".created" }},
		{"*.events.*", 1, 32768, func(k string) string { return k + ".events.x" }},
	} {
		spec := JobSpec{Name: "j", MaxParallelism: tc.m, Source: SourceSpec{Stream: "S", Subjects: []string{tc.subject}, Key: KeySpec{SubjectToken: tc.token}}}
		tr, err := SourceTransform(&spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.subject, err)
		}
		st, err := server.NewSubjectTransform(tr.Source, tr.Destination)
		if err != nil {
			t.Fatalf("%s: server rejects transform %s -> %s: %v", tc.subject, tr.Source, tr.Destination, err)
		}
		for i := range 200 {
			key := fmt.Sprintf("user-%d", i)
			orig := tc.publish(key)
			stored := st.TransformSubject(orig)
			g, back, err := ParseKeyedSubject(stored)
			if err != nil {
				t.Fatalf("%s: %v", stored, err)
			}
			if back != orig {
				t.Fatalf("stored %q: original %q, want %q", stored, back, orig)
			}
			if want := keygroup.Of([]byte(key), tc.m); g != want {
				t.Fatalf("stored %q: group %d, keygroup.Of says %d", stored, g, want)
			}
			k, err := KeyToken(back, tc.token)
			if err != nil || k != key {
				t.Fatalf("KeyToken(%q, %d) = %q, %v; want %q", back, tc.token, k, err, key)
			}
		}
	}
}

func TestSourceTransformRejects(t *testing.T) {
	for _, spec := range []JobSpec{
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.*", "b.*"}, Key: KeySpec{SubjectToken: 2}}},
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.b"}, Key: KeySpec{SubjectToken: 2}}},
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.*"}, Key: KeySpec{SubjectToken: 3}}},
		{MaxParallelism: 0, Source: SourceSpec{Subjects: []string{"a.*"}, Key: KeySpec{SubjectToken: 2}}},
	} {
		if _, err := SourceTransform(&spec); CodeOf(err) != CodeInvalidJobSpec {
			t.Errorf("%+v: got %v, want %s", spec.Source, err, CodeInvalidJobSpec)
		}
	}
}

func TestKeyedSubjects(t *testing.T) {
	if got := KeyGroupFilters(keygroup.Range{Start: 3, End: 5}, 8); !slices.Equal(got, []string{"$FK.3.>", "$FK.4.>", "$FK.5.>"}) {
		t.Errorf("filters = %q", got)
	}
	if got := KeyGroupFilters(keygroup.Range{Start: 0, End: 7}, 8); got != nil {
		t.Errorf("filters of every group = %q", got)
	}
	for _, bad := range []string{"clicks.u1", "$FK.x.clicks", "$FK.3", "$FK.3.", "$FK.-1.a", "$FK.99999.a"} {
		if _, _, err := ParseKeyedSubject(bad); CodeOf(err) != CodeBadMessage {
			t.Errorf("ParseKeyedSubject(%q) = %v, want %s", bad, err, CodeBadMessage)
		}
	}
	for _, tc := range []struct {
		subject string
		pos     int
	}{{"a.b", 3}, {"a..c", 2}, {"a", 0}} {
		if _, err := KeyToken(tc.subject, tc.pos); err == nil {
			t.Errorf("KeyToken(%q, %d) succeeded", tc.subject, tc.pos)
		}
	}
	if got := OutputMsgID("clicks", 7, 42, 0); got != "clicks.7.42" {
		t.Errorf("OutputMsgID = %q", got)
	}
	if got := OutputMsgID("clicks", 7, 42, 2); got != "clicks.7.42.2" {
		t.Errorf("OutputMsgID = %q", got)
	}
}
