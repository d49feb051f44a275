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
