// Package netconf reads and makes the configuration of a network
// namespace over rtnetlink: its interfaces (loopback and veth; Read
// refuses any other kind), their addresses, the routes of its main table
// that the kernel did not make itself, and the sysctls of
// core.NetSysctlPattern. Every function works in the network namespace of
// the calling thread (a caller in another one locks its thread and enters
// it first, as proc.InNamespace does).
//
// Messages are struct ifinfomsg, ifaddrmsg or rtmsg in the host's byte
// order, then attributes (include/uapi/linux/rtnetlink.h).
package netconf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// UnsupportedError refuses a namespace with an interface migrate does
// not carry (a bridge, macvlan, tun, vxlan, wireguard, ...), or a route
// it would not give back.
type UnsupportedError struct {
	Link string // the interface, or "" for a route
	Kind string // its kind, as rtnetlink names it ("bridge"), or what is wrong
}

func (e *UnsupportedError) Error() string {
	if e.Link == "" {
		return "network namespace: " + e.Kind
	}
	return fmt.Sprintf("network namespace: interface %s is a %s: migrate carries the loopback and veths whose other end is outside", e.Link, e.Kind)
}

// fallbackLinks are the devices the kernel makes in every new network
// namespace when a tunnel module is loaded: a new namespace has them too.
// Down, without addresses, they are left out of the configuration.
var fallbackLinks = []string{"sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0"}

// Link is an interface as read, with what Read's caller needs to find a
// veth's other end.
type Link struct {
	core.NetLink
	Index int
	// PeerIndex is a veth's other end's index, in the namespace
	// PeerNSID names, when PeerElsewhere; in this one else.
	PeerIndex     int
	PeerElsewhere bool
}

// Config is the configuration Read found.
type Config struct {
	Links   []Link
	Routes  []core.NetRoute
	Sysctls map[string]string
}

// Core returns the configuration as the image has it.
func (c *Config) Core() *core.NetNamespace {
	n := &core.NetNamespace{Routes: c.Routes, Sysctls: c.Sysctls}
	for _, l := range c.Links {
		n.Links = append(n.Links, l.NetLink)
	}
	return n
}

// dial opens an rtnetlink socket in the calling thread's network
// namespace.
func dial() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink: %w", err)
	}
	return c, nil
}

// rtaNHID (RTA_NH_ID, not in x/sys) names a nexthop object.
const rtaNHID = 30

// rawLink is an RTM_NEWLINK decoded.
type rawLink struct {
	index, flags, typ int
	name, kind        string
	mac               []byte
	mtu, link, master int
	netnsid           int
	hasNetnsid        bool
}

func decodeLink(b []byte) (rawLink, error) {
	var l rawLink
	if len(b) < unix.SizeofIfInfomsg {
		return l, fmt.Errorf("RTM_NEWLINK of %d bytes", len(b))
	}
	l.typ = int(binary.NativeEndian.Uint16(b[2:]))
	l.index = int(int32(binary.NativeEndian.Uint32(b[4:])))
	l.flags = int(binary.NativeEndian.Uint32(b[8:]))
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfInfomsg:])
	if err != nil {
		return l, err
	}
	ad.ByteOrder = binary.NativeEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.IFLA_IFNAME:
			l.name = ad.String()
		case unix.IFLA_ADDRESS:
			l.mac = slices.Clone(ad.Bytes())
		case unix.IFLA_MTU:
			l.mtu = int(ad.Uint32())
		case unix.IFLA_LINK:
			l.link = int(ad.Uint32())
		case unix.IFLA_MASTER:
			l.master = int(ad.Uint32())
		case unix.IFLA_LINK_NETNSID:
			l.netnsid, l.hasNetnsid = int(ad.Int32()), true
		case unix.IFLA_LINKINFO:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.IFLA_INFO_KIND {
						l.kind = nad.String()
					}
				}
				return nil
			})
		}
	}
	return l, ad.Err()
}

// dumpLinks lists the links of the namespace.
func dumpLinks(c *netlink.Conn) ([]rawLink, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, 1<<3) // RTEXT_FILTER_SKIP_STATS
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request | netlink.Dump},
		Data:   append(make([]byte, unix.SizeofIfInfomsg), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("RTM_GETLINK: %w", err)
	}
	var out []rawLink
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK {
			continue
		}
		l, err := decodeLink(m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// Read reads the configuration of the calling thread's network
// namespace. An interface of another kind than loopback or veth is an
// *UnsupportedError, as is a route of another table than main (policy
// routing) or through several next hops.
func Read() (*Config, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, err := dumpLinks(c)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range raw {
		names[l.index] = l.name
	}
	addrs, err := dumpAddrs(c, names)
	if err != nil {
		return nil, err
	}
	cfg := &Config{Sysctls: map[string]string{}}
	for _, l := range raw {
		kind := l.kind
		if l.typ == unix.ARPHRD_LOOPBACK && kind == "" {
			kind = core.LinkLoopback
		}
		if slices.Contains(fallbackLinks, l.name) && l.flags&unix.IFF_UP == 0 && len(addrs[l.index]) == 0 {
			continue
		}
		switch kind {
		case core.LinkLoopback, core.LinkVeth:
		case "":
			return nil, &UnsupportedError{Link: l.name, Kind: fmt.Sprintf("hardware type %d", l.typ)}
		default:
			return nil, &UnsupportedError{Link: l.name, Kind: kind}
		}
		if l.master != 0 {
			return nil, &UnsupportedError{Link: l.name, Kind: kind + " enslaved to another interface"}
		}
		if kind == core.LinkVeth && !l.hasNetnsid {
			// Its other end is in this namespace too: the restore makes
			// each veth's other end outside.
			return nil, &UnsupportedError{Link: l.name, Kind: "veth whose other end is in the same namespace"}
		}
		nl := Link{NetLink: core.NetLink{Name: l.name, Kind: kind, MTU: l.mtu, Up: l.flags&unix.IFF_UP != 0, Addrs: addrs[l.index]}, Index: l.index}
		if kind == core.LinkVeth {
			nl.MAC = net.HardwareAddr(l.mac).String()
			nl.PeerIndex, nl.PeerElsewhere = l.link, l.hasNetnsid
		}
		cfg.Links = append(cfg.Links, nl)
	}
	if cfg.Routes, err = dumpRoutes(c, names); err != nil {
		return nil, err
	}
	if err := readSysctls(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// readSysctls reads the sysctls of core.NetSysctlPattern of the links of
// cfg, "all" and "default"; those the kernel lacks (IPv6 off) are left
// out.
func readSysctls(cfg *Config) error {
	files := []string{"net/ipv4/ip_forward"}
	for _, l := range append([]string{"all", "default"}, linkNames(cfg)...) {
		files = append(files, "net/ipv4/conf/"+l+"/forwarding", "net/ipv6/conf/"+l+"/forwarding", "net/ipv6/conf/"+l+"/disable_ipv6")
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("/proc/sys", f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", f, err)
		}
		cfg.Sysctls[f] = strings.TrimSpace(string(b))
	}
	return nil
}

func linkNames(cfg *Config) []string {
	var out []string
	for _, l := range cfg.Links {
		out = append(out, l.Name)
	}
	return out
}

// dumpAddrs lists the addresses of every link, by link index, in the
// kernel's order (the order they were added in, for IPv4: which is
// primary for a subnet, and so a connection's source, follows from it);
// names are the links' names by index (an address's label is kept when
// it is not its link's name).
func dumpAddrs(c *netlink.Conn, names map[int]string) (map[int][]core.NetAddr, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfAddrmsg),
	})
	if err != nil {
		return nil, fmt.Errorf("RTM_GETADDR: %w", err)
	}
	out := map[int][]core.NetAddr{}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR {
			continue
		}
		b := m.Data
		if len(b) < unix.SizeofIfAddrmsg {
			return nil, fmt.Errorf("RTM_NEWADDR of %d bytes", len(b))
		}
		plen, flags, scope, index := int(b[1]), uint32(b[2]), b[3], int(binary.NativeEndian.Uint32(b[4:]))
		ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfAddrmsg:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.NativeEndian
		var addr, local, brd []byte
		var label string
		for ad.Next() {
			switch ad.Type() {
			case unix.IFA_ADDRESS:
				addr = ad.Bytes()
			case unix.IFA_LOCAL:
				local = ad.Bytes()
			case unix.IFA_BROADCAST:
				brd = ad.Bytes()
			case unix.IFA_LABEL:
				label = ad.String()
			case unix.IFA_FLAGS:
				flags = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		if local != nil {
			addr = local // IPv4: IFA_ADDRESS is the peer's on a point-to-point link
		}
		ip, ok := netip.AddrFromSlice(addr)
		if !ok {
			return nil, fmt.Errorf("RTM_NEWADDR: address of %d bytes", len(addr))
		}
		a := core.NetAddr{Prefix: netip.PrefixFrom(ip, plen).String(), Scope: scope, NoDAD: flags&unix.IFA_F_NODAD != 0}
		if b, ok := netip.AddrFromSlice(brd); ok {
			a.Broadcast = b.String()
		}
		if label != names[index] {
			a.Label = label
		}
		out[index] = append(out[index], a)
	}
	return out, nil
}

// dumpRoutes lists the routes of both families the namespace was given
// (not those of protocol kernel, made for an address or a link), sorted.
func dumpRoutes(c *netlink.Conn, names map[int]string) ([]core.NetRoute, error) {
	var out []core.NetRoute
	for _, fam := range []byte{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, unix.SizeofRtMsg)
		req[0] = fam
		msgs, err := c.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.RTM_GETROUTE, Flags: netlink.Request | netlink.Dump},
			Data:   req,
		})
		if errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("RTM_GETROUTE: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_NEWROUTE {
				continue
			}
			r, keep, err := decodeRoute(m.Data, names)
			if err != nil {
				return nil, err
			}
			if keep {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b core.NetRoute) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// decodeRoute reads an RTM_NEWROUTE: struct rtmsg {u8 family, dst_len,
// src_len, tos, table, protocol, scope, type; u32 flags}, then
// attributes. It says whether the route is one to carry.
func decodeRoute(b []byte, names map[int]string) (core.NetRoute, bool, error) {
	var r core.NetRoute
	if len(b) < unix.SizeofRtMsg {
		return r, false, fmt.Errorf("RTM_NEWROUTE of %d bytes", len(b))
	}
	fam, dstLen, srcLen, tos, table := b[0], int(b[1]), b[2], b[3], uint32(b[4])
	r.Protocol, r.Scope, r.Type = b[5], b[6], b[7]
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofRtMsg:])
	if err != nil {
		return r, false, err
	}
	ad.ByteOrder = binary.NativeEndian
	var dst, gw, src []byte
	oif := 0
	multipath := false
	for ad.Next() {
		switch ad.Type() {
		case unix.RTA_TABLE:
			table = ad.Uint32()
		case unix.RTA_DST:
			dst = ad.Bytes()
		case unix.RTA_GATEWAY:
			gw = ad.Bytes()
		case unix.RTA_PREFSRC:
			src = ad.Bytes()
		case unix.RTA_OIF:
			oif = int(ad.Uint32())
		case unix.RTA_PRIORITY:
			r.Metric = ad.Uint32()
		case unix.RTA_MULTIPATH, unix.RTA_VIA, unix.RTA_ENCAP, rtaNHID:
			multipath = true
		}
	}
	if err := ad.Err(); err != nil {
		return r, false, err
	}
	// The local table, and what the kernel made itself, come back with
	// the addresses and links.
	if table == unix.RT_TABLE_LOCAL || r.Protocol == unix.RTPROT_KERNEL {
		return r, false, nil
	}
	zero := netip.IPv4Unspecified()
	if fam == unix.AF_INET6 {
		zero = netip.IPv6Unspecified()
	}
	d := zero
	if dst != nil {
		var ok bool
		if d, ok = netip.AddrFromSlice(dst); !ok {
			return r, false, fmt.Errorf("RTM_NEWROUTE: destination of %d bytes", len(dst))
		}
	}
	r.Dst = netip.PrefixFrom(d, dstLen).String()
	switch {
	case table != unix.RT_TABLE_MAIN:
		return r, false, &UnsupportedError{Kind: fmt.Sprintf("route %s in table %d (policy routing is not carried)", r.Dst, table)}
	case multipath || srcLen != 0 || tos != 0:
		return r, false, &UnsupportedError{Kind: fmt.Sprintf("route %s with several next hops, a source prefix or a TOS (not carried)", r.Dst)}
	}
	for _, a := range []struct {
		b  []byte
		to *string
	}{{gw, &r.Gateway}, {src, &r.Src}} {
		if a.b == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.b)
		if !ok {
			return r, false, fmt.Errorf("RTM_NEWROUTE: address of %d bytes", len(a.b))
		}
		*a.to = ip.String()
	}
	if oif != 0 {
		if r.Dev = names[oif]; r.Dev == "" {
			return r, false, fmt.Errorf("route %s through link %d, which the namespace does not list", r.Dst, oif)
		}
	}
	return r, true, nil
}

// PeerName returns the name of the veth in the calling thread's network
// namespace that is the other end of link l of another namespace: the
// veth of index l.PeerIndex whose own peer is l.Index. It returns "" if
// there is none (the other end is in a third namespace).
func PeerName(l *Link) (string, error) {
	if l.Kind != core.LinkVeth || !l.PeerElsewhere {
		return "", nil
	}
	c, err := dial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	links, err := dumpLinks(c)
	if err != nil {
		return "", err
	}
	for _, h := range links {
		if h.index == l.PeerIndex && h.kind == core.LinkVeth && h.link == l.Index && h.hasNetnsid {
			return h.name, nil
		}
	}
	return "", nil
}
