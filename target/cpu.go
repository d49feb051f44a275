package target

import (
	"fmt"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
)

// CPUFeatureError says the processes use, or may use, XSAVE features
// (AVX, AVX-512, AMX...) this CPU lacks: the restore is refused before
// anything is created (in a live migration at the first layout, before
// the source freezes), rather than give back a process whose registers
// cannot be set or which would die of SIGILL in the code it chose for
// the source's CPU.
type CPUFeatureError struct {
	Missing string // the components lacking, named ("AVX-512")
	// InUse is set when a thread held them at the freeze; otherwise the
	// source's CPU offered them, and a program picks its code by the CPU
	// it starts on.
	InUse bool
	Have  uint64 // this CPU's XCR0
	Want  uint64 // the source's XCR0 and the threads' components
}

func (e *CPUFeatureError) Error() string {
	if e.InUse {
		return fmt.Sprintf("the process uses %s state; this CPU lacks it (XSAVE features %#x, the process needs %#x)", e.Missing, e.Have, e.Want)
	}
	return fmt.Sprintf("the process ran on a CPU with %s, which it may use (programs pick their code by the CPU they start on); "+
		"this CPU lacks it (XSAVE features %#x, the source's %#x)", e.Missing, e.Have, e.Want)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *CPUFeatureError) AbortCode() string { return "cpu" }

// hostXCR0 returns this CPU's XSAVE features: x87 and SSE only if the
// kernel does not use XSAVE.
func hostXCR0() uint64 {
	if x, ok := raw.XCR0(); ok {
		return x
	}
	return 3
}

// checkCPU refuses processes whose XSAVE features this CPU (XCR0 have)
// lacks. An image without a record of them (an older migrate) is left
// to the kernel, which refuses a register set it cannot load.
func checkCPU(f *core.CPUFeatures, have uint64) error {
	if f == nil {
		return nil
	}
	inUse, offered := f.Missing(have)
	if offered == 0 {
		return nil
	}
	e := &CPUFeatureError{Missing: core.XSAVENames(offered), Have: have, Want: f.XCR0 | f.InUse}
	if inUse != 0 {
		e.Missing, e.InUse = core.XSAVENames(inUse), true
	}
	return e
}

// fitXstate makes the NT_X86_XSTATE register set x (the source CPU's)
// the size of this CPU's, n bytes, which is the only size the kernel
// takes. The set is in the standard format, where each component has its
// place whatever the CPU (the offsets CPUID gives are the same on every
// x86-64 CPU): a larger area gets the components the source lacks in
// their initial state (not in xstate_bv, zeros), a smaller one drops
// components the threads did not hold. checkCPU refused a process whose
// components this CPU lacks; one that a thread held and would be cut off
// is an error all the same.
func fitXstate(x []byte, n int) ([]byte, error) {
	if len(x) == 0 || len(x) == n {
		return x, nil
	}
	if n < 512+64 {
		return nil, fmt.Errorf("this CPU's XSAVE area of %d bytes is too small", n)
	}
	if len(x) > n && !zeroFrom(x, n) {
		return nil, fmt.Errorf("the thread's XSAVE area of %d bytes holds state beyond this CPU's %d bytes", len(x), n)
	}
	out := make([]byte, n)
	copy(out, x)
	return out, nil
}

// zeroFrom says the bytes of b from off on are all zero.
func zeroFrom(b []byte, off int) bool {
	for _, c := range b[off:] {
		if c != 0 {
			return false
		}
	}
	return true
}
