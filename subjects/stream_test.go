package subjects

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/flotilla-io/flotilla/statebackend/keygroup"
)

// TestInputMappingMatchesKeyGroup runs the mapping through nats-server's own
// subject transform and checks that every event lands in the partition
// stream of its key group and decodes back to its key and group.
func TestInputMappingMatchesKeyGroup(t *testing.T) {
	for _, tc := range []struct {
		subject string
		token   int
		m       int
		parts   int
		publish func(key string) string
	}{
		{"clicks.*", 2, 128, 32, func(k string) string { return "clicks." + k }},
		{"orders.*.*.created", 3, 7, 3, func(k string) string { return "orders.eu." + k + ".created" }},
		{"*.events.*", 1, 32768, 32, func(k string) string { return k + ".events.x" }},
	} {
		spec := JobSpec{Name: "j", MaxParallelism: tc.m, Source: SourceSpec{Stream: "S", Subjects: []string{tc.subject},
			Key: KeySpec{SubjectToken: tc.token}, Layout: LayoutPartitioned, Partitions: tc.parts}}
		src, dest, err := InputMapping(&spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.subject, err)
		}
		st, err := server.NewSubjectTransform(src, dest)
		if err != nil {
			t.Fatalf("%s: server rejects mapping %s -> %s: %v", tc.subject, src, dest, err)
		}
		cfgs := InputStreamConfigs(&spec)
		if len(cfgs) != tc.parts {
			t.Fatalf("%d partition streams, want %d", len(cfgs), tc.parts)
		}
		for i := range 200 {
			key := fmt.Sprintf("user-%d", i)
			orig := tc.publish(key)
			stored := st.TransformSubject(orig)
			g, k, back, err := ParseInputSubject(stored, tc.token, tc.m)
			if err != nil {
				t.Fatalf("%s: %v", stored, err)
			}
			if back != orig || k != key {
				t.Fatalf("stored %q: original %q key %q, want %q %q", stored, back, k, orig, key)
			}
			if want := keygroup.Of([]byte(key), tc.m); g != want {
				t.Fatalf("stored %q: group %d, keygroup.Of says %d", stored, g, want)
			}
			// Exactly one partition stream captures it: the one whose
			// groups hold g.
			var in []string
			for _, c := range cfgs {
				for _, f := range c.Subjects {
					if server.SubjectsCollide(f, stored) {
						in = append(in, c.Name)
					}
				}
			}
			want := PartitionStream(&spec, keygroup.PartitionOf(g, tc.parts, tc.m))
			if len(in) != 1 || in[0] != want {
				t.Fatalf("stored %q (group %d) is captured by %v, want [%s]", stored, g, in, want)
			}
			// A raw subject (no mapping) decodes to the same key and group.
			if g2, k2, _, err := ParseInputSubject(orig, tc.token, tc.m); err != nil || g2 != g || k2 != key {
				t.Fatalf("raw %q: %d %q %v", orig, g2, k2, err)
			}
		}
	}
}

func TestInputStreamsOfTasks(t *testing.T) {
	spec := JobSpec{Name: "j", MaxParallelism: 128, Source: SourceSpec{Stream: "CLICKS", Subjects: []string{"clicks.*"},
		Key: KeySpec{SubjectToken: 2}, Layout: LayoutPartitioned, Partitions: 32}}
	for _, p := range []int{1, 3, 4, 32, 33, 64, 128} {
		reads := 0
		for i := 0; i < p; i++ {
			for _, s := range InputStreams(&spec, TaskRange(&spec, i, p)) {
				reads += s.Groups.Len()
			}
		}
		amp := float64(reads) / 128
		if p <= 32 && amp != 1 {
			t.Errorf("p=%d: read amplification %.2f, want 1", p, amp)
		}
		if bound := float64((p+31)/32 + 1); amp > bound {
			t.Errorf("p=%d: read amplification %.2f above the bound %.0f", p, amp, bound)
		}
	}
	if got := PartitionStream(&spec, 7); got != "CLICKS-p07" {
		t.Errorf("PartitionStream = %q", got)
	}
	spec.Source.Layout = LayoutStream
	if got := InputStreams(&spec, keygroup.Range{Start: 3, End: 4}); len(got) != 1 || got[0].Name != "CLICKS" || got[0].Groups.Len() != 128 {
		t.Errorf("unpartitioned input streams = %+v", got)
	}
	if c := InputStreamConfigs(&spec); len(c) != 1 || len(c[0].Subjects) != 2 || c[0].Subjects[1] != "$FK.*.clicks.*" {
		t.Errorf("unpartitioned stream config = %+v", c)
	}
}

func TestInputMappingRejects(t *testing.T) {
	for _, spec := range []JobSpec{
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.*", "b.*"}, Key: KeySpec{SubjectToken: 2}}},
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.b"}, Key: KeySpec{SubjectToken: 2}}},
		{MaxParallelism: 8, Source: SourceSpec{Subjects: []string{"a.*"}, Key: KeySpec{SubjectToken: 3}}},
		{MaxParallelism: 0, Source: SourceSpec{Subjects: []string{"a.*"}, Key: KeySpec{SubjectToken: 2}}},
	} {
		if _, _, err := InputMapping(&spec); CodeOf(err) != CodeInvalidJobSpec {
			t.Errorf("%+v: got %v, want %s", spec.Source, err, CodeInvalidJobSpec)
		}
	}
}

func TestInputSubjects(t *testing.T) {
	for _, bad := range []string{"$FK.x.clicks.a", "$FK.3", "$FK.3.", "$FK.-1.clicks.a", "$FK.99999.clicks.a", "$FK.0.clicks.u1", "clicks"} {
		if _, _, _, err := ParseInputSubject(bad, 2, 8); CodeOf(err) != CodeBadMessage {
			t.Errorf("ParseInputSubject(%q) = %v, want %s", bad, err, CodeBadMessage)
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
