package target

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// netlinkSocket rebuilds a netlink socket in the agent's network namespace
// (the process's: a dump refuses a process of another): options, then the
// same port id, the groups, the destination. A port id taken on this host
// fails the restore with an *AddrError; the messages queued at the dump
// are gone, which is said.
func (r *restorer) netlinkSocket(fdnum int, s *core.Socket) (*os.File, error) {
	n := s.Netlink
	if n == nil {
		return nil, errors.New("netlink socket without its state")
	}
	if _, ok := core.NetlinkProtocols[s.Protocol]; !ok {
		return nil, fmt.Errorf("netlink protocol %d", s.Protocol)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, s.Type|unix.SOCK_CLOEXEC, s.Protocol)
	if err != nil {
		return nil, fmt.Errorf("socket(AF_NETLINK, %d, %s): %w", s.Type, core.NetlinkProtocols[s.Protocol], err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	r.setOptions(r.fdName(fdnum), fd, s.Options)
	if n.PortID != 0 {
		// Groups are joined below, each alike, past the first 32 too.
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: n.PortID}); err != nil {
			return nil, &AddrError{PID: r.pid, FD: fdnum, Addr: fmt.Sprintf("netlink port %d (%s)", n.PortID, core.NetlinkProtocols[s.Protocol]), Err: err}
		}
	}
	for _, g := range n.Groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			return nil, fmt.Errorf("join netlink group %d: %w", g, err)
		}
	}
	if n.DstPortID != 0 || n.DstGroup != 0 {
		dst := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: n.DstPortID}
		if n.DstGroup != 0 {
			dst.Groups = 1 << (n.DstGroup - 1)
		}
		if err := unix.Connect(fd, dst); err != nil {
			return nil, fmt.Errorf("connect to netlink port %d group %d: %w", n.DstPortID, n.DstGroup, err)
		}
	}
	if n.Unread > 0 {
		r.warn("%s: netlink socket (%s): the messages it had not read (%d bytes of buffer) are dropped; its kernel senders send state again on request",
			r.fdName(fdnum), core.NetlinkProtocols[s.Protocol], n.Unread)
	}
	ok = true
	return f, nil
}
