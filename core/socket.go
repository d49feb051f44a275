package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Socket describes a socket fd. Its fields are filled by source's socket
// dumper and read by target's socket restorer.
//
// What an image holds, by kind:
//
//   - unix stream/seqpacket pair (socketpair, or a connection whose two ends
//     are both in the process): State "connected", Peer, the bytes queued
//     for reading in Queue, Shutdown. PeerGone when the other end was closed
//     (the socket reads its queue, then end of file).
//   - unix datagram socket: State "connected" with Peer (a socket of the
//     image) or PeerName (a named socket outside the process, such as
//     /dev/log, connected to again by name), or "bound" / "unbound"; queued
//     datagrams in Queue.
//   - unix listener: State "listen", Name, Backlog.
//   - TCP: State "listen" (Backlog) or "bound" / "unbound"; UDP: "bound",
//     "unbound" or "connected" (Remote); Local, Options.
//   - netlink (a protocol of NetlinkProtocols): State "bound" or "unbound"
//     (never bound yet), or "connected" (a destination set); Netlink holds
//     the port id, groups and destination. Queued messages are not kept.
type Socket struct {
	Family   int    `json:"family"`   // AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
	Type     int    `json:"type"`     // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
	Protocol int    `json:"protocol"` // IPPROTO_*
	Ino      uint64 `json:"ino"`      // socket inode on the dumping host
	State    string `json:"state"`    // SockListen, SockBound, SockUnbound, SockConnected
	// Peer is the inode of the connected peer for unix sockets inside the
	// image (socketpairs and connected pairs).
	Peer uint64 `json:"peer,omitempty"`
	// Local and Remote addresses, as text ("/path", "@abstract", "1.2.3.4:80", "[::1]:80").
	// For inet sockets they are exact (net/netip syntax); for unix sockets
	// they are for people, and Name and PeerName are exact.
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	// Backlog of a listening socket.
	Backlog int `json:"backlog,omitempty"`
	// Options are socket options as level/name/value triples, only those
	// that differ from a new socket's.
	Options []SockOpt `json:"options,omitempty"`
	// Queue names a blob with the bytes queued for reading (unix sockets):
	// the bytes themselves for stream sockets, records made by AppendDgram
	// for datagram and seqpacket sockets.
	Queue string `json:"queue,omitempty"`
	// Shutdown holds the socket's shutdown bits: ShutRecv (no more
	// receives), ShutSend (no more sends).
	Shutdown int `json:"shutdown,omitempty"`

	// Name is the sun_path a unix socket is bound to, exactly (an abstract
	// name starts with a NUL byte).
	Name []byte `json:"name,omitempty"`
	// File describes the file a unix socket bound to a path made.
	File *SockFile `json:"file,omitempty"`
	// PeerName is the sun_path of the socket outside the process a unix
	// datagram socket is connected to.
	PeerName []byte `json:"peer_name,omitempty"`
	// PeerGone is set for a connected unix stream or seqpacket socket whose
	// peer was closed.
	PeerGone bool `json:"peer_gone,omitempty"`
	// Reset is set when a PeerGone stream socket's peer was closed with
	// bytes it had not read: once the queue is read, reads fail with
	// ECONNRESET.
	Reset bool `json:"reset,omitempty"`
	// Unread counts the datagrams an inet socket held unread at the dump.
	// They are not kept: their senders' addresses could not be restored.
	Unread int `json:"unread,omitempty"`
	// TCP is the repair state of a TCP connection (State "connected").
	TCP *TCPConn `json:"tcp,omitempty"`
	// Netlink is the state of a netlink socket (Family AF_NETLINK).
	Netlink *NetlinkState `json:"netlink,omitempty"`
}

// NetlinkState is what a netlink socket holds beyond its options: the port
// id it is bound to (its address, which the kernel's unicasts and other
// sockets' messages go to), the multicast groups it joined and the
// destination it is connected to. The messages queued for it are not
// kept: netlink is a datagram channel whose kernel senders send state
// again on request.
type NetlinkState struct {
	// PortID is nl_pid: the port id bound, explicitly or by the kernel at
	// the first send (0: never bound). A restore binds the same one.
	PortID uint32 `json:"port_id,omitempty"`
	// Groups are the multicast groups joined, in increasing order (group
	// numbers start at 1, as NETLINK_ADD_MEMBERSHIP takes them).
	Groups []uint32 `json:"groups,omitempty"`
	// DstPortID and DstGroup are the destination connect set (a group of
	// 1..32: connect takes it as a mask).
	DstPortID uint32 `json:"dst_port_id,omitempty"`
	DstGroup  uint32 `json:"dst_group,omitempty"`
	// Unread is the memory the messages queued for reading took at the
	// dump (SO_MEMINFO): they are dropped.
	Unread int `json:"unread,omitempty"`
}

// NetlinkProtocols are the netlink protocols a dump takes, by number, with
// their names: those whose kernel side keeps no state of a socket but its
// port id, groups and options. Others (netfilter's queue and log
// bindings, the process connector's filters, ...) keep state a restore
// could not give back.
var NetlinkProtocols = map[int]string{
	0:  "NETLINK_ROUTE",
	4:  "NETLINK_SOCK_DIAG",
	6:  "NETLINK_XFRM",
	7:  "NETLINK_SELINUX",
	9:  "NETLINK_AUDIT",
	15: "NETLINK_KOBJECT_UEVENT",
	16: "NETLINK_GENERIC",
	21: "NETLINK_CRYPTO",
}

// MaxNetlinkGroups bounds the groups of a netlink socket in an image, and
// MaxNetlinkGroup a group's number.
const (
	MaxNetlinkGroups = 1024
	MaxNetlinkGroup  = 1 << 16
)

// Validate checks that n is state a restore can give a socket.
func (n *NetlinkState) Validate() error {
	if len(n.Groups) > MaxNetlinkGroups {
		return fmt.Errorf("%d netlink groups, at most %d", len(n.Groups), MaxNetlinkGroups)
	}
	for i, g := range n.Groups {
		if g == 0 || g > MaxNetlinkGroup || (i > 0 && g <= n.Groups[i-1]) {
			return fmt.Errorf("netlink group %d out of range (1..%d) or out of order", g, MaxNetlinkGroup)
		}
	}
	if n.DstGroup > 32 {
		return fmt.Errorf("netlink destination group %d", n.DstGroup)
	}
	if n.Unread < 0 {
		return fmt.Errorf("netlink unread %d", n.Unread)
	}
	return nil
}

// TCPConn is a TCP connection taken apart in repair mode: enough to build
// it again, in repair mode, on another host, without the peer noticing.
//
// Sequence numbers are the kernel's: SendSeq is snd_una, the first byte
// the peer has not acknowledged, which starts SendQueue; RecvSeq is the
// first byte the process has not read, which starts RecvQueue. A FIN sent
// (FinSent) follows SendQueue and takes one sequence number; a FIN received
// (FinRecv) follows RecvQueue.
type TCPConn struct {
	// State is the kernel's name of the connection's state: ESTABLISHED,
	// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK or CLOSING.
	State   string `json:"state"`
	SendSeq uint32 `json:"send_seq"`
	RecvSeq uint32 `json:"recv_seq"`
	// SendQueue names the blob of bytes written but not acknowledged, of
	// which the last Unsent were never sent; SendLen is its size.
	SendQueue string `json:"send_queue,omitempty"`
	SendLen   int    `json:"send_len,omitempty"`
	Unsent    int    `json:"unsent,omitempty"`
	// RecvQueue names the blob of bytes received and not read yet.
	RecvQueue string `json:"recv_queue,omitempty"`
	RecvLen   int    `json:"recv_len,omitempty"`
	FinSent   bool   `json:"fin_sent,omitempty"`
	FinAcked  bool   `json:"fin_acked,omitempty"`
	FinRecv   bool   `json:"fin_recv,omitempty"`
	// Options negotiated at the handshake.
	MSS        uint32 `json:"mss"` // mss_clamp
	Wscale     bool   `json:"wscale,omitempty"`
	SndWscale  uint8  `json:"snd_wscale,omitempty"`
	RcvWscale  uint8  `json:"rcv_wscale,omitempty"`
	SACK       bool   `json:"sack,omitempty"`
	Timestamps bool   `json:"timestamps,omitempty"`
	// Timestamp is the connection's TCP timestamp clock at the dump
	// (TCP_TIMESTAMP), so the peer sees it go on, not jump back.
	Timestamp uint32 `json:"timestamp,omitempty"`
	// Window is TCP_REPAIR_WINDOW: what each side last advertised.
	Window TCPWindow `json:"window"`
}

// TCPWindow is struct tcp_repair_window.
type TCPWindow struct {
	SndWl1    uint32 `json:"snd_wl1"`
	SndWnd    uint32 `json:"snd_wnd"`
	MaxWindow uint32 `json:"max_window"`
	RcvWnd    uint32 `json:"rcv_wnd"`
	RcvWup    uint32 `json:"rcv_wup"`
}

// TCP connection states a dump takes (include/net/tcp_states.h names).
var tcpStates = map[string]bool{"ESTABLISHED": true, "FIN_WAIT1": true, "FIN_WAIT2": true,
	"CLOSE_WAIT": true, "LAST_ACK": true, "CLOSING": true}

// Validate checks that c is a connection a restore can rebuild.
func (c *TCPConn) Validate() error {
	if !tcpStates[c.State] {
		return fmt.Errorf("TCP state %q", c.State)
	}
	if c.SendLen < 0 || c.RecvLen < 0 || c.Unsent < 0 || c.Unsent > c.SendLen {
		return fmt.Errorf("TCP queues of %d bytes (%d unsent) and %d bytes", c.SendLen, c.Unsent, c.RecvLen)
	}
	if (c.SendLen > 0) != (c.SendQueue != "") || (c.RecvLen > 0) != (c.RecvQueue != "") {
		return errors.New("TCP queue lengths and blobs disagree")
	}
	finSent := c.State == "FIN_WAIT1" || c.State == "FIN_WAIT2" || c.State == "LAST_ACK" || c.State == "CLOSING"
	finRecv := c.State == "CLOSE_WAIT" || c.State == "LAST_ACK" || c.State == "CLOSING"
	if finSent != c.FinSent || finRecv != c.FinRecv {
		return fmt.Errorf("TCP state %s with fin_sent=%v fin_recv=%v", c.State, c.FinSent, c.FinRecv)
	}
	if c.FinAcked && (!c.FinSent || c.Unsent > 0 || c.SendLen > 0) {
		return errors.New("TCP FIN acknowledged before the bytes it follows")
	}
	if c.SndWscale > 14 || c.RcvWscale > 14 {
		return fmt.Errorf("TCP window scale %d/%d", c.SndWscale, c.RcvWscale)
	}
	if c.MSS == 0 || c.MSS > 65535 {
		return fmt.Errorf("TCP MSS %d", c.MSS)
	}
	return nil
}

// Socket states.
const (
	SockListen    = "listen"
	SockBound     = "bound"
	SockUnbound   = "unbound"
	SockConnected = "connected"
)

// Shutdown bits (the kernel's RCV_SHUTDOWN and SEND_SHUTDOWN).
const (
	ShutRecv = 1
	ShutSend = 2
)

// SockFile is the file a unix socket bound to a path made.
type SockFile struct {
	// Path is where to bind, as the dumping agent saw it: absolute, with
	// the process's root and working directory resolved.
	Path string `json:"path"`
	Mode uint32 `json:"mode"` // st_mode, S_IFSOCK included
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	// Gone is set when the file was unlinked (or replaced) after the bind:
	// the socket keeps its name but no file leads to it.
	Gone bool `json:"gone,omitempty"`
}

// SockOpt is one integer socket option.
type SockOpt struct {
	Level int    `json:"level"`
	Name  int    `json:"name"`
	Value int    `json:"value"`
	Label string `json:"label,omitempty"` // for people: "SO_REUSEADDR"
	// Bytes holds a non-integer value (TCP_CONGESTION, SO_BINDTODEVICE).
	Bytes []byte `json:"bytes,omitempty"`
}

// MaxDgram caps one datagram record of a Queue blob: a unix datagram is at
// most the sender's send buffer, itself capped by net.core.wmem_max.
const MaxDgram = 64 << 20

// ErrBadDgrams reports a malformed datagram queue blob.
var ErrBadDgrams = errors.New("malformed datagram queue")

// AppendDgram appends one datagram record to a Queue blob: the length as
// 4 bytes little-endian, then the bytes.
func AppendDgram(blob, msg []byte) []byte {
	blob = binary.LittleEndian.AppendUint32(blob, uint32(len(msg)))
	return append(blob, msg...)
}

// SplitDgrams returns the datagrams of a Queue blob, in order. The
// datagrams share blob's memory.
func SplitDgrams(blob []byte) ([][]byte, error) {
	var out [][]byte
	for off := 0; off < len(blob); {
		if len(blob)-off < 4 {
			return nil, fmt.Errorf("%w: %d bytes left at offset %d, a record header takes 4", ErrBadDgrams, len(blob)-off, off)
		}
		n := binary.LittleEndian.Uint32(blob[off:])
		off += 4
		if n > MaxDgram || int(n) > len(blob)-off {
			return nil, fmt.Errorf("%w: record of %d bytes at offset %d, %d bytes left", ErrBadDgrams, n, off-4, len(blob)-off)
		}
		out = append(out, blob[off:off+int(n)])
		off += int(n)
	}
	return out, nil
}

// LocalAddrs lists, once each and in order, the local IP addresses the
// image's inet sockets are bound to: the addresses a service must find on
// the host it moves to (wildcards and loopback left out).
func LocalAddrs(img *Image) []string {
	seen := map[netip.Addr]bool{}
	var out []string
	for _, p := range img.Processes() {
		for _, f := range p.Process.FDs {
			s := f.Socket
			if s == nil || s.Local == "" || (s.Family != afInet && s.Family != afInet6) {
				continue
			}
			ap, err := netip.ParseAddrPort(s.Local)
			if err != nil {
				continue
			}
			a := ap.Addr().Unmap().WithZone("")
			if a.IsUnspecified() || a.IsLoopback() || seen[a] {
				continue
			}
			seen[a] = true
			out = append(out, a.String())
		}
	}
	return out
}

// Address families (the values of AF_INET and AF_INET6 on Linux).
const (
	afInet    = 2
	afInet6   = 10
	afNetlink = 16
)

// Option returns the recorded value of integer option level/name, and 0
// (a new socket's value, for the options a dump leaves out) if the image
// has none.
func (s *Socket) Option(level, name int) int {
	for _, o := range s.Options {
		if o.Level == level && o.Name == name {
			return o.Value
		}
	}
	return 0
}
