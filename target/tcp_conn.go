package target

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netlock"
)

// Repair queues (TCP_REPAIR_QUEUE).
const (
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// tcpConn rebuilds an established (or half closed) TCP connection in
// repair mode: no SYN leaves, the peer learns nothing. The socket is bound
// with IP_FREEBIND, so it can be built before the service address reaches
// this host. It stays in repair mode, silent, until the process resumes:
// then atResume turns repair off, sends what was never sent, and replays
// the FINs of a half-closed connection.
func (r *restorer) tcpConn(fdnum int, s *core.Socket) (*os.File, error) {
	t := s.TCP
	local, err := netip.ParseAddrPort(s.Local)
	if err != nil {
		return nil, fmt.Errorf("local address: %w", err)
	}
	remote, err := netip.ParseAddrPort(s.Remote)
	if err != nil {
		return nil, fmt.Errorf("remote address: %w", err)
	}
	lsa, err := inetSockaddr(s.Family, local)
	if err != nil {
		return nil, err
	}
	rsa, err := inetSockaddr(s.Family, remote)
	if err != nil {
		return nil, err
	}
	var sendq, recvq []byte
	if t.SendQueue != "" {
		if sendq, err = r.readBlob(r.img, t.SendQueue); err != nil {
			return nil, fmt.Errorf("send queue: %w", err)
		}
	}
	if t.RecvQueue != "" {
		if recvq, err = r.readBlob(r.img, t.RecvQueue); err != nil {
			return nil, fmt.Errorf("receive queue: %w", err)
		}
	}
	if len(sendq) != t.SendLen || len(recvq) != t.RecvLen {
		return nil, fmt.Errorf("queues of %d and %d bytes, the image says %d and %d", len(sendq), len(recvq), t.SendLen, t.RecvLen)
	}

	fd, err := unix.Socket(s.Family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	ok := false
	defer func() {
		if !ok {
			f.Close() // in repair mode: silently
		}
	}()
	set := func(name string, opt, val int) error {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, opt, val); err != nil {
			return fmt.Errorf("%s %d: %w", name, val, err)
		}
		return nil
	}
	// Options first: SO_REUSEADDR would undo the reuse repair mode forces.
	r.setOptions(r.fdName(fdnum), fd, s.Options)
	if err := set("TCP_REPAIR", unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		return nil, err
	}
	freeLevel, freeName := unix.IPPROTO_IP, unix.IP_FREEBIND
	if s.Family == unix.AF_INET6 {
		freeLevel, freeName = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
	}
	transLevel, transName := unix.IPPROTO_IP, unix.IP_TRANSPARENT
	if s.Family == unix.AF_INET6 {
		transLevel, transName = unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT
	}
	freebind, transparent := s.Option(freeLevel, freeName), s.Option(transLevel, transName)
	// IP_TRANSPARENT lets the connection route from an address this host
	// does not have yet (IP_FREEBIND only lets it bind): the service
	// address arrives with the pre-resume hook. It is put back at resume.
	if err := unix.SetsockoptInt(fd, transLevel, transName, 1); err != nil {
		return nil, fmt.Errorf("set IP_TRANSPARENT: %w", err)
	}
	if err := unix.SetsockoptInt(fd, freeLevel, freeName, 1); err != nil {
		return nil, fmt.Errorf("set IP_FREEBIND: %w", err)
	}
	// In repair mode the bind may share its port with a listener (the
	// kernel forces reuse).
	if err := unix.Bind(fd, lsa); err != nil {
		return nil, &AddrError{PID: r.pid, FD: fdnum, Addr: s.Local, Err: err}
	}
	if err := unix.SetsockoptInt(fd, freeLevel, freeName, freebind); err != nil {
		return nil, fmt.Errorf("put IP_FREEBIND back to %d: %w", freebind, err)
	}
	for _, q := range []struct {
		queue int
		seq   uint32
	}{{tcpSendQueue, t.SendSeq}, {tcpRecvQueue, t.RecvSeq}} {
		if err := set("TCP_REPAIR_QUEUE", unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return nil, err
		}
		if err := set("TCP_QUEUE_SEQ", unix.TCP_QUEUE_SEQ, int(int32(q.seq))); err != nil {
			return nil, err
		}
	}
	// In repair mode connect sends nothing: the socket is established.
	if err := unix.Connect(fd, rsa); err != nil {
		if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("connection %s -> %s exists already on this host (an established connection moves only to another network namespace): %w", s.Local, s.Remote, err)
		}
		return nil, fmt.Errorf("connect to %s in repair mode: %w", s.Remote, err)
	}
	ropts := []unix.TCPRepairOpt{{Code: unix.TCPOPT_MAXSEG, Val: t.MSS}}
	if t.Wscale {
		ropts = append(ropts, unix.TCPRepairOpt{Code: unix.TCPOPT_WINDOW, Val: uint32(t.SndWscale) | uint32(t.RcvWscale)<<16})
	}
	if t.SACK {
		ropts = append(ropts, unix.TCPRepairOpt{Code: unix.TCPOPT_SACK_PERMITTED})
	}
	if t.Timestamps {
		ropts = append(ropts, unix.TCPRepairOpt{Code: unix.TCPOPT_TIMESTAMP})
	}
	if err := unix.SetsockoptTCPRepairOpt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_OPTIONS, ropts); err != nil {
		return nil, fmt.Errorf("TCP_REPAIR_OPTIONS: %w", err)
	}
	if t.Timestamps {
		if err := set("TCP_TIMESTAMP", unix.TCP_TIMESTAMP, int(int32(t.Timestamp))); err != nil {
			return nil, err
		}
	}
	if len(recvq) > 0 {
		if err := set("TCP_REPAIR_QUEUE", unix.TCP_REPAIR_QUEUE, tcpRecvQueue); err != nil {
			return nil, err
		}
		if err := repairSend(fd, recvq); err != nil {
			return nil, fmt.Errorf("refill the receive queue (%d bytes): %w", len(recvq), err)
		}
	}
	if need := 2*len(sendq) + 64<<10; len(sendq) > 0 {
		if sb, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && sb < need {
			// The original's buffer had grown; this one must take the
			// whole queue at once, the bytes never sent included (they
			// are written when the process resumes, and must not wait).
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, need); err != nil {
				return nil, fmt.Errorf("SO_SNDBUFFORCE %d for a send queue of %d bytes: %w", need, len(sendq), err)
			}
		}
	}
	// The bytes the original sent go back in repair mode, as sent (the
	// peer may have some: sending them anew would let its acknowledgment
	// run ahead of snd_nxt, which the kernel rejects, and a peer with a
	// closed window would never be heard again); those never sent are
	// written at the resume.
	sent := sendq[:len(sendq)-t.Unsent]
	if len(sent) > 0 {
		if err := set("TCP_REPAIR_QUEUE", unix.TCP_REPAIR_QUEUE, tcpSendQueue); err != nil {
			return nil, err
		}
		if err := repairSend(fd, sent); err != nil {
			return nil, fmt.Errorf("refill the send queue (%d bytes): %w", len(sent), err)
		}
	}
	// The window as the original had it, but measured against this
	// socket's rcv_nxt, which lacks a FIN received (replayed at resume):
	// the kernel refuses a window update point past rcv_nxt.
	win := t.Window
	rcvNxt := t.RecvSeq + uint32(t.RecvLen)
	if int32(win.RcvWup-rcvNxt) > 0 {
		win.RcvWup = rcvNxt
	}
	if int32(win.SndWl1-(rcvNxt+win.RcvWnd)) > 0 {
		win.SndWl1 = rcvNxt
	}
	w := make([]byte, 20)
	ne := binary.NativeEndian
	ne.PutUint32(w, win.SndWl1)
	ne.PutUint32(w[4:], win.SndWnd)
	ne.PutUint32(w[8:], win.MaxWindow)
	ne.PutUint32(w[12:], win.RcvWnd)
	ne.PutUint32(w[16:], win.RcvWup)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW, string(w)); err != nil {
		return nil, fmt.Errorf("TCP_REPAIR_WINDOW: %w", err)
	}
	if err := set("TCP_REPAIR_QUEUE", unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return nil, err
	}

	// At resume: the connection goes live.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup: %w", err)
	}
	live := os.NewFile(uintptr(dup), "socket")
	r.keep(live)
	unsent := sendq[len(sendq)-t.Unsent:]
	reuse := s.Option(unix.SOL_SOCKET, unix.SO_REUSEADDR) != 0 // repair mode off clears it
	name := fmt.Sprintf("%s (TCP %s -> %s)", r.fdName(fdnum), s.Local, s.Remote)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.atResume = append(r.atResume, func() error {
		lfd := int(live.Fd())
		if err := unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
			return fmt.Errorf("%s: repair mode off: %w", name, err)
		}
		if reuse {
			unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
		if err := unix.SetsockoptInt(lfd, transLevel, transName, transparent); err != nil {
			return fmt.Errorf("%s: put IP_TRANSPARENT back to %d: %w", name, transparent, err)
		}
		if len(unsent) > 0 {
			if err := sendAll(lfd, unsent); err != nil {
				return fmt.Errorf("%s: send the %d bytes never sent: %w", name, len(unsent), err)
			}
		}
		if t.FinRecv {
			if err := r.inNet(func() error { return injectFIN(local, remote, t) }); err != nil {
				return fmt.Errorf("%s: replay the peer's FIN: %w", name, err)
			}
		}
		if t.FinSent {
			if err := unix.Shutdown(lfd, unix.SHUT_WR); err != nil {
				return fmt.Errorf("%s: send FIN again: %w", name, err)
			}
		}
		return nil
	})
	ok = true
	return f, nil
}

// repairSend writes b into the selected repair queue.
func repairSend(fd int, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 1<<20)
		w, err := unix.SendmsgN(fd, b[:n], nil, nil, unix.MSG_DONTWAIT)
		if err != nil {
			return err
		}
		if w <= 0 {
			return errors.New("the queue takes no more")
		}
		b = b[w:]
	}
	return nil
}

// sendAll queues b on a live socket whose send buffer has room for it.
func sendAll(fd int, b []byte) error {
	for len(b) > 0 {
		w, err := unix.SendmsgN(fd, b, nil, nil, unix.MSG_DONTWAIT)
		if err != nil {
			return fmt.Errorf("%d bytes left: %w", len(b), err)
		}
		b = b[w:]
	}
	return nil
}

// injectFIN delivers to the rebuilt socket the FIN its peer had sent (and
// the original had received): a TCP segment from the peer's address,
// built by hand and sent through a raw socket to the local address, which
// this host delivers to itself. It carries no timestamp, which the
// receiver accepts (PAWS checks only segments that have one).
func injectFIN(local, remote netip.AddrPort, t *core.TCPConn) error {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	tcp := make([]byte, 20)
	be := binary.BigEndian
	be.PutUint16(tcp, remote.Port())
	be.PutUint16(tcp[2:], local.Port())
	be.PutUint32(tcp[4:], t.RecvSeq+uint32(t.RecvLen))
	be.PutUint32(tcp[8:], t.SendSeq)
	tcp[12] = 5 << 4
	tcp[13] = 0x11 // FIN|ACK
	win := t.Window.SndWnd >> t.SndWscale
	if win > 0xffff {
		win = 0xffff
	}
	be.PutUint16(tcp[14:], uint16(win))
	netlock.FixTCPChecksum(ra, la, tcp)
	// (The kernel fills in an IPv4 header's checksum for IPPROTO_RAW.)
	if la.Is4() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		ip := make([]byte, 20, 40)
		ip[0] = 0x45
		be.PutUint16(ip[2:], 40)
		be.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = 64
		ip[9] = unix.IPPROTO_TCP
		copy(ip[12:], ra.AsSlice())
		copy(ip[16:], la.AsSlice())
		return unix.Sendto(fd, append(ip, tcp...), 0, &unix.SockaddrInet4{Addr: la.As4()})
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	ip := make([]byte, 40, 60)
	ip[0] = 0x60
	be.PutUint16(ip[4:], 20)
	ip[6] = unix.IPPROTO_TCP
	ip[7] = 64
	copy(ip[8:], ra.AsSlice())
	copy(ip[24:], la.AsSlice())
	return unix.Sendto(fd, append(ip, tcp...), 0, &unix.SockaddrInet6{Addr: la.As16()})
}
