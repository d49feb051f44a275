package target

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// setOptions sets a socket's recorded options, in their order, and warns
// about each one the kernel refuses or reads back differently.
// where names the fd in warnings.
func (r *restorer) setOptions(where string, sfd int, opts []core.SockOpt) {
	for _, o := range opts {
		if err := setOption(sfd, o); err != nil {
			r.warn("%s: socket option %s not restored: %v", where, optLabel(o), err)
		}
	}
}

func optLabel(o core.SockOpt) string {
	if o.Label != "" {
		return o.Label
	}
	return fmt.Sprintf("%d/%d", o.Level, o.Name)
}

// setOption sets one option and checks that it reads back as recorded.
func setOption(fd int, o core.SockOpt) error {
	switch {
	case o.Level == unix.SOL_SOCKET && o.Name == unix.SO_ATTACH_FILTER:
		if len(o.Bytes)%8 != 0 || len(o.Bytes) == 0 || len(o.Bytes)/8 > unix.BPF_MAXINSNS {
			return fmt.Errorf("filter of %d bytes", len(o.Bytes))
		}
		prog := make([]unix.SockFilter, len(o.Bytes)/8)
		ne := binary.NativeEndian
		for i := range prog {
			b := o.Bytes[8*i:]
			prog[i] = unix.SockFilter{Code: ne.Uint16(b), Jt: b[2], Jf: b[3], K: ne.Uint32(b[4:])}
		}
		return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	case o.Bytes != nil:
		return unix.SetsockoptString(fd, o.Level, o.Name, string(o.Bytes))
	case o.Level == unix.SOL_SOCKET && (o.Name == unix.SO_RCVBUF || o.Name == unix.SO_SNDBUF):
		return setBuffer(fd, o.Name, o.Value)
	}
	if err := unix.SetsockoptInt(fd, o.Level, o.Name, o.Value); err != nil {
		return fmt.Errorf("set to %d: %w", o.Value, err)
	}
	if got, err := unix.GetsockoptInt(fd, o.Level, o.Name); err == nil && got != o.Value {
		return fmt.Errorf("set to %d, reads back as %d", o.Value, got)
	}
	return nil
}

// setBuffer sets SO_RCVBUF or SO_SNDBUF to what getsockopt read at the
// dump. The kernel doubles what it is given (room for its bookkeeping), so
// half is set; a size above net.core.[rw]mem_max, which the process had
// forced, is forced again.
func setBuffer(fd, name, want int) error {
	force := unix.SO_SNDBUFFORCE
	if name == unix.SO_RCVBUF {
		force = unix.SO_RCVBUFFORCE
	}
	var got int
	for _, opt := range []int{name, force} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, want/2); err != nil {
			return fmt.Errorf("set to %d: %w", want/2, err)
		}
		var err error
		if got, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, name); err != nil || got == want {
			return err
		}
	}
	return fmt.Errorf("set to %d, reads back as %d", want, got)
}
