package netconf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// Error is a failed step of making a namespace's configuration.
type Error struct {
	What string // "create veth eth0 (host side veth1)", "address 10.0.0.2/24 on eth0", ...
	Err  error
}

func (e *Error) Error() string { return "network namespace: " + e.What + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// veth attributes (include/uapi/linux/veth.h).
const vethInfoPeer = 1

// ifinfomsg returns a struct ifinfomsg for link index with flags set
// among those of change.
func ifinfomsg(index int, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], flags)
	binary.NativeEndian.PutUint32(b[12:], change)
	return b
}

// request sends a request that creates or changes something and waits
// for its acknowledgement.
func request(c *netlink.Conn, typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) error {
	_, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | flags},
		Data:   data,
	})
	return err
}

// linkIndex returns the index of the link named name, 0 if there is none.
func linkIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, nil // no such link (or none readable: the request that needs it says)
	}
	return ifi.Index, nil
}

// LinkExists says whether the calling thread's network namespace has a
// link named name.
func LinkExists(name string) bool {
	i, _ := linkIndex(name)
	return i != 0
}

// CreateVeth makes, in the calling thread's network namespace, a veth
// named host whose other end is l (its name, MAC address and MTU) in the
// network namespace of nsFD. host gets l's MTU too.
func CreateVeth(host string, l *core.NetLink, nsFD int) error {
	fail := func(err error) error {
		return &Error{What: fmt.Sprintf("create veth %s (its other end %s here)", l.Name, host), Err: err}
	}
	mac, err := net.ParseMAC(l.MAC)
	if err != nil {
		return fail(err)
	}
	peer := netlink.NewAttributeEncoder()
	peer.String(unix.IFLA_IFNAME, l.Name)
	peer.Bytes(unix.IFLA_ADDRESS, mac)
	peer.Uint32(unix.IFLA_MTU, uint32(l.MTU))
	peer.Uint32(unix.IFLA_NET_NS_FD, uint32(nsFD))
	pattrs, err := peer.Encode()
	if err != nil {
		return fail(err)
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, host)
	ae.Uint32(unix.IFLA_MTU, uint32(l.MTU))
	ae.Nested(unix.IFLA_LINKINFO, func(nae *netlink.AttributeEncoder) error {
		nae.String(unix.IFLA_INFO_KIND, core.LinkVeth)
		nae.Nested(unix.IFLA_INFO_DATA, func(dae *netlink.AttributeEncoder) error {
			dae.Bytes(vethInfoPeer, append(ifinfomsg(0, 0, 0), pattrs...))
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return fail(err)
	}
	c, err := dial()
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	if err := request(c, unix.RTM_NEWLINK, netlink.Create|netlink.Excl, append(ifinfomsg(0, 0, 0), attrs...)); err != nil {
		return fail(err)
	}
	return nil
}

// Attach puts link name of the calling thread's network namespace on
// bridge (if not "") and up.
func Attach(name, bridge string) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	index, err := linkIndex(name)
	if err != nil || index == 0 {
		return &Error{What: "link " + name, Err: errors.New("no such link")}
	}
	ae := netlink.NewAttributeEncoder()
	if bridge != "" {
		br, _ := linkIndex(bridge)
		if br == 0 {
			return &Error{What: fmt.Sprintf("attach %s to bridge %s", name, bridge), Err: errors.New("no such bridge")}
		}
		ae.Uint32(unix.IFLA_MASTER, uint32(br))
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if err := request(c, unix.RTM_NEWLINK, 0, append(ifinfomsg(index, unix.IFF_UP, unix.IFF_UP), attrs...)); err != nil {
		return &Error{What: fmt.Sprintf("attach %s to bridge %q, up", name, bridge), Err: err}
	}
	return nil
}

// Apply gives the calling thread's network namespace, a new one whose
// veths are there already (CreateVeth), the rest of n: the sysctls, the
// loopback's MTU, every link's addresses and state, the routes.
func Apply(n *core.NetNamespace) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	// The global sysctls first (ip_forward sets every link's forwarding),
	// then the links' own.
	if err := writeSysctls(n, func(f []string) bool { return len(f) != 5 || f[3] == "all" }); err != nil {
		return err
	}
	if err := writeSysctls(n, func(f []string) bool { return len(f) == 5 && f[3] == "default" }); err != nil {
		return err
	}
	if err := writeSysctls(n, func(f []string) bool { return len(f) == 5 && f[3] != "all" && f[3] != "default" }); err != nil {
		return err
	}
	for i := range n.Links {
		l := &n.Links[i]
		index, _ := linkIndex(l.Name)
		if index == 0 {
			return &Error{What: "link " + l.Name, Err: errors.New("not made")}
		}
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(unix.IFLA_MTU, uint32(l.MTU))
		attrs, err := ae.Encode()
		if err != nil {
			return err
		}
		var flags uint32
		if l.Up {
			flags = unix.IFF_UP
		}
		if err := request(c, unix.RTM_NEWLINK, 0, append(ifinfomsg(index, flags, unix.IFF_UP), attrs...)); err != nil {
			return &Error{What: fmt.Sprintf("MTU %d and state of %s", l.MTU, l.Name), Err: err}
		}
		// Up first: the addresses the kernel makes itself (the
		// loopback's) are there, as it makes them, before these.
		for _, a := range l.Addrs {
			if err := addAddr(c, index, a); err != nil {
				return &Error{What: fmt.Sprintf("address %s on %s", a.Prefix, l.Name), Err: err}
			}
		}
	}
	for _, r := range n.Routes {
		if err := addRoute(c, r); err != nil {
			return &Error{What: "route " + r.String(), Err: err}
		}
	}
	return nil
}

// writeSysctls writes the sysctls of n whose path (split at "/") which
// selects.
func writeSysctls(n *core.NetNamespace, which func([]string) bool) error {
	for name, v := range n.Sysctls {
		if !core.NetSysctlPattern.MatchString(name) || !which(strings.Split(name, "/")) {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(v), 0); err != nil {
			return &Error{What: fmt.Sprintf("sysctl %s = %s", name, v), Err: err}
		}
	}
	return nil
}

// addAddr adds address a to link index; one there already (the
// loopback's, an IPv6 link-local one) is no error.
func addAddr(c *netlink.Conn, index int, a core.NetAddr) error {
	p, err := netip.ParsePrefix(a.Prefix)
	if err != nil {
		return err
	}
	fam := byte(unix.AF_INET)
	if p.Addr().Is6() {
		fam = unix.AF_INET6
	}
	msg := make([]byte, unix.SizeofIfAddrmsg)
	msg[0], msg[1], msg[3] = fam, byte(p.Bits()), a.Scope
	binary.NativeEndian.PutUint32(msg[4:], uint32(index))
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.NativeEndian
	ae.Bytes(unix.IFA_LOCAL, p.Addr().AsSlice())
	ae.Bytes(unix.IFA_ADDRESS, p.Addr().AsSlice())
	if a.NoDAD {
		ae.Uint32(unix.IFA_FLAGS, unix.IFA_F_NODAD)
	}
	if a.Broadcast != "" {
		b, err := netip.ParseAddr(a.Broadcast)
		if err != nil {
			return err
		}
		ae.Bytes(unix.IFA_BROADCAST, b.AsSlice())
	}
	if a.Label != "" {
		ae.String(unix.IFA_LABEL, a.Label)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	err = request(c, unix.RTM_NEWADDR, netlink.Create|netlink.Excl, append(msg, attrs...))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// addRoute adds r to the main table.
func addRoute(c *netlink.Conn, r core.NetRoute) error {
	dst, err := netip.ParsePrefix(r.Dst)
	if err != nil {
		return err
	}
	msg := make([]byte, unix.SizeofRtMsg)
	msg[0] = unix.AF_INET
	if dst.Addr().Is6() {
		msg[0] = unix.AF_INET6
	}
	msg[1], msg[4], msg[5], msg[6], msg[7] = byte(dst.Bits()), unix.RT_TABLE_MAIN, r.Protocol, r.Scope, r.Type
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.NativeEndian
	if dst.Bits() > 0 {
		ae.Bytes(unix.RTA_DST, dst.Addr().AsSlice())
	}
	for _, a := range []struct {
		typ uint16
		s   string
	}{{unix.RTA_GATEWAY, r.Gateway}, {unix.RTA_PREFSRC, r.Src}} {
		if a.s == "" {
			continue
		}
		ip, err := netip.ParseAddr(a.s)
		if err != nil {
			return err
		}
		ae.Bytes(a.typ, ip.AsSlice())
	}
	if r.Dev != "" {
		index, _ := linkIndex(r.Dev)
		if index == 0 {
			return fmt.Errorf("no link %s", r.Dev)
		}
		ae.Uint32(unix.RTA_OIF, uint32(index))
	}
	if r.Metric != 0 {
		ae.Uint32(unix.RTA_PRIORITY, r.Metric)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	return request(c, unix.RTM_NEWROUTE, netlink.Create|netlink.Excl, append(msg, attrs...))
}
