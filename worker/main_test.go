package worker

import (
	"io"
	"testing"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("FLOTILLA_STORE", "")
	if _, err := ParseFlags([]string{"-slots", "2"}, io.Discard); err == nil {
		t.Error("no store accepted")
	}
	f, err := ParseFlags([]string{"-store", "mem://", "-slots", "4", "-name", "w1", "-prefix", "fleet.a"}, io.Discard)
	if err != nil || f.Slots != 4 || f.Name != "w1" || f.Store != "mem://" || f.Prefix != "fleet.a" {
		t.Errorf("flags %+v, %v", f, err)
	}
	t.Setenv("FLOTILLA_STORE", "mem://")
	if f, err := ParseFlags(nil, io.Discard); err != nil || f.Store != "mem://" {
		t.Errorf("store from the environment: %+v, %v", f, err)
	}
	if _, err := ParseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("extra argument accepted")
	}
}
