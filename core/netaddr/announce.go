package netaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// Announce tells the neighbours on a's link that a is here now, so that
// they send to this host at once rather than to the one a left (their
// neighbour cache entry for it would last until it went stale, tens of
// seconds). It sends one packet:
//
//   - IPv4: a gratuitous ARP (RFC 5227's announcement): an ARP request,
//     sender and target protocol address both a, sender hardware address
//     the link's, target hardware address zero, to the link's broadcast
//     address, through a packet socket.
//   - IPv6: an unsolicited neighbour advertisement (RFC 4861, 7.2.6): from
//     a to ff02::1 (all nodes), hop limit 255, override flag set, target
//     a, with a target link-layer address option holding the link's
//     address; router flag set if the link forwards IPv6, as the kernel
//     does. The kernel computes the checksum.
//
// A link without a hardware address (loopback, tunnels) or with IFF_NOARP
// has no neighbours to tell: Announce returns nil. A link of another type
// than Ethernet that has one is an error wrapping errors.ErrUnsupported.
//
// Preconditions: a is on its link (Add it first). For IPv6 the kernel
// checks it: an address the link does not have, or that is still
// tentative, cannot be the source (EINVAL).
func (h *Handle) Announce(a Addr) error {
	l, err := h.link(a)
	if err == nil {
		err = h.announce(l, a.Prefix.Addr())
	}
	if err != nil {
		return &Error{"announce", a, err}
	}
	return nil
}

func (h *Handle) announce(l link, ip netip.Addr) error {
	if l.flags&(unix.IFF_LOOPBACK|unix.IFF_NOARP) != 0 || isZero(l.hw) {
		return nil
	}
	if l.typ != unix.ARPHRD_ETHER || len(l.hw) != 6 {
		return fmt.Errorf("link type %d, hardware address %x: only Ethernet is done: %w", l.typ, l.hw, errors.ErrUnsupported)
	}
	fd, err := h.socket(ip.Is4())
	if err != nil {
		return err
	}
	if ip.Is4() {
		return sendARP(fd, l, ip)
	}
	return sendNA(fd, l, ip)
}

// socket returns the socket for announcing an address of the family,
// made now for a lazy handle.
func (h *Handle) socket(v4 bool) (int, error) {
	fd, err, mk := &h.na, h.naErr, naSocket
	if v4 {
		fd, err, mk = &h.arp, h.arpErr, arpSocket
	}
	if *fd < 0 && h.lazy {
		*fd, err = mk()
	}
	if *fd < 0 {
		if err == nil {
			err = errors.New("no socket")
		}
		return -1, err
	}
	return *fd, nil
}

// arpSocket makes a packet socket that sends link-layer payloads (the
// kernel adds the link header) and, bound to no protocol, receives
// nothing.
func arpSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket(AF_PACKET)", err)
	}
	return fd, nil
}

// closePacketSocket closes a packet socket on a goroutine of its own. The
// kernel's close of one waits for an RCU grace period (synchronize_net in
// packet_release): 16 ms here, where everything else Announce does takes
// some 30 µs; and nobody needs to wait for it.
func closePacketSocket(fd int) {
	go unix.Close(fd)
}

// sendARP sends the announcement of ip on l:
//
//	 0  u16  hardware type     1 (Ethernet)
//	 2  u16  protocol type     0x0800 (IPv4)
//	 4  u8   hardware length   6
//	 5  u8   protocol length   4
//	 6  u16  operation         1 (request)
//	 8  [6]  sender hardware   the link's address
//	14  [4]  sender protocol   ip
//	18  [6]  target hardware   zero
//	24  [4]  target protocol   ip
//
// all big-endian, 28 bytes after the Ethernet header.
func sendARP(fd int, l link, ip netip.Addr) error {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], unix.ARPHRD_ETHER)
	binary.BigEndian.PutUint16(p[2:], unix.ETH_P_IP)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], 1)
	copy(p[8:], l.hw)
	ip4 := ip.As4()
	copy(p[14:], ip4[:])
	copy(p[24:], ip4[:])
	to := &unix.SockaddrLinklayer{
		Protocol: htons(unix.ETH_P_ARP),
		Ifindex:  int(l.index),
		Halen:    6,
	}
	bcast := l.bcast
	if len(bcast) != 6 {
		bcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	}
	copy(to.Addr[:], bcast)
	return ignoringEINTR("sendto(AF_PACKET)", func() error { return unix.Sendto(fd, p, 0, to) })
}

// naSocket makes a raw ICMPv6 socket to send neighbour advertisements:
// hop limit 255 to multicast (a receiver drops neighbour discovery with
// less), no copy looped back, and every incoming ICMPv6 type filtered out,
// for it is never read.
func naSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return -1, os.NewSyscallError("socket(AF_INET6, IPPROTO_ICMPV6)", err)
	}
	var blockAll unix.ICMPv6Filter
	for i := range blockAll.Data {
		blockAll.Data[i] = ^uint32(0)
	}
	if err = unix.SetsockoptICMPv6Filter(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &blockAll); err != nil {
		err = os.NewSyscallError("setsockopt(ICMPV6_FILTER)", err)
	} else if err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
		err = os.NewSyscallError("setsockopt(IPV6_MULTICAST_HOPS)", err)
	} else if err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, 0); err != nil {
		err = os.NewSyscallError("setsockopt(IPV6_MULTICAST_LOOP)", err)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// allNodes is ff02::1, the link's all-nodes multicast group.
var allNodes = netip.MustParseAddr("ff02::1").As16()

// sendNA sends the unsolicited neighbour advertisement of ip on l:
//
//	 0  u8    type      136 (neighbour advertisement)
//	 1  u8    code      0
//	 2  u16   checksum  (the kernel's)
//	 4  u8    flags     0x80 router, 0x40 solicited, 0x20 override
//	 5  [3]   reserved
//	 8  [16]  target    ip
//	24  u8    option    2 (target link-layer address)
//	25  u8    length    1 (units of 8 bytes)
//	26  [6]   the link's address
//
// The source address and the link go in an IPV6_PKTINFO message, so that
// one socket serves every address and link of its namespace.
func sendNA(fd int, l link, ip netip.Addr) error {
	p := make([]byte, 32)
	p[0] = 136
	p[4] = 0x20
	if l.router6 {
		p[4] |= 0x80
	}
	target := ip.As16()
	copy(p[8:], target[:])
	p[24], p[25] = 2, 1
	copy(p[26:], l.hw)
	oob := unix.PktInfo6(&unix.Inet6Pktinfo{Addr: target, Ifindex: l.index})
	to := &unix.SockaddrInet6{Addr: allNodes, ZoneId: l.index}
	return ignoringEINTR("sendmsg(IPPROTO_ICMPV6)", func() error { return unix.Sendmsg(fd, p, oob, to, 0) })
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// htons puts v in network byte order, as struct sockaddr_ll wants its
// protocol.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// ignoringEINTR calls fn again while a signal interrupts it, and names
// the system call in its error.
func ignoringEINTR(name string, fn func() error) error {
	return os.NewSyscallError(name, raw.IgnoringEINTR(fn))
}
