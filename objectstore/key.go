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
// Get(offset, length) reads. A negative offset counts as 0; any length, even
// one that overflows offset+length, is cut at n.
func clip(n, offset, length int64) (start, end int64) {
	start = min(max(offset, 0), n)
	end = n
	if length >= 0 && length < n-start {
		end = start + length
	}
	return start, end
}

// prefixCanMatch reports whether any valid key can start with prefix. The
// part of prefix before its last slash is a run of whole elements of every
// such key, so it must be a valid key itself.
func prefixCanMatch(prefix string) bool {
	if strings.ContainsRune(prefix, 0) || strings.ContainsRune(prefix, '\\') {
		return false
	}
	i := strings.LastIndexByte(prefix, '/')
	return i < 0 || ValidateKey(prefix[:i]) == nil
}
