package sockets

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// Queued bytes are copied with MSG_PEEK from the agent's duplicate, which
// leaves them in the queue. SO_PEEK_OFF is moved along to reach past the
// first message and put back as it was afterwards.

const (
	peekFlags = unix.MSG_PEEK | unix.MSG_DONTWAIT | unix.MSG_CMSG_CLOEXEC
	// maxDgrams caps the datagrams read from one queue.
	maxDgrams = 1 << 20
	// oobSize has room for a full SCM_RIGHTS (253 fds) and credentials, so
	// that peeked fds arrive whole and can be closed.
	oobSize = 4096
)

// controlError: queued messages carry ancillary data, which cannot be
// stored in an image.
type controlError struct{ what string }

func (e *controlError) Error() string {
	return "its receive queue holds messages with " + e.what + ", which cannot be saved"
}

// checkControl looks at the ancillary data of a peeked message. File
// descriptors it carried, now installed in the agent, are closed.
func checkControl(oob []byte, rflags int) error {
	var what string
	if len(oob) > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return &controlError{"ancillary data that does not parse"}
		}
		for _, m := range msgs {
			switch {
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS:
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
				what = "file descriptors (SCM_RIGHTS)"
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_CREDENTIALS:
				if what == "" {
					what = "credentials (SCM_CREDENTIALS)"
				}
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_PIDFD:
				if len(m.Data) >= 4 {
					unix.Close(int(int32(uint32(m.Data[0]) | uint32(m.Data[1])<<8 | uint32(m.Data[2])<<16 | uint32(m.Data[3])<<24)))
				}
				if what == "" {
					what = "a pidfd (SCM_PIDFD)"
				}
			default:
				if what == "" {
					what = fmt.Sprintf("ancillary data (level %d, type %d)", m.Header.Level, m.Header.Type)
				}
			}
		}
	}
	if what == "" && rflags&unix.MSG_CTRUNC != 0 {
		what = "more ancillary data than fits"
	}
	if what != "" {
		return &controlError{what}
	}
	return nil
}

// withPeekOff runs fn and puts SO_PEEK_OFF back as it was.
func withPeekOff(fd int, fn func() error) error {
	old, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return fmt.Errorf("SO_PEEK_OFF: %w", err)
	}
	err = fn()
	if e := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, old); e != nil && err == nil {
		err = fmt.Errorf("put SO_PEEK_OFF back to %d: %w", old, e)
	}
	return err
}

func recvPeek(fd int, buf, oob []byte, flags int) (n, oobn, rflags int, err error) {
	err = raw.IgnoringEINTR(func() (err error) {
		n, oobn, rflags, _, err = unix.Recvmsg(fd, buf, oob, flags)
		return err
	})
	return
}

// peekStream copies the total bytes queued on a stream socket. It never
// asks for more than is queued: a read that finds the queue empty would
// clear a pending error.
func peekStream(fd, total int) ([]byte, error) {
	buf := make([]byte, total)
	oob := make([]byte, oobSize)
	got := 0
	err := withPeekOff(fd, func() error {
		for got < total {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, got); err != nil {
				return fmt.Errorf("SO_PEEK_OFF: %w", err)
			}
			n, oobn, rflags, err := recvPeek(fd, buf[got:], oob, peekFlags)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				return fmt.Errorf("peek at the receive queue: %w", err)
			}
			if err := checkControl(oob[:oobn], rflags); err != nil {
				return err
			}
			if n <= 0 {
				break
			}
			got += n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got != total {
		return nil, &controlError{fmt.Sprintf("%d bytes queued of which only %d can be read (out-of-band data?)", total, got)}
	}
	return buf, nil
}

// peekDgrams copies the datagrams queued on a datagram or seqpacket socket
// as core.AppendDgram records. eof says that a zero-length read means the
// end of the queue (a seqpacket socket shut for reading).
//
// Preconditions: no error is pending on the socket (a peek would return
// and clear it).
func peekDgrams(fd int, eof bool) ([]byte, error) {
	var blob []byte
	buf := make([]byte, 64<<10)
	oob := make([]byte, oobSize)
	err := withPeekOff(fd, func() error {
		off := 0
		for count := 0; ; {
			if count >= maxDgrams {
				return fmt.Errorf("more than %d datagrams queued", maxDgrams)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, off); err != nil {
				return fmt.Errorf("SO_PEEK_OFF: %w", err)
			}
			n, oobn, rflags, err := recvPeek(fd, buf, oob, peekFlags|unix.MSG_TRUNC)
			if errors.Is(err, unix.EAGAIN) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("peek at the receive queue: %w", err)
			}
			if err := checkControl(oob[:oobn], rflags); err != nil {
				return err
			}
			if n > len(buf) {
				// MSG_TRUNC gave the real length: read it again whole.
				if n > core.MaxDgram {
					return fmt.Errorf("a datagram of %d bytes is queued", n)
				}
				buf = make([]byte, n)
				continue
			}
			if n == 0 && eof {
				return nil
			}
			blob = core.AppendDgram(blob, buf[:n])
			off += n
			count++
		}
	})
	return blob, err
}
