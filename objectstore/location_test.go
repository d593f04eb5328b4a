package objectstore

import (
	"errors"
	"strings"
	"testing"
)

func TestLocations(t *testing.T) {
	join := []struct{ base, key, want string }{
		{"file:///data/store", "savepoints/j/sp-1", "file:///data/store/savepoints/j/sp-1"},
		{"file:///data/store/", "a/b", "file:///data/store/a/b"},
		{"s3://bucket/ckpt?endpoint=minio:9000&secure=false", "savepoints/j/sp-2", "s3://bucket/ckpt/savepoints/j/sp-2?endpoint=minio:9000&secure=false"},
		{"s3://bucket?endpoint=minio:9000", "j/chk-3", "s3://bucket/j/chk-3?endpoint=minio:9000"},
	}
	for _, c := range join {
		got := JoinLocation(c.base, c.key)
		if got != c.want {
			t.Errorf("JoinLocation(%q, %q) = %q, want %q", c.base, c.key, got, c.want)
		}
		key, err := KeyOf(c.base, got)
		if err != nil || key != c.key {
			t.Errorf("KeyOf(%q, %q) = %q, %v; want %q", c.base, got, key, err, c.key)
		}
	}
	base := "s3://bucket/ckpt?endpoint=minio:9000&secure=false"
	for loc, want := range map[string]string{
		"savepoints/j/sp-2":                                   "savepoints/j/sp-2",
		"/savepoints/j/sp-2/":                                 "savepoints/j/sp-2",
		"s3://bucket/ckpt/savepoints/j/sp-2":                  "savepoints/j/sp-2",
		"s3://bucket/ckpt/x?secure=false&endpoint=minio:9000": "x",
	} {
		if got, err := KeyOf(base, loc); err != nil || got != want {
			t.Errorf("KeyOf(%q) = %q, %v; want %q", loc, got, err, want)
		}
	}
	for _, bad := range []string{
		"s3://other/ckpt/x", "s3://bucket/other/x", "file:///etc/passwd", "savepoints/../../etc",
		"s3://bucket/ckpt/x?endpoint=elsewhere:9000", "s3://bucket/ckpt/", "",
	} {
		if _, err := KeyOf(base, bad); !errors.Is(err, ErrInvalidLocation) {
			t.Errorf("KeyOf(%q): %v, want ErrInvalidLocation", bad, err)
		}
	}
}

func TestKeyOfNeverEchoesSecrets(t *testing.T) {
	base := "s3://bucket/ckpt?endpoint=minio:9000"
	for _, loc := range []string{
		"s3://bucket/other/x?endpoint=minio:9000&secret_key=hunter2",
		"s3://user:hunter2@bucket/ckpt/x",
		"s3://bucket/ckpt/../x?access_key=a&secret_key=hunter2",
		"s3://bucket/%zz?secret_key=hunter2",
	} {
		_, err := KeyOf(base, loc)
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("KeyOf(%q): %v", loc, err)
		}
	}
}
