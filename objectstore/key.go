package objectstore

import (
	"fmt"
	"strings"
)

// ValidateKey reports whether key obeys the key rules of the package doc:
// non-empty, relative, slash-separated, with no empty, "." or ".." element.
func ValidateKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsRune(key, 0) || strings.ContainsRune(key, '\\') {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidKey, key)
		}
	}
	return nil
}

// clip returns the [start, end) byte range of an object of size n that
// Get(offset, length) reads.
func clip(n, offset, length int64) (start, end int64) {
	start = min(max(offset, 0), n)
	end = n
	if length >= 0 && start+length < n {
		end = start + length
	}
	return start, end
}
