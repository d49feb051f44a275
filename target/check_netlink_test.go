package target

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// TestCheckNetlink: the check of a netlink socket finds nothing to say of
// one as its image has it, and names the port id, groups and destination
// of one that differs.
func TestCheckNetlink(t *testing.T) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrNetlink).Pid
	image := func(n core.NetlinkState) *core.FD {
		return &core.FD{FD: fd, Kind: core.FDSocket, Socket: &core.Socket{Family: unix.AF_NETLINK, Type: unix.SOCK_RAW,
			Protocol: unix.NETLINK_ROUTE, Netlink: &n}}
	}
	c := &checker{pid: os.Getpid()}
	c.netlink("fd", image(core.NetlinkState{PortID: port, Groups: []uint32{unix.RTNLGRP_LINK}}))
	if len(c.diffs) != 0 {
		t.Errorf("the same socket differs: %v", c.diffs)
	}
	c = &checker{pid: os.Getpid()}
	c.netlink("fd", image(core.NetlinkState{PortID: port + 1, Groups: []uint32{unix.RTNLGRP_LINK, 33}, DstGroup: 1}))
	if len(c.diffs) != 3 {
		t.Errorf("a socket with another port id, groups and destination: %d differences, want 3: %v", len(c.diffs), c.diffs)
	}
}
