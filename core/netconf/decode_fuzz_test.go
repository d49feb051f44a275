package netconf

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// FuzzDecode: the decoders of the kernel's answers (links, routes) never
// panic, whatever the bytes.
func FuzzDecode(f *testing.F) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.NativeEndian
	ae.String(unix.IFLA_IFNAME, "eth0")
	ae.Uint32(unix.IFLA_MTU, 1500)
	ae.Int32(unix.IFLA_LINK_NETNSID, 0)
	ae.Nested(unix.IFLA_LINKINFO, func(nae *netlink.AttributeEncoder) error {
		nae.String(unix.IFLA_INFO_KIND, "veth")
		return nil
	})
	attrs, _ := ae.Encode()
	f.Add(append(ifinfomsg(2, unix.IFF_UP, 0), attrs...))
	rt := make([]byte, unix.SizeofRtMsg)
	rt[0], rt[1], rt[4], rt[5], rt[7] = unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RTN_UNICAST
	ra := netlink.NewAttributeEncoder()
	ra.ByteOrder = binary.NativeEndian
	ra.Bytes(unix.RTA_DST, []byte{10, 0, 0, 0})
	ra.Bytes(unix.RTA_GATEWAY, []byte{10, 0, 0, 1})
	ra.Uint32(unix.RTA_OIF, 2)
	rattrs, _ := ra.Encode()
	f.Add(append(rt, rattrs...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeLink(b)
		decodeRoute(b, map[int]string{2: "eth0"})
	})
}
