//go:build linux

package raw

import "golang.org/x/sys/unix"

// IoctlValue is ioctl(fd, req, arg) with arg passed by value (not a
// pointer), retried on EINTR. It returns the ioctl's result.
func IoctlValue(fd int, req uint, arg uintptr) (int, error) {
	return IgnoringEINTR2(func() (int, error) {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), arg)
		if e != 0 {
			return int(r), e
		}
		return int(r), nil
	})
}
