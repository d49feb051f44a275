package source

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// The scratch area migrate maps in the tracee for the injected calls: the
// results they write at d.scratch (a page), the table of a batch of calls
// (ptrace.SyscallBatch, two pages), and the batch code (a page of its own,
// PROT_READ|PROT_EXEC, mapped over the last). All of it is left out of the
// layout (addVmFlags) and unmapped before the original runs on.
const (
	scratchResults = 4096
	scratchTable   = 4096     // offset of the batch table
	scratchCode    = 3 * 4096 // offset of the batch code page
	scratchSize    = scratchCode + ptrace.BatchCodeSize
	// batchMax is the most calls a batch's table holds.
	batchMax = (scratchCode-scratchTable)/64 - 1
)

// mapScratch maps the scratch area in the tracee for the results of
// injected calls, and the batch code in its last page (if that fails, a
// batch runs one call at a time). Preconditions: the process is frozen.
//
// It also reads the process's mlockall(MCL_FUTURE) flags, which /proc
// does not show: a new area of a process with MCL_FUTURE in effect is
// locked (it counts in VmLck), and populated at once unless MCL_ONFAULT
// is set too.
//
// The VmLck before the mmap is that of collectTask's read, when there was
// one: the process has stayed frozen since, and nothing it runs after
// (stepOutOfVDSO is done by then) locks memory. One read of /proc/PID/status
// less a process in the frozen window.
func (d *dumper) mapScratch() error {
	before := d.frozenStatus
	if before == nil {
		var err error
		if before, err = proc.ReadStatus(d.pid); err != nil {
			return fmt.Errorf("process %d: %w", d.pid, err)
		}
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
	if err := d.p.MapBatchCode(d.p.Leader(), addr+scratchCode); err != nil {
		d.log.Debug("no batch code: injected calls go one by one", "pid", d.pid, "err", err)
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
		d.p.ForgetBatchCode()
	}
	return err
}

// batch runs calls in thread th, batched in the scratch area (see
// ptrace.SyscallBatch), and returns their raw results; a failed call's
// error names it.
//
// Preconditions: the scratch area is mapped; len(calls) <= batchMax.
func (d *dumper) batch(th *ptrace.Thread, calls ...ptrace.Call) ([]uint64, error) {
	if len(calls) > batchMax {
		return nil, fmt.Errorf("%d calls in one batch, at most %d", len(calls), batchMax)
	}
	return d.p.SyscallBatch(th, d.scratch+scratchTable, calls)
}

// results reads the first n bytes of the scratch page.
func (d *dumper) results(n int) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := ptrace.ReadMem(d.pid, d.scratch, buf); err != nil {
		return nil, err
	}
	return buf, nil
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
	// One batch on the leader: brk first (it takes the mmap lock for
	// writing, the calls after it do not take it at all; see
	// liveSource.FinalState, which reads smaps meanwhile), the 64 signal
	// actions, each into its 32 bytes of the scratch page, the leader's
	// own attributes (see threadCalls), the interval timers and the
	// dumpable flag; the results read back at once.
	calls := make([]ptrace.Call, 0, 1+64+3+4)
	calls = append(calls, ptrace.Call{Name: "brk", Nr: unix.SYS_BRK})
	for sig := 1; sig <= 64; sig++ {
		calls = append(calls, ptrace.Call{Name: "rt_sigaction(" + strconv.Itoa(sig) + ")", Nr: unix.SYS_RT_SIGACTION,
			Args: [6]uint64{uint64(sig), 0, d.scratch + 32*uint64(sig-1), 8}})
	}
	const leaderAt, itimersAt = 64 * 32, 64*32 + 64
	calls = append(calls, d.threadCalls(leaderAt)...)
	calls = append(calls,
		ptrace.Call{Name: "getitimer(ITIMER_REAL)", Nr: unix.SYS_GETITIMER, Args: [6]uint64{0, d.scratch + itimersAt}},
		ptrace.Call{Name: "getitimer(ITIMER_VIRTUAL)", Nr: unix.SYS_GETITIMER, Args: [6]uint64{1, d.scratch + itimersAt + 32}},
		ptrace.Call{Name: "getitimer(ITIMER_PROF)", Nr: unix.SYS_GETITIMER, Args: [6]uint64{2, d.scratch + itimersAt + 64}},
		ptrace.Call{Name: "prctl(PR_GET_DUMPABLE)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_DUMPABLE}})
	ret, err := d.batch(lead, calls...)
	if d.mmapDone != nil {
		d.mmapDone()
	}
	if err != nil {
		return err
	}
	p.MM.Brk = ret[0]
	p.Dumpable = int(ret[len(ret)-1])
	b, err := d.results(itimersAt + 3*32)
	if err != nil {
		return err
	}
	p.Sigactions = make([]core.Sigaction, 64)
	for i := range p.Sigactions {
		a := b[32*i:]
		p.Sigactions[i] = core.Sigaction{Handler: le.Uint64(a), Flags: le.Uint64(a[8:]), Restorer: le.Uint64(a[16:]), Mask: le.Uint64(a[24:])}
	}
	d.threadResults(0, b[leaderAt:], ret[1+64:])
	p.Itimers = nil
	for which := 0; which < 3; which++ {
		tv := func(o int) int64 { return int64(le.Uint64(b[o:]))*1e6 + int64(le.Uint64(b[o+8:])) }
		o := itimersAt + 32*which
		if iv, rem := tv(o), tv(o+16); iv != 0 || rem != 0 {
			p.Itimers = append(p.Itimers, core.Itimer{Which: which, IntervalUS: iv, RemainingUS: rem})
		}
	}
	d.ownLap("injected: brk, signal actions, itimers")
	// The other threads' attributes, each's on itself.
	for i, th := range d.p.Threads {
		if i == 0 {
			continue
		}
		ret, err := d.batch(th, d.threadCalls(0)...)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		b, err := d.results(40)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		d.threadResults(i, b, ret)
	}
	foldCreds(p)
	d.ownLap("injected: threads")
	if err := d.collectRlimits(lead); err != nil {
		return err
	}
	d.ownLap("rlimits")
	if err := d.collectTimers(); err != nil {
		return err
	}
	d.ownLap("injected: posix timers")
	// The personality came from /proc (collectTask).
	err = d.collectInjectedAttrs()
	d.ownLap("injected: attributes")
	return err
}

// threadCalls are the calls a thread makes on itself for its attributes
// that only it can tell, their results at offset at of the scratch page:
// its alternate stack (24 bytes) at at, its clear_child_tid at at+32, its
// securebits the third call's result (threadResults reads them).
func (d *dumper) threadCalls(at uint64) []ptrace.Call {
	return []ptrace.Call{
		{Name: "sigaltstack", Nr: unix.SYS_SIGALTSTACK, Args: [6]uint64{0, d.scratch + at}},
		{Name: "prctl(PR_GET_TID_ADDRESS)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_TID_ADDRESS, d.scratch + at + 32}},
		{Name: "prctl(PR_GET_SECUREBITS)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_SECUREBITS}},
	}
}

// threadResults takes what thread i's threadCalls gave: b from their
// offset in the scratch page, ret their results.
func (d *dumper) threadResults(i int, b []byte, ret []uint64) {
	le := binary.LittleEndian
	t := &d.proc.Threads[i]
	t.AltStack = core.AltStack{SP: le.Uint64(b), Flags: int32(le.Uint32(b[8:])), Size: le.Uint64(b[16:])}
	t.ClearTID = le.Uint64(b[32:])
	if c := t.Creds; c != nil {
		c.Securebits = uint32(ret[2])
	}
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
