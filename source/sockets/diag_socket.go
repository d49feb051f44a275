package sockets

// A small sock_diag client (NETLINK_SOCK_DIAG), for what only the kernel's
// socket tables tell: the peer of a unix socket, its bound name, the length
// of its queues and its shutdown state.
//
// Request, one netlink message (host byte order):
//
//	nlmsghdr     len u32 | type u16 = SOCK_DIAG_BY_FAMILY | flags u16 = NLM_F_REQUEST | seq u32 | pid u32
//	unix_diag_req family u8 = AF_UNIX | protocol u8 | pad u16 | states u32 | ino u32 | show u32 | cookie [2]u32
//
// Reply, one or more netlink messages, each padded to 4 bytes:
//
//	nlmsghdr     type SOCK_DIAG_BY_FAMILY, NLMSG_ERROR (payload: -errno i32, then the request) or NLMSG_DONE
//	unix_diag_msg family u8 | type u8 | state u8 | pad u8 | ino u32 | cookie [2]u32
//	attributes   nla_len u16 (header included) | nla_type u16 | data, each padded to 4 bytes:
//	  UNIX_DIAG_NAME     sun_path bytes (a path keeps its NUL, an abstract name starts with one)
//	  UNIX_DIAG_VFS      ino u32 | dev u32 (the kernel's internal dev_t: major<<20 | minor)
//	  UNIX_DIAG_PEER     ino u32
//	  UNIX_DIAG_ICONS    ino u32 ... (connections waiting in a listener's queue)
//	  UNIX_DIAG_RQLEN    rqueue u32 | wqueue u32 (listener: queued connections | backlog;
//	                     otherwise: bytes queued for reading (the first datagram only,
//	                     for datagram sockets) | bytes sent and not yet read by the peer)
//	  UNIX_DIAG_SHUTDOWN u8, the sk_shutdown bits
//
// The lookup by inode searches the network namespace of the netlink
// socket, so the socket is opened in the dumped process's namespace.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/raw"
)

// include/uapi/linux/unix_diag.h; x/sys/unix does not define these.
const (
	udiagShowName       = 0x01
	udiagShowVFS        = 0x02
	udiagShowPeer       = 0x04
	udiagShowIcons      = 0x08
	udiagShowRQLen      = 0x10
	udiagShowMeminfo    = 0x20
	udiagShowUID        = 0x40
	unixDiagName        = 0
	unixDiagVFS         = 1
	unixDiagPeer        = 2
	unixDiagIcons       = 3
	unixDiagRQLen       = 4
	unixDiagMeminfo     = 5
	unixDiagShutdown    = 6
	unixDiagUID         = 7
	sizeofUnixDiagReq   = 24
	sizeofUnixDiagMsg   = 16
	inetDiagNoCookie    = ^uint32(0) // INET_DIAG_NOCOOKIE
	nlaTypeMask         = 0x3fff     // ^(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
	maxDiagIcons        = 1 << 16
	unixDiagShowAll     = udiagShowName | udiagShowVFS | udiagShowPeer | udiagShowRQLen
	tcpStateEstablished = 1  // TCP_ESTABLISHED, include/net/tcp_states.h
	tcpStateSynSent     = 2  // TCP_SYN_SENT
	tcpStateClose       = 7  // TCP_CLOSE
	tcpStateListen      = 10 // TCP_LISTEN
)

// unixDiag is what sock_diag reports about one unix socket. Has* say
// which attributes the reply carried.
type unixDiag struct {
	Type  uint8
	State uint8
	Ino   uint32

	Name    []byte // UNIX_DIAG_NAME, as the kernel gives it
	HasName bool
	// VFS: the inode and device of the socket file of a path socket.
	VFSIno, VFSDev uint32
	HasVFS         bool
	Peer           uint32
	HasPeer        bool
	Icons          []uint32
	RQueue, WQueue uint32
	HasRQLen       bool
	Shutdown       uint8
	HasShutdown    bool
}

// DiagError is a malformed sock_diag reply.
type DiagError struct {
	Offset int
	Reason string
}

func (e *DiagError) Error() string {
	return fmt.Sprintf("sock_diag reply: at byte %d: %s", e.Offset, e.Reason)
}

// parseUnixDiag decodes a sock_diag reply. It returns the unix_diag_msg
// records in order and whether an NLMSG_DONE ended the reply; an
// NLMSG_ERROR with an errno is returned as that errno (unix.Errno).
func parseUnixDiag(b []byte) (msgs []unixDiag, done bool, err error) {
	ne := binary.NativeEndian
	for off := 0; off < len(b); {
		if len(b)-off < unix.SizeofNlMsghdr {
			return nil, false, &DiagError{off, fmt.Sprintf("%d bytes left, a message header takes %d", len(b)-off, unix.SizeofNlMsghdr)}
		}
		mlen := int(ne.Uint32(b[off:]))
		typ := ne.Uint16(b[off+4:])
		if mlen < unix.SizeofNlMsghdr || mlen > len(b)-off {
			return nil, false, &DiagError{off, fmt.Sprintf("message length %d with %d bytes left", mlen, len(b)-off)}
		}
		body := b[off+unix.SizeofNlMsghdr : off+mlen]
		switch typ {
		case unix.NLMSG_DONE:
			return msgs, true, nil
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return nil, false, &DiagError{off, "error message without its errno"}
			}
			if e := int32(ne.Uint32(body)); e != 0 {
				if e > 0 || e < -4095 {
					return nil, false, &DiagError{off, fmt.Sprintf("error message with errno %d", e)}
				}
				return msgs, false, unix.Errno(-e)
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			m, err := parseUnixDiagMsg(body, off+unix.SizeofNlMsghdr)
			if err != nil {
				return nil, false, err
			}
			msgs = append(msgs, m)
		default:
			return nil, false, &DiagError{off, fmt.Sprintf("unexpected message type %d", typ)}
		}
		// Messages are padded to 4 bytes; the last one may not be.
		off += min((mlen+3)&^3, len(b)-off)
	}
	return msgs, false, nil
}

func parseUnixDiagMsg(b []byte, base int) (unixDiag, error) {
	ne := binary.NativeEndian
	var m unixDiag
	if len(b) < sizeofUnixDiagMsg {
		return m, &DiagError{base, fmt.Sprintf("unix_diag_msg of %d bytes, want %d", len(b), sizeofUnixDiagMsg)}
	}
	if b[0] != unix.AF_UNIX {
		return m, &DiagError{base, fmt.Sprintf("family %d, want AF_UNIX", b[0])}
	}
	m.Type, m.State = b[1], b[2]
	m.Ino = ne.Uint32(b[4:])
	for off := sizeofUnixDiagMsg; off < len(b); {
		if len(b)-off < unix.SizeofNlAttr {
			return m, &DiagError{base + off, fmt.Sprintf("%d bytes left, an attribute header takes %d", len(b)-off, unix.SizeofNlAttr)}
		}
		alen := int(ne.Uint16(b[off:]))
		atyp := ne.Uint16(b[off+2:]) & nlaTypeMask
		if alen < unix.SizeofNlAttr || alen > len(b)-off {
			return m, &DiagError{base + off, fmt.Sprintf("attribute length %d with %d bytes left", alen, len(b)-off)}
		}
		data := b[off+unix.SizeofNlAttr : off+alen]
		short := func(want int) error {
			return &DiagError{base + off, fmt.Sprintf("attribute %d of %d bytes, want %d", atyp, len(data), want)}
		}
		switch atyp {
		case unixDiagName:
			if len(data) > 108 { // sizeof(sun_path)
				return m, &DiagError{base + off, fmt.Sprintf("name of %d bytes", len(data))}
			}
			m.Name, m.HasName = append([]byte(nil), data...), true
		case unixDiagVFS:
			if len(data) < 8 {
				return m, short(8)
			}
			m.VFSIno, m.VFSDev, m.HasVFS = ne.Uint32(data), ne.Uint32(data[4:]), true
		case unixDiagPeer:
			if len(data) < 4 {
				return m, short(4)
			}
			m.Peer, m.HasPeer = ne.Uint32(data), true
		case unixDiagIcons:
			if len(data)%4 != 0 || len(data)/4 > maxDiagIcons {
				return m, &DiagError{base + off, fmt.Sprintf("icons attribute of %d bytes", len(data))}
			}
			m.Icons = make([]uint32, len(data)/4)
			for i := range m.Icons {
				m.Icons[i] = ne.Uint32(data[4*i:])
			}
		case unixDiagRQLen:
			if len(data) < 8 {
				return m, short(8)
			}
			m.RQueue, m.WQueue, m.HasRQLen = ne.Uint32(data), ne.Uint32(data[4:]), true
		case unixDiagShutdown:
			if len(data) < 1 {
				return m, short(1)
			}
			m.Shutdown, m.HasShutdown = data[0], true
		}
		off += min((alen+3)&^3, len(b)-off)
	}
	return m, nil
}

// unixDiagRequest builds the request for the unix socket with inode ino.
func unixDiagRequest(seq, ino, show uint32) []byte {
	ne := binary.NativeEndian
	b := make([]byte, unix.SizeofNlMsghdr+sizeofUnixDiagReq)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], seq)
	r := b[unix.SizeofNlMsghdr:]
	r[0] = unix.AF_UNIX
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	ne.PutUint32(r[8:], ino)
	ne.PutUint32(r[12:], show)
	ne.PutUint32(r[16:], inetDiagNoCookie)
	ne.PutUint32(r[20:], inetDiagNoCookie)
	return b
}

// diagConn is a NETLINK_SOCK_DIAG socket.
type diagConn struct {
	fd  int
	seq uint32
	buf []byte
}

// openDiag opens a sock_diag socket in the network namespace of pid.
func openDiag(pid int) (*diagConn, error) {
	same, err := sameNetns(pid)
	if err != nil {
		return nil, err
	}
	var fd int
	if same {
		fd, err = diagSocket()
	} else {
		fd, err = inNetns(pid, diagSocket)
	}
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	return &diagConn{fd: fd, buf: *diagBufs.Get().(*[]byte)}, nil
}

// diagBufs are the replies' buffers, kept from one sock_diag socket to
// the next: fresh, 64 KiB cost page faults and clearing each time, most of
// describing a process's unix sockets.
var diagBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func diagSocket() (int, error) {
	return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
}

func (c *diagConn) Close() error {
	if b := c.buf; b != nil {
		c.buf = nil
		diagBufs.Put(&b)
	}
	return unix.Close(c.fd)
}

func sameNetns(pid int) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &a); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &b); err != nil {
		return false, fmt.Errorf("network namespace of process %d: %w", pid, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// inNetns runs fn on a thread moved into pid's network namespace. If the
// thread cannot be moved back it stays locked, so that it dies with its
// goroutine instead of running other code in the wrong namespace.
func inNetns(pid int, fn func() (int, error)) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	osthread.Go(func() {
		back, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer back.Close()
		ns, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("setns into the network namespace of %d: %w", pid, err)}
			return
		}
		fd, err := fn()
		if err := unix.Setns(int(back.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			if fd >= 0 {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, err}
	})
	r := <-ch
	return r.fd, r.err
}

// errNoSocket says sock_diag does not know the inode in the namespace.
var errNoSocket = errors.New("sock_diag does not know this socket in the process's network namespace")

// query sends the request for the unix socket with inode ino and returns
// the raw reply: one datagram, since a lookup by inode is not a dump.
func (c *diagConn) query(ino, show uint32) ([]byte, error) {
	c.seq++
	seq := c.seq
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	if err := unix.Sendto(c.fd, unixDiagRequest(seq, ino, show), 0, sa); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		n, err := raw.IgnoringEINTR2(func() (int, error) {
			n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
			return n, err
		})
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		if n < unix.SizeofNlMsghdr {
			return nil, &DiagError{0, fmt.Sprintf("datagram of %d bytes", n)}
		}
		// A reply to an earlier, abandoned request is skipped.
		if binary.NativeEndian.Uint32(c.buf[8:]) == seq {
			return append([]byte(nil), c.buf[:n]...), nil
		}
	}
}

// lookupUnix asks for the unix socket with inode ino.
func (c *diagConn) lookupUnix(ino uint32, show uint32) (*unixDiag, error) {
	b, err := c.query(ino, show)
	if err != nil {
		return nil, err
	}
	msgs, _, err := parseUnixDiag(b)
	if errors.Is(err, unix.ENOENT) {
		return nil, errNoSocket
	}
	if err != nil {
		return nil, err
	}
	for i := range msgs {
		if msgs[i].Ino == ino {
			return &msgs[i], nil
		}
	}
	return nil, errNoSocket
}
