package source

import "unsafe"

// memAt views n bytes of this process's memory at addr, for the workload
// process of the tracker tests, which maps and moves memory with raw
// system calls.
func memAt(addr uintptr, n int) []byte {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	return unsafe.Slice((*byte)(p), n)
}
