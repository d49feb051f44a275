package sockets

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/par"
	"github.com/procmig/migrate/internal/raw"
)

// Process is the process whose sockets are described, and what their
// description needs of the dump it is part of.
type Process struct {
	PID int
	// Probe: the process runs, and its sockets are only checked for what
	// the dump would refuse. Nothing is read that a read could change
	// (queues), and what may change before the freeze (a connection still
	// connecting, an accept queue) is left to the dump itself.
	Probe bool
	// Tree says that the dump takes the process's descendants too (for
	// the message of a refusal).
	Tree bool
	Log  *slog.Logger
	// Store keeps what r yields as a blob of the image (kind names it) and
	// returns the blob's name.
	Store func(kind string, r io.Reader) (string, error)
	// Dumped returns the inodes of the sockets held by the processes of
	// the dump: a unix socket's peer must be one of them. Nil: those of
	// the process alone.
	Dumped func() (map[uint64]bool, error)
	// Conns gets the TCP connections noted (see Conns). The processes of
	// a dump described at the same time each have one, gathered into the
	// dump's (Conns.Take): they are locked and read together. Required.
	Conns *Conns

	// Defaults are a new socket's options, read once per kind: one
	// Defaults may serve every process of a dump. Nil: the process's own.
	Defaults *Defaults

	// jobs are the sockets whose options ReadOptions reads.
	jobs     []optJob
	defaults Defaults
	// diag is the sock_diag socket in the process's network namespace,
	// opened at the first unix socket and kept until Close.
	diag *diagConn
}

// Close lets go of what describing the sockets opened (the sock_diag
// socket). The Process may describe more afterwards: it opens it again.
func (p *Process) Close() {
	if p.diag != nil {
		p.diag.Close()
		p.diag = nil
	}
}

// diagConn returns the sock_diag socket in the process's network
// namespace, opening it the first time.
func (p *Process) diagConn() (*diagConn, error) {
	if p.diag == nil {
		dc, err := openDiag(p.PID)
		if err != nil {
			return nil, err
		}
		p.diag = dc
	}
	return p.diag, nil
}

// UnsupportedError refuses a socket the dump does not take.
type UnsupportedError struct {
	PID    int
	FD     int
	Kind   string // "socket:[1234]"
	Reason string
	// Outside: the socket is connected to one outside the dump (it could
	// be supplied at the restore instead).
	Outside bool
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("process %d: fd %d (%s) is not supported: %s", e.PID, e.FD, e.Kind, e.Reason)
}

// Describe describes the socket fd (the agent's duplicate is dup) into
// fd.Socket but for its options, which ReadOptions reads, or refuses it
// with an *UnsupportedError.
//
// What is supported and how is in core/socket.go. Everything is read from
// the agent's duplicate and from sock_diag; queued bytes are peeked, never
// consumed, so a refused or failed dump leaves every socket as it was.
//
// Preconditions: the process is frozen (or p.Probe).
func (p *Process) Describe(fd *core.FD, dup *os.File) error {
	sd := &sockDump{p: p, fd: fd, kind: dup.Name(), sfd: int(dup.Fd())}
	s, err := sd.describe()
	if err != nil {
		return err
	}
	fd.Socket = s
	return nil
}

// sockDump describes one socket.
type sockDump struct {
	p    *Process
	fd   *core.FD
	kind string // "socket:[1234]"
	sfd  int    // the agent's duplicate
	// mutual: a unix socket whose peer is connected to it.
	mutual bool
}

// refuse is the error for a socket the dump does not take.
func (sd *sockDump) refuse(format string, args ...any) error {
	return &UnsupportedError{PID: sd.p.PID, FD: sd.fd.FD, Kind: sd.kind, Reason: fmt.Sprintf(format, args...)}
}

func (sd *sockDump) fail(err error) error {
	return fmt.Errorf("process %d: fd %d (%s): %w", sd.p.PID, sd.fd.FD, sd.kind, err)
}

func (sd *sockDump) describe() (*core.Socket, error) {
	var st unix.Stat_t
	if err := unix.Fstat(sd.sfd, &st); err != nil {
		return nil, sd.fail(err)
	}
	family, err := unix.GetsockoptInt(sd.sfd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, sd.fail(fmt.Errorf("SO_DOMAIN: %w", err))
	}
	typ, err := unix.GetsockoptInt(sd.sfd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, sd.fail(fmt.Errorf("SO_TYPE: %w", err))
	}
	proto, err := unix.GetsockoptInt(sd.sfd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return nil, sd.fail(fmt.Errorf("SO_PROTOCOL: %w", err))
	}
	s := &core.Socket{Family: family, Type: typ, Protocol: proto, Ino: st.Ino}
	switch family {
	case unix.AF_UNIX:
		if typ != unix.SOCK_STREAM && typ != unix.SOCK_DGRAM && typ != unix.SOCK_SEQPACKET {
			return nil, sd.refuse("unix sockets of type %d are not supported", typ)
		}
		err = sd.unixSocket(s)
	case unix.AF_INET, unix.AF_INET6:
		err = sd.inetSocket(s)
	case unix.AF_NETLINK:
		err = sd.netlinkSocket(s)
	default:
		return nil, sd.refuse("%s sockets are not supported", familyName(family))
	}
	if err != nil {
		return nil, err
	}
	sd.p.jobs = append(sd.p.jobs, optJob{sd: sd, s: s})
	return s, nil
}

// readOptions reads the socket's options into s.Options.
func (sd *sockDump) readOptions(s *core.Socket, defaults *Defaults) error {
	opts, err := socketOptions(sd.sfd, s.Family, s.Type, s.Protocol, defaults)
	if errors.Is(err, errEBPFFilter) {
		return sd.refuse("%v", err)
	}
	if err != nil {
		return sd.fail(fmt.Errorf("socket options: %w", err))
	}
	s.Options = opts
	return nil
}

// optJob is a socket whose options are still to read.
type optJob struct {
	sd *sockDump
	s  *core.Socket
}

// ReadOptions reads the options of every socket described, a few at a
// time: some fifty getsockopt calls a socket, in the frozen window, were
// most of the time hundreds of connections added to reading the state.
func (p *Process) ReadOptions() error {
	jobs := p.jobs
	p.jobs = nil
	if len(jobs) == 0 {
		return nil
	}
	defaults := p.Defaults
	if defaults == nil {
		defaults = &p.defaults
	}
	// Fewer than 16 on the caller's thread (a tracer's, in a dump): see
	// par.Do.
	errs := make([]error, len(jobs))
	par.Do(len(jobs), min(runtime.GOMAXPROCS(0), 4, (len(jobs)+15)/16), func(i int) {
		errs[i] = jobs[i].sd.readOptions(jobs[i].s, defaults)
	})
	for _, err := range errs {
		if err != nil {
			return err // the first fd's
		}
	}
	return nil
}

func familyName(f int) string {
	names := map[int]string{
		unix.AF_NETLINK: "netlink (AF_NETLINK)", unix.AF_PACKET: "packet (AF_PACKET)",
		unix.AF_VSOCK: "vsock (AF_VSOCK)", unix.AF_ALG: "crypto (AF_ALG)",
		unix.AF_BLUETOOTH: "bluetooth (AF_BLUETOOTH)", unix.AF_CAN: "CAN (AF_CAN)",
		unix.AF_XDP: "XDP (AF_XDP)", unix.AF_TIPC: "TIPC (AF_TIPC)", unix.AF_KEY: "PF_KEY (AF_KEY)",
		unix.AF_RDS: "RDS (AF_RDS)", unix.AF_QIPCRTR: "Qualcomm IPC (AF_QIPCRTR)",
		unix.AF_SMC: "SMC (AF_SMC)", unix.AF_MCTP: "MCTP (AF_MCTP)", unix.AF_NFC: "NFC (AF_NFC)",
	}
	if n, ok := names[f]; ok {
		return n
	}
	return "family " + strconv.Itoa(f)
}

// unixSocket fills in a unix socket.
func (sd *sockDump) unixSocket(s *core.Socket) error {
	dc, err := sd.p.diagConn()
	if err != nil {
		return sd.fail(err)
	}
	if s.Ino > 0xffffffff {
		return sd.refuse("socket inode %d does not fit sock_diag's 32 bits", s.Ino)
	}
	m, err := dc.lookupUnix(uint32(s.Ino), unixDiagShowAll)
	if errors.Is(err, errNoSocket) {
		return sd.refuse("%v (a socket of another network namespace?)", err)
	}
	if err != nil {
		return sd.fail(err)
	}
	if m.HasShutdown {
		s.Shutdown = int(m.Shutdown) & (core.ShutRecv | core.ShutSend)
	}
	if m.HasName && len(m.Name) > 0 {
		if err := sd.unixName(s, m); err != nil {
			return err
		}
	}
	stream := s.Type != unix.SOCK_DGRAM
	state := m.State
	if !stream && state == tcpStateEstablished && !m.HasPeer {
		// A datagram socket another one connected to is marked
		// established too, though it has no peer of its own.
		state = tcpStateClose
	}
	switch state {
	case tcpStateListen:
		if m.HasRQLen && m.RQueue > 0 && !sd.p.Probe {
			return sd.refuse("%d connections wait in its accept queue; they would be lost (dump again once they are accepted)", m.RQueue)
		}
		s.State = core.SockListen
		s.Backlog = int(m.WQueue)
		return nil
	case tcpStateEstablished:
		s.State = core.SockConnected
		if err := sd.unixPeer(dc, s, m); err != nil {
			return err
		}
	case tcpStateClose:
		s.State = core.SockUnbound
		if len(s.Name) > 0 {
			s.State = core.SockBound
		}
		if stream {
			// A stream socket that is neither listening nor connected
			// has nothing queued.
			return nil
		}
	default:
		return sd.refuse("unix socket in state %d is not supported", m.State)
	}
	if sd.fd.Key != "" {
		// Another fd of the process shares this socket: the first one
		// carries the queue.
		return nil
	}
	if sd.p.Probe {
		return nil
	}
	return sd.unixQueue(s, m)
}

// unixName records the bound name, and for a path, the socket file and
// how the agent reaches it.
func (sd *sockDump) unixName(s *core.Socket, m *unixDiag) error {
	name := m.Name
	if name[0] == 0 {
		s.Name = bytes.Clone(name)
		s.Local = "@" + printable(name[1:])
		return nil
	}
	// A path name keeps its terminating NUL in sock_diag.
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	s.Name = bytes.Clone(name)
	s.Local = string(name)
	path, err := sd.agentPath(string(name))
	if err != nil {
		return sd.fail(err)
	}
	f := &core.SockFile{Path: path}
	var st unix.Stat_t
	err = unix.Lstat(path, &st)
	// The file must be the one the socket made: sock_diag gives its inode
	// and device (the kernel's internal dev_t).
	if err == nil && m.HasVFS && uint64(m.VFSIno) == st.Ino &&
		uint32(m.VFSDev>>20) == unix.Major(st.Dev) && m.VFSDev&0xfffff == unix.Minor(st.Dev) {
		f.Mode, f.UID, f.GID = st.Mode, st.Uid, st.Gid
	} else {
		f.Gone = true
	}
	s.File = f
	return nil
}

// agentPath turns a path as the process sees it into one the agent can
// use: under the process's root, and for a relative path, under its
// working directory.
func (sd *sockDump) agentPath(p string) (string, error) {
	base := "root"
	if !filepath.IsAbs(p) {
		base = "cwd"
	}
	dir, err := os.Readlink("/proc/" + strconv.Itoa(sd.p.PID) + "/" + base)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, p), nil
}

// unixPeer records the peer of a connected unix socket: one of the
// process, or for a datagram socket, a named socket elsewhere.
func (sd *sockDump) unixPeer(dc *diagConn, s *core.Socket, m *unixDiag) error {
	if m.Peer == 0 {
		// sock_diag reports inode 0 for a peer that has none: one that was
		// closed, or the server's end of a stream connection no one has
		// accepted yet (it gets its inode at accept). A closed peer shut
		// this end down both ways; a pending one did not, and its listener
		// cannot be found from here (a socket of the tree or outside it):
		// refused, not taken for closed, which would restore a live
		// connection as ended.
		if s.Type != unix.SOCK_DGRAM && m.HasShutdown && s.Shutdown != core.ShutRecv|core.ShutSend {
			return sd.refuse("connected to a socket no one has accepted yet (still in its listener's queue, inside or outside the process)")
		}
		// Closed: a stream socket reads what is left, then end of file; a
		// datagram socket's next send fails.
		s.PeerGone = true
		return nil
	}
	in, err := sd.p.dumped()
	if err != nil {
		return sd.fail(err)
	}
	pm, perr := dc.lookupUnix(m.Peer, udiagShowName|udiagShowPeer)
	var pname []byte
	if perr == nil && pm.HasName {
		pname = pm.Name
	}
	desc := fmt.Sprintf("socket:[%d]", m.Peer)
	if len(pname) > 0 {
		desc = fmt.Sprintf("%s (socket:[%d])", unixText(pname), m.Peer)
	}
	if in[uint64(m.Peer)] {
		s.Peer = uint64(m.Peer)
		sd.mutual = perr == nil && pm.Peer == uint32(s.Ino)
		if s.Type == unix.SOCK_DGRAM && len(pname) == 0 && (perr != nil || pm.Peer != uint32(s.Ino)) {
			return sd.refuse("connected to the unnamed datagram socket %s, which is connected elsewhere", desc)
		}
		return nil
	}
	if s.Type == unix.SOCK_DGRAM && len(pname) > 0 {
		// A datagram socket has no connection to lose: it is connected to
		// the same name again on restore (syslog's /dev/log, say).
		if pname[0] != 0 {
			if i := bytes.IndexByte(pname, 0); i >= 0 {
				pname = pname[:i]
			}
			path, err := sd.agentPath(string(pname))
			if err != nil {
				return sd.fail(err)
			}
			pname = []byte(path)
		}
		s.PeerName = bytes.Clone(pname)
		s.Remote = unixText(pname)
		return nil
	}
	outside := "the process"
	if sd.p.Tree {
		outside = "the process and its descendants"
	}
	err = sd.refuse("connected to a socket outside %s: %s", outside, desc)
	err.(*UnsupportedError).Outside = true
	return err
}

// unixQueue stores the bytes queued for reading.
func (sd *sockDump) unixQueue(s *core.Socket, m *unixDiag) error {
	pfd := []unix.PollFd{{Fd: int32(sd.sfd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 0); err != nil {
		return sd.fail(fmt.Errorf("poll: %w", err))
	}
	pending := pfd[0].Revents&unix.POLLERR != 0
	if pending && s.PeerGone && s.Type != unix.SOCK_DGRAM {
		// The peer was closed with bytes it had not read: reads fail
		// with ECONNRESET once the queue is empty.
		s.Reset = true
	}
	var q []byte
	var err error
	if s.Type == unix.SOCK_STREAM {
		if !m.HasRQLen || m.RQueue == 0 {
			return nil
		}
		q, err = peekStream(sd.sfd, int(m.RQueue))
	} else {
		if pfd[0].Revents&unix.POLLIN == 0 {
			return nil
		}
		if pending {
			// A peek would return (and clear) the error first.
			return sd.refuse("a socket error is pending; reading its queue would clear it")
		}
		q, err = peekDgrams(sd.sfd, s.Type == unix.SOCK_SEQPACKET && s.Shutdown&core.ShutRecv != 0)
	}
	var ce *controlError
	if errors.As(err, &ce) {
		return sd.refuse("%v", ce)
	}
	if err != nil {
		return sd.fail(err)
	}
	if len(q) == 0 {
		return nil
	}
	if s.Type == unix.SOCK_DGRAM && len(s.Name) == 0 && !s.PeerGone && !sd.mutual {
		// Only the socket at the other end of a pair could send them
		// again, and there is none.
		return sd.refuse("datagrams are queued on an unnamed socket that no socket of the process can send them to again")
	}
	name, err := sd.p.Store("sockq", bytes.NewReader(q))
	if err != nil {
		return sd.fail(err)
	}
	s.Queue = name
	return nil
}

// dumped returns the inodes of the sockets of the dump.
func (p *Process) dumped() (map[uint64]bool, error) {
	if p.Dumped != nil {
		return p.Dumped()
	}
	return Inodes(p.PID)
}

// Inodes returns the inodes of the sockets the process holds.
func Inodes(pid int) (map[uint64]bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		if v, ok := strings.CutPrefix(l, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(v, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out, nil
}

// unixText is a unix address for people: a path, or @ and an abstract name.
func unixText(name []byte) string {
	if len(name) > 0 && name[0] == 0 {
		return "@" + printable(name[1:])
	}
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return printable(name)
}

func printable(b []byte) string {
	q := strconv.QuoteToASCII(string(b))
	return q[1 : len(q)-1]
}

// inetSocket fills in a TCP or UDP socket.
func (sd *sockDump) inetSocket(s *core.Socket) error {
	switch {
	case s.Type == unix.SOCK_STREAM && (s.Protocol == unix.IPPROTO_TCP || s.Protocol == unix.IPPROTO_MPTCP):
		// MPTCP (Go makes its listeners so since 1.24) answers TCP_INFO
		// with its first subflow's, a TCP socket's.
		ti, err := unix.GetsockoptTCPInfo(sd.sfd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return sd.fail(fmt.Errorf("TCP_INFO: %w", err))
		}
		switch ti.State {
		case tcpStateListen:
			// For a listener tcp_info holds the accept queue in
			// tcpi_unacked and the backlog in tcpi_sacked (the fields
			// inet_diag reports as idiag_rqueue and idiag_wqueue).
			if ti.Unacked > 0 && !sd.p.Probe {
				return sd.refuse("%d connections wait in its accept queue; they would be lost (dump again once they are accepted)", ti.Unacked)
			}
			s.State = core.SockListen
			s.Backlog = int(ti.Sacked)
		case tcpStateClose:
			s.State = core.SockUnbound
			if (ti.Segs_in > 0 || ti.Segs_out > 0) && sd.p.Log != nil {
				sd.p.Log.Warn("a TCP socket whose connection ended comes back as a new, unconnected socket",
					"pid", sd.p.PID, "fd", sd.fd.FD, "socket", sd.kind)
			}
		default:
			if tcpConnState(ti.State) {
				if sd.p.Probe {
					if s.Protocol == unix.IPPROTO_MPTCP {
						return sd.noteTCP(s, ti.State) // refused
					}
					return nil
				}
				return sd.noteTCP(s, ti.State)
			}
			if sd.p.Probe {
				return nil // connecting now, maybe connected at the freeze
			}
			return sd.refuse("TCP connections (this one is in state %s) are not supported yet", tcpStateName(ti.State))
		}
	case s.Type == unix.SOCK_DGRAM && s.Protocol == unix.IPPROTO_UDP:
		s.State = core.SockUnbound
		// Unread datagrams are not kept (their senders' addresses would
		// be lost); the memory they hold says whether there are any. A
		// peek would clear a pending error (an ICMP port unreachable).
		mi := make([]byte, 4*unix.SK_MEMINFO_VARS)
		if n, err := raw.GetsockoptBytes(sd.sfd, unix.SOL_SOCKET, unix.SO_MEMINFO, mi, uint32(len(mi))); err == nil && n >= 4 {
			s.Unread = int(int32(binary.NativeEndian.Uint32(mi[4*unix.SK_MEMINFO_RMEM_ALLOC:])))
		}
	default:
		return sd.refuse("%s sockets of type %d, protocol %d are not supported", familyName2(s.Family), s.Type, s.Protocol)
	}
	if s.State == core.SockUnbound {
		local, err := sockAddr(unix.Getsockname(sd.sfd))
		if err != nil {
			return sd.fail(fmt.Errorf("getsockname: %w", err))
		}
		if local.Port() != 0 || !local.Addr().IsUnspecified() {
			s.State = core.SockBound
			s.Local = local.String()
		}
		if s.Type == unix.SOCK_DGRAM {
			if remote, err := sockAddr(unix.Getpeername(sd.sfd)); err == nil {
				s.State = core.SockConnected
				s.Remote = remote.String()
			} else if !errors.Is(err, unix.ENOTCONN) {
				return sd.fail(fmt.Errorf("getpeername: %w", err))
			}
		}
		return nil
	}
	local, err := sockAddr(unix.Getsockname(sd.sfd))
	if err != nil {
		return sd.fail(fmt.Errorf("getsockname: %w", err))
	}
	s.Local = local.String()
	return nil
}

func familyName2(f int) string {
	if f == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

func tcpStateName(st uint8) string {
	names := []string{1: "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
		"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"}
	if int(st) < len(names) && names[st] != "" {
		return names[st]
	}
	return strconv.Itoa(int(st))
}

// sockAddr turns an inet socket address into an AddrPort, with the zone of
// an IPv6 link-local address by interface name where it has one.
func sockAddr(sa unix.Sockaddr, err error) (netip.AddrPort, error) {
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), nil
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr)
		if a.ZoneId != 0 {
			zone := strconv.Itoa(int(a.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
			ip = ip.WithZone(zone)
		}
		return netip.AddrPortFrom(ip, uint16(a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("address of type %T", sa)
}
