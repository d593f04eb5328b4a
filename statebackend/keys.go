package statebackend

import (
	"encoding/binary"
	"fmt"
)

// Key layout. Every Pebble key starts with its key group as 2 big-endian
// bytes, so the keys of one group are contiguous and a key-group range is a
// key range. The next byte is a namespace:
//
//	[group:2][nsMeta][metaApplied]                       last applied input sequence (8 bytes big-endian)
//	[group:2][nsValue][len(state):1][state][user key]    value state
//	[group:2][nsCounter][len(state):1][state][user key]  int64 counter state (8 bytes little-endian, merged by Int64MergerName)
//
// The layout is persisted in snapshots and read back by Restore. Changing it
// needs a new snapshot manifest version and a migration; namespaces are
// append-only.
const (
	nsMeta    byte = 0x00
	nsValue   byte = 0x01
	nsCounter byte = 0x02

	metaApplied byte = 0x01
)

// MaxStateNameLen is the longest state name, in bytes.
const MaxStateNameLen = 255

func checkStateName(state string) error {
	if len(state) == 0 || len(state) > MaxStateNameLen {
		return fmt.Errorf("%w: %q (must be 1 to %d bytes)", ErrInvalidStateName, state, MaxStateNameLen)
	}
	return nil
}

// appendGroup appends the 2-byte prefix of group g.
func appendGroup(dst []byte, g int) []byte {
	return append(dst, byte(g>>8), byte(g))
}

// groupPrefix returns the first key of group g; groupPrefix(g+1) is the
// exclusive upper bound of group g's keys.
func groupPrefix(g int) []byte { return appendGroup(make([]byte, 0, 2), g) }

// appendStatePrefix appends the prefix that every key of state in group g
// under namespace ns starts with.
func appendStatePrefix[S string | []byte](dst []byte, g int, ns byte, state S) []byte {
	dst = appendGroup(dst, g)
	dst = append(dst, ns, byte(len(state)))
	return append(dst, state...)
}

// appendStateKey appends the Pebble key of (state, userKey) in group g.
func appendStateKey(dst []byte, g int, ns byte, state string, userKey []byte) []byte {
	return append(appendStatePrefix(dst, g, ns, state), userKey...)
}

// appliedKey returns the key of group g's last applied input sequence.
func appliedKey(g int) []byte { return append(appendGroup(make([]byte, 0, 4), g), nsMeta, metaApplied) }

// keyGroupOf returns the group a Pebble key belongs to.
func keyGroupOf(k []byte) int { return int(binary.BigEndian.Uint16(k)) }

// parsedKey is a decoded user-state key.
type parsedKey struct {
	group int
	ns    byte
	state []byte
	user  []byte
}

// parseStateKey decodes a value or counter key; ok is false for meta keys
// and malformed keys.
func parseStateKey(k []byte) (p parsedKey, ok bool) {
	if len(k) < 4 || (k[2] != nsValue && k[2] != nsCounter) {
		return p, false
	}
	n := int(k[3])
	if n == 0 || len(k) < 4+n {
		return p, false
	}
	return parsedKey{group: keyGroupOf(k), ns: k[2], state: k[4 : 4+n], user: k[4+n:]}, true
}

func encodeInt64(v int64) []byte {
	return binary.LittleEndian.AppendUint64(make([]byte, 0, 8), uint64(v))
}

func decodeInt64(b []byte) (int64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return int64(binary.LittleEndian.Uint64(b)), true
}

func encodeSeq(seq uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq) }

func decodeSeq(b []byte) (uint64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}
