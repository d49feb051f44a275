package raw

import (
	"encoding/binary"
	"testing"
)

func TestParseUffdMsg(t *testing.T) {
	b := make([]byte, UffdMsgSize)
	b[0] = UFFD_EVENT_PAGEFAULT
	binary.LittleEndian.PutUint64(b[8:], UFFD_PAGEFAULT_FLAG_WRITE)
	binary.LittleEndian.PutUint64(b[16:], 0x7f0000001234)
	m, err := ParseUffdMsg(b)
	if err != nil || m.Address != 0x7f0000001234 || m.Flags != UFFD_PAGEFAULT_FLAG_WRITE {
		t.Errorf("pagefault: %+v, %v", m, err)
	}
	b[0] = UFFD_EVENT_REMOVE
	binary.LittleEndian.PutUint64(b[8:], 0x1000)
	binary.LittleEndian.PutUint64(b[16:], 0x3000)
	if m, err := ParseUffdMsg(b); err != nil || m.Start != 0x1000 || m.End != 0x3000 {
		t.Errorf("remove: %+v, %v", m, err)
	}
	b[0] = 0x55
	if _, err := ParseUffdMsg(b); err == nil {
		t.Error("an unknown event parsed")
	}
	if _, err := ParseUffdMsg(b[:8]); err == nil {
		t.Error("a short message parsed")
	}
}

func FuzzParseUffdMsg(f *testing.F) {
	f.Add(make([]byte, UffdMsgSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseUffdMsg(b) // never panics
	})
}
