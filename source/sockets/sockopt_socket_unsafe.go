package sockets

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// getsockoptRaw reads an option into b and returns the length the kernel
// wrote (for SO_GET_FILTER: the number of filter blocks).
func getsockoptRaw(fd, level, name int, b []byte, n uint32) (uint32, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	l := n
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return l, nil
}
