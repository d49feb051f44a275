package netaddr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/procmig/migrate/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func TestParse(t *testing.T) {
	good := []struct {
		in, prefix, link, str string
	}{
		{"10.231.0.100/32@eth0", "10.231.0.100/32", "eth0", ""},
		{"10.231.0.100@eth0", "10.231.0.100/32", "eth0", "10.231.0.100/32@eth0"},
		{"10.231.0.100/24@eth0", "10.231.0.100/24", "eth0", ""}, // host bits kept
		{"10.0.0.1/0@eth0", "10.0.0.1/0", "eth0", ""},
		{"127.0.0.2/8@lo", "127.0.0.2/8", "lo", ""},
		{"fd00::100/128@eth0", "fd00::100/128", "eth0", ""},
		{"fd00::100@eth0", "fd00::100/128", "eth0", "fd00::100/128@eth0"},
		{"FD00:0::0100/64@eth0", "fd00::100/64", "eth0", "fd00::100/64@eth0"},
		{"fe80::1/64@veth0", "fe80::1/64", "veth0", ""},
		{"10.0.0.1/32@a@b", "10.0.0.1/32", "a@b", ""}, // '@' is allowed in a link name
		{"10.0.0.1@0123456789abcde", "10.0.0.1/32", "0123456789abcde", "10.0.0.1/32@0123456789abcde"},
	}
	for _, c := range good {
		a, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if a.Prefix != netip.MustParsePrefix(c.prefix) || a.Link != c.link {
			t.Errorf("Parse(%q) = %v, %q; want %v, %q", c.in, a.Prefix, a.Link, c.prefix, c.link)
		}
		str := c.str
		if str == "" {
			str = c.in
		}
		if a.String() != str {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, a.String(), str)
		}
	}

	bad := []struct {
		in, part string
	}{
		{"", "link"},
		{"10.0.0.1/32", "link"},
		{"10.0.0.1/32@", "link"},
		{"10.0.0.1/32@eth0:1", "link"},
		{"10.0.0.1/32@a/b", "link"},
		{"10.0.0.1/32@eth 0", "link"},
		{"10.0.0.1/32@0123456789abcdef", "link"}, // 16 bytes
		{"10.0.0.1/32@.", "link"},
		{"10.0.0.1/32@..", "link"},
		{"10.0.0.1/32@eth0\x00", "link"},
		{"@eth0", "address"},
		{"/32@eth0", "address"},
		{"10.0.0.300/32@eth0", "address"},
		{"10.0.0/32@eth0", "address"},
		{"eth0@10.0.0.1", "address"},
		{"0.0.0.0@eth0", "address"},
		{"::/0@eth0", "address"},
		{"224.0.0.1@eth0", "address"},
		{"ff02::1@eth0", "address"},
		{"fe80::1%eth0@eth0", "address"},
		{"fe80::1%eth0/64@eth0", "address"},
		{"::ffff:10.0.0.1@eth0", "address"},
		{"10.0.0.1/@eth0", "prefix length"},
		{"10.0.0.1/33@eth0", "prefix length"},
		{"fd00::1/129@eth0", "prefix length"},
		{"10.0.0.1/032@eth0", "prefix length"},
		{"10.0.0.1/+8@eth0", "prefix length"},
		{"10.0.0.1/-0@eth0", "prefix length"},
		{"10.0.0.1/8/8@eth0", "prefix length"},
		{"10.0.0.1/1000@eth0", "prefix length"},
		{"10.0.0.1/ 8@eth0", "prefix length"},
	}
	for _, c := range bad {
		a, err := Parse(c.in)
		var pe *ParseError
		switch {
		case err == nil:
			t.Errorf("Parse(%q) = %v, want an error", c.in, a)
		case !errors.As(err, &pe):
			t.Errorf("Parse(%q): %T %v, want a *ParseError", c.in, err, err)
		case pe.Part != c.part || pe.Input != c.in:
			t.Errorf("Parse(%q): bad %s (input %q), want bad %s: %v", c.in, pe.Part, pe.Input, c.part, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"10.231.0.100/32@eth0", "10.231.0.100@eth0", "fd00::100/128@eth0", "fd00::100@eth0",
		"fe80::1%eth0@eth0", "::ffff:1.2.3.4@lo", "1.2.3.4/033@x", "@", "a@b@c", "1.2.3.4/8@eth0:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q): %T %v, want a *ParseError", s, err, err)
			}
			return
		}
		if err := a.check(); err != nil {
			t.Fatalf("Parse(%q) = %v, which check rejects: %v", s, a, err)
		}
		b, err := Parse(a.String())
		if err != nil {
			t.Fatalf("Parse(%q) = %v, but Parse(%q): %v", s, a, a.String(), err)
		}
		if b != a {
			t.Fatalf("Parse(%q) = %#v, Parse(%q) = %#v", s, a, a.String(), b)
		}
	})
}

// enterNetNS moves the test's goroutine into a network namespace of its
// own, with lo up: it locks the goroutine to its thread and unshares the
// thread's namespace. The thread is never unlocked: it dies with the
// goroutine rather than go back to the runtime in the wrong namespace.
// Subtests run on goroutines of their own, outside it.
func enterNetNS(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: CAP_SYS_ADMIN to unshare a network namespace, CAP_NET_ADMIN and CAP_NET_RAW in it")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread() // still in the namespace it had
		skipOrFail(t, "network namespaces", fmt.Errorf("unshare(CLONE_NEWNET): %w", err))
	}
	setUp(t, "lo")
}

// skipOrFail skips for a missing feature, or fails when CI requires it
// (MIGRATE_REQUIRE_FEATURES is a comma-separated list of names, or "all").
func skipOrFail(t testing.TB, feature string, err error) {
	t.Helper()
	for _, n := range strings.Split(os.Getenv("MIGRATE_REQUIRE_FEATURES"), ",") {
		if n = strings.TrimSpace(n); n == "all" || n == feature {
			t.Fatalf("%s is required (MIGRATE_REQUIRE_FEATURES) but missing: %v", feature, err)
		}
	}
	t.Skipf("%s missing: %v", feature, err)
}

// needIPv6 skips when the kernel has no IPv6.
func needIPv6(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		skipOrFail(t, "ipv6", err)
	}
}

// rtnl sends one rtnetlink request in the calling thread's namespace.
func rtnl(typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | flags},
		Data:   data,
	})
	return err
}

// ifinfomsg is a struct ifinfomsg naming no link by index, with flags
// (and the same change mask), then IFLA_IFNAME name and more attributes.
func ifinfomsg(t testing.TB, flags uint32, name string, more func(ae *netlink.AttributeEncoder)) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(b[8:], flags)
	binary.NativeEndian.PutUint32(b[12:], flags)
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, name)
	if more != nil {
		more(ae)
	}
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append(b, attrs...)
}

// setUp brings link up.
func setUp(t testing.TB, link string) {
	t.Helper()
	if err := rtnl(unix.RTM_NEWLINK, 0, ifinfomsg(t, unix.IFF_UP, link, nil)); err != nil {
		t.Fatalf("%s up: %v", link, err)
	}
}

// addVeth makes the veth pair a, b in the thread's namespace, both up.
func addVeth(t testing.TB, a, b string) {
	t.Helper()
	const vethInfoPeer = 1 // VETH_INFO_PEER
	req := ifinfomsg(t, 0, a, func(ae *netlink.AttributeEncoder) {
		ae.Nested(unix.IFLA_LINKINFO, func(li *netlink.AttributeEncoder) error {
			li.String(unix.IFLA_INFO_KIND, "veth")
			li.Nested(unix.IFLA_INFO_DATA, func(d *netlink.AttributeEncoder) error {
				d.Bytes(vethInfoPeer, ifinfomsg(t, 0, b, nil))
				return nil
			})
			return nil
		})
	})
	if err := rtnl(unix.RTM_NEWLINK, netlink.Create|netlink.Excl, req); err != nil {
		skipOrFail(t, "veth", err)
	}
	setUp(t, a)
	setUp(t, b)
}

// ipAddrShow is what `ip -o addr show dev link` prints, run in the
// thread's namespace (a child forked by a thread is in its namespace);
// "" without ip.
func ipAddrShow(t testing.TB, link string) string {
	t.Helper()
	path, err := exec.LookPath("ip")
	if err != nil {
		t.Logf("not checked with ip(8): %v", err)
		return ""
	}
	out, err := exec.Command(path, "-o", "addr", "show", "dev", link).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -o addr show dev %s: %v\n%s", link, err, out)
	}
	return string(out)
}

// ipShows reports whether ip -o addr show lists p on link, and its line.
func ipShows(t testing.TB, link string, p netip.Prefix) (shown bool, line string, checked bool) {
	t.Helper()
	out := ipAddrShow(t, link)
	if out == "" {
		return false, "", false
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " "+p.String()+" ") {
			return true, l, true
		}
	}
	return false, out, true
}

func mustParse(t testing.TB, s string) Addr {
	t.Helper()
	a, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAddHasDel(t *testing.T) {
	for _, s := range []string{"10.231.0.100/32@nat0", "10.231.0.100/24@nat0", "fd00::100/128@nat0", "fd00::100/64@nat0"} {
		t.Run(s, func(t *testing.T) {
			enterNetNS(t)
			a := mustParse(t, s)
			if a.Prefix.Addr().Is6() {
				needIPv6(t)
			}
			addVeth(t, "nat0", "nat1")

			if ok, err := Has(a); ok || err != nil {
				t.Fatalf("Has before Add = %v, %v; want false, nil", ok, err)
			}
			if added, err := Add(a); !added || err != nil {
				t.Fatalf("Add = %v, %v; want true, nil", added, err)
			}
			if ok, err := Has(a); !ok || err != nil {
				t.Fatalf("Has after Add = %v, %v; want true, nil", ok, err)
			}
			if shown, out, checked := ipShows(t, a.Link, a.Prefix); checked && !shown {
				t.Fatalf("ip does not show %v:\n%s", a, out)
			}
			if added, err := Add(a); added || err != nil {
				t.Fatalf("second Add = %v, %v; want false, nil", added, err)
			}
			if removed, err := Del(a); !removed || err != nil {
				t.Fatalf("Del = %v, %v; want true, nil", removed, err)
			}
			if ok, err := Has(a); ok || err != nil {
				t.Fatalf("Has after Del = %v, %v; want false, nil", ok, err)
			}
			if shown, line, _ := ipShows(t, a.Link, a.Prefix); shown {
				t.Fatalf("ip still shows %v: %s", a, line)
			}
			if removed, err := Del(a); removed || err != nil {
				t.Fatalf("second Del = %v, %v; want false, nil", removed, err)
			}
		})
	}
}

func TestNoLink(t *testing.T) {
	enterNetNS(t)
	for _, s := range []string{"10.231.0.100/32@nosuch0", "fd00::100/128@nosuch0"} {
		a := mustParse(t, s)
		check := func(op string, err error) {
			t.Helper()
			var e *Error
			if !errors.As(err, &e) || e.Op != op || e.Addr != a || !errors.Is(err, ErrNoLink) {
				t.Errorf("%s %v: %v; want an *Error for %s with ErrNoLink", op, a, err, op)
				return
			}
			t.Logf("%s: %v", op, err)
		}
		_, err := Add(a)
		check("add", err)
		_, err = Del(a)
		check("del", err)
		_, err = Has(a)
		check("has", err)
		check("announce", Announce(a))
	}
}

func TestBadAddr(t *testing.T) {
	enterNetNS(t)
	for _, a := range []Addr{
		{},
		{Prefix: netip.MustParsePrefix("10.0.0.1/32")},
		{Prefix: netip.MustParsePrefix("0.0.0.0/32"), Link: "lo"},
		{Prefix: netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 33), Link: "lo"},
	} {
		_, err := Add(a)
		var e *Error
		if !errors.As(err, &e) || errors.Is(err, ErrNoLink) {
			t.Errorf("Add(%#v): %v; want an *Error", a, err)
		}
	}
}

// TestAddIPv6NotTentative checks that an added IPv6 address is usable at
// once: not tentative (no duplicate address detection), a socket can bind
// it.
func TestAddIPv6NotTentative(t *testing.T) {
	enterNetNS(t)
	needIPv6(t)
	addVeth(t, "nat0", "nat1")
	a := mustParse(t, "fd00::100/128@nat0")
	if _, err := Add(a); err != nil {
		t.Fatal(err)
	}
	h, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	have, ok, err := h.find(a)
	if err != nil || !ok {
		t.Fatalf("find: %v, %v", ok, err)
	}
	if have.flags&unix.IFA_F_TENTATIVE != 0 || have.flags&unix.IFA_F_NODAD == 0 {
		t.Errorf("flags %#x: want IFA_F_NODAD and not IFA_F_TENTATIVE", have.flags)
	}
	if shown, line, checked := ipShows(t, a.Link, a.Prefix); checked && (!shown || strings.Contains(line, "tentative")) {
		t.Errorf("ip: want %v, not tentative: %s", a.Prefix, line)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: a.Prefix.Addr().As16()}); err != nil {
		t.Errorf("bind %v right after Add: %v", a.Prefix.Addr(), err)
	}
}

// TestAddIPv6OtherPrefixLength: the kernel answers EEXIST for an IPv6
// address that is on the link with another prefix length; Add reports
// that, it is not "already there".
func TestAddIPv6OtherPrefixLength(t *testing.T) {
	enterNetNS(t)
	needIPv6(t)
	addVeth(t, "nat0", "nat1")
	a64, a128 := mustParse(t, "fd00::100/64@nat0"), mustParse(t, "fd00::100/128@nat0")
	if added, err := Add(a64); !added || err != nil {
		t.Fatalf("Add(%v) = %v, %v", a64, added, err)
	}
	added, err := Add(a128)
	if added || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("Add(%v) next to %v = %v, %v; want an EEXIST error", a128, a64, added, err)
	}
	t.Log(err)
	if ok, err := Has(a128); ok || err != nil {
		t.Errorf("Has(%v) = %v, %v; want false", a128, ok, err)
	}
	if removed, err := Del(a128); removed || err != nil {
		t.Errorf("Del(%v) = %v, %v; want false, nil", a128, removed, err)
	}
	if ok, err := Has(a64); !ok || err != nil {
		t.Errorf("Has(%v) = %v, %v; want true", a64, ok, err)
	}
}

// TestIPv4Secondary pins down what the package comment says of IPv4
// secondaries: a /32 is a primary of its own and survives the deletion of
// the link's other address; a /24 in that address's subnet is its
// secondary, and goes with it.
func TestIPv4Secondary(t *testing.T) {
	enterNetNS(t)
	addVeth(t, "nat0", "nat1")
	host, vip32, vip24 := mustParse(t, "10.231.0.5/24@nat0"), mustParse(t, "10.231.0.100/32@nat0"), mustParse(t, "10.231.0.101/24@nat0")
	for _, a := range []Addr{host, vip32, vip24} {
		if _, err := Add(a); err != nil {
			t.Fatal(err)
		}
	}
	h, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, c := range []struct {
		a         Addr
		secondary bool
	}{{host, false}, {vip32, false}, {vip24, true}} {
		have, ok, err := h.find(c.a)
		if err != nil || !ok {
			t.Fatalf("find %v: %v, %v", c.a, ok, err)
		}
		if got := have.flags&unix.IFA_F_SECONDARY != 0; got != c.secondary {
			t.Errorf("%v: secondary %v, want %v", c.a, got, c.secondary)
		}
	}
	if _, err := h.Del(host); err != nil {
		t.Fatal(err)
	}
	if ok, _ := h.Has(vip32); !ok {
		t.Errorf("%v went with %v", vip32, host)
	}
	// The secondary went with it, unless promote_secondaries.
	promote, err := os.ReadFile("/proc/sys/net/ipv4/conf/nat0/promote_secondaries")
	if err != nil {
		t.Fatal(err)
	}
	want := string(bytes.TrimSpace(promote)) != "0"
	if ok, err := h.Has(vip24); ok != want || err != nil {
		t.Errorf("after Del(%v): Has(%v) = %v, %v; want %v (promote_secondaries %s)", host, vip24, ok, err, want, bytes.TrimSpace(promote))
	}
}

// TestHandle checks that a Handle works in the namespace it was opened
// in, from a goroutine on any thread.
func TestHandle(t *testing.T) {
	enterNetNS(t)
	needIPv6(t)
	addVeth(t, "nat0", "nat1")
	h, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan error)
	go func() {
		// Not locked: on whatever thread, in the process's namespace.
		for _, s := range []string{"10.231.0.100/32@nat0", "fd00::100/128@nat0"} {
			a, _ := Parse(s)
			if added, err := h.Add(a); !added || err != nil {
				done <- fmt.Errorf("Add(%v) = %v, %v", a, added, err)
				return
			}
			if err := h.Announce(a); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"10.231.0.100/32@nat0", "fd00::100/128@nat0"} {
		if ok, err := Has(mustParse(t, s)); !ok || err != nil {
			t.Errorf("Has(%s) = %v, %v", s, ok, err)
		}
	}
}

// capture opens a packet socket that sees the frames arriving on link.
func capture(t testing.TB, link string) int {
	t.Helper()
	ifi, err := net.InterfaceByName(link)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// awaitFrame reads the frames arriving on fd until pick takes one, for at
// most two seconds.
func awaitFrame(t testing.TB, fd int, what string, pick func(frame []byte) bool) []byte {
	t.Helper()
	buf := make([]byte, 4096)
	others := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if sll, ok := from.(*unix.SockaddrLinklayer); ok && sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if pick(buf[:n]) {
			return bytes.Clone(buf[:n])
		}
		others++
	}
	t.Fatalf("no %s arrived within 2s (%d other frames)", what, others)
	return nil
}

func mac(t testing.TB, link string) net.HardwareAddr {
	t.Helper()
	ifi, err := net.InterfaceByName(link)
	if err != nil {
		t.Fatal(err)
	}
	return ifi.HardwareAddr
}

func TestAnnounceIPv4(t *testing.T) {
	enterNetNS(t)
	addVeth(t, "nat0", "nat1")
	a := mustParse(t, "10.231.0.100/32@nat0")
	if _, err := Add(a); err != nil {
		t.Fatal(err)
	}
	fd := capture(t, "nat1")
	if err := Announce(a); err != nil {
		t.Fatal(err)
	}
	ip := a.Prefix.Addr().As4()
	f := awaitFrame(t, fd, "gratuitous ARP", func(f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_ARP && bytes.Equal(f[14+14:14+18], ip[:])
	})
	hw := mac(t, "nat0")
	eth, arp := f[:14], f[14:42]
	if !bytes.Equal(eth[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("destination %x, want broadcast", eth[0:6])
	}
	if !bytes.Equal(eth[6:12], hw) {
		t.Errorf("source %x, want nat0's %v", eth[6:12], hw)
	}
	for _, c := range []struct {
		name      string
		got, want []byte
	}{
		{"hardware type", arp[0:2], []byte{0, 1}},
		{"protocol type", arp[2:4], []byte{8, 0}},
		{"lengths", arp[4:6], []byte{6, 4}},
		{"operation", arp[6:8], []byte{0, 1}},
		{"sender hardware address", arp[8:14], hw},
		{"sender protocol address", arp[14:18], ip[:]},
		{"target hardware address", arp[18:24], make([]byte, 6)},
		{"target protocol address", arp[24:28], ip[:]},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s: %x, want %x", c.name, c.got, c.want)
		}
	}
}

func TestAnnounceIPv6(t *testing.T) {
	enterNetNS(t)
	needIPv6(t)
	addVeth(t, "nat0", "nat1")
	a := mustParse(t, "fd00::100/128@nat0")
	// The kernel sends from an address of the link only.
	if err := Announce(a); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Announce before Add: %v, want EINVAL", err)
	}
	if _, err := Add(a); err != nil {
		t.Fatal(err)
	}
	fd := capture(t, "nat1")
	target := a.Prefix.Addr().As16()
	hw := mac(t, "nat0")
	// isNA picks neighbour advertisements for a, out of router
	// solicitations, MLD reports and the link-local address's DAD.
	isNA := func(f []byte) bool {
		return len(f) >= 14+40+32 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IPV6 &&
			f[14+6] == unix.IPPROTO_ICMPV6 && f[14+40] == 136 && bytes.Equal(f[14+40+8:14+40+24], target[:])
	}
	check := func(f []byte, router bool) {
		t.Helper()
		eth, ip6, icmp := f[:14], f[14:54], f[54:]
		if want := []byte{0x33, 0x33, 0, 0, 0, 1}; !bytes.Equal(eth[0:6], want) {
			t.Errorf("destination %x, want %x", eth[0:6], want)
		}
		if !bytes.Equal(eth[6:12], hw) {
			t.Errorf("source %x, want nat0's %v", eth[6:12], hw)
		}
		src, dst := netip.AddrFrom16([16]byte(ip6[8:24])), netip.AddrFrom16([16]byte(ip6[24:40]))
		if src != a.Prefix.Addr() || dst != netip.MustParseAddr("ff02::1") {
			t.Errorf("from %v to %v, want from %v to ff02::1", src, dst, a.Prefix.Addr())
		}
		if ip6[7] != 255 {
			t.Errorf("hop limit %d, want 255", ip6[7])
		}
		plen := int(binary.BigEndian.Uint16(ip6[4:]))
		if plen != 32 || len(icmp) < plen {
			t.Fatalf("payload length %d (%d bytes), want 32", plen, len(icmp))
		}
		icmp = icmp[:plen]
		if icmp[1] != 0 {
			t.Errorf("code %d, want 0", icmp[1])
		}
		if !checksumOK(src, dst, icmp) {
			t.Errorf("bad checksum %#04x", binary.BigEndian.Uint16(icmp[2:]))
		}
		wantFlags := byte(0x20) // override, not solicited
		if router {
			wantFlags |= 0x80
		}
		if icmp[4] != wantFlags {
			t.Errorf("flags %#02x, want %#02x", icmp[4], wantFlags)
		}
		if want := append([]byte{2, 1}, hw...); !bytes.Equal(icmp[24:32], want) {
			t.Errorf("option %x, want a target link-layer address %x", icmp[24:32], want)
		}
	}

	if err := Announce(a); err != nil {
		t.Fatal(err)
	}
	check(awaitFrame(t, fd, "neighbour advertisement", isNA), false)

	// A link that forwards sends it with the router flag, as the kernel
	// does. The sysctl is per namespace: make sure this thread is not in
	// the process's before writing it.
	if inode(t, "/proc/thread-self/ns/net") == inode(t, "/proc/self/ns/net") {
		t.Fatal("the test thread is in the process's network namespace")
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/nat0/forwarding", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := Announce(a); err != nil {
		t.Fatal(err)
	}
	check(awaitFrame(t, fd, "neighbour advertisement with the router flag", isNA), true)
}

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// checksumOK verifies an ICMPv6 message's checksum over the IPv6 pseudo
// header: the one's complement sum of it all is 0xffff.
func checksumOK(src, dst netip.Addr, icmp []byte) bool {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	add(binary.BigEndian.AppendUint32(nil, uint32(len(icmp))))
	add([]byte{0, 0, 0, unix.IPPROTO_ICMPV6})
	add(icmp)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func TestAnnounceLoopback(t *testing.T) {
	enterNetNS(t)
	for _, s := range []string{"127.0.0.2/8@lo", "10.231.0.100/32@lo", "::1/128@lo"} {
		if err := Announce(mustParse(t, s)); err != nil {
			t.Errorf("Announce(%s): %v", s, err)
		}
	}
}

// TestAnnounceDown: a link that is down cannot send; Announce says so.
func TestAnnounceDown(t *testing.T) {
	enterNetNS(t)
	addVeth(t, "nat0", "nat1")
	req := ifinfomsg(t, 0, "nat0", nil)
	binary.NativeEndian.PutUint32(req[12:], unix.IFF_UP) // change IFF_UP, to 0
	if err := rtnl(unix.RTM_NEWLINK, 0, req); err != nil {
		t.Fatal(err)
	}
	err := Announce(mustParse(t, "10.231.0.100/32@nat0"))
	if !errors.Is(err, unix.ENETDOWN) {
		t.Errorf("Announce on a link that is down: %v, want ENETDOWN", err)
	}
}

// benchEach runs bench for an IPv4 and an IPv6 address on a veth, each in
// a namespace of its own.
func benchEach(b *testing.B, bench func(b *testing.B, a Addr)) {
	for _, s := range []string{"10.231.0.100/32@nat0", "fd00::100/128@nat0"} {
		name := "IPv4"
		if strings.Contains(s, "::") {
			name = "IPv6"
		}
		b.Run(name, func(b *testing.B) {
			enterNetNS(b)
			a := mustParse(b, s)
			if a.Prefix.Addr().Is6() {
				needIPv6(b)
			}
			addVeth(b, "nat0", "nat1")
			bench(b, a)
		})
	}
}

// BenchmarkAddDel is what a migration pays: one Add on the target, one Del
// on the source, each with a netlink socket of its own.
func BenchmarkAddDel(b *testing.B) {
	benchEach(b, func(b *testing.B, a Addr) {
		for b.Loop() {
			if added, err := Add(a); !added || err != nil {
				b.Fatal(added, err)
			}
			if removed, err := Del(a); !removed || err != nil {
				b.Fatal(removed, err)
			}
		}
	})
}

func BenchmarkHandleAddDel(b *testing.B) {
	benchEach(b, func(b *testing.B, a Addr) {
		h, err := Open()
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		for b.Loop() {
			if added, err := h.Add(a); !added || err != nil {
				b.Fatal(added, err)
			}
			if removed, err := h.Del(a); !removed || err != nil {
				b.Fatal(removed, err)
			}
		}
	})
}

func BenchmarkAnnounce(b *testing.B) {
	benchEach(b, func(b *testing.B, a Addr) {
		if _, err := Add(a); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := Announce(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkHandleAnnounce(b *testing.B) {
	benchEach(b, func(b *testing.B, a Addr) {
		if _, err := Add(a); err != nil {
			b.Fatal(err)
		}
		h, err := Open()
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		for b.Loop() {
			if err := h.Announce(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}
