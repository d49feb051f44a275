package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"runtime"
	"testing"
)

// FuzzReadMsg feeds ReadMsg arbitrary bytes, as a hostile peer would send
// them on the control stream. It must never panic; every error must be a
// *MsgError with a sentinel (or io.EOF at a clean end); memory must stay
// bounded by what was received; and a message it accepts must encode again
// and decode to the same message.
//
//	go test -run '^$' -fuzz FuzzReadMsg -fuzztime 15s ./transport
func FuzzReadMsg(f *testing.F) {
	for _, m := range sampleMsgs() {
		b, err := AppendMsg(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	var all []byte
	for _, m := range sampleMsgs()[:4] {
		all, _ = AppendMsg(all, m)
	}
	f.Add(all)
	f.Add(withLength(frame(1, 0, TypeState, []byte(`{"body":1}`)), MaxMsgPayload))
	f.Add(frame(1, 0, TypeHello, []byte(`{"version":1}`)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := bytes.NewReader(data)
		for {
			m, err := ReadMsg(r)
			if err == io.EOF {
				break
			}
			if err != nil {
				var me *MsgError
				if !errors.As(err, &me) || !isMsgSentinel(me.Err) {
					t.Fatalf("error %T %v is not a *MsgError with a sentinel", err, err)
				}
				break
			}
			if m == nil {
				t.Fatal("nil message without an error")
			}
			// Encoding normalizes (compacts the opaque bodies, escapes
			// strings); from there, a round trip is exact.
			b1, err := AppendMsg(nil, m)
			if err != nil {
				t.Fatalf("accepted %#v but cannot encode it: %v", m, err)
			}
			m1, err := ReadMsg(bytes.NewReader(b1))
			if err != nil {
				t.Fatalf("cannot read back %#v: %v", m, err)
			}
			b2, _ := AppendMsg(nil, m1)
			m2, err := ReadMsg(bytes.NewReader(b2))
			if err != nil || !bytes.Equal(b1, b2) || !reflect.DeepEqual(m1, m2) {
				t.Fatalf("round trip: %#v -> %#v (%v)", m1, m2, err)
			}
		}
		runtime.ReadMemStats(&after)
		// A frame costs at most a 64 KiB head start plus twice what
		// arrived, times what JSON decoding makes of it.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20+64*uint64(len(data)) {
			t.Fatalf("%d bytes allocated for %d bytes of input", grew, len(data))
		}
	})
}

func isMsgSentinel(err error) bool {
	for _, s := range []error{ErrMsgVersion, ErrMsgFlags, ErrMsgHeaderCRC, ErrMsgChecksum, ErrMsgTooLarge, ErrMsgTruncated, ErrMsgType, ErrMsgPayload, ErrMsgInvalid} {
		if err == s {
			return true
		}
	}
	return false
}

// FuzzBodyFastPath checks the fast path of the state and the layouts
// (readBodyMsg, appendBodyMsg) against encoding/json: a payload the fast
// path takes decodes to the same message by the generic decoder, and what
// appendBodyMsg writes of a message the generic decoder reads back the
// same.
//
//	go test -run '^$' -fuzz FuzzBodyFastPath -fuzztime 15s ./transport
func FuzzBodyFastPath(f *testing.F) {
	for _, p := range []string{
		`{"body":{"a":[1,2,{"b":"c"}]}}`, `{"body":null}`, `{"body":1}`, `{"body": 1}`,
		`{"body":{"a":1},"x":2}`, `{"body":"<&>"}`, `{"body":{}}}`, `{"Body":1}`,
		`{"round":7,"body":{"vmas":[]}}`, `{"round":07,"body":1}`, `{"round":4294967296,"body":1}`,
		`{"round":0,"body":[1]}`, `{"round":1,"body":"x"}`, `{"round":1,"body":1,"round":2}`,
	} {
		f.Add([]byte(p), false)
		f.Add([]byte(p), true)
	}
	f.Fuzz(func(t *testing.T, p []byte, layout bool) {
		mk := func() Msg {
			if layout {
				return &Layout{}
			}
			return &State{}
		}
		fast, slow := mk(), mk()
		if readBodyMsg(p, fast) {
			if err := decodeGeneric(p, slow); err != nil {
				t.Fatalf("fast path took %q, the generic decoder refuses it: %v", p, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%q: fast path %#v, generic %#v", p, fast, slow)
			}
		} else if !reflect.DeepEqual(fast, mk()) {
			t.Fatalf("%q: the fast path refused it but left %#v", p, fast)
		}
		// Encoding: what the generic decoder accepts is written by the
		// fast path (or not at all) and read back the same.
		m := mk()
		if decodeGeneric(p, m) != nil {
			return
		}
		b, ok, err := appendBodyMsg(nil, m)
		if !ok || err != nil {
			return // (no body: json.Marshal writes it)
		}
		back := mk()
		if err := decodeGeneric(b, back); err != nil || !bytes.Equal(mustCompact(t, bodyOf(m)), mustCompact(t, bodyOf(back))) {
			t.Fatalf("%#v written as %q, read back %#v (%v)", m, b, back, err)
		}
		if l, ok := m.(*Layout); ok && l.Round != back.(*Layout).Round {
			t.Fatalf("round %d written as %q, read back %d", l.Round, b, back.(*Layout).Round)
		}
	})
}

func bodyOf(m Msg) []byte {
	switch m := m.(type) {
	case *State:
		return m.Body
	case *Layout:
		return m.Body
	}
	return nil
}

func mustCompact(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		t.Fatalf("compact %q: %v", b, err)
	}
	return out.Bytes()
}
