package main

import (
	"flag"
	"slices"
	"testing"
)

func TestFlagsAnywhere(t *testing.T) {
	for _, args := range [][]string{
		{"clicks", "--wait", "--format", "native"},
		{"--wait", "clicks", "--format=native"},
		{"--format", "native", "--wait", "clicks"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		wait := fs.Bool("wait", false, "")
		format := fs.String("format", "", "")
		pos, err := parseInterspersed(fs, args)
		if err != nil || !slices.Equal(pos, []string{"clicks"}) || !*wait || *format != "native" {
			t.Errorf("%q: pos %q wait %v format %q err %v", args, pos, *wait, *format, err)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Bool("wait", false, "")
	if pos, err := parseInterspersed(fs, []string{"a", "--", "--wait"}); err != nil || !slices.Equal(pos, []string{"a", "--wait"}) {
		t.Errorf("after --: %q %v", pos, err)
	}
}
