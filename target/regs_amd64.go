//go:build linux && amd64

package target

import (
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// regsFromCore is the x86-64 register set of an image's thread.
func regsFromCore(c *core.Regs) unix.PtraceRegs {
	return unix.PtraceRegs{
		R15: c.R15, R14: c.R14, R13: c.R13, R12: c.R12, Rbp: c.RBP, Rbx: c.RBX, R11: c.R11, R10: c.R10,
		R9: c.R9, R8: c.R8, Rax: c.RAX, Rcx: c.RCX, Rdx: c.RDX, Rsi: c.RSI, Rdi: c.RDI,
		Orig_rax: c.OrigRAX, Rip: c.RIP, Cs: c.CS, Eflags: c.EFLAGS, Rsp: c.RSP, Ss: c.SS,
		Fs_base: c.FSBase, Gs_base: c.GSBase, Ds: c.DS, Es: c.ES, Fs: c.FS, Gs: c.GS,
	}
}
