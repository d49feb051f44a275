//go:build linux

package raw

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AddrOf is the address of the first byte of b (0 for an empty b), for a
// remote iovec, a uffd range or a pagemap offset. The caller keeps b alive
// and unmoved (mmap'd memory, or a package-level array) for as long as the
// address is used.
func AddrOf(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// Bytes views the memory of *v as bytes, for a struct handed to the kernel
// or to another process as it lies in memory.
func Bytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// SliceBytes views the memory of s as bytes (nil for an empty s), so that a
// read fills its elements in place.
func SliceBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var z T
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(z)))
}

// GetRobustList is get_robust_list(2) of thread tid: the address and length
// of its robust futex list head. It works from outside with ptrace access.
func GetRobustList(tid int) (head, length uint64, err error) {
	_, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&length)))
	if e != 0 {
		return 0, 0, e
	}
	return head, length, nil
}

// PrctlMMMapSize is prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): the size of
// struct prctl_mm_map the kernel expects.
func PrctlMMMapSize() (uint32, error) {
	var size uint32
	_, _, e := unix.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP_SIZE, uintptr(unsafe.Pointer(&size)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return size, nil
}

// PrctlSetMMMap is prctl(PR_SET_MM, PR_SET_MM_MAP) on the calling process,
// with auxv as the saved auxiliary vector (m.Auxv and m.AuxvSize are set
// here).
func PrctlSetMMMap(m PrctlMMMap, auxv []byte) error {
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

// StringAddr is the address of the bytes of s (to tell whether two strings
// share their memory).
func StringAddr(s string) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

// Mem views n bytes of this process's memory at addr.
//
// Preconditions: [addr, addr+n) is mapped and stays mapped while the view
// is used, and is memory Go does not manage (a mapping made with a raw
// mmap or mremap, as the tracker tests' workload makes).
func Mem(addr uint64, n int) []byte {
	p := uintptr(addr)
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&p))), n)
}
