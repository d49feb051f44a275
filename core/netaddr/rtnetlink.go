package netaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The rtnetlink requests: RTM_GETLINK for a link by name, and
// RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR (a dump) for its addresses. Every
// message is a fixed header (struct ifinfomsg, struct ifaddrmsg) in the
// host's byte order, then attributes.

const (
	// rtextFilterSkipStats (RTEXT_FILTER_SKIP_STATS, not in x/sys) keeps
	// the counters, most of an RTM_NEWLINK, out of the answer.
	rtextFilterSkipStats = 1 << 3
	// devconfForwarding (DEVCONF_FORWARDING) is the index of "forwarding"
	// in IFLA_INET6_CONF, an array of int32 in the order of enum devconf.
	devconfForwarding = 0
)

// link is what the operations need to know of a link.
type link struct {
	index uint32
	typ   uint16 // ARPHRD_*
	flags uint32 // IFF_*
	hw    []byte // hardware address; empty if it has none
	bcast []byte // hardware broadcast address
	// router6 is IPv6 forwarding on the link: its neighbour
	// advertisements carry the router flag, as the kernel's own do.
	router6 bool
}

// getLink asks for the link named name. A missing link is ErrNoLink.
func getLink(c *netlink.Conn, name string) (link, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, name)
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	attrs, err := ae.Encode()
	if err != nil {
		return link{}, err
	}
	// An ifinfomsg of zeros: any family, the link by name rather than by
	// index. No NLM_F_ACK: the answer is the RTM_NEWLINK alone (with an
	// ack too, the ack would wait in the socket for the next request).
	req := append(make([]byte, unix.SizeofIfInfomsg), attrs...)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   req,
	})
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return link{}, ErrNoLink
		}
		return link{}, rtnlError("RTM_GETLINK", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.RTM_NEWLINK {
			return decodeLink(m.Data)
		}
	}
	return link{}, errors.New("RTM_GETLINK: no RTM_NEWLINK in the answer")
}

// decodeLink reads an RTM_NEWLINK: struct ifinfomsg {u8 family, u8 pad,
// u16 type, s32 index, u32 flags, u32 change}, then attributes.
func decodeLink(b []byte) (link, error) {
	if len(b) < unix.SizeofIfInfomsg {
		return link{}, fmt.Errorf("RTM_NEWLINK: %d bytes, short of an ifinfomsg", len(b))
	}
	l := link{
		typ:   binary.NativeEndian.Uint16(b[2:]),
		index: binary.NativeEndian.Uint32(b[4:]),
		flags: binary.NativeEndian.Uint32(b[8:]),
	}
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfInfomsg:])
	if err != nil {
		return link{}, fmt.Errorf("RTM_NEWLINK: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.IFLA_ADDRESS:
			l.hw = ad.Bytes()
		case unix.IFLA_BROADCAST:
			l.bcast = ad.Bytes()
		case unix.IFLA_AF_SPEC:
			// Nested per address family; AF_INET6 holds IFLA_INET6_CONF.
			ad.Nested(func(af *netlink.AttributeDecoder) error {
				for af.Next() {
					if af.Type() != unix.AF_INET6 {
						continue
					}
					af.Nested(func(in6 *netlink.AttributeDecoder) error {
						for in6.Next() {
							if in6.Type() != unix.IFLA_INET6_CONF {
								continue
							}
							if conf := in6.Bytes(); len(conf) >= 4*(devconfForwarding+1) {
								l.router6 = binary.NativeEndian.Uint32(conf[4*devconfForwarding:]) != 0
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return link{}, fmt.Errorf("RTM_NEWLINK: %w", err)
	}
	return l, nil
}

// ifaddrmsg encodes struct ifaddrmsg {u8 family, u8 prefixlen, u8 flags,
// u8 scope, u32 index} and the attributes naming p's address.
func ifaddrmsg(index uint32, p netip.Prefix, flags uint32) ([]byte, error) {
	ip := p.Addr()
	family, scope := byte(unix.AF_INET6), byte(unix.RT_SCOPE_UNIVERSE) // IPv6: the kernel picks the scope
	if ip.Is4() {
		family = unix.AF_INET
		if ip.IsLoopback() {
			scope = unix.RT_SCOPE_HOST // as ip(8) does for 127/8
		}
	}
	b := []byte{family, byte(p.Bits()), byte(flags), scope}
	b = binary.NativeEndian.AppendUint32(b, index)
	ae := netlink.NewAttributeEncoder()
	// IFA_LOCAL is the address; IFA_ADDRESS the same, or the peer of a
	// point-to-point address. Both equal: no peer, for either family.
	ae.Bytes(unix.IFA_LOCAL, ip.AsSlice())
	ae.Bytes(unix.IFA_ADDRESS, ip.AsSlice())
	if flags != 0 {
		// All 32 bits (the header's byte holds only the low 8).
		ae.Uint32(unix.IFA_FLAGS, flags)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(b, attrs...), nil
}

// newAddr puts p on link index with flags (IFA_F_*).
func newAddr(c *netlink.Conn, index uint32, p netip.Prefix, flags uint32) error {
	req, err := ifaddrmsg(index, p, flags)
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  unix.RTM_NEWADDR,
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
		},
		Data: req,
	})
	return rtnlError("RTM_NEWADDR", err)
}

// delAddr removes p, address and prefix length, from link index.
func delAddr(c *netlink.Conn, index uint32, p netip.Prefix) error {
	req, err := ifaddrmsg(index, p, 0)
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_DELADDR, Flags: netlink.Request | netlink.Acknowledge},
		Data:   req,
	})
	return rtnlError("RTM_DELADDR", err)
}

// ifaddr is an address as a dump tells it.
type ifaddr struct {
	prefix netip.Prefix
	flags  uint32 // IFA_F_*
}

// findAddr looks for ip on link index, with any prefix length.
func findAddr(c *netlink.Conn, index uint32, ip netip.Addr) (ifaddr, bool, error) {
	family := byte(unix.AF_INET6)
	if ip.Is4() {
		family = unix.AF_INET
	}
	// With NETLINK_GET_STRICT_CHK the kernel dumps the addresses of
	// ifa_index alone; without, all: the loop filters either way.
	req := []byte{family, 0, 0, 0}
	req = binary.NativeEndian.AppendUint32(req, index)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return ifaddr{}, false, rtnlError("RTM_GETADDR", err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR {
			continue
		}
		a, idx, err := decodeAddr(m.Data)
		if err != nil {
			return ifaddr{}, false, err
		}
		if idx == index && a.prefix.Addr() == ip {
			return a, true, nil
		}
	}
	return ifaddr{}, false, nil
}

// decodeAddr reads an RTM_NEWADDR: an ifaddrmsg, then attributes.
func decodeAddr(b []byte) (ifaddr, uint32, error) {
	if len(b) < unix.SizeofIfAddrmsg {
		return ifaddr{}, 0, fmt.Errorf("RTM_NEWADDR: %d bytes, short of an ifaddrmsg", len(b))
	}
	bits, flags, index := int(b[1]), uint32(b[2]), binary.NativeEndian.Uint32(b[4:])
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfAddrmsg:])
	if err != nil {
		return ifaddr{}, 0, fmt.Errorf("RTM_NEWADDR: %w", err)
	}
	var local, address netip.Addr
	for ad.Next() {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(ad.Bytes())
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(ad.Bytes())
		case unix.IFA_FLAGS:
			flags = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return ifaddr{}, 0, fmt.Errorf("RTM_NEWADDR: %w", err)
	}
	// IFA_LOCAL is the address when there is one (always for IPv4, for
	// IPv6 only with a peer); otherwise IFA_ADDRESS is.
	ip := local
	if !ip.IsValid() {
		ip = address
	}
	return ifaddr{netip.PrefixFrom(ip, bits), flags}, index, nil
}

// rtnlError names the request that failed, keeps the errno for errors.Is,
// and adds the kernel's message (an extended ack) when it gave one.
func rtnlError(req string, err error) error {
	if err == nil {
		return nil
	}
	var oe *netlink.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		if oe.Message != "" {
			return fmt.Errorf("%s: %w (%s)", req, oe.Err, oe.Message)
		}
		return fmt.Errorf("%s: %w", req, oe.Err)
	}
	return fmt.Errorf("%s: %w", req, err)
}
