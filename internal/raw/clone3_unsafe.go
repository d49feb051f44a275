//go:build linux

package raw

import (
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setTID is the set_tid array of rawClone3SetTID. It lives in the data
// segment, where nothing moves it while the kernel reads it.
var setTID [1]int32

// rawClone3SetTID creates a child process with PID tid that exits at once
// with status 0, and returns its PID to the parent.
//
// Preconditions: between the clone and exit_group the child runs nothing
// but this function (no Go runtime, no stack growth: the function is
// nosplit and calls only nosplit assembly), which is what makes a raw fork
// of a Go process safe.
//
//go:nosplit
//go:norace
func rawClone3SetTID(args *CloneArgs) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(args)), CLONE_ARGS_SIZE_VER2, 0)
	if e == 0 && r == 0 {
		// The child.
		syscall.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return int(r), e
}

// Clone3SetTID forks, with clone3 and set_tid, a child process with PID tid
// in this PID namespace that exits at once with status 0 (SIGCHLD as its
// exit signal), and returns its PID. The caller reaps it.
//
// Preconditions: not safe to call concurrently (set_tid is one package
// array); meant for a single-purpose probe helper process, as any raw fork
// of a multithreaded Go process is only safe when the child runs no Go code.
func Clone3SetTID(tid int) (int, error) {
	setTID[0] = int32(tid)
	args := &CloneArgs{
		ExitSignal: uint64(unix.SIGCHLD),
		SetTID:     uint64(uintptr(unsafe.Pointer(&setTID[0]))),
		SetTIDSize: 1,
	}
	pid, e := rawClone3SetTID(args)
	runtime.KeepAlive(args)
	if e != 0 {
		return -1, e
	}
	return pid, nil
}
