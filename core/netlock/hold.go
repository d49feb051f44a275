package netlock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// While a network lock is on, the peers' segments to the frozen
// connections are dropped, and a peer sends them again only when its
// retransmission timer fires: 200 ms at the very least, more after a
// backoff. So the source keeps a copy of each (a packet socket sees a
// packet before netfilter drops it) and, once the process runs again (on
// the target, or here after an abort) and the lock is off, sends them on
// as they came, from the peer's address: the restored socket takes the
// data and acknowledges it at once, and the peer never waits out its
// timer. A SYN to a listening port is held and sent on the same way, so a
// client that connected during the freeze gets its answer at once. Segments
// the connection has already (retransmissions) are acknowledged and
// dropped by the receiver: sending one twice costs nothing.

// maxHeld caps what a hold keeps: bytes and packets.
const (
	maxHeldBytes   = 8 << 20
	maxHeldPackets = 8192
)

// Hold keeps copies of the packets the lock drops.
type Hold struct {
	fd int
	// raw4 and raw6 send the packets on: made with the packet socket, in
	// the process's namespace, for the process may be gone by then.
	raw4, raw6 int
	conns      map[tcpKey]bool // remote -> local
	ports      map[uint16]bool // listening ports (SYNs)
	addrs      map[netip.Addr]bool

	mu         sync.Mutex
	pkts       [][]byte
	bytes      int
	dropped    int
	finished   bool          // Finish has taken the packets: no more
	closed     chan struct{} // closed once Finish has closed the packet socket
	finishOnce sync.Once
}

type tcpKey struct{ src, dst netip.AddrPort }

// SocketFunc makes a socket in the network namespace to hold packets in:
// unix.Socket for the caller's own.
type SocketFunc func(domain, typ, proto int) (int, error)

// StartHold starts keeping the packets of the connections (peer to
// process) and the SYNs to the listeners that arrive in the namespace
// where socket makes its sockets.
func StartHold(socket SocketFunc, conns []Conn, listeners []netip.AddrPort) (*Hold, error) {
	h := &Hold{conns: map[tcpKey]bool{}, ports: map[uint16]bool{}, addrs: map[netip.Addr]bool{}, closed: make(chan struct{})}
	h.AddConns(conns)
	for _, l := range listeners {
		h.ports[l.Port()] = true
		if a := l.Addr().Unmap(); !a.IsUnspecified() {
			h.addrs[a] = true
		}
	}
	fd, err := socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	h.raw4, h.raw6 = -1, -1
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		raw, err := socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			unix.Close(fd)
			h.CloseRaw()
			return nil, fmt.Errorf("raw socket: %w", err)
		}
		if fam == unix.AF_INET {
			h.raw4 = raw
		} else {
			h.raw6 = raw
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		h.CloseRaw()
		return nil, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	// Not the packets this namespace sends (Linux 4.20+; else run skips them).
	unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	h.mu.Lock()
	h.fd = fd
	h.setFilter()
	h.mu.Unlock()
	// Nothing reads the socket until Finish: its buffer, which the filter
	// keeps to the connections' ports, holds the packets (a reader woken
	// as they come could take milliseconds to get a processor back when
	// Finish wants it done).
	return h, nil
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// take moves the packets queued on the socket into the hold, without
// waiting; false when the socket failed.
func (h *Hold) take(fd uintptr, buf []byte) bool {
	for {
		n, from, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		if err != nil {
			return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if !h.wanted(buf[:n]) {
			continue
		}
		h.mu.Lock()
		switch {
		case h.finished:
		case len(h.pkts) >= maxHeldPackets || h.bytes+n > maxHeldBytes:
			h.dropped++
		default:
			h.pkts = append(h.pkts, append([]byte(nil), buf[:n]...))
			h.bytes += n
		}
		h.mu.Unlock()
	}
}

// wanted tells whether an IP packet is a TCP segment to hold.
func (h *Hold) wanted(p []byte) bool {
	src, dst, tcp, ok := parseTCP(p)
	if !ok {
		return false
	}
	sp, dp := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:])
	h.mu.Lock()
	conn := h.conns[tcpKey{netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)}]
	h.mu.Unlock()
	if conn {
		return true
	}
	flags := tcp[13]
	const syn, ack = 0x02, 0x10
	return flags&(syn|ack) == syn && h.ports[dp] && (len(h.addrs) == 0 || h.addrs[dst])
}

// parseTCP finds the addresses and TCP header of an IPv4 or IPv6 packet
// (IPv6 without extension headers).
func parseTCP(p []byte) (src, dst netip.Addr, tcp []byte, ok bool) {
	if len(p) < 20 {
		return
	}
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(p[2:]))
		if p[9] != unix.IPPROTO_TCP || ihl < 20 || total > len(p) || total < ihl+20 {
			return
		}
		if binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
			return // a fragment
		}
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		return src, dst, p[ihl:total], true
	case 6:
		if len(p) < 60 || p[6] != unix.IPPROTO_TCP {
			return
		}
		plen := int(binary.BigEndian.Uint16(p[4:]))
		if 40+plen > len(p) || plen < 20 {
			return
		}
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		return src, dst, p[40 : 40+plen], true
	}
	return
}

// CloseRaw closes the raw sockets Replay sends with.
func (h *Hold) CloseRaw() {
	for _, fd := range []int{h.raw4, h.raw6} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	h.raw4, h.raw6 = -1, -1
}

// AddConns keeps the packets of these connections too (a hold started
// for the listeners before a freeze learns the connections after it).
func (h *Hold) AddConns(conns []Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range conns {
		h.conns[tcpKey{unmapPort(c.Remote), unmapPort(c.Local)}] = true
	}
	h.setFilter()
}

// Finish stops keeping packets and returns those kept, with the number
// dropped for want of room. The raw sockets stay open for Replay.
func (h *Hold) Finish() ([][]byte, int) {
	h.finishOnce.Do(func() {
		buf := make([]byte, 65536)
		h.take(uintptr(h.fd), buf)
		// Packets the socket's buffer had no room for.
		var st unix.TpacketStats
		if n, err := raw.Getsockopt(h.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS, &st); err == nil && n >= 8 {
			h.dropped += int(st.Drops)
		}
		// Closing a packet socket waits for an RCU grace period (a dozen
		// milliseconds): not on the caller's time.
		go func() {
			unix.Close(h.fd)
			close(h.closed)
		}()
		h.mu.Lock()
		h.finished = true
		h.mu.Unlock()
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pkts, h.dropped
}

// Replay sends the held packets on, from the process's network namespace,
// as they came (the peer's addresses), with their TCP checksums made whole
// (a packet taken off a veth may carry only the pseudo-header's sum, the
// rest left to an offload that will not happen now), and closes the hold's
// raw sockets. It returns how many went.
func (h *Hold) Replay(pkts [][]byte) (int, error) {
	defer h.CloseRaw()
	return h.send(pkts)
}

// Drain takes the packets held so far and sends them on as Replay does,
// and the hold goes on holding (Finish takes the rest). For a source
// whose processes already run on the target while its original is torn
// down under the lock: with the service address gone from here, what the
// lock held since the freeze goes to the target at once, not after the
// teardown (a PostgreSQL tree's took 13-25 ms), and the lock still keeps
// the original's sockets from the peers. It returns how many went; after
// Finish it does nothing.
func (h *Hold) Drain() (int, error) { return h.send(h.takeHeld()) }

// takeHeld takes the packets held so far out of the hold, which goes on
// holding; nil after Finish.
func (h *Hold) takeHeld() [][]byte {
	h.mu.Lock()
	finished := h.finished
	h.mu.Unlock()
	if finished {
		return nil
	}
	h.take(uintptr(h.fd), make([]byte, 65536))
	h.mu.Lock()
	defer h.mu.Unlock()
	pkts := h.pkts
	h.pkts, h.bytes = nil, 0
	return pkts
}

// send sends pkts on from the raw sockets (see Replay).
func (h *Hold) send(pkts [][]byte) (int, error) {
	sent := 0
	var errs []error
	for _, p := range pkts {
		src, dst, tcp, ok := parseTCP(p)
		if !ok {
			continue
		}
		FixTCPChecksum(src, dst, tcp)
		var err error
		if src.Is4() {
			err = unix.Sendto(h.raw4, p, 0, &unix.SockaddrInet4{Addr: dst.As4()})
		} else {
			err = unix.Sendto(h.raw6, p, 0, &unix.SockaddrInet6{Addr: dst.As16()})
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
}

// FixTCPChecksum computes the checksum of segment tcp, sent from src to
// dst, afresh.
func FixTCPChecksum(src, dst netip.Addr, tcp []byte) {
	tcp[16], tcp[17] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	sum += unix.IPPROTO_TCP + uint32(len(tcp))
	add(tcp)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
}

// holdFilter is a classic BPF program for the hold's packet socket (its
// offsets start at the network header): it passes only unfragmented TCP
// segments over IPv4 or IPv6 (no extension headers) to one of ports, so
// that the socket does not copy every packet of the namespace (a
// migration's own page stream among them) while the process is frozen.
func holdFilter(ports []uint16) []unix.SockFilter {
	const (
		ldAbsB = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldAbsH = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldIndH = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		ldxMsh = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		rsh    = unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K
		jeq    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset   = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ja     = unix.BPF_JMP | unix.BPF_JA
		ret    = unix.BPF_RET | unix.BPF_K
	)
	n := len(ports)
	// Layout: 0-3 version, 4-10 IPv4, 11-13 IPv6, 14.. ports, then drop,
	// accept.
	portsAt := 14
	drop := portsAt + n
	accept := drop + 1
	rel := func(from, to int) uint8 { return uint8(to - from - 1) }
	p := []unix.SockFilter{
		{Code: ldAbsB, K: 0},
		{Code: rsh, K: 4},
		{Code: jeq, K: 4, Jt: rel(2, 4), Jf: 0},
		{Code: jeq, K: 6, Jt: rel(3, 11), Jf: rel(3, drop)},
		// IPv4
		{Code: ldAbsB, K: 9},
		{Code: jeq, K: unix.IPPROTO_TCP, Jt: 0, Jf: rel(5, drop)},
		{Code: ldAbsH, K: 6},
		{Code: jset, K: 0x1fff, Jt: rel(7, drop), Jf: 0},
		{Code: ldxMsh, K: 0},
		{Code: ldIndH, K: 2},
		{Code: ja, K: uint32(portsAt - 10 - 1)},
		// IPv6
		{Code: ldAbsB, K: 6},
		{Code: jeq, K: unix.IPPROTO_TCP, Jt: 0, Jf: rel(12, drop)},
		{Code: ldAbsH, K: 40 + 2},
	}
	for i, port := range ports {
		at := portsAt + i
		p = append(p, unix.SockFilter{Code: jeq, K: uint32(port), Jt: rel(at, accept), Jf: 0})
	}
	p = append(p, unix.SockFilter{Code: ret, K: 0}, unix.SockFilter{Code: ret, K: 0xffff})
	return p
}

// maxFilterPorts bounds the ports a filter tests one by one (the jumps of
// classic BPF reach 255 instructions); past it the hold takes every TCP
// packet and sorts them itself.
const maxFilterPorts = 200

// setFilter attaches the filter for the hold's ports.
// Preconditions: h.mu held.
func (h *Hold) setFilter() {
	if h.fd == 0 {
		return
	}
	ports := make([]uint16, 0, len(h.ports)+len(h.conns))
	seen := map[uint16]bool{}
	for port := range h.ports {
		if !seen[port] {
			seen[port] = true
			ports = append(ports, port)
		}
	}
	for k := range h.conns {
		if port := k.dst.Port(); !seen[port] {
			seen[port] = true
			ports = append(ports, port)
		}
	}
	if len(ports) == 0 || len(ports) > maxFilterPorts {
		return
	}
	prog := holdFilter(ports)
	unix.SetsockoptSockFprog(h.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
}
