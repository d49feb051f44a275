package source

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

const scratchSize = 4096

// mapScratch maps one private page in the tracee for the results of
// injected calls. Preconditions: the process is frozen.
//
// It also reads the process's mlockall(MCL_FUTURE) flags, which /proc
// does not show: a new area of a process with MCL_FUTURE in effect is
// locked (it counts in VmLck), and populated at once unless MCL_ONFAULT
// is set too.
func (d *dumper) mapScratch() error {
	before, err := proc.ReadStatus(d.pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	addr, err := d.p.Syscall(d.p.Leader(), "mmap", unix.SYS_MMAP, 0, scratchSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return err
	}
	d.scratch = addr
	after, err := proc.ReadStatus(d.pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	d.proc.MlockAll = 0
	if after.VmLck > before.VmLck {
		d.proc.MlockAll = core.MclFuture
		pm, err := proc.OpenPagemap(d.pid)
		if err != nil {
			return fmt.Errorf("process %d: %w", d.pid, err)
		}
		defer pm.Close()
		e, err := pm.Read(addr, addr+scratchSize, nil)
		if err != nil {
			return fmt.Errorf("process %d: pagemap of the scratch page: %w", d.pid, err)
		}
		if !e[0].Present() {
			d.proc.MlockAll |= core.MclOnfault
		}
	}
	return nil
}

func (d *dumper) unmapScratch() error {
	if d.scratch == 0 {
		return nil
	}
	_, err := d.p.Syscall(d.p.Leader(), "munmap", unix.SYS_MUNMAP, d.scratch, scratchSize)
	if err == nil {
		d.scratch = 0
	}
	return err
}

// call injects a system call whose result lands in the scratch page and
// returns the first n bytes of it.
func (d *dumper) call(th *ptrace.Thread, name string, n int, nr uintptr, args ...uint64) (uint64, []byte, error) {
	ret, err := d.p.Syscall(th, name, nr, args...)
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, n)
	if n > 0 {
		if _, err := ptrace.ReadMem(d.pid, d.scratch, buf); err != nil {
			return 0, nil, err
		}
	}
	return ret, buf, nil
}

// collectInjected gathers the state only the process itself can tell, by
// running system calls inside it.
//
// Preconditions: the process is frozen and the scratch page is mapped.
func (d *dumper) collectInjected() error {
	p := d.proc
	le := binary.LittleEndian
	lead := d.p.Leader()
	// brk first: it takes the mmap lock for writing, the calls after it
	// do not take it at all (see liveSource.FinalState, which reads smaps
	// meanwhile).
	brk, err := d.p.Syscall(lead, "brk", unix.SYS_BRK, 0)
	if err != nil {
		return err
	}
	p.MM.Brk = brk
	if d.mmapDone != nil {
		d.mmapDone()
	}
	d.ownLap("injected: brk")
	p.Sigactions = make([]core.Sigaction, 64)
	for sig := 1; sig <= 64; sig++ {
		_, b, err := d.call(lead, "rt_sigaction", 32, unix.SYS_RT_SIGACTION, uint64(sig), 0, d.scratch, 8)
		if err != nil {
			return fmt.Errorf("signal %d: %w", sig, err)
		}
		p.Sigactions[sig-1] = core.Sigaction{Handler: le.Uint64(b), Flags: le.Uint64(b[8:]), Restorer: le.Uint64(b[16:]), Mask: le.Uint64(b[24:])}
	}
	d.ownLap("injected: signal actions")
	for i, th := range d.p.Threads {
		_, b, err := d.call(th, "sigaltstack", 24, unix.SYS_SIGALTSTACK, 0, d.scratch)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		p.Threads[i].AltStack = core.AltStack{SP: le.Uint64(b), Flags: int32(le.Uint32(b[8:])), Size: le.Uint64(b[16:])}
		_, b, err = d.call(th, "prctl(PR_GET_TID_ADDRESS)", 8, unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, d.scratch)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		p.Threads[i].ClearTID = le.Uint64(b)
		bits, err := d.p.Syscall(th, "prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		if c := p.Threads[i].Creds; c != nil {
			c.Securebits = uint32(bits)
		}
	}
	foldCreds(p)
	d.ownLap("injected: threads")
	p.Itimers = nil
	for which := 0; which < 3; which++ {
		_, b, err := d.call(lead, "getitimer", 32, unix.SYS_GETITIMER, uint64(which), d.scratch)
		if err != nil {
			return err
		}
		tv := func(o int) int64 { return int64(le.Uint64(b[o:]))*1e6 + int64(le.Uint64(b[o+8:])) }
		if iv, rem := tv(0), tv(16); iv != 0 || rem != 0 {
			p.Itimers = append(p.Itimers, core.Itimer{Which: which, IntervalUS: iv, RemainingUS: rem})
		}
	}
	d.ownLap("injected: itimers")
	if err := d.collectRlimits(lead); err != nil {
		return err
	}
	d.ownLap("rlimits")
	if err := d.collectTimers(); err != nil {
		return err
	}
	d.ownLap("injected: posix timers")
	dumpable, err := d.p.Syscall(lead, "prctl(PR_GET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)
	if err != nil {
		return err
	}
	p.Dumpable = int(dumpable)
	// The personality came from /proc (collectTask).
	err = d.collectInjectedAttrs()
	d.ownLap("injected: attributes")
	return err
}

// rlimits is the number of resource limits a process has (RLIM_NLIMITS).
const rlimits = 16

// collectRlimits reads the process's resource limits from
// /proc/PID/limits, as target.Check reads them back (prlimit(2) on
// another user's process needs CAP_SYS_RESOURCE, which root here does not
// have, even to read), or, if it shows fewer, from inside by injected
// prlimit64 calls.
func (d *dumper) collectRlimits(th *ptrace.Thread) error {
	if lims, err := proc.ReadLimits(d.pid); err == nil && len(lims) >= rlimits {
		d.proc.Rlimits = nil
		for res, l := range lims[:rlimits] {
			d.proc.Rlimits = append(d.proc.Rlimits, core.Rlimit{Resource: res, Cur: l.Cur, Max: l.Max})
		}
		return nil
	}
	var err error
	d.proc.Rlimits, err = d.injectRlimits(th)
	return err
}

// injectRlimits reads the resource limits by injected prlimit64 calls.
func (d *dumper) injectRlimits(th *ptrace.Thread) ([]core.Rlimit, error) {
	le := binary.LittleEndian
	var out []core.Rlimit
	for res := 0; res < rlimits; res++ {
		_, b, err := d.call(th, "prlimit64", 16, unix.SYS_PRLIMIT64, 0, uint64(res), 0, d.scratch)
		if err != nil {
			return nil, fmt.Errorf("rlimit %d: %w", res, err)
		}
		out = append(out, core.Rlimit{Resource: res, Cur: le.Uint64(b), Max: le.Uint64(b[8:])})
	}
	return out, nil
}
