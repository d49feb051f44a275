package target

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// inetSocket rebuilds a TCP or UDP socket: options first (those that
// decide whether a bind succeeds among them), then bind with IP_FREEBIND
// (so that a socket can be rebuilt before its address arrives), listen or
// connect.
func (r *restorer) inetSocket(fdnum int, s *core.Socket) (*os.File, error) {
	tcp := s.Type == unix.SOCK_STREAM && (s.Protocol == unix.IPPROTO_TCP || s.Protocol == unix.IPPROTO_MPTCP)
	udp := s.Type == unix.SOCK_DGRAM && s.Protocol == unix.IPPROTO_UDP
	if s.Type == unix.SOCK_STREAM && s.Protocol == unix.IPPROTO_TCP && s.State == core.SockConnected && s.TCP != nil {
		return r.tcpConn(fdnum, s)
	}
	switch {
	case tcp && (s.State == core.SockListen || s.State == core.SockBound || s.State == core.SockUnbound):
	case udp && (s.State == core.SockConnected || s.State == core.SockBound || s.State == core.SockUnbound):
	default:
		return nil, fmt.Errorf("%s socket of type %d, protocol %d", s.State, s.Type, s.Protocol)
	}
	var local, remote netip.AddrPort
	var err error
	if s.State != core.SockUnbound {
		if local, err = netip.ParseAddrPort(s.Local); err != nil {
			return nil, fmt.Errorf("local address: %w", err)
		}
	}
	if s.State == core.SockConnected {
		if remote, err = netip.ParseAddrPort(s.Remote); err != nil {
			return nil, fmt.Errorf("remote address: %w", err)
		}
	}
	freebind, freeLevel, freeName := 0, unix.IPPROTO_IP, unix.IP_FREEBIND
	if s.Family == unix.AF_INET6 {
		freeLevel, freeName = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
	}
	reuse := false
	for _, o := range s.Options {
		if o.Value != 0 && (o.Level == unix.IPPROTO_IP && o.Name == unix.IP_FREEBIND ||
			o.Level == unix.IPPROTO_IPV6 && o.Name == unix.IPV6_FREEBIND) {
			freebind = 1
		}
		if o.Level == unix.SOL_SOCKET && o.Name == unix.SO_REUSEADDR {
			reuse = o.Value != 0
		}
	}
	// An address this host does not have (yet) is bound all the same, with
	// IP_FREEBIND: a service address typically arrives with the operator's
	// pre-resume hook, after the sockets are built. Said, in case it never
	// comes.
	if s.State != core.SockUnbound && freebind == 0 && !addrLocal(local.Addr()) {
		r.warn("%s: %s is not an address of this host (yet): bound all the same; it must arrive before clients can reach it (a pre-resume hook moves a service address)", r.fdName(fdnum), s.Local)
	}
	sa, err := inetSockaddr(s.Family, local)
	if err != nil && s.State != core.SockUnbound {
		return nil, err
	}
	fd, err := unix.Socket(s.Family, s.Type|unix.SOCK_CLOEXEC, s.Protocol)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	r.setOptions(r.fdName(fdnum), fd, s.Options)
	tmpReuse := false
	if s.State != core.SockUnbound {
		if err := unix.SetsockoptInt(fd, freeLevel, freeName, 1); err != nil {
			return nil, fmt.Errorf("set IP_FREEBIND: %w", err)
		}
		err := unix.Bind(fd, sa)
		if errors.Is(err, unix.EADDRINUSE) && !reuse && tcp {
			// Connections of the dead original may linger in TIME_WAIT on
			// the port; the process did not ask for SO_REUSEADDR, so it is
			// set only while binding.
			if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) == nil {
				tmpReuse = true
				err = unix.Bind(fd, sa)
			}
		}
		if err != nil {
			return nil, &AddrError{PID: r.pid, FD: fdnum, Addr: s.Local, Err: err}
		}
		if err := unix.SetsockoptInt(fd, freeLevel, freeName, freebind); err != nil {
			return nil, fmt.Errorf("put IP_FREEBIND back to %d: %w", freebind, err)
		}
	}
	switch s.State {
	case core.SockListen:
		if err := unix.Listen(fd, s.Backlog); err != nil {
			return nil, &AddrError{PID: r.pid, FD: fdnum, Addr: s.Local, Err: fmt.Errorf("listen: %w", err)}
		}
	case core.SockConnected:
		rsa, err := inetSockaddr(s.Family, remote)
		if err != nil {
			return nil, err
		}
		if err := unix.Connect(fd, rsa); err != nil {
			return nil, fmt.Errorf("connect to %s: %w", s.Remote, err)
		}
	}
	if tmpReuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 0); err != nil {
			return nil, fmt.Errorf("clear SO_REUSEADDR: %w", err)
		}
		r.warn("%s: %s was in use (TIME_WAIT of the original's connections?); bound with SO_REUSEADDR, cleared afterwards", r.fdName(fdnum), s.Local)
	}
	if s.Unread > 0 {
		r.warn("%s: UDP socket %s: datagrams it had not read (%d bytes of buffer) are not kept", r.fdName(fdnum), s.Local, s.Unread)
	}
	ok = true
	return f, nil
}

// fdName names an fd of this process in warnings: "fd N", with the
// process when it is not the root.
func (r *restorer) fdName(fd int) string {
	if r.img == nil || r.pid == r.img.Process.PID {
		return fmt.Sprintf("fd %d", fd)
	}
	return fmt.Sprintf("process %d fd %d", r.pid, fd)
}

// inetSockaddr makes the sockaddr for ap on a socket of family.
func inetSockaddr(family int, ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	switch {
	case family == unix.AF_INET && a.Is4():
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}, nil
	case family == unix.AF_INET6 && (a.Is6() || a.Is4()):
		sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if n, err := strconv.Atoi(z); err == nil {
				sa.ZoneId = uint32(n)
			} else if ifi, err := net.InterfaceByName(z); err == nil {
				sa.ZoneId = uint32(ifi.Index)
			} else {
				return nil, fmt.Errorf("address %s: no interface %s on this host", ap, z)
			}
		}
		return sa, nil
	}
	return nil, fmt.Errorf("address %s on a socket of family %d", ap, family)
}

// addrLocal says whether a is an address of this host: one of its
// interfaces' (tentative IPv6 addresses included), or one it binds to
// (127.0.0.0/8, local routes).
func addrLocal(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsUnspecified() {
		return true
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range addrs {
			if n, ok := ia.(*net.IPNet); ok {
				if x, ok := netip.AddrFromSlice(n.IP); ok && x.Unmap() == a.WithZone("") {
					return true
				}
			}
		}
	}
	family := unix.AF_INET
	if a.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return true // let the real bind say
	}
	defer unix.Close(fd)
	sa, err := inetSockaddr(family, netip.AddrPortFrom(a, 0))
	if err != nil {
		return false
	}
	err = unix.Bind(fd, sa)
	return !errors.Is(err, unix.EADDRNOTAVAIL)
}
