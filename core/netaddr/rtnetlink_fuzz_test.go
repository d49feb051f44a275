package netaddr

import (
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// realDump asks the kernel for a dump (RTM_GETLINK or RTM_GETADDR) of this
// network namespace, and returns the messages' bodies and the messages
// with their headers, as seeds of real answers.
func realDump(t testing.TB, typ netlink.HeaderType, family byte) (bodies, raw [][]byte) {
	t.Helper()
	c, err := dialRoute()
	if err != nil {
		t.Logf("no rtnetlink socket (%v): hand-made seeds only", err)
		return nil, nil
	}
	defer c.Close()
	req := make([]byte, unix.SizeofIfInfomsg)
	if typ == unix.RTM_GETADDR {
		req = make([]byte, unix.SizeofIfAddrmsg)
	}
	req[0] = family
	msgs, err := c.Execute(netlink.Message{Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Dump}, Data: req})
	if err != nil {
		t.Logf("rtnetlink dump %d: %v: hand-made seeds only", typ, err)
		return nil, nil
	}
	for _, m := range msgs {
		bodies = append(bodies, m.Data)
		b, err := m.MarshalBinary()
		if err == nil {
			raw = append(raw, b)
		}
	}
	return bodies, raw
}

// TestDecodeRealMessages: the kernel's own answers decode.
func TestDecodeRealMessages(t *testing.T) {
	links, _ := realDump(t, unix.RTM_GETLINK, unix.AF_UNSPEC)
	for _, b := range links {
		if _, err := decodeLink(b); err != nil {
			t.Errorf("a real RTM_NEWLINK: %v", err)
		}
	}
	addrs, _ := realDump(t, unix.RTM_GETADDR, unix.AF_UNSPEC)
	for _, b := range addrs {
		a, _, err := decodeAddr(b)
		if err != nil || !a.prefix.IsValid() {
			t.Errorf("a real RTM_NEWADDR: %v, %v", a.prefix, err)
		}
	}
	if len(links) == 0 || len(addrs) == 0 {
		t.Skipf("the kernel answered %d links and %d addresses", len(links), len(addrs))
	}
}

// FuzzDecodeLink: any RTM_NEWLINK body decodes without a panic.
func FuzzDecodeLink(f *testing.F) {
	bodies, _ := realDump(f, unix.RTM_GETLINK, unix.AF_UNSPEC)
	for _, b := range bodies {
		f.Add(b)
	}
	f.Add(make([]byte, unix.SizeofIfInfomsg))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeLink(b)
	})
}

// FuzzDecodeAddr: any RTM_NEWADDR body decodes without a panic, and a
// valid prefix it returns fits its address.
func FuzzDecodeAddr(f *testing.F) {
	bodies, _ := realDump(f, unix.RTM_GETADDR, unix.AF_UNSPEC)
	for _, b := range bodies {
		f.Add(b)
	}
	f.Add(make([]byte, unix.SizeofIfAddrmsg))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, _, err := decodeAddr(b)
		if err == nil && a.prefix.IsValid() && a.prefix.Bits() > a.prefix.Addr().BitLen() {
			t.Fatalf("prefix %v longer than its address", a.prefix)
		}
	})
}

// FuzzSplitMessages: any datagram splits without a panic into messages
// whose lengths and bodies lie within it.
func FuzzSplitMessages(f *testing.F) {
	_, raw := realDump(f, unix.RTM_GETLINK, unix.AF_UNSPEC)
	var all []byte
	for _, b := range raw {
		f.Add(b)
		all = append(all, b...)
	}
	if len(all) > 0 {
		f.Add(all)
	}
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := splitMessages(b)
		if err != nil {
			return
		}
		total := 0
		for _, m := range ms {
			if m.Header.Length < 16 || int(m.Header.Length) != 16+len(m.Data) {
				t.Fatalf("message of length %d with %d bytes of data", m.Header.Length, len(m.Data))
			}
			total += int(m.Header.Length)
		}
		if total > len(b) {
			t.Fatalf("%d bytes of messages in a datagram of %d", total, len(b))
		}
	})
}
