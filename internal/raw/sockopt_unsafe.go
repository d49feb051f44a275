//go:build linux

package raw

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// GetsockoptBytes reads a socket option into b with optlen as the length
// passed in (the size of b for most options; the number of struct
// sock_filter blocks for SO_GET_FILTER, where b may be nil to ask for that
// number). It returns the length the kernel wrote back.
func GetsockoptBytes(fd, level, name int, b []byte, optlen uint32) (uint32, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	l := optlen
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	runtime.KeepAlive(b)
	if e != 0 {
		return 0, e
	}
	return l, nil
}

// Getsockopt reads a socket option into the struct v and returns the length
// the kernel wrote (which may be less than the size of v).
func Getsockopt[T any](fd, level, name int, v *T) (int, error) {
	l := uint32(unsafe.Sizeof(*v))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(v)), uintptr(unsafe.Pointer(&l)), 0)
	runtime.KeepAlive(v)
	if e != 0 {
		return 0, e
	}
	return int(l), nil
}

// Setsockopt sets a socket option to the struct v.
func Setsockopt[T any](fd, level, name int, v *T) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(v)), unsafe.Sizeof(*v), 0)
	runtime.KeepAlive(v)
	if e != 0 {
		return e
	}
	return nil
}
