package netaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nlSocket is a blocking NETLINK_ROUTE socket under a netlink.Conn (see
// netlink.NewConn): its system calls run on the calling thread, and cost
// what they cost. The socket of netlink.Dial goes through the runtime's
// poller and starts a goroutine for each read and write, to watch for a
// context's cancellation; a caller locked to its thread (as one in
// another network namespace is) pays two thread switches for each, which
// made a request 40 to 100 µs here where its system calls take a few.
//
// The kernel answers an rtnetlink request while handling the send (a dump
// one part per read), so a read does not wait; the receive timeout only
// bounds a kernel that never answers.
type nlSocket struct {
	fd int
}

// nlTimeout bounds the wait for an answer.
const nlTimeout = 5 * time.Second

// dialRoute opens an rtnetlink socket in the calling thread's network
// namespace.
func dialRoute() (*netlink.Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_NETLINK)", err)
	}
	tv := unix.NsecToTimeval(nlTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt(SO_RCVTIMEO)", err)
	}
	// The kernel's error messages (extended acks), and its filtering of
	// address dumps by link (strict checking): both help, neither is
	// needed, so a kernel without them is no error.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	// PID 0: the kernel binds the socket on its first send, and
	// netlink.Validate checks answers by sequence number alone.
	return netlink.NewConn(&nlSocket{fd}, 0), nil
}

// errClosed is the error of a closed socket's methods: its fd number may
// be another file's by then.
var errClosed = os.NewSyscallError("netlink", unix.EBADF)

func (s *nlSocket) Close() error {
	if s.fd < 0 {
		return errClosed
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return os.NewSyscallError("close", err)
}

func (s *nlSocket) Send(m netlink.Message) error {
	return s.SendMessages([]netlink.Message{m})
}

func (s *nlSocket) SendMessages(ms []netlink.Message) error {
	if s.fd < 0 {
		return errClosed
	}
	var b []byte
	for _, m := range ms {
		mb, err := m.MarshalBinary()
		if err != nil {
			return err
		}
		b = append(b, mb...)
	}
	return ignoringEINTR("sendto(AF_NETLINK)", func() error {
		return unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
}

// Receive reads one datagram: its size first (MSG_PEEK|MSG_TRUNC), so that
// each read has a buffer of its own, which the messages' Data share.
func (s *nlSocket) Receive() ([]netlink.Message, error) {
	if s.fd < 0 {
		return nil, errClosed
	}
	var n int
	err := ignoringEINTR("recvfrom(AF_NETLINK)", func() (err error) {
		n, _, err = unix.Recvfrom(s.fd, nil, unix.MSG_PEEK|unix.MSG_TRUNC)
		return err
	})
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	err = ignoringEINTR("recvfrom(AF_NETLINK)", func() (err error) {
		n, _, err = unix.Recvfrom(s.fd, b, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	return splitMessages(b[:n])
}

// splitMessages cuts a datagram into its messages: struct nlmsghdr {u32
// len, u16 type, u16 flags, u32 seq, u32 pid}, then len-16 bytes of data,
// then padding to 4 bytes.
func splitMessages(b []byte) ([]netlink.Message, error) {
	var ms []netlink.Message
	for len(b) > 0 {
		if len(b) < 16 {
			return nil, fmt.Errorf("netlink: %d bytes left, short of a header", len(b))
		}
		l := int(binary.NativeEndian.Uint32(b))
		if l < 16 || l > len(b) {
			return nil, fmt.Errorf("netlink: message length %d, %d bytes left", l, len(b))
		}
		ms = append(ms, netlink.Message{
			Header: netlink.Header{
				Length:   uint32(l),
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:])),
				Sequence: binary.NativeEndian.Uint32(b[8:]),
				PID:      binary.NativeEndian.Uint32(b[12:]),
			},
			Data: b[16:l:l],
		})
		b = b[min((l+3)&^3, len(b)):]
	}
	if len(ms) == 0 {
		return nil, errors.New("netlink: empty datagram")
	}
	return ms, nil
}
