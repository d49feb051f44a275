package target

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

func unsafePointer[T any](v *T) unsafe.Pointer { return unsafe.Pointer(v) }

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
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
