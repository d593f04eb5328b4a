package objectstore

import (
	"testing"
)

// TestParseS3 checks how s3:// locations map to S3Config, and that the
// location an S3 store reports parses back to the same config. (Open's
// failures are tested through Open, in store_test.go.)
func TestParseS3(t *testing.T) {
	for _, tc := range []struct {
		location string
		want     S3Config
		canon    string // the store's Location()
	}{
		{
			"s3://bucket",
			S3Config{Endpoint: DefaultS3Endpoint, Bucket: "bucket", Secure: true},
			"s3://bucket?endpoint=s3.amazonaws.com&secure=true",
		},
		{
			"s3://bucket/",
			S3Config{Endpoint: DefaultS3Endpoint, Bucket: "bucket", Secure: true},
			"s3://bucket?endpoint=s3.amazonaws.com&secure=true",
		},
		{
			"s3://bucket/checkpoints/prod/?region=eu-west-1",
			S3Config{Endpoint: DefaultS3Endpoint, Bucket: "bucket", Prefix: "checkpoints/prod", Region: "eu-west-1", Secure: true},
			"s3://bucket/checkpoints/prod?endpoint=s3.amazonaws.com&region=eu-west-1&secure=true",
		},
		{
			"s3://flotilla/ckpt?endpoint=127.0.0.1:9000&secure=false&region=us-east-1&path_style=true",
			S3Config{Endpoint: "127.0.0.1:9000", Bucket: "flotilla", Prefix: "ckpt", Region: "us-east-1", BucketLookup: LookupPath},
			"s3://flotilla/ckpt?endpoint=127.0.0.1:9000&path_style=true&region=us-east-1&secure=false",
		},
		{
			"s3://my.bucket?endpoint=minio.internal&path_style=false&secure=1",
			S3Config{Endpoint: "minio.internal", Bucket: "my.bucket", Secure: true, BucketLookup: LookupDNS},
			"s3://my.bucket?endpoint=minio.internal&path_style=false&secure=true",
		},
		{
			"s3://bucket/a%20b/c?endpoint=%5B::1%5D:9000",
			S3Config{Endpoint: "[::1]:9000", Bucket: "bucket", Prefix: "a b/c", Secure: true},
			"s3://bucket/a%20b/c?endpoint=%5B::1%5D:9000&secure=true",
		},
	} {
		u, err := parseLocation(tc.location)
		if err != nil {
			t.Errorf("parseLocation(%q): %v", tc.location, err)
			continue
		}
		got, err := parseS3(u)
		if err != nil {
			t.Errorf("parseS3(%q): %v", tc.location, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseS3(%q) = %+v, want %+v", tc.location, got, tc.want)
		}
		if canon := s3Location(got); canon != tc.canon {
			t.Errorf("location of %q = %q, want %q", tc.location, canon, tc.canon)
		}
		u2, err := parseLocation(tc.canon)
		if err != nil {
			t.Errorf("parseLocation(%q): %v", tc.canon, err)
			continue
		}
		if again, err := parseS3(u2); err != nil || again != got {
			t.Errorf("parseS3(%q) = %+v, %v; want %+v", tc.canon, again, err, got)
		}
	}
}

func TestOptionsString(t *testing.T) {
	o := Options{AccessKey: "AKID", SecretKey: "s3cr3t", SessionToken: "t0k3n"}
	want := `objectstore.Options{AccessKey: "AKID", SecretKey: REDACTED, SessionToken: REDACTED}`
	if o.String() != want || o.GoString() != want {
		t.Errorf("String() = %s, GoString() = %s, want %s", o.String(), o.GoString(), want)
	}
}
