package source

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlU64 is an ioctl whose argument points at a uint64.
func ioctlU64(fd int, req uint, v *uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if e != 0 {
		return e
	}
	return nil
}
