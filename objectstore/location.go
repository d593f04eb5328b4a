package objectstore

import (
	"fmt"
	"net/url"
	"path"
	"strings"
)

// JoinLocation returns the location of key inside the store at location
// base: the key joins the path, and any query (s3 endpoint and options)
// stays at the end, e.g. s3://b/p?endpoint=h:9000 and k give
// s3://b/p/k?endpoint=h:9000.
func JoinLocation(base, key string) string {
	u, err := url.Parse(base)
	if err != nil {
		return strings.TrimSuffix(base, "/") + "/" + key
	}
	u.Path = "/" + strings.TrimPrefix(path.Join(u.Path, key), "/")
	return u.String()
}

// KeyOf returns the key that location names inside the store at base: a
// full location must be base's scheme, bucket and path followed by the key
// (its query may be omitted, or must equal base's); anything without a
// scheme is taken as a key. A location elsewhere, or a key breaking the key
// rules (such as ".." elements), is ErrInvalidLocation.
func KeyOf(base, location string) (string, error) {
	location = strings.TrimSpace(location)
	if !strings.Contains(location, "://") {
		key := strings.Trim(location, "/")
		if err := ValidateKey(key); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrInvalidLocation, location, err)
		}
		return key, nil
	}
	b, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("%w: store location %s", ErrInvalidLocation, Redact(base))
	}
	l, err := url.Parse(location)
	if err != nil {
		return "", fmt.Errorf("%w: %s is not a location", ErrInvalidLocation, Redact(location))
	}
	if l.User != nil {
		return "", fmt.Errorf("%w: %s: a location must not carry credentials", ErrInvalidLocation, Redact(location))
	}
	root := strings.TrimSuffix(b.Path, "/") + "/"
	outside := l.Scheme != b.Scheme || l.Host != b.Host || !strings.HasPrefix(l.Path, root) ||
		(l.RawQuery != "" && !sameQuery(l.Query(), b.Query()))
	if outside {
		return "", fmt.Errorf("%w: %s is outside the store %s", ErrInvalidLocation, Redact(location), Redact(base))
	}
	key := strings.Trim(strings.TrimPrefix(l.Path, root), "/")
	if err := ValidateKey(key); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrInvalidLocation, Redact(location), err)
	}
	return key, nil
}

func sameQuery(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b.Get(k) != v[0] {
			return false
		}
	}
	return true
}

// Redact returns location fit for errors and logs: without user info, and
// with query values other than the endpoint and the plain options hidden,
// since a location may carry credentials there. An unparseable location is
// hidden entirely.
func Redact(location string) string {
	u, err := url.Parse(location)
	if err != nil {
		return "(unparseable location)"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			switch k {
			case "endpoint", "secure", "region", "path_style":
			default:
				q.Set(k, "REDACTED")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
