package raw

// cpuid1ecx returns ecx of cpuid leaf 1; xgetbv0 runs xgetbv with ecx 0
// (xgetbv_amd64.s).
func cpuid1ecx() uint32
func xgetbv0() (eax, edx uint32)

// osxsave is the OSXSAVE bit of cpuid leaf 1's ecx: the kernel enabled
// XSAVE, and xgetbv works.
const osxsave = 1 << 27

// XCR0 returns the XSAVE state components this CPU and kernel enable for
// user space (XCR0); false when the kernel does not use XSAVE (no
// OSXSAVE), where xgetbv would fault.
func XCR0() (uint64, bool) {
	if cpuid1ecx()&osxsave == 0 {
		return 0, false
	}
	lo, hi := xgetbv0()
	return uint64(hi)<<32 | uint64(lo), true
}
