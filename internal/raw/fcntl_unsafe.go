//go:build linux

package raw

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FcntlOwner is fcntl(fd, cmd, owner) with cmd F_GETOWN_EX or F_SETOWN_EX.
func FcntlOwner(fd int, cmd int, owner *FOwnerEx) error {
	_, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(unsafe.Pointer(owner)))
	runtime.KeepAlive(owner)
	if e != 0 {
		return e
	}
	return nil
}

// struct f_owner_ex is two ints.
var _ [8]byte = [unsafe.Sizeof(FOwnerEx{})]byte{}
