package raw

import "golang.org/x/sys/cpu"

// xgetbv0 runs xgetbv with ecx 0 (xgetbv_amd64.s).
func xgetbv0() (eax, edx uint32)

// XCR0 returns the XSAVE state components this CPU and kernel enable for
// user space (XCR0); false when the kernel does not use XSAVE (no
// OSXSAVE), where xgetbv would fault.
func XCR0() (uint64, bool) {
	if !cpu.X86.HasOSXSAVE {
		return 0, false
	}
	lo, hi := xgetbv0()
	return uint64(hi)<<32 | uint64(lo), true
}
