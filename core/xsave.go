package core

import (
	"fmt"
	"math/bits"
	"strings"
)

// CPUFeatures are the XSAVE state components (bits of XCR0) of the
// dumping host and of the processes: a thread's register state holds
// only the components its CPU has, and a program picks its code (AVX-512
// memcpy, AMX kernels) by what the CPU it started on offered. A restore
// on a CPU without one of them is refused (CPUFeatures.Missing).
type CPUFeatures struct {
	// XCR0 are the user state components the dumping CPU and kernel
	// enable (xgetbv(0)): what the processes may use.
	XCR0 uint64 `json:"xcr0"`
	// InUse are the components that some thread of the processes held in
	// a state other than their initial one at the freeze (the union of
	// the threads' xstate_bv); 0 in a live migration's layouts, read
	// before the freeze.
	InUse uint64 `json:"in_use,omitempty"`
	// OnlyInUse: the dumping operator vouched that the processes use no
	// component but those they hold (DumpOptions.CPUInUseOnly): a CPU is
	// checked against InUse alone.
	OnlyInUse bool `json:"only_in_use,omitempty"`
}

// Missing returns the components the processes need that a CPU with
// XCR0 have lacks: those they held (inUse) and those the dumping CPU
// offered them (offered, which includes inUse).
func (f *CPUFeatures) Missing(have uint64) (inUse, offered uint64) {
	if f.OnlyInUse {
		return f.InUse &^ have, f.InUse &^ have
	}
	return f.InUse &^ have, (f.XCR0 | f.InUse) &^ have
}

// xsaveComponents name the user XSAVE state components, by their bits.
var xsaveComponents = []struct {
	mask uint64
	name string
}{
	{1 << 0, "x87"},
	{1 << 1, "SSE"},
	{1 << 2, "AVX"},
	{1<<3 | 1<<4, "MPX"},
	{1<<5 | 1<<6 | 1<<7, "AVX-512"},
	{1 << 9, "PKRU (protection keys)"},
	{1 << 11, "CET user shadow stack"},
	{1<<17 | 1<<18, "AMX"},
	{1 << 19, "APX"},
}

// XSAVENames names the components of mask ("AVX, AVX-512"), a component
// without a name by its bit ("bit 20").
func XSAVENames(mask uint64) string {
	var names []string
	for _, c := range xsaveComponents {
		if mask&c.mask != 0 {
			names = append(names, c.name)
			mask &^= c.mask
		}
	}
	for mask != 0 {
		b := bits.TrailingZeros64(mask)
		names = append(names, fmt.Sprintf("bit %d", b))
		mask &^= 1 << b
	}
	return strings.Join(names, ", ")
}

// xstateBVOffset is where the XSAVE header's xstate_bv is in an
// NT_X86_XSTATE register set (after the 512-byte legacy area).
const xstateBVOffset = 512

// XstateBV returns the xstate_bv of an NT_X86_XSTATE register set: the
// components the thread held in other than their initial state; 0 for
// a set too short to have it.
func XstateBV(x []byte) uint64 {
	if len(x) < xstateBVOffset+8 {
		return 0
	}
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(x[xstateBVOffset+i])
	}
	return v
}
