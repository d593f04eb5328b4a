package subjects

import (
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder of every message type. It
// must never panic, every failure must carry a code, and whatever decodes
// must encode again and decode to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, m := range validMessages() {
		f.Add(uint8(m.MsgType()), MustEncode(m))
	}
	f.Add(uint8(TypeTriggerSavepoint), []byte(""))
	f.Add(uint8(TypeAck), []byte(`{"type":"ack","v":1,"handle":{"range":{"start":-1}}}`))
	f.Fuzz(func(t *testing.T, ty uint8, data []byte) {
		m := New(Type(ty%uint8(numTypes-1)) + 1)
		err := Decode(data, m)
		if err != nil {
			if CodeOf(err) == CodeInternal {
				t.Fatalf("decode error without a code: %v", err)
			}
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("decoded %s does not encode: %v", m.MsgType(), err)
		}
		m2 := New(m.MsgType())
		if err := Decode(b, m2); err != nil {
			t.Fatalf("re-decode %s: %v\n%s", m.MsgType(), err, b)
		}
		if b2, _ := Encode(m2); string(b2) != string(b) {
			t.Fatalf("%s not stable:\n%s\n%s", m.MsgType(), b, b2)
		}
	})
}
