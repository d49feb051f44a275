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

// fOwnerEx is struct f_owner_ex.
type fOwnerEx struct {
	Type int32
	PID  int32
}

// fcntlOwner is fcntl F_GETOWN_EX or F_SETOWN_EX.
func fcntlOwner(fd int, cmd int, v *fOwnerEx) error {
	_, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(unsafe.Pointer(v)))
	if e != 0 {
		return e
	}
	return nil
}
