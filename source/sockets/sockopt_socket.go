package sockets

import (
	"bytes"
	"errors"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// The socket options a dump records. Only values that differ from those of
// a new socket of the same kind are kept: the rest come back by default,
// and buffer sizes the kernel tunes by itself stay tunable (setting
// SO_RCVBUF would turn TCP's autotuning off).

type optKind uint8

const (
	optInt   optKind = iota
	optBytes         // a struct or string, read raw (up to size bytes)
)

type sockOptSpec struct {
	level, name int
	label       string
	kind        optKind
	size        uint32 // for optBytes
}

func intOpt(level, name int, label string) sockOptSpec {
	return sockOptSpec{level: level, name: name, label: label}
}

func rawOpt(level, name int, label string, size uint32) sockOptSpec {
	return sockOptSpec{level: level, name: name, label: label, kind: optBytes, size: size}
}

var (
	// Every socket.
	commonOpts = []sockOptSpec{
		intOpt(unix.SOL_SOCKET, unix.SO_RCVBUF, "SO_RCVBUF"),
		intOpt(unix.SOL_SOCKET, unix.SO_SNDBUF, "SO_SNDBUF"),
		intOpt(unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT"),
		intOpt(unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY"),
		intOpt(unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK"),
		intOpt(unix.SOL_SOCKET, unix.SO_PEEK_OFF, "SO_PEEK_OFF"),
		rawOpt(unix.SOL_SOCKET, unix.SO_RCVTIMEO, "SO_RCVTIMEO", 16), // struct timeval
		rawOpt(unix.SOL_SOCKET, unix.SO_SNDTIMEO, "SO_SNDTIMEO", 16),
		intOpt(unix.SOL_SOCKET, unix.SO_TIMESTAMP, "SO_TIMESTAMP"),
		intOpt(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, "SO_TIMESTAMPNS"),
	}
	unixOpts = []sockOptSpec{
		intOpt(unix.SOL_SOCKET, unix.SO_PASSCRED, "SO_PASSCRED"),
		intOpt(unix.SOL_SOCKET, unix.SO_PASSSEC, "SO_PASSSEC"),
		intOpt(unix.SOL_SOCKET, unix.SO_PASSPIDFD, "SO_PASSPIDFD"),
	}
	inetOpts = []sockOptSpec{
		// Before bind: they decide whether the bind succeeds.
		intOpt(unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"),
		intOpt(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT"),
		rawOpt(unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "SO_BINDTODEVICE", 16), // IFNAMSIZ
		intOpt(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE"),
		intOpt(unix.SOL_SOCKET, unix.SO_BROADCAST, "SO_BROADCAST"),
		intOpt(unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE"),
		intOpt(unix.SOL_SOCKET, unix.SO_DONTROUTE, "SO_DONTROUTE"),
		intOpt(unix.SOL_SOCKET, unix.SO_BUSY_POLL, "SO_BUSY_POLL"),
		intOpt(unix.SOL_SOCKET, unix.SO_ZEROCOPY, "SO_ZEROCOPY"),
		rawOpt(unix.SOL_SOCKET, unix.SO_LINGER, "SO_LINGER", 8), // struct linger
		// IP options apply to IPv6 sockets too (their IPv4-mapped traffic).
		intOpt(unix.IPPROTO_IP, unix.IP_TOS, "IP_TOS"),
		intOpt(unix.IPPROTO_IP, unix.IP_TTL, "IP_TTL"),
		intOpt(unix.IPPROTO_IP, unix.IP_FREEBIND, "IP_FREEBIND"),
		intOpt(unix.IPPROTO_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"),
		intOpt(unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"),
		intOpt(unix.IPPROTO_IP, unix.IP_RECVERR, "IP_RECVERR"),
		intOpt(unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO"),
		intOpt(unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, "IP_MTU_DISCOVER"),
		intOpt(unix.IPPROTO_IP, unix.IP_RECVTOS, "IP_RECVTOS"),
		intOpt(unix.IPPROTO_IP, unix.IP_RECVTTL, "IP_RECVTTL"),
		intOpt(unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, "IP_MULTICAST_TTL"),
		intOpt(unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP"),
		intOpt(unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, "IP_MULTICAST_ALL"),
	}
	ip6Opts = []sockOptSpec{
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, "IPV6_MTU_DISCOVER"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_RECVERR, "IPV6_RECVERR"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, "IPV6_RECVTCLASS"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS"),
		intOpt(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP"),
	}
	tcpOpts = []sockOptSpec{
		intOpt(unix.IPPROTO_TCP, unix.TCP_NODELAY, "TCP_NODELAY"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_FASTOPEN, "TCP_FASTOPEN"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, "TCP_FASTOPEN_CONNECT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_MAXSEG, "TCP_MAXSEG"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_LINGER2, "TCP_LINGER2"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_SYNCNT, "TCP_SYNCNT"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_CORK, "TCP_CORK"),
		intOpt(unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS"),
		rawOpt(unix.IPPROTO_TCP, unix.TCP_CONGESTION, "TCP_CONGESTION", 16), // TCP_CA_NAME_MAX
	}
	// The flags of a netlink socket; SO_RCVBUF and SO_SNDBUF are common.
	netlinkOpts = []sockOptSpec{
		intOpt(unix.SOL_NETLINK, unix.NETLINK_PKTINFO, "NETLINK_PKTINFO"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, "NETLINK_CAP_ACK"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, "NETLINK_EXT_ACK"),
		intOpt(unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK"),
		intOpt(unix.SOL_SOCKET, unix.SO_PASSCRED, "SO_PASSCRED"),
	}
	udpOpts = []sockOptSpec{
		intOpt(unix.IPPROTO_UDP, unix.UDP_CORK, "UDP_CORK"),
	}
)

// optionSpecs lists the options worth reading for a socket kind, in the
// order a restore sets them.
func optionSpecs(family, typ, proto int) []sockOptSpec {
	var out []sockOptSpec
	switch family {
	case unix.AF_UNIX:
		out = append(out, unixOpts...)
	case unix.AF_NETLINK:
		out = append(out, netlinkOpts...)
	case unix.AF_INET, unix.AF_INET6:
		out = append(out, inetOpts...)
		if family == unix.AF_INET6 {
			out = append(out, ip6Opts...)
		}
		switch proto {
		case unix.IPPROTO_TCP, unix.IPPROTO_MPTCP:
			out = append(out, tcpOpts...)
		case unix.IPPROTO_UDP:
			out = append(out, udpOpts...)
		}
	}
	return append(out, commonOpts...)
}

// readOpt reads an option; a raw one into buf (at least o.size bytes).
func readOpt(fd int, o sockOptSpec, buf []byte) (int, []byte, error) {
	if o.kind == optInt {
		v, err := unix.GetsockoptInt(fd, o.level, o.name)
		return v, nil, err
	}
	if uint32(len(buf)) < o.size {
		buf = make([]byte, o.size)
	}
	b := buf[:o.size]
	n, err := raw.GetsockoptBytes(fd, o.level, o.name, b, o.size)
	if err != nil {
		return 0, nil, err
	}
	return 0, b[:min(n, o.size)], nil
}

// errEBPFFilter: an eBPF program is attached as a socket filter; it cannot
// be read back.
var errEBPFFilter = errors.New("an eBPF socket filter is attached (it cannot be read back)")

// socketOptions returns the options of the socket fd that differ from
// those of a new socket of its kind (read once per kind into defaults, if
// not nil). An option the kernel does not let us read is skipped.
func socketOptions(fd, family, typ, proto int, defaults *Defaults) ([]core.SockOpt, error) {
	if defaults == nil {
		defaults = &Defaults{}
	}
	kind, err := defaults.of(family, typ, proto)
	if err != nil {
		return nil, err
	}
	var out []core.SockOpt
	// A classic BPF filter is read back and attached again, first.
	f, err := socketFilter(fd)
	if err != nil {
		return nil, err
	}
	if f != nil {
		out = append(out, core.SockOpt{Level: unix.SOL_SOCKET, Name: unix.SO_ATTACH_FILTER, Label: "SO_ATTACH_FILTER", Bytes: f})
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER); err == nil && v != 0 {
			defer func() {
				out = append(out, core.SockOpt{Level: unix.SOL_SOCKET, Name: unix.SO_LOCK_FILTER, Label: "SO_LOCK_FILTER", Value: v})
			}()
		}
	}
	var buf [16]byte
	for i, o := range kind.specs {
		v, b, err := readOpt(fd, o, buf[:])
		if err != nil {
			continue
		}
		if d := kind.fresh[i]; d.err == nil && d.v == v && bytes.Equal(d.b, b) {
			continue
		}
		if b != nil {
			b = bytes.Clone(b)
		}
		out = append(out, core.SockOpt{Level: o.level, Name: o.name, Value: v, Label: o.label, Bytes: b})
	}
	return out, nil
}

// Defaults are, by family, type and protocol, the options worth
// reading and their values on a new socket: read once for all the sockets
// of a kind (hundreds of connections would each make and read a new socket
// otherwise), and by all the processes of a dump that share one. Safe
// for concurrent use.
type Defaults struct {
	mu    sync.Mutex
	kinds map[[3]int]*optKindInfo
}

// optKindInfo is a kind's options and a new socket's values for them.
type optKindInfo struct {
	specs []sockOptSpec
	fresh []optValue
}

// optValue is what readOpt read.
type optValue struct {
	v   int
	b   []byte
	err error
}

// of returns the options of a socket kind.
func (od *Defaults) of(family, typ, proto int) (*optKindInfo, error) {
	key := [3]int{family, typ, proto}
	od.mu.Lock()
	defer od.mu.Unlock()
	if k := od.kinds[key]; k != nil {
		return k, nil
	}
	fresh, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fresh)
	k := &optKindInfo{specs: optionSpecs(family, typ, proto)}
	k.fresh = make([]optValue, len(k.specs))
	for i, o := range k.specs {
		var buf [16]byte
		v, b, err := readOpt(fresh, o, buf[:])
		k.fresh[i] = optValue{v: v, b: bytes.Clone(b), err: err}
	}
	if od.kinds == nil {
		od.kinds = map[[3]int]*optKindInfo{}
	}
	od.kinds[key] = k
	return k, nil
}

// socketFilter returns the classic BPF filter attached to fd as struct
// sock_filter records (8 bytes each), or nil.
func socketFilter(fd int) ([]byte, error) {
	n, err := raw.GetsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_GET_FILTER, nil, 0)
	if errors.Is(err, unix.EACCES) {
		return nil, errEBPFFilter
	}
	if err != nil || n == 0 {
		return nil, nil
	}
	if n > unix.BPF_MAXINSNS {
		return nil, errors.New("socket filter longer than BPF_MAXINSNS")
	}
	b := make([]byte, 8*n)
	got, err := raw.GetsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_GET_FILTER, b, n)
	if err != nil {
		return nil, err
	}
	if got != n {
		return nil, errors.New("socket filter changed while read")
	}
	return b, nil
}
