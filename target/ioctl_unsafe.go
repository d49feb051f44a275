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

// siginfoPID returns si_pid of a siginfo_t: after si_signo, si_errno and
// si_code, three int32s.
func siginfoPID(info *unix.Siginfo) int32 {
	b := (*[128]byte)(unsafe.Pointer(info))
	return int32(uint32(b[12]) | uint32(b[13])<<8 | uint32(b[14])<<16 | uint32(b[15])<<24)
}
