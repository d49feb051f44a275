package source

import (
	"fmt"

	"github.com/procmig/migrate/core"
)

// vdsoSteps bounds the instructions a thread frozen inside the vdso is
// stepped through (a call takes tens to hundreds; a seqlock retry loop
// more while the kernel updates the data).
const vdsoSteps = 20000

// stepOutOfVDSO lets each thread of d frozen inside its [vdso]'s code
// finish the call it was in (ptrace.Proc.StepOut), so that no thread is
// dumped in the middle of vdso code: a restore on a kernel whose vdso
// differs runs a proxy of this vdso there, whose data pages are not this
// kernel's. A thread inside a system call to restart is left (the proxy
// keeps the old code, the call runs anew). One that does not leave
// within vdsoSteps is left too, logged, and so are the threads of a
// process stopped by job control (it must not run, even a few
// instructions): a restore that needs the proxy refuses them (target's
// threadsOutOfVDSO), one on the same kernel does not care.
//
// The [vdso] is looked for in the layout d.proc.VMAs, read frozen: the
// vdso code the threads are let run maps and unmaps nothing.
//
// Preconditions: on the tracer thread; the process is frozen; its layout
// is read.
func (d *dumper) stepOutOfVDSO() error {
	if d.p.Stopped() {
		return nil
	}
	for _, m := range d.proc.VMAs {
		if m.Kind != core.VMAVDSO {
			continue
		}
		for _, th := range d.p.Threads {
			if th.Restart != "" {
				continue
			}
			left, err := d.p.StepOut(th, m.Start, m.End, vdsoSteps)
			if err != nil {
				return fmt.Errorf("process %d: %w", d.pid, err)
			}
			if !left {
				d.log.Info("thread still in the vdso", "pid", d.pid, "tid", th.TID, "rip", fmt.Sprintf("%#x", th.Regs.Rip))
			}
		}
	}
	return nil
}
