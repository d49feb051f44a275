//go:build linux && amd64

package source

import (
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// regsToCore copies the x86-64 registers of a thread into the image.
func regsToCore(r *unix.PtraceRegs) core.Regs {
	return core.Regs{
		R15: r.R15, R14: r.R14, R13: r.R13, R12: r.R12, RBP: r.Rbp, RBX: r.Rbx, R11: r.R11, R10: r.R10,
		R9: r.R9, R8: r.R8, RAX: r.Rax, RCX: r.Rcx, RDX: r.Rdx, RSI: r.Rsi, RDI: r.Rdi,
		OrigRAX: r.Orig_rax, RIP: r.Rip, CS: r.Cs, EFLAGS: r.Eflags, RSP: r.Rsp, SS: r.Ss,
		FSBase: r.Fs_base, GSBase: r.Gs_base, DS: r.Ds, ES: r.Es, FS: r.Fs, GS: r.Gs,
	}
}
