package netlock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
)

// testNS is a network namespace of the test's own, with lo up.
type testNS struct {
	f    *os.File
	path string // for Install and friends: /proc/self/fd/N
}

// newNetNS makes a network namespace that lives until the test ends, and
// skips the test when the kernel or the caller cannot (no root, no
// nf_tables), unless MIGRATE_REQUIRE_FEATURES names nftables.
func newNetNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN for unshare, CAP_NET_ADMIN for nftables)")
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result)
	// The thread leaves the caller's namespace for good: it stays locked
	// and dies with this goroutine (never the main thread: see osthread).
	osthread.Go(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("unshare(CLONE_NEWNET): %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		ch <- result{f, err}
	})
	r := <-ch
	if r.err != nil {
		skipOrFail(t, "network namespaces", r.err)
	}
	ns := &testNS{f: r.f, path: fmt.Sprintf("/proc/self/fd/%d", r.f.Fd())}
	t.Cleanup(func() { ns.f.Close() })

	ns.up(t, "lo")

	// Probe nf_tables with an empty lock.
	if err := install(ns.f, "migrate_probe", &elements{}); err != nil {
		skipOrFail(t, "nftables", err)
	}
	if err := remove(ns.f, "migrate_probe"); err != nil {
		t.Fatal(err)
	}
	return ns
}

// skipOrFail skips for a missing feature, or fails when CI requires it
// (MIGRATE_REQUIRE_FEATURES is a comma-separated list of names, or "all").
func skipOrFail(t *testing.T, feature string, err error) {
	t.Helper()
	for _, n := range strings.Split(os.Getenv("MIGRATE_REQUIRE_FEATURES"), ",") {
		if n = strings.TrimSpace(n); n == "all" || n == feature {
			t.Fatalf("%s is required (MIGRATE_REQUIRE_FEATURES) but missing: %v", feature, err)
		}
	}
	t.Skipf("%s missing: %v", feature, err)
}

// up brings a link up.
func (ns *testNS) up(t *testing.T, link string) {
	t.Helper()
	if err := ns.run(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(link)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	}); err != nil {
		t.Fatalf("%s up: %v", link, err)
	}
}

// rtnetlink sends one request to the namespace's rtnetlink.
func (ns *testNS) rtnetlink(typ netlink.HeaderType, data []byte) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: int(ns.f.Fd())})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  typ,
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
		},
		Data: data,
	})
	return err
}

func mustAttrs(attrs ...netlink.Attribute) []byte {
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		panic(err)
	}
	return b
}

// veth links ns and peer with a veth pair, link in ns and peerLink in peer,
// both up.
func (ns *testNS) veth(t *testing.T, link string, peer *testNS, peerLink string) {
	t.Helper()
	const vethInfoPeer = 1 // VETH_INFO_PEER
	ifinfomsg := make([]byte, 16)
	peerMsg := append(slices.Clone(ifinfomsg), mustAttrs(
		netlink.Attribute{Type: unix.IFLA_IFNAME, Data: []byte(peerLink + "\x00")},
		netlink.Attribute{Type: unix.IFLA_NET_NS_FD, Data: binary.NativeEndian.AppendUint32(nil, uint32(peer.f.Fd()))},
	)...)
	linkInfo := mustAttrs(
		netlink.Attribute{Type: unix.IFLA_INFO_KIND, Data: []byte("veth\x00")},
		netlink.Attribute{Type: unix.IFLA_INFO_DATA, Data: mustAttrs(
			netlink.Attribute{Type: vethInfoPeer, Data: peerMsg},
		)},
	)
	msg := append(ifinfomsg, mustAttrs(
		netlink.Attribute{Type: unix.IFLA_IFNAME, Data: []byte(link + "\x00")},
		netlink.Attribute{Type: unix.IFLA_LINKINFO, Data: linkInfo},
	)...)
	if err := ns.rtnetlink(unix.RTM_NEWLINK, msg); err != nil {
		skipOrFail(t, "veth", err)
	}
	ns.up(t, link)
	peer.up(t, peerLink)
}

// run calls fn on a thread inside the namespace; sockets fn makes belong to
// the namespace for good and may be used from anywhere afterwards.
func (ns *testNS) run(fn func() error) error {
	errc := make(chan error, 1)
	// Never unlocked: the thread dies with the goroutine instead of going
	// back to the pool in the wrong namespace (never the main thread).
	osthread.Go(func() {
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	})
	return <-errc
}

func (ns *testNS) listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.run(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		if strings.Contains(addr, ":") && strings.Count(addr, ":") > 1 {
			skipOrFail(t, "ipv6", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (ns *testNS) dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	return ns.dialFrom("", network, addr, timeout)
}

// dialFrom dials from local address from ("" for any).
func (ns *testNS) dialFrom(from, network, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	var c net.Conn
	err := ns.run(func() (err error) {
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

// addAddr adds an address to a link, without duplicate address detection.
func (ns *testNS) addAddr(t *testing.T, link string, p netip.Prefix) {
	t.Helper()
	var index int
	if err := ns.run(func() error {
		ifi, err := net.InterfaceByName(link)
		if err == nil {
			index = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	family := byte(unix.AF_INET6)
	if p.Addr().Is4() {
		family = unix.AF_INET
	}
	msg := []byte{family, byte(p.Bits()), 0, unix.RT_SCOPE_UNIVERSE}
	msg = binary.NativeEndian.AppendUint32(msg, uint32(index))
	msg = append(msg, mustAttrs(
		netlink.Attribute{Type: unix.IFA_LOCAL, Data: p.Addr().AsSlice()},
		netlink.Attribute{Type: unix.IFA_ADDRESS, Data: p.Addr().AsSlice()},
		netlink.Attribute{Type: unix.IFA_FLAGS, Data: binary.NativeEndian.AppendUint32(nil, unix.IFA_F_NODAD)},
	)...)
	if err := ns.rtnetlink(unix.RTM_NEWADDR, msg); err != nil {
		if p.Addr().Is6() {
			skipOrFail(t, "ipv6", err)
		}
		t.Fatalf("add %v to %s: %v", p, link, err)
	}
}

// connect makes an established connection to ln from local address from
// ("" for any) and returns its two ends.
func (ns *testNS) connect(t *testing.T, from, network string, ln net.Listener) (client, server *net.TCPConn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := ns.dialFrom(from, network, ln.Addr().String(), 2*time.Second)
	// A new IPv6 address may take a moment to be routable.
	for end := time.Now().Add(2 * time.Second); errors.Is(err, unix.ENETUNREACH) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		c, err = ns.dialFrom(from, network, ln.Addr().String(), 2*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// tables lists the inet tables in ns (nil: the caller's namespace).
func tables(t *testing.T, ns *testNS) []string {
	t.Helper()
	var f *os.File
	if ns != nil {
		f = ns.f
	}
	c, err := dial(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	slices.Sort(names)
	return names
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// serverSide describes the accepted end of a connection as the process
// holding it sees it.
func serverSide(s *net.TCPConn) Conn {
	return Conn{Local: addrPort(s.LocalAddr()), Remote: addrPort(s.RemoteAddr())}
}

// isTimeout reports whether err is a deadline or dial timeout, as opposed
// to a reset or refusal.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
