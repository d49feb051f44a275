package kernel

import (
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Every use of unsafe in this package is in this file.

// The uapi structs must have the kernel's sizes; these fail to compile
// otherwise.
var (
	_ [24]byte                   = [unsafe.Sizeof(UffdioAPI{})]byte{}
	_ [16]byte                   = [unsafe.Sizeof(UffdioRange{})]byte{}
	_ [32]byte                   = [unsafe.Sizeof(UffdioRegister{})]byte{}
	_ [24]byte                   = [unsafe.Sizeof(UffdioWriteprotect{})]byte{}
	_ [24]byte                   = [unsafe.Sizeof(PageRegion{})]byte{}
	_ [96]byte                   = [unsafe.Sizeof(PmScanArg{})]byte{}
	_ [CLONE_ARGS_SIZE_VER2]byte = [unsafe.Sizeof(CloneArgs{})]byte{}
	_ [104]byte                  = [unsafe.Sizeof(PrctlMMMap{})]byte{}
	_ [8]byte                    = [unsafe.Sizeof(FOwnerEx{})]byte{}
)

// ioctlPtr is ioctl(fd, req, arg) with arg a pointer to a uapi struct.
func ioctlPtr[T any](fd int, req uint, arg *T) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(arg)))
	runtime.KeepAlive(arg)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// pagemapScan runs PAGEMAP_SCAN over [start, end) of the pagemap file fd,
// filling vec. It returns the regions filled and where the walk ended.
func pagemapScan(fd int, arg PmScanArg, vec []PageRegion) ([]PageRegion, uint64, error) {
	arg.Size = uint64(unsafe.Sizeof(arg))
	if len(vec) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
		arg.VecLen = uint64(len(vec))
	}
	n, err := ioctlPtr(fd, PAGEMAP_SCAN, &arg)
	runtime.KeepAlive(vec)
	if err != nil {
		return nil, arg.WalkEnd, err
	}
	return vec[:n], arg.WalkEnd, nil
}

// addrOf is the address of the first byte of b, for a remote iovec or a
// uffd range. The caller keeps b alive.
func addrOf(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// setTID is the set_tid array of rawClone3SetTID. It lives in the data
// segment, where nothing moves it while the kernel reads it.
var setTID [1]int32

// rawClone3SetTID creates a child process with PID tid that exits at once
// with status 0, and returns its PID to the parent.
//
// Preconditions: only for the single-purpose probe helper process. Between
// the clone and exit_group the child runs nothing but this function (no Go
// runtime, no stack growth: the function is nosplit and calls only nosplit
// assembly), which is what makes a raw fork of a Go process safe.
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

// clone3SetTID fills the clone_args for rawClone3SetTID: a plain fork with
// SIGCHLD as exit signal and the given PID in this PID namespace.
func clone3SetTID(tid int) (int, error) {
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

// prctlMMMapSize is prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): the size of
// struct prctl_mm_map the kernel expects.
func prctlMMMapSize() (uint32, error) {
	var size uint32
	_, _, e := unix.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP_SIZE, uintptr(unsafe.Pointer(&size)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return size, nil
}

// prctlSetMMMap is prctl(PR_SET_MM, PR_SET_MM_MAP) on the calling process,
// with auxv as the saved auxiliary vector.
func prctlSetMMMap(m PrctlMMMap, auxv []byte) error {
	if len(auxv) > 0 {
		m.Auxv = uint64(uintptr(unsafe.Pointer(&auxv[0])))
		m.AuxvSize = uint32(len(auxv))
	}
	_, _, e := unix.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, uintptr(unsafe.Pointer(&m)), unsafe.Sizeof(m), 0, 0)
	runtime.KeepAlive(auxv)
	if e != 0 {
		return e
	}
	return nil
}

// FcntlOwner is fcntl(fd, cmd, owner) with cmd F_GETOWN_EX or F_SETOWN_EX.
func FcntlOwner(fd int, cmd int, owner *FOwnerEx) error {
	_, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(unsafe.Pointer(owner)))
	runtime.KeepAlive(owner)
	if e != 0 {
		return e
	}
	return nil
}
