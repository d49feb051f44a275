package sockets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// netlinkSocket fills in a netlink socket: its port id, groups and
// destination, read from the agent's duplicate. A protocol whose kernel
// side keeps more of the socket than that is refused, by name.
func (sd *sockDump) netlinkSocket(s *core.Socket) error {
	if _, ok := core.NetlinkProtocols[s.Protocol]; !ok {
		return sd.refuse("netlink sockets of protocol %s are not supported (a dump takes %s): "+
			"what the kernel or the peers keep of such a socket besides its port id and groups (queue and log bindings, filters) cannot be read back", netlinkProtoName(s.Protocol), netlinkTaken())
	}
	if s.Type != unix.SOCK_RAW && s.Type != unix.SOCK_DGRAM {
		return sd.refuse("netlink sockets of type %d are not supported", s.Type)
	}
	sa, err := unix.Getsockname(sd.sfd)
	if err != nil {
		return sd.fail(fmt.Errorf("getsockname: %w", err))
	}
	local, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return sd.fail(fmt.Errorf("getsockname: an address of type %T", sa))
	}
	if s.Protocol == unix.NETLINK_AUDIT && local.Pid != 0 {
		if pid, err := auditDaemon(); err == nil && pid == sd.p.PID {
			return sd.refuse("the process is the audit daemon: the kernel keeps its registration (AUDIT_SET) for this socket, and a new one would not have it")
		}
	}
	n := &core.NetlinkState{PortID: local.Pid}
	if n.Groups, err = raw.NetlinkGroups(sd.sfd); err != nil {
		return sd.fail(err)
	}
	for _, g := range n.Groups {
		if g > core.MaxNetlinkGroup {
			return sd.refuse("it joined netlink group %d, above the %d a dump takes", g, core.MaxNetlinkGroup)
		}
	}
	if len(n.Groups) > core.MaxNetlinkGroups {
		return sd.refuse("it joined %d netlink groups, more than the %d a dump takes", len(n.Groups), core.MaxNetlinkGroups)
	}
	// A netlink socket's peer name is its destination (zero if none), the
	// group as a mask of one bit.
	if sa, err := unix.Getpeername(sd.sfd); err == nil {
		if dst, ok := sa.(*unix.SockaddrNetlink); ok {
			n.DstPortID = dst.Pid
			if dst.Groups != 0 {
				n.DstGroup = uint32(bits.TrailingZeros32(dst.Groups)) + 1
			}
		}
	}
	switch {
	case n.DstPortID != 0 || n.DstGroup != 0:
		s.State = core.SockConnected
		s.Remote = fmt.Sprintf("port %d group %d", n.DstPortID, n.DstGroup)
	case n.PortID != 0:
		s.State = core.SockBound
	default:
		s.State = core.SockUnbound
	}
	if n.PortID != 0 {
		s.Local = fmt.Sprintf("port %d", n.PortID)
	}
	// Queued messages are not kept; the memory they hold says whether
	// there are any (the restore warns).
	if !sd.p.Probe {
		mi := make([]byte, 4*unix.SK_MEMINFO_VARS)
		if m, err := raw.GetsockoptBytes(sd.sfd, unix.SOL_SOCKET, unix.SO_MEMINFO, mi, uint32(len(mi))); err == nil && m >= 4 {
			n.Unread = int(int32(binary.NativeEndian.Uint32(mi[4*unix.SK_MEMINFO_RMEM_ALLOC:])))
		}
		if n.Unread > 0 && sd.p.Log != nil {
			sd.p.Log.Warn("the messages queued on a netlink socket are dropped (its kernel senders send state again on request)",
				"pid", sd.p.PID, "fd", sd.fd.FD, "socket", sd.kind, "bytes", n.Unread)
		}
	}
	s.Netlink = n
	return nil
}

// netlinkProtoName names a netlink protocol.
func netlinkProtoName(p int) string {
	if n, ok := core.NetlinkProtocols[p]; ok {
		return n
	}
	names := map[int]string{
		unix.NETLINK_USERSOCK: "NETLINK_USERSOCK", unix.NETLINK_FIREWALL: "NETLINK_FIREWALL",
		unix.NETLINK_NFLOG: "NETLINK_NFLOG", unix.NETLINK_ISCSI: "NETLINK_ISCSI",
		unix.NETLINK_FIB_LOOKUP: "NETLINK_FIB_LOOKUP", unix.NETLINK_CONNECTOR: "NETLINK_CONNECTOR",
		unix.NETLINK_NETFILTER: "NETLINK_NETFILTER", unix.NETLINK_DNRTMSG: "NETLINK_DNRTMSG",
		unix.NETLINK_SCSITRANSPORT: "NETLINK_SCSITRANSPORT", unix.NETLINK_ECRYPTFS: "NETLINK_ECRYPTFS",
		unix.NETLINK_RDMA: "NETLINK_RDMA", unix.NETLINK_SMC: "NETLINK_SMC",
	}
	if n, ok := names[p]; ok {
		return fmt.Sprintf("%s (%d)", n, p)
	}
	return fmt.Sprintf("%d", p)
}

// netlinkTaken lists the protocols a dump takes, for a refusal.
func netlinkTaken() string {
	var names []string
	for _, p := range slices.Sorted(maps.Keys(core.NetlinkProtocols)) {
		names = append(names, core.NetlinkProtocols[p])
	}
	return strings.Join(names, ", ")
}

// auditDaemon returns the PID of the audit daemon the kernel sends its
// records to (AUDIT_GET's audit_status.pid; 0: none).
func auditDaemon() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return 0, err
	}
	req := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(req, uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.AUDIT_GET)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:], 1) // sequence number
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			switch {
			case m.Header.Seq != 1:
			case m.Header.Type == unix.NLMSG_ERROR:
				return 0, errors.New("AUDIT_GET refused")
			case m.Header.Type == unix.AUDIT_GET && len(m.Data) >= 16:
				// struct audit_status: mask, enabled, failure, pid, ...
				return int(binary.NativeEndian.Uint32(m.Data[12:])), nil
			}
		}
	}
}
