package objectstore

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Options carries what a location string must not: credentials. The zero
// value is valid and means "take credentials from the environment".
//
// Options' String and GoString methods never print the secret key or the
// session token, so an Options value may be logged.
type Options struct {
	// AccessKey, SecretKey and SessionToken are S3 credentials. When
	// AccessKey or SecretKey is set they are used and the environment is
	// not consulted; otherwise the S3 store looks, in order, at
	// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
	// MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (and MINIO_ACCESS_KEY /
	// MINIO_SECRET_KEY), the AWS shared credentials and config files, and
	// finally IAM (EC2 instance role, ECS task role, EKS web identity).
	// Other stores ignore them.
	AccessKey    string
	SecretKey    string
	SessionToken string
}

// String describes o without its secrets.
func (o Options) String() string {
	return fmt.Sprintf("objectstore.Options{AccessKey: %q, SecretKey: %s, SessionToken: %s}",
		o.AccessKey, redacted(o.SecretKey), redacted(o.SessionToken))
}

// GoString is String, so that %#v does not print secrets either.
func (o Options) GoString() string { return o.String() }

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "REDACTED"
}

// Open returns the Store at location, one of:
//
//	s3://bucket[/prefix][?endpoint=host:port&secure=bool&region=name&path_style=bool]
//	file:///absolute/dir
//	mem://
//
// For s3, endpoint defaults to AWS ("s3.amazonaws.com"), secure (TLS) to
// true, region to the bucket's own (looked up when needed), and path_style to
// automatic: virtual-host style for AWS and path style for other endpoints;
// path_style=true forces path style (MinIO) and false virtual-host style.
// Every key is stored under prefix, but the Store is used exactly like one
// without (List reports keys relative to the prefix). Open creates the bucket
// if it does not exist, using ctx. See Options for credentials, which never
// belong in location.
//
// For file, the directory must be absolute; it is created if missing and
// kept open (see FS; an owner that opens many may close each, through its
// io.Closer). mem:// is a new empty in-memory store each time (see Mem).
//
// A location Open cannot parse yields an error wrapping ErrInvalidLocation.
// Errors never contain credentials.
func Open(ctx context.Context, location string, opts Options) (Store, error) {
	u, err := parseLocation(location)
	if err != nil {
		return nil, err
	}
	switch u.scheme {
	case "mem":
		if u.host != "" || u.path != "" || len(u.query) > 0 {
			return nil, invalidLocation(u, "mem:// takes nothing after the scheme")
		}
		return NewMem(), nil
	case "file":
		if u.host != "" {
			return nil, invalidLocation(u, "file location must be file:///absolute/dir (got host %q; relative directories are not allowed)", u.host)
		}
		if len(u.query) > 0 {
			return nil, invalidLocation(u, "file location takes no query parameters")
		}
		dir := filepath.FromSlash(u.path)
		if u.path == "" || !filepath.IsAbs(dir) {
			return nil, invalidLocation(u, "file location needs an absolute directory")
		}
		return NewFS(filepath.Clean(dir))
	case "s3":
		cfg, err := parseS3(u)
		if err != nil {
			return nil, err
		}
		return NewS3(ctx, cfg, opts)
	case "":
		return nil, invalidLocation(u, "missing scheme; want s3://, file:// or mem://")
	default:
		return nil, invalidLocation(u, "unknown scheme %q; want s3, file or mem", u.scheme)
	}
}

// parseS3 turns an s3:// location into an S3Config.
func parseS3(u *urlForm) (S3Config, error) {
	cfg := S3Config{Bucket: u.host, Endpoint: DefaultS3Endpoint, Secure: true}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return S3Config{}, invalidLocation(u, "bad bucket name %q: %v", cfg.Bucket, err)
	}
	if p := strings.Trim(u.path, "/"); p != "" {
		if err := ValidateKey(p); err != nil {
			return S3Config{}, invalidLocation(u, "bad prefix %q: must obey the key rules", p)
		}
		cfg.Prefix = p
	}
	for k, vs := range u.query {
		if len(vs) != 1 {
			return S3Config{}, invalidLocation(u, "parameter %q given %d times", k, len(vs))
		}
		v := vs[0]
		var err error
		switch k {
		case "endpoint":
			cfg.Endpoint = v
			if v == "" || strings.Contains(v, "/") {
				return S3Config{}, invalidLocation(u, "endpoint must be host or host:port without scheme or path (use secure=false for plain HTTP), got %q", v)
			}
		case "secure":
			cfg.Secure, err = strconv.ParseBool(v)
		case "path_style":
			var ps bool
			ps, err = strconv.ParseBool(v)
			cfg.BucketLookup = LookupDNS
			if ps {
				cfg.BucketLookup = LookupPath
			}
		case "region":
			cfg.Region = v
		default:
			return S3Config{}, invalidLocation(u, "unknown parameter %q; want endpoint, secure, region or path_style", k)
		}
		if err != nil {
			return S3Config{}, invalidLocation(u, "parameter %s=%q is not a boolean", k, v)
		}
	}
	return cfg, nil
}

// urlForm is the parsed shape of a location: scheme://host/path?query.
type urlForm struct {
	scheme string
	host   string
	path   string
	query  url.Values
}

func parseLocation(location string) (*urlForm, error) {
	u, err := url.Parse(location)
	if err != nil {
		// url.Error repeats the whole input, credentials included if someone
		// put them there: report only the reason.
		var reason error = err
		if ue, ok := err.(*url.Error); ok {
			reason = ue.Err
		}
		return nil, fmt.Errorf("%w: cannot parse location: %v", ErrInvalidLocation, reason)
	}
	if !strings.Contains(location, "://") {
		return nil, fmt.Errorf("%w: want s3://..., file:///... or mem://", ErrInvalidLocation)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: %s: credentials do not belong in a location; pass them in Options",
			ErrInvalidLocation, u.Redacted())
	}
	f := &urlForm{scheme: u.Scheme, host: u.Host, path: u.Path}
	if u.Opaque != "" {
		return nil, invalidLocation(f, "want %s://... (a relative file directory is not allowed)", u.Scheme)
	}
	if u.Fragment != "" {
		return nil, invalidLocation(f, "fragments (#...) are not allowed")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, invalidLocation(f, "bad query: %v", err)
	}
	f.query = q
	return f, nil
}

// String formats the location with query parameters in sorted order, so the
// same store always has the same location string.
func (u *urlForm) String() string {
	var b strings.Builder
	b.WriteString(u.scheme)
	b.WriteString("://")
	b.WriteString(u.host)
	if u.path != "" {
		p := u.path
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		b.WriteString((&url.URL{Path: p}).EscapedPath())
	}
	if len(u.query) > 0 {
		keys := make([]string, 0, len(u.query))
		for k := range u.query {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			if i == 0 {
				b.WriteByte('?')
			} else {
				b.WriteByte('&')
			}
			// Endpoints keep their colon readable: host:port.
			b.WriteString(url.QueryEscape(k) + "=" + strings.ReplaceAll(url.QueryEscape(u.query.Get(k)), "%3A", ":"))
		}
	}
	return b.String()
}

// invalidLocation returns an ErrInvalidLocation error about u. The message
// shows u with query values elided: a misplaced credential (say
// "?secret_key=...") must not end up in a log.
func invalidLocation(u *urlForm, format string, args ...any) error {
	safe := &urlForm{scheme: u.scheme, host: u.host, path: u.path}
	if len(u.query) > 0 {
		safe.query = make(url.Values, len(u.query))
		for k := range u.query {
			safe.query.Set(k, "...")
		}
	}
	return fmt.Errorf("%w: %s: %s", ErrInvalidLocation, safe, fmt.Sprintf(format, args...))
}
