package sockets

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/internal/raw"
)

// A TCP connection is dumped in two steps. While the fds are collected,
// each connection is only noted (its addresses, a duplicate of the socket):
// the network lock must be on before its state is read, and the lock needs
// every connection at once. Then, with the lock on, each socket goes into
// repair mode and is read whole. Repair mode stays on: a socket in repair
// mode closes without a word to its peer when the original is killed, and
// a rollback turns it off again.

// Conns are the TCP connections of a dump, noted while its fds are
// described (Process.Describe), read in repair mode once the network lock
// is on (Repair), and given back to their process on a rollback
// (Unrepair). The zero value is empty.
type Conns struct {
	list []*tcpPending
}

// Len is how many connections were noted.
func (cs *Conns) Len() int { return len(cs.list) }

// Take moves the connections noted in o after those of cs: the
// processes of a dump described at the same time, each into a Conns of
// its own, gathered in the tree's order.
func (cs *Conns) Take(o *Conns) {
	cs.list = append(cs.list, o.list...)
	o.list = nil
}

// tcpPending is an established connection noted during the fd dump.
type tcpPending struct {
	pid, fd int
	fdesc   *core.FD
	sock    *os.File // the agent's own duplicate, kept until the dump ends
	local   netip.AddrPort
	remote  netip.AddrPort
	state   uint8
	// repaired is set once TCP_REPAIR is on.
	repaired bool
}

// tcpConnState tells whether a TCP state is one of a connection the dump
// takes, and its name.
func tcpConnState(st uint8) bool {
	switch st {
	case 1, 4, 5, 8, 9, 11: // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING
		return true
	}
	return false
}

// noteTCP records an established (or half closed) connection for
// Conns.Repair.
func (sd *sockDump) noteTCP(s *core.Socket, state uint8) error {
	if s.Protocol == unix.IPPROTO_MPTCP {
		return sd.refuse("MPTCP connections cannot be taken apart (no repair mode); a Go program makes MPTCP sockets unless run with GODEBUG=multipathtcp=0")
	}
	local, err := sockAddr(unix.Getsockname(sd.sfd))
	if err != nil {
		return sd.fail(fmt.Errorf("getsockname: %w", err))
	}
	remote, err := sockAddr(unix.Getpeername(sd.sfd))
	if err != nil {
		return sd.fail(fmt.Errorf("getpeername: %w", err))
	}
	dup, err := unix.FcntlInt(uintptr(sd.sfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return sd.fail(fmt.Errorf("dup: %w", err))
	}
	s.State = core.SockConnected
	s.Local, s.Remote = local.String(), remote.String()
	s.TCP = &core.TCPConn{State: tcpStateName(state)}
	sd.p.Conns.list = append(sd.p.Conns.list, &tcpPending{
		pid: sd.p.PID, fd: sd.fd.FD, fdesc: sd.fd,
		sock:  os.NewFile(uintptr(dup), sd.kind),
		local: local, remote: remote, state: state,
	})
	return nil
}

// LockSpec is what the network lock must hold for these connections and
// the listening sockets.
func (cs *Conns) LockSpec(listeners []netip.AddrPort) netlock.Spec {
	var spec netlock.Spec
	for _, c := range cs.list {
		spec.Conns = append(spec.Conns, netlock.Conn{Local: c.local, Remote: c.remote})
	}
	spec.Listeners = append(spec.Listeners, listeners...)
	return spec
}

// Repair reads every noted connection in repair mode, its queues kept
// with store (see Process.Store). The network lock must be on. On error
// the sockets already in repair mode stay so; the caller's rollback
// (Unrepair) turns it off.
func (cs *Conns) Repair(store func(kind string, r io.Reader) (string, error)) error {
	for _, c := range cs.list {
		if err := repairOne(c, store); err != nil {
			return fmt.Errorf("process %d: fd %d (TCP %s -> %s): %w", c.pid, c.fd, c.local, c.remote, err)
		}
	}
	return nil
}

// Unrepair gives every connection back to its process, as it was:
// repair mode off (with a window probe, which costs the peer nothing and
// tells it the window).
func (cs *Conns) Unrepair() error {
	var errs []error
	for _, c := range cs.list {
		if c.repaired {
			if err := unix.SetsockoptInt(int(c.sock.Fd()), unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
				errs = append(errs, fmt.Errorf("process %d: fd %d: repair mode off: %w", c.pid, c.fd, err))
				continue
			}
			c.repaired = false
			if c.fdesc.Socket.Option(unix.SOL_SOCKET, unix.SO_REUSEADDR) != 0 {
				unix.SetsockoptInt(int(c.sock.Fd()), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
		}
	}
	return errors.Join(errs...)
}

// Close lets go of the duplicates (repair mode, if on, stays on: the
// original is about to be killed).
func (cs *Conns) Close() {
	for _, c := range cs.list {
		c.sock.Close()
	}
}

func repairOne(c *tcpPending, store func(kind string, r io.Reader) (string, error)) error {
	fd := int(c.sock.Fd())
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("TCP_REPAIR: %w (CAP_NET_ADMIN in the socket's network namespace is needed)", err)
		}
		return fmt.Errorf("TCP_REPAIR: %w", err)
	}
	c.repaired = true
	t := c.fdesc.Socket.TCP

	// The state again, now that nothing moves: it may have changed since
	// the socket was noted (a FIN that arrived before the lock).
	info := make([]byte, 8)
	if _, err := raw.GetsockoptBytes(fd, unix.IPPROTO_TCP, unix.TCP_INFO, info, uint32(len(info))); err != nil {
		return fmt.Errorf("TCP_INFO: %w", err)
	}
	if !tcpConnState(info[0]) {
		return fmt.Errorf("the connection went to state %s while the process was frozen", tcpStateName(info[0]))
	}
	t.State = tcpStateName(info[0])
	const (
		optTimestamps = 1 // TCPI_OPT_TIMESTAMPS
		optSACK       = 2
		optWscale     = 4
	)
	opts := info[5]
	t.Timestamps = opts&optTimestamps != 0
	t.SACK = opts&optSACK != 0
	t.Wscale = opts&optWscale != 0
	if t.Wscale {
		t.SndWscale, t.RcvWscale = info[6]&0xf, info[6]>>4
	}
	switch t.State {
	case "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK", "CLOSING":
		t.FinSent = true
	}
	switch t.State {
	case "CLOSE_WAIT", "LAST_ACK", "CLOSING":
		t.FinRecv = true
	}
	mss, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG) // mss_clamp in repair mode
	if err != nil {
		return fmt.Errorf("TCP_MAXSEG: %w", err)
	}
	t.MSS = uint32(mss)
	if t.Timestamps {
		ts, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP)
		if err != nil {
			return fmt.Errorf("TCP_TIMESTAMP: %w", err)
		}
		t.Timestamp = uint32(ts)
	}
	win := make([]byte, 20)
	if n, err := raw.GetsockoptBytes(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW, win, uint32(len(win))); err != nil || n != 20 {
		return fmt.Errorf("TCP_REPAIR_WINDOW: %d bytes, %v", n, err)
	}
	le := binary.NativeEndian
	t.Window = core.TCPWindow{SndWl1: le.Uint32(win), SndWnd: le.Uint32(win[4:]), MaxWindow: le.Uint32(win[8:]),
		RcvWnd: le.Uint32(win[12:]), RcvWup: le.Uint32(win[16:])}

	// The send queue: write_seq, and the bytes from snd_una on.
	outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ) // write_seq - snd_una
	if err != nil {
		return fmt.Errorf("SIOCOUTQ: %w", err)
	}
	unsent, err := unix.IoctlGetInt(fd, unix.SIOCOUTQNSD) // write_seq - snd_nxt
	if err != nil {
		return fmt.Errorf("SIOCOUTQNSD: %w", err)
	}
	writeSeq, err := queueSeq(fd, tcpSendQueue)
	if err != nil {
		return err
	}
	data := outq
	if t.FinSent {
		// The FIN takes a sequence number after the data. Unacknowledged,
		// it counts in outq (and, unsent, in unsent too); acknowledged,
		// snd_una is past it.
		if outq == 0 {
			t.FinAcked = true
		} else {
			data--
			if unsent > 0 {
				unsent--
			}
		}
	}
	if unsent > data {
		return fmt.Errorf("send queue of %d bytes with %d unsent", data, unsent)
	}
	t.SendSeq = writeSeq - uint32(outq)
	if t.FinAcked {
		t.SendSeq = writeSeq - 1
	}
	if data > 0 {
		q, err := peekQueue(fd, tcpSendQueue, data)
		if err != nil {
			return fmt.Errorf("send queue: %w", err)
		}
		if t.SendQueue, err = store("tcpsnd", bytes.NewReader(q)); err != nil {
			return err
		}
		t.SendLen, t.Unsent = data, unsent
	}

	// The receive queue: rcv_nxt, and the bytes the process has not read.
	inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return fmt.Errorf("SIOCINQ: %w", err)
	}
	rcvNxt, err := queueSeq(fd, tcpRecvQueue)
	if err != nil {
		return err
	}
	t.RecvSeq = rcvNxt - uint32(inq)
	if t.FinRecv {
		t.RecvSeq--
	}
	if inq > 0 {
		q, err := peekQueue(fd, tcpRecvQueue, inq)
		if err != nil {
			return fmt.Errorf("receive queue: %w", err)
		}
		if t.RecvQueue, err = store("tcprcv", bytes.NewReader(q)); err != nil {
			return err
		}
		t.RecvLen = inq
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return fmt.Errorf("TCP_REPAIR_QUEUE: %w", err)
	}
	// An established socket's buffers were tuned by the kernel; setting
	// them would turn the tuning off on the target.
	opts2 := c.fdesc.Socket.Options[:0]
	for _, o := range c.fdesc.Socket.Options {
		if o.Level == unix.SOL_SOCKET && (o.Name == unix.SO_RCVBUF || o.Name == unix.SO_SNDBUF) {
			continue
		}
		if o.Level == unix.IPPROTO_IP && o.Name == unix.IP_MULTICAST_TTL {
			continue // an accepted socket reads 64 here, and a stream socket takes no multicast option
		}
		if o.Level == unix.IPPROTO_TCP && o.Name == unix.TCP_MAXSEG {
			continue // the MSS the connection uses, not one the process set: it comes back with the repair options
		}
		opts2 = append(opts2, o)
	}
	c.fdesc.Socket.Options = opts2
	return nil
}

// Repair queues (TCP_REPAIR_QUEUE).
const (
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// queueSeq selects a repair queue and reads its sequence number: write_seq
// for the send queue, rcv_nxt for the receive queue.
func queueSeq(fd, queue int) (uint32, error) {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, queue); err != nil {
		return 0, fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", queue, err)
	}
	seq, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return 0, fmt.Errorf("TCP_QUEUE_SEQ of queue %d: %w", queue, err)
	}
	return uint32(seq), nil
}

// peekQueue reads n bytes of a repair queue without consuming them.
func peekQueue(fd, queue, n int) ([]byte, error) {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, queue); err != nil {
		return nil, fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", queue, err)
	}
	buf := make([]byte, n)
	// In repair mode a peek returns the whole queue from its start (the
	// send queue: every skb; the receive queue: from copied_seq) in one
	// call when the buffer is big enough.
	got, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil {
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("peeked %d bytes of %d", got, n)
	}
	return buf, nil
}

// UnrepairProcess turns repair mode off on every TCP connection of pid (a
// stopped original whose migration was aborted, left in repair mode by
// LeaveFrozen), so it talks to its peers again when it resumes.
func UnrepairProcess(pid int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n)); len(l) < 8 || l[:8] != "socket:[" {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed meanwhile
		}
		proto, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		info := make([]byte, 1)
		if proto == unix.IPPROTO_TCP {
			if _, err := raw.GetsockoptBytes(fd, unix.IPPROTO_TCP, unix.TCP_INFO, info, 1); err == nil && tcpConnState(info[0]) {
				reuse, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
					errs = append(errs, fmt.Errorf("fd %d: repair mode off: %w", n, err))
				} else if reuse != 0 {
					unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
			}
		}
		unix.Close(fd)
	}
	return errors.Join(errs...)
}

// NetnsSocket makes sockets in pid's network namespace.
func NetnsSocket(pid int) netlock.SocketFunc {
	return func(domain, typ, proto int) (int, error) {
		return inNetns(pid, func() (int, error) { return unix.Socket(domain, typ, proto) })
	}
}
