package raw

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Missing-page userfaultfd (post-copy), include/uapi/linux/userfaultfd.h.
const (
	UFFDIO_WAKE     = 0x8010aa02 // _IOR(0xAA, 0x02, struct uffdio_range)
	UFFDIO_COPY     = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	UFFDIO_ZEROPAGE = 0xc020aa04 // _IOWR(0xAA, 0x04, struct uffdio_zeropage)

	UFFD_EVENT_PAGEFAULT = 0x12
	UFFD_EVENT_FORK      = 0x13
	UFFD_EVENT_REMAP     = 0x14
	UFFD_EVENT_REMOVE    = 0x15
	UFFD_EVENT_UNMAP     = 0x16

	UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
	UFFD_PAGEFAULT_FLAG_WP    = 1 << 1

	// UffdMsgSize is the size of struct uffd_msg, what one read of a
	// userfaultfd returns per event.
	UffdMsgSize = 32
)

// UffdioCopy is struct uffdio_copy.
type UffdioCopy struct {
	Dst, Src, Len, Mode uint64
	Copy                int64 // written by the kernel: bytes copied, or -errno
}

// UffdioZeropage is struct uffdio_zeropage.
type UffdioZeropage struct {
	Range    UffdioRange
	Mode     uint64
	Zeropage int64 // written by the kernel
}

// UffdMsg is struct uffd_msg, decoded: an event of a userfaultfd.
type UffdMsg struct {
	Event uint8
	// PAGEFAULT: Flags, Address (the faulting address, not rounded).
	Flags, Address uint64
	// FORK: the new userfaultfd of the child, installed in the reader.
	ForkFD int
	// REMAP: From, To, Len; REMOVE and UNMAP: [Start, End).
	From, To, Len, Start, End uint64
}

// ParseUffdMsg decodes one struct uffd_msg (UffdMsgSize bytes).
func ParseUffdMsg(b []byte) (UffdMsg, error) {
	if len(b) != UffdMsgSize {
		return UffdMsg{}, fmt.Errorf("uffd_msg of %d bytes, want %d", len(b), UffdMsgSize)
	}
	le := binary.LittleEndian
	m := UffdMsg{Event: b[0]}
	arg := b[8:]
	switch m.Event {
	case UFFD_EVENT_PAGEFAULT:
		m.Flags, m.Address = le.Uint64(arg), le.Uint64(arg[8:])
	case UFFD_EVENT_FORK:
		m.ForkFD = int(le.Uint32(arg))
	case UFFD_EVENT_REMAP:
		m.From, m.To, m.Len = le.Uint64(arg), le.Uint64(arg[8:]), le.Uint64(arg[16:])
	case UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP:
		m.Start, m.End = le.Uint64(arg), le.Uint64(arg[8:])
	default:
		return m, fmt.Errorf("uffd_msg: unknown event %#x", m.Event)
	}
	return m, nil
}

// UffdCopy copies data (whole pages) to dst in the userfaultfd's mm and
// wakes the threads waiting on it. It returns the bytes copied: on
// EEXIST (a page there already) the copy stops at that page, and n says
// how far it got.
func UffdCopy(fd int, dst uint64, data []byte) (n int, err error) {
	if len(data) == 0 {
		return 0, nil
	}
	for {
		c := UffdioCopy{Dst: dst + uint64(n), Len: uint64(len(data) - n)}
		_, err = ioctlCopy(fd, &c, data[n:])
		if c.Copy > 0 {
			n += int(c.Copy)
		}
		switch {
		case err == nil && n >= len(data):
			return n, nil
		case err == nil, errors.Is(err, unix.EAGAIN) && c.Copy > 0:
			continue // a partial copy: the rest
		}
		return n, err
	}
}

// UffdZeropage maps the zero page over [start, start+length) and wakes the
// threads waiting there; EEXIST if a page is there already.
func UffdZeropage(fd int, start, length uint64) error {
	z := UffdioZeropage{Range: UffdioRange{Start: start, Len: length}}
	_, err := Ioctl(fd, UFFDIO_ZEROPAGE, &z)
	return err
}

// UffdWake wakes the threads waiting on [start, start+length).
func UffdWake(fd int, start, length uint64) error {
	r := UffdioRange{Start: start, Len: length}
	_, err := Ioctl(fd, UFFDIO_WAKE, &r)
	return err
}
