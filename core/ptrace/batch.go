package ptrace

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
)

// Batched injection: many system calls for one ptrace stop.
//
// An injected call (Syscall) costs two syscall stops, three register
// transfers and a hop to the tracer thread, some 20 us; the 64 signal
// actions of a process are 64 of them. SyscallBatch writes a table of calls
// into a writable page of the tracee and lets the thread run a small piece
// of code, in a page of its own mapped PROT_READ|PROT_EXEC (never W+X:
// PR_SET_MDWE and systemd's MemoryDenyWriteExecute refuse it; it is written
// through /proc/PID/mem, as a debugger writes a breakpoint), which makes
// each call, stores its result in the table and ends on an int3: one stop
// for the whole table.
//
// The int3 hands control back as a SIGTRAP the kernel forces on the thread
// (arch/x86/kernel/traps.c do_int3_user -> do_trap -> force_sig(SIGTRAP),
// si_code SI_KERNEL). What that touches, read in kernel/signal.c (6.x):
//
//   - force_sig_info_to_task resets the action to SIG_DFL if SIGTRAP is
//     ignored by the process, and also unblocks it in the thread if the
//     thread blocks it. Either would change the process for good, so the
//     batch runs only on a thread that neither blocks nor ignores SIGTRAP
//     (its SigBlk and SigIgn); with a handler of the process's own, the
//     action is left as it is. SIGNAL_UNKILLABLE is not cleared for a
//     traced task.
//   - send_signal_locked: prepare_signal does not drop it (a traced task
//     sees even ignored signals); legacy_queue drops it if a SIGTRAP is
//     already pending in the thread's queue, and the thread would then run
//     on past the int3 into whatever follows: the batch is not run when a
//     SIGTRAP is pending (SigPnd, and ShdPnd to be safe; one not blocked
//     would be met, and kept, as the thread resumes, before the code runs:
//     a rare case, left to the slow path). The queue entry is
//     allocated with the rlimit overridden (a kernel signal) and counted in
//     the user's pending signals only until it is dequeued; signalfd_notify
//     wakes readers of a signalfd of this process's threads (all stopped);
//     complete_signal never makes a fatal signal of it for a traced task.
//   - do_trap records the trap in the thread (thread.trap_nr = 3,
//     error_code = 0): what a later signal frame's sigcontext shows as
//     trapno and err until the next trap; nothing else reads them. It logs
//     nothing (show_signal: a traced task's signal is not "unhandled"). In
//     a process with uprobes the die notifier takes the int3 instead and
//     handle_swbp, finding no uprobe at a real int3, forces the same
//     SIGTRAP with the same rip.
//   - get_signal dequeues it first (a synchronous signal from the kernel)
//     and stops the thread in a signal-delivery stop; resumed with no
//     signal (ptrace_signal), it is discarded: never delivered, nothing
//     left queued.
//
// The code makes no call and no return (nothing for a shadow stack to
// check) and touches no memory but the table. Any other signal met on the
// way is the process's: kept in th.Stolen as
// Syscall keeps them, given back on detach. A thread where the batch may not
// run gets the calls one by one (Syscall's way: the same results, slower).

// Call is one system call of a batch.
type Call struct {
	Name string // for errors: "rt_sigaction(SIGTERM)"
	Nr   uintptr
	Args [6]uint64
}

// batchText is the code SyscallBatch runs in the tracee, position
// independent, with r12 the address of the table: entries of eight
// little-endian words {nr, a0..a5, ret}, ended by an entry whose nr is -1.
//
//	loop: mov  rax, [r12]         49 8b 04 24
//	      cmp  rax, -1            48 83 f8 ff
//	      je   done               74 2b
//	      mov  rdi, [r12+0x08]    49 8b 7c 24 08
//	      mov  rsi, [r12+0x10]    49 8b 74 24 10
//	      mov  rdx, [r12+0x18]    49 8b 54 24 18
//	      mov  r10, [r12+0x20]    4d 8b 54 24 20
//	      mov  r8,  [r12+0x28]    4d 8b 44 24 28
//	      mov  r9,  [r12+0x30]    4d 8b 4c 24 30
//	      syscall                 0f 05
//	      mov  [r12+0x38], rax    49 89 44 24 38
//	      add  r12, 0x40          49 83 c4 40
//	      jmp  loop               eb cb
//	done: int3                    cc
//
// (assembled with GNU as, checked with objdump -d).
var batchText = []byte{
	0x49, 0x8b, 0x04, 0x24,
	0x48, 0x83, 0xf8, 0xff,
	0x74, 0x2b,
	0x49, 0x8b, 0x7c, 0x24, 0x08,
	0x49, 0x8b, 0x74, 0x24, 0x10,
	0x49, 0x8b, 0x54, 0x24, 0x18,
	0x4d, 0x8b, 0x54, 0x24, 0x20,
	0x4d, 0x8b, 0x44, 0x24, 0x28,
	0x4d, 0x8b, 0x4c, 0x24, 0x30,
	0x0f, 0x05,
	0x49, 0x89, 0x44, 0x24, 0x38,
	0x49, 0x83, 0xc4, 0x40,
	0xeb, 0xcb,
	0xcc,
}

const (
	batchEntry = 64 // bytes of a table entry
	// BatchCodeSize is the size of the page the batch code lives in.
	BatchCodeSize = 4096
)

// BatchTableSize is the room a table of n calls takes in the scratch page
// given to SyscallBatch.
func BatchTableSize(n int) int { return (n + 1) * batchEntry }

// MapBatchCode maps the batch code at addr, a page of the tracee's that
// the caller owns (part of its scratch area: MAP_FIXED replaces it), with
// one injected mmap, PROT_READ|PROT_EXEC. If the mmap fails (a seccomp
// filter refusing executable mappings, MDWE...), the error is returned and
// SyscallBatch goes on one call at a time. The caller unmaps the page (with
// its scratch area) before the process runs on, and then calls
// ForgetBatchCode.
//
// Preconditions: the process is stopped; th is one of its threads.
func (p *Proc) MapBatchCode(th *Thread, addr uint64) error {
	got, err := p.Syscall(th, "mmap(batch code)", unix.SYS_MMAP, addr, BatchCodeSize,
		unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED, ^uint64(0), 0)
	if err != nil {
		return err
	}
	if got != addr {
		return fmt.Errorf("mmap(batch code) at %#x: mapped at %#x", addr, got)
	}
	if n, err := WriteMemForce(p.PID, addr, batchText); err != nil || n != len(batchText) {
		if err == nil {
			err = unix.EIO
		}
		return fmt.Errorf("write the batch code of process %d at %#x: %w", p.PID, addr, err)
	}
	p.batchCode = addr
	return nil
}

// ForgetBatchCode tells the Proc that the batch code page is gone.
func (p *Proc) ForgetBatchCode() { p.batchCode = 0 }

// BatchCode returns the address of the batch code page, 0 if none.
func (p *Proc) BatchCode() uint64 { return p.batchCode }

// BatchUsable says whether a batch may run on th now: there is batch code,
// and the thread's SIGTRAP is neither blocked, ignored nor pending (see
// above), as /proc/PID/task/TID/status shows it.
func (p *Proc) BatchUsable(th *Thread) (bool, error) {
	if p.batchCode == 0 {
		return false, nil
	}
	st, err := proc.ReadTaskStatus(p.PID, th.TID)
	if err != nil {
		return false, fmt.Errorf("thread %d: %w", th.TID, err)
	}
	trap := uint64(1) << (unix.SIGTRAP - 1)
	return (st.SigBlk|st.SigIgn|st.SigPnd|st.ShdPnd)&trap == 0, nil
}

// SyscallBatch runs calls in thread th of the stopped tracee, in their
// order, and returns their raw results (a negative errno for a failure).
// The table is written at table, a writable area of the tracee's of
// BatchTableSize(len(calls)) bytes (the caller's scratch page). If a call
// fails, the results of all are returned with a *SyscallError naming the
// first that failed; the calls after it ran too. The thread's registers
// are restored afterwards.
//
// Where the batch may not run (BatchUsable), the calls are injected one by
// one, with the same results.
//
// Preconditions: no call blocks, ignores or sends SIGTRAP, forks or ends
// the thread; calls that write their results do so into the tracee.
func (p *Proc) SyscallBatch(th *Thread, table uint64, calls []Call) ([]uint64, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	if p.gadget == 0 && p.batchCode == 0 {
		return nil, ErrNoGadget
	}
	ok, err := p.BatchUsable(th)
	if err != nil {
		return nil, err
	}
	var ret []uint64
	if ok {
		ret, err = p.runBatch(th, table, calls)
	} else {
		ret, err = p.callOneByOne(th, calls)
	}
	if err != nil {
		return nil, err
	}
	for i, r := range ret {
		if e := int64(r); e < 0 && e > -4096 {
			return ret, &SyscallError{PID: p.PID, Name: calls[i].Name, Errno: unix.Errno(-e)}
		}
	}
	return ret, nil
}

// callOneByOne is SyscallBatch's fallback: every call injected alone.
func (p *Proc) callOneByOne(th *Thread, calls []Call) ([]uint64, error) {
	if p.gadget == 0 {
		return nil, ErrNoGadget
	}
	ret := make([]uint64, len(calls))
	err := p.t.Do(func() error {
		for i, c := range calls {
			r, err := p.syscallLocked(th, c.Name, c.Nr, c.Args[:]...)
			if err != nil {
				return err
			}
			ret[i] = r
		}
		return nil
	})
	return ret, err
}

// runBatch writes the table, runs the batch code and reads the results.
func (p *Proc) runBatch(th *Thread, table uint64, calls []Call) ([]uint64, error) {
	le := binary.LittleEndian
	buf := make([]byte, BatchTableSize(len(calls)))
	for i, c := range calls {
		e := buf[i*batchEntry:]
		le.PutUint64(e, uint64(c.Nr))
		for j, a := range c.Args {
			le.PutUint64(e[8+8*j:], a)
		}
		le.PutUint64(e[56:], ^uint64(0)) // not run
	}
	le.PutUint64(buf[len(calls)*batchEntry:], ^uint64(0))
	if _, err := WriteMem(p.PID, table, buf); err != nil {
		return nil, fmt.Errorf("batch table: %w", err)
	}
	if err := p.t.Do(func() error { return p.batchLocked(th, table) }); err != nil {
		return nil, err
	}
	if _, err := ReadMem(p.PID, table, buf[:len(calls)*batchEntry]); err != nil {
		return nil, fmt.Errorf("batch results: %w", err)
	}
	ret := make([]uint64, len(calls))
	for i := range ret {
		ret[i] = le.Uint64(buf[i*batchEntry+56:])
	}
	return ret, nil
}

// batchLocked runs the batch code on th with the table at table and waits
// for its int3, keeping the signals met on the way.
//
// Preconditions: on the tracer thread; BatchUsable(th).
func (p *Proc) batchLocked(th *Thread, table uint64) error {
	saved := th.Regs
	r := saved
	r.Rip = p.batchCode
	r.R12 = table
	// Not in a system call: no restart when the thread resumes.
	r.Orig_rax = ^uint64(0)
	if err := unix.PtraceSetRegs(th.TID, &r); err != nil {
		return fmt.Errorf("batch: set registers of %d: %w", th.TID, err)
	}
	// Whatever happens next, the thread gets its registers back.
	th.regsChanged = true
	trapAt := p.batchCode + uint64(len(batchText)) // rip after the int3
	for {
		if err := raw.Ptrace(unix.PTRACE_CONT, th.TID, 0, 0); err != nil {
			return fmt.Errorf("batch: resume %d: %w", th.TID, err)
		}
		th.ranInjected = true
		ws, err := wait(th.TID)
		if err != nil {
			return fmt.Errorf("batch: wait for %d: %w", th.TID, err)
		}
		if ws.Exited() || ws.Signaled() {
			th.TID = 0
			return fmt.Errorf("batch: thread exited (%v)", ws)
		}
		if !ws.Stopped() || event(ws) > 0 || ws.StopSignal() == unix.SIGTRAP|0x80 {
			continue // an event or group stop: go on
		}
		si, err := raw.PtraceGetSiginfo(th.TID)
		if err != nil {
			return fmt.Errorf("batch: siginfo of %d: %w", th.TID, err)
		}
		var out unix.PtraceRegs
		if err := unix.PtraceGetRegs(th.TID, &out); err != nil {
			return fmt.Errorf("batch: get registers of %d: %w", th.TID, err)
		}
		sig := unix.Signal(nativeEndianUint32(si))
		code := int32(nativeEndianUint32(si[8:]))
		inCode := out.Rip >= p.batchCode && out.Rip < p.batchCode+BatchCodeSize
		switch {
		case sig == unix.SIGTRAP && code == siKernel && out.Rip == trapAt:
			// Ours: resumed later with no signal, it is discarded.
			if err := unix.PtraceSetRegs(th.TID, &saved); err != nil {
				return fmt.Errorf("batch: restore registers of %d: %w", th.TID, err)
			}
			return nil
		case inCode && code > 0 && synchronous(sig):
			// A fault of the batch itself (a bad table): not the
			// process's signal, not delivered.
			if err := unix.PtraceSetRegs(th.TID, &saved); err != nil {
				return fmt.Errorf("batch: restore registers of %d: %w", th.TID, err)
			}
			return fmt.Errorf("batch: %v in the batch code of thread %d at %#x", sig, th.TID, out.Rip)
		default:
			// A signal for the process: kept for the detach.
			th.Stolen = append(th.Stolen, si)
		}
	}
}

// siKernel is SI_KERNEL, the si_code of a signal the kernel forced.
const siKernel = 0x80

// synchronous says whether sig is one a fault of the running code raises.
func synchronous(sig unix.Signal) bool {
	switch sig {
	case unix.SIGSEGV, unix.SIGBUS, unix.SIGILL, unix.SIGFPE, unix.SIGTRAP, unix.SIGSYS:
		return true
	}
	return false
}
