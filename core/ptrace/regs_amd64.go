//go:build linux && amd64

package ptrace

import "golang.org/x/sys/unix"

// The x86-64 register layout, in one place: where an injected system call
// puts its number, arguments and result, the instruction that makes it, and
// how a system call a stop interrupted is rewound to run again.

// syscallInsn is the syscall instruction.
var syscallInsn = []byte{0x0f, 0x05}

// setSyscall makes r, once set, run system call nr with args a from the
// syscall instruction at addr.
func setSyscall(r *unix.PtraceRegs, addr uint64, nr uintptr, a [6]uint64) {
	r.Rip = addr
	r.Rax = uint64(nr)
	r.Orig_rax = ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
}

// syscallResult is the raw result of a system call that stopped at its
// exit with registers r (a negative errno on failure).
func syscallResult(r *unix.PtraceRegs) uint64 { return r.Rax }

// rewindSyscall sets r, registers of a thread stopped in a system call that
// the kernel would restart (-ERESTART*), so that the call runs again from
// its syscall instruction when the registers are set, and the kernel does
// not restart it a second time. It reports whether it changed r.
func rewindSyscall(r *unix.PtraceRegs) bool {
	if int64(r.Orig_rax) < 0 {
		return false
	}
	switch -int64(r.Rax) {
	case errRestartSys, errRestartNoIntr, errRestartNoHand, errRestartRestartBlk:
		r.Rax = r.Orig_rax
		r.Rip -= uint64(len(syscallInsn))
		r.Orig_rax = ^uint64(0)
		return true
	}
	return false
}
