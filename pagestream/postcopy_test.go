package pagestream

import (
	"bytes"
	"errors"
	"testing"
)

func TestPostCopyMsgRoundTrip(t *testing.T) {
	for _, m := range []PostCopyMsg{
		{Kind: MsgRequest, Addr: 0x7f0000001000, Pages: 1},
		{Kind: MsgRequest, Addr: 0x1000, Pages: MaxRequestPages},
		{Kind: MsgDone, Faults: 12, LatencySumUS: 3400, LatencyMaxUS: 900},
		{Kind: MsgApplied, Applied: 4096},
	} {
		b := m.Encode(nil)
		got, err := DecodePostCopyMsg(b)
		if err != nil || got != m {
			t.Errorf("%+v: decoded %+v, %v", m, got, err)
		}
	}
	bad := map[string]PostCopyMsg{
		"unaligned": {Kind: MsgRequest, Addr: 0x1001, Pages: 1},
		"no pages":  {Kind: MsgRequest, Addr: 0x1000},
		"too many":  {Kind: MsgRequest, Addr: 0x1000, Pages: MaxRequestPages + 1},
		"wraps":     {Kind: MsgRequest, Addr: 1<<64 - PageSize, Pages: 2},
		"kind":      {Kind: 9},
	}
	for name, m := range bad {
		b := m.Encode(nil)
		if m.Kind == 9 {
			b[0] = 9
		}
		if _, err := DecodePostCopyMsg(b); !errors.Is(err, ErrBadPostCopyMsg) {
			t.Errorf("%s: %v, want ErrBadPostCopyMsg", name, err)
		}
	}
	if _, err := DecodePostCopyMsg(make([]byte, PostCopyMsgSize-1)); !errors.Is(err, ErrBadPostCopyMsg) {
		t.Errorf("short record: %v", err)
	}
}

func TestReplyRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 2*PageSize)
	h := ReplyHeader{Addr: 0x2000, Pages: 2, CRC: ReplyCRC(data)}
	got, err := DecodeReplyHeader(h.Encode(nil))
	if err != nil || got != h || CheckReplyData(got, data) != nil {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	data[5] ^= 1
	if err := CheckReplyData(got, data); !errors.Is(err, ErrBadPostCopyMsg) {
		t.Errorf("a flipped byte: %v", err)
	}
	z := ReplyHeader{Addr: 0x2000, Pages: 3, Zero: true}
	if got, err := DecodeReplyHeader(z.Encode(nil)); err != nil || got != z || got.DataLen() != 0 {
		t.Errorf("zero reply: %+v, %v", got, err)
	}
	b := z.Encode(nil)
	b[12] |= 2 // an unknown flag
	if _, err := DecodeReplyHeader(b); !errors.Is(err, ErrBadPostCopyMsg) {
		t.Errorf("unknown flag: %v", err)
	}
}

func FuzzDecodePostCopyMsg(f *testing.F) {
	f.Add(PostCopyMsg{Kind: MsgRequest, Addr: 0x1000, Pages: 3}.Encode(nil))
	f.Add(PostCopyMsg{Kind: MsgDone, Faults: 1}.Encode(nil))
	f.Add(PostCopyMsg{Kind: MsgApplied, Applied: 32}.Encode(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodePostCopyMsg(b)
		if err != nil {
			return
		}
		if m.Kind == MsgRequest && (m.Addr%PageSize != 0 || m.Pages == 0 || m.Pages > MaxRequestPages || m.Addr+uint64(m.Pages)*PageSize < m.Addr) {
			t.Fatalf("accepted a bad request %+v", m)
		}
		if !bytes.Equal(m.Encode(nil), b) {
			t.Fatalf("%x decodes to %+v, which encodes otherwise", b, m)
		}
	})
}

func FuzzDecodeReplyHeader(f *testing.F) {
	f.Add(ReplyHeader{Addr: 0x1000, Pages: 1, CRC: 5}.Encode(nil))
	f.Add(ReplyHeader{Addr: 0x1000, Pages: 2, Zero: true}.Encode(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeReplyHeader(b)
		if err != nil {
			return
		}
		if h.Pages == 0 || h.Pages > MaxRequestPages || h.Addr%PageSize != 0 || h.DataLen() > MaxRequestPages*PageSize {
			t.Fatalf("accepted a bad header %+v", h)
		}
		if !bytes.Equal(h.Encode(nil), b) {
			t.Fatalf("%x decodes to %+v, which encodes otherwise", b, h)
		}
	})
}

func TestPageSet(t *testing.T) {
	if _, err := NewPageSet([]Run{{Addr: 0x3000, Pages: 1}, {Addr: 0x1000, Pages: 4}}); err == nil {
		t.Error("runs out of order accepted")
	}
	s, err := NewPageSet([]Run{{Addr: 0x1000, Pages: 4}, {Addr: 0x10000, Pages: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Total() != 104 || s.Left() != 104 || !s.Has(0x1fff) || s.Has(0x5000) || s.Within(0x5000) {
		t.Fatalf("fresh set: total %d left %d", s.Total(), s.Left())
	}
	if n := s.Remove(0x2000, 2); n != 2 || s.Has(0x2000) || !s.Within(0x2000) || s.Left() != 102 {
		t.Errorf("Remove: %d, left %d", n, s.Left())
	}
	if r, ok := s.NextIn(0x2000, 10); !ok || r != (Run{Addr: 0x4000, Pages: 1}) {
		t.Errorf("NextIn after a hole: %+v %v", r, ok)
	}
	if r, ok := s.NextIn(0x5000, 10); !ok || r != (Run{Addr: 0x10000, Pages: 10}) {
		t.Errorf("NextIn into the next run: %+v %v", r, ok)
	}
	if n := s.RemoveRange(0, 1<<40); n != 102 || s.Left() != 0 {
		t.Errorf("RemoveRange: %d, left %d", n, s.Left())
	}
	if _, ok := s.NextIn(0, 10); ok {
		t.Error("NextIn of an empty set")
	}
}
