package ptrace

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// StepOut single-steps th while its instruction pointer is in [lo, hi),
// at most limit instructions, and reports whether it left the range. A
// thread frozen inside the vdso's code is in the middle of reading this
// kernel's [vvar]: stepped out, it finishes the call here and is back in
// the process's own code, which a restore on another kernel can run (the
// old vdso's code cannot read that kernel's data: see target's vdso
// proxy). A signal that arrives meanwhile is kept in th.Stolen, as the
// freeze keeps them.
//
// Preconditions: on the tracer thread (Tracer.Do); th is in a ptrace
// stop, not inside a system call to restart (th.Restart == "").
func (p *Proc) StepOut(th *Thread, lo, hi uint64, limit int) (bool, error) {
	for n := 0; ; n++ {
		if th.Regs.Rip < lo || th.Regs.Rip >= hi {
			return true, nil
		}
		if n == limit {
			return false, nil
		}
		if err := raw.Ptrace(unix.PTRACE_SINGLESTEP, th.TID, 0, 0); err != nil {
			return false, fmt.Errorf("single-step thread %d: %w", th.TID, err)
		}
		ws, err := wait(th.TID)
		if err != nil {
			return false, fmt.Errorf("single-step thread %d: wait: %w", th.TID, err)
		}
		if ws.Exited() || ws.Signaled() {
			th.TID = 0
			return false, fmt.Errorf("single-step: thread exited (%v)", ws)
		}
		if ws.Stopped() && event(ws) == 0 {
			// The step's trap (SIGTRAP from the kernel), or a
			// signal-delivery stop: that signal is kept for later, and
			// not delivered (resumed with none).
			if si, err := raw.PtraceGetSiginfo(th.TID); err == nil && (ws.StopSignal() != unix.SIGTRAP || sentByUser(si)) {
				th.Stolen = append(th.Stolen, si)
			}
		}
		if err := unix.PtraceGetRegs(th.TID, &th.Regs); err != nil {
			return false, fmt.Errorf("get registers of thread %d: %w", th.TID, err)
		}
	}
}

// sentByUser says whether a siginfo is of a signal sent by a process
// (kill, tkill, sigqueue: si_code <= 0), not by the kernel.
func sentByUser(si []byte) bool {
	return len(si) >= 12 && int32(nativeEndianUint32(si[8:])) <= 0
}
