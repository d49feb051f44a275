//go:build linux

package raw

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// maxNetlinkGroupBytes bounds the membership bitmap NetlinkGroups reads:
// 64 Ki groups, far more than any protocol has.
const maxNetlinkGroupBytes = 8192

// NetlinkGroups returns the multicast groups netlink socket fd is a member
// of (NETLINK_LIST_MEMBERSHIPS), numbered from 1 as NETLINK_ADD_MEMBERSHIP
// takes them, in increasing order.
func NetlinkGroups(fd int) ([]uint32, error) {
	b := make([]byte, 64)
	for {
		n, err := GetsockoptBytes(fd, unix.SOL_NETLINK, unix.NETLINK_LIST_MEMBERSHIPS, b, uint32(len(b)))
		if err != nil {
			return nil, fmt.Errorf("NETLINK_LIST_MEMBERSHIPS: %w", err)
		}
		if int(n) <= len(b) {
			b = b[:n]
			break
		}
		// The kernel says how long the bitmap is, and wrote what fit.
		if n > maxNetlinkGroupBytes {
			return nil, fmt.Errorf("NETLINK_LIST_MEMBERSHIPS: a bitmap of %d bytes", n)
		}
		b = make([]byte, n)
	}
	var out []uint32
	for w := 0; w+4 <= len(b); w += 4 {
		v := binary.NativeEndian.Uint32(b[w:])
		for bit := 0; v != 0; bit++ {
			if v&1 != 0 {
				out = append(out, uint32(8*w+bit+1))
			}
			v >>= 1
		}
	}
	return out, nil
}
