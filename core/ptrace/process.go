package ptrace

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// Kernel error numbers seen as the result of a thread stopped inside a
// system call that the kernel will restart.
const (
	errRestartSys        = 512
	errRestartNoIntr     = 513
	errRestartNoHand     = 514
	errRestartRestartBlk = 516
)

// seizeOptions: syscall stops are told apart by SIGTRAP|0x80, and the
// tracee's seccomp filters are suspended while it is traced: a filter
// would judge (and could kill the process for) the system calls migrate
// injects, and a restore installs the filters before the calls that
// follow them. PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN in the initial
// user namespace and a tracer not itself under seccomp; without them a
// Proc is seized without it (SeccompSuspended).
const seizeOptions = unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_SUSPEND_SECCOMP

// TracedError says the process is already traced by another tracer.
type TracedError struct {
	PID    int
	Tracer int
}

func (e *TracedError) Error() string {
	return fmt.Sprintf("process %d is already traced by process %d (a debugger or another migrate?)", e.PID, e.Tracer)
}

// Thread is one seized thread of a Proc.
type Thread struct {
	TID int
	// Regs are the thread's registers as they must be restored: if the
	// thread was stopped inside an interrupted system call, rip points back
	// at the syscall instruction and rax holds its number again, so the
	// call runs anew when the thread resumes.
	Regs unix.PtraceRegs
	// Restart is "" if the thread was not inside a system call, else
	// "restart" (the call is re-executed).
	Restart string
	// Stolen holds the siginfo of signals the freeze or an injection took
	// off the thread's queue; they are given back on detach.
	Stolen [][]byte

	regsChanged bool
	// interrupted holds the kernel's own registers of a thread seized
	// inside an interrupted system call (rax one of the -ERESTART* codes,
	// orig_rax the call), rewound the registers loadRegs made of them.
	interrupted, rewound *unix.PtraceRegs
	// ranInjected: an injection ran the thread since the seize, which is
	// no longer in the stop the seize put it in, but in a syscall stop
	// (Syscall) or a signal-delivery stop (SyscallBatch).
	ranInjected bool
	stopped     bool
	// groupStop is the signal that had the thread stopped by job control
	// when it was seized, 0 if it was running.
	groupStop unix.Signal
}

// StopOnDetach makes Detach leave the process stopped by SIGSTOP, as a
// restored process that was stopped when it was dumped.
func (p *Proc) StopOnDetach() { p.Threads[0].groupStop = unix.SIGSTOP }

// Stopped says whether the process was stopped by job control (SIGSTOP,
// SIGTSTP, ...) when it was seized. Detach leaves it stopped again.
func (p *Proc) Stopped() bool {
	for _, th := range p.Threads {
		if th.groupStop != 0 {
			return true
		}
	}
	return false
}

// Proc is a process whose threads are all seized and stopped.
type Proc struct {
	t       *Tracer
	PID     int
	Threads []*Thread // leader first
	gadget  uint64    // address of a syscall instruction in the tracee
	// batchCode is the address of the batch code page (MapBatchCode), 0
	// if none.
	batchCode uint64
	// Options used at seize; kept for threads added later.
	opts int
	// affinity holds the CPU masks of the threads Pin moved, to be put
	// back before they run.
	affinity map[int]unix.CPUSet
	pinned   unix.CPUSet // the one CPU of a pinned process
	// prepared: PrepareDetach has put the threads back, and prepErr is
	// what it met; Detach then only detaches them.
	prepared bool
	prepErr  error
}

// Pin moves every thread of the process, and the tracer thread, to one CPU
// (the leader's last) while it is stopped: on virtual machines a ptrace
// stop or resume that wakes a thread on another CPU is several times
// dearer than one on the same CPU, and the frozen window is mostly such
// round trips. The threads' own CPU masks come back at Detach, or with
// Unpin. Threads added later (AdoptThread) inherit the leader's pinned
// mask, and get the leader's original one back.
func (p *Proc) Pin() error {
	if p.affinity != nil {
		return nil
	}
	cpu, err := LastCPU(p.PID)
	if err != nil {
		return err
	}
	return p.PinOn(cpu)
}

// PinOn is Pin on the given CPU: the tracer of several processes binds
// them all to its own CPU. A CPU the process may not run on (its cpuset)
// is an error, and leaves the process as it was.
func (p *Proc) PinOn(cpu int) error {
	if p.affinity != nil {
		return nil
	}
	var one unix.CPUSet
	one.Set(cpu)
	saved := map[int]unix.CPUSet{}
	for _, th := range p.Threads {
		var old unix.CPUSet
		if err := unix.SchedGetaffinity(th.TID, &old); err != nil {
			p.affinity = saved
			p.Unpin()
			return fmt.Errorf("CPU mask of thread %d: %w", th.TID, err)
		}
		if err := unix.SchedSetaffinity(th.TID, &one); err != nil {
			p.affinity = saved
			p.Unpin()
			return fmt.Errorf("pin thread %d: %w", th.TID, err)
		}
		saved[th.TID] = old
	}
	p.affinity = saved
	p.pinned = one
	return p.t.PinTo(cpu)
}

// Affinity returns the CPU mask of thread tid as its own: the one Pin
// saved while the process is pinned, else the kernel's.
func (p *Proc) Affinity(tid int) (unix.CPUSet, error) {
	if m, ok := p.affinity[tid]; ok {
		return m, nil
	}
	var m unix.CPUSet
	err := unix.SchedGetaffinity(tid, &m)
	return m, err
}

// SetAffinity sets the CPU mask of thread tid and returns the mask the
// kernel made of it (narrower if a cpuset or the online CPUs say so).
// While the process is pinned the thread goes back to its pinned CPU,
// and gets the mask at Unpin.
func (p *Proc) SetAffinity(tid int, set unix.CPUSet) (unix.CPUSet, error) {
	var got unix.CPUSet
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		return got, err
	}
	if err := unix.SchedGetaffinity(tid, &got); err != nil {
		return got, err
	}
	if p.affinity == nil {
		return got, nil
	}
	p.affinity[tid] = got
	return got, unix.SchedSetaffinity(tid, &p.pinned)
}

// Unpin gives the threads their CPU masks back.
func (p *Proc) Unpin() error {
	if p.affinity == nil {
		return nil
	}
	var first error
	lead, hasLead := p.affinity[p.PID]
	for _, th := range p.Threads {
		if th.TID == 0 {
			continue
		}
		m, ok := p.affinity[th.TID]
		if !ok {
			if !hasLead {
				continue
			}
			m = lead
		}
		if err := unix.SchedSetaffinity(th.TID, &m); err != nil && first == nil && !errors.Is(err, unix.ESRCH) {
			first = fmt.Errorf("CPU mask of thread %d back: %w", th.TID, err)
		}
	}
	p.affinity = nil
	return first
}

// Tracer returns the tracer thread that owns the process.
func (p *Proc) Tracer() *Tracer { return p.t }

// Leader returns the thread whose TID is the PID.
func (p *Proc) Leader() *Thread { return p.Threads[0] }

func readTIDs(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, n)
		}
	}
	sort.Ints(tids)
	return tids, nil
}

func tracerOf(tid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// isOurThread says whether tid is a thread of this process: TracerPid in
// /proc names the tracing thread, not its process.
func isOurThread(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// Seize attaches to every thread of pid and stops them all. Threads created
// while it works are found by re-reading /proc/PID/task until the set of
// threads is stable with every thread stopped. On error every thread seized
// so far is detached again.
func (t *Tracer) Seize(pid int) (*Proc, error) {
	return t.seize(pid, seizeOptions)
}

// SeizeOwned is Seize with PTRACE_O_EXITKILL (the tracee dies with the
// tracer) and PTRACE_O_TRACEFORK and TRACECLONE (its children and threads
// are traced from birth). For processes migrate builds itself.
func (t *Tracer) SeizeOwned(pid int) (*Proc, error) {
	return t.seize(pid, seizeOptions|unix.PTRACE_O_EXITKILL|unix.PTRACE_O_TRACEFORK|unix.PTRACE_O_TRACECLONE)
}

// AdoptThread adds a thread that a traced thread of p created (with
// PTRACE_O_TRACECLONE it is traced from birth and stops on its own).
func (p *Proc) AdoptThread(tid int) (*Thread, error) {
	th := &Thread{TID: tid}
	err := p.t.Do(func() error {
		alive, err := p.waitEventStop(th)
		if err != nil {
			return err
		}
		if !alive {
			return fmt.Errorf("thread %d exited before it could be adopted", tid)
		}
		th.stopped = true
		return th.loadRegs()
	})
	if err != nil {
		return nil, err
	}
	p.Threads = append(p.Threads, th)
	return th, nil
}

// Adopt takes over a child that a Proc seized with SeizeOwned forked: the
// child is already traced and stops on its own.
func (p *Proc) Adopt(pid int) (*Proc, error) {
	c := &Proc{t: p.t, PID: pid, opts: p.opts, gadget: p.gadget}
	th := &Thread{TID: pid}
	err := p.t.Do(func() error {
		alive, err := c.waitEventStop(th)
		if err != nil {
			return err
		}
		if !alive {
			return fmt.Errorf("child %d exited before it could be adopted", pid)
		}
		th.stopped = true
		return th.loadRegs()
	})
	if err != nil {
		return nil, err
	}
	c.Threads = []*Thread{th}
	return c, nil
}

// MoveTo hands the process over to tracer t (a tracee answers only the
// thread that attached it) and returns it as t's: detached from its
// tracer, then seized by t with the same options and system call gadget.
// The process runs in between: it must be one that may, as a child
// migrate forked out of a husk that still only loops on pause(). It must
// be as it was seized or adopted: one thread, not pinned, its registers
// and signals untouched. If t cannot seize it, it is killed (it runs
// traced by no one otherwise) and the error returned.
func (p *Proc) MoveTo(t *Tracer) (*Proc, error) {
	if t == p.t {
		return p, nil
	}
	if len(p.Threads) != 1 || p.affinity != nil || p.Threads[0].regsChanged || len(p.Threads[0].Stolen) > 0 || p.Stopped() {
		return nil, fmt.Errorf("process %d: only a process as it was seized moves to another tracer", p.PID)
	}
	if err := p.t.Do(func() error { return p.detachAll(0) }); err != nil {
		return nil, err
	}
	q, err := t.seize(p.PID, p.opts)
	if err != nil {
		unix.Kill(p.PID, unix.SIGKILL)
		return nil, fmt.Errorf("process %d to another tracer: %w", p.PID, err)
	}
	q.gadget = p.gadget
	return q, nil
}

func (t *Tracer) seize(pid, opts int) (*Proc, error) {
	p := &Proc{t: t, PID: pid, opts: opts}
	err := t.Do(func() error {
		seized := map[int]*Thread{}
		for round := 0; ; round++ {
			if round > 1000 {
				return fmt.Errorf("process %d: thread set does not settle", pid)
			}
			tids, err := readTIDs(pid)
			if err != nil {
				if len(seized) == 0 {
					return fmt.Errorf("process %d: %w", pid, err)
				}
				return fmt.Errorf("process %d vanished while being seized: %w", pid, err)
			}
			fresh := 0
			for _, tid := range tids {
				if seized[tid] != nil {
					continue
				}
				if err := p.seizeThread(tid); err != nil {
					if errors.Is(err, unix.ESRCH) {
						continue // exited meanwhile
					}
					if errors.Is(err, unix.EPERM) {
						if tr := tracerOf(tid); tr != 0 && !isOurThread(tr) {
							return &TracedError{PID: pid, Tracer: tr}
						}
					}
					return fmt.Errorf("seize thread %d of process %d: %w", tid, pid, err)
				}
				th := &Thread{TID: tid}
				seized[tid] = th
				p.Threads = append(p.Threads, th)
				if err := raw.Ptrace(unix.PTRACE_INTERRUPT, tid, 0, 0); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("interrupt thread %d: %w", tid, err)
				}
				fresh++
			}
			// Wait for the new ones to stop before re-reading: a running
			// thread could still be cloning. The leader last: if the process
			// dies meanwhile, its death is reported only once the other
			// threads, traced by us, have been waited for.
			order := make([]*Thread, 0, len(p.Threads))
			var leader *Thread
			for _, th := range p.Threads {
				if th.TID == pid {
					leader = th
				} else {
					order = append(order, th)
				}
			}
			if leader != nil {
				order = append(order, leader)
			}
			for _, th := range order {
				if th.stopped || th.TID == 0 {
					continue
				}
				alive, err := p.waitEventStop(th)
				if err != nil {
					return err
				}
				if !alive {
					th.TID = 0
					continue
				}
				th.stopped = true
				if err := th.loadRegs(); err != nil {
					return err
				}
			}
			if fresh == 0 {
				break
			}
		}
		// Drop threads that exited; the leader goes first.
		live := p.Threads[:0]
		for _, th := range p.Threads {
			if th.TID != 0 {
				live = append(live, th)
			}
		}
		p.Threads = live
		sort.Slice(p.Threads, func(i, j int) bool {
			if p.Threads[i].TID == pid {
				return true
			}
			if p.Threads[j].TID == pid {
				return false
			}
			return p.Threads[i].TID < p.Threads[j].TID
		})
		if len(p.Threads) == 0 || p.Threads[0].TID != pid {
			return fmt.Errorf("process %d: thread group leader is gone", pid)
		}
		return nil
	})
	if err != nil {
		p.detachAll(0)
		return nil, err
	}
	return p, nil
}

// seizeThread seizes tid with p's options. If the kernel refuses
// PTRACE_O_SUSPEND_SECCOMP (it checks the tracer's privileges before
// anything else), p goes on without it.
func (p *Proc) seizeThread(tid int) error {
	err := raw.Ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(p.opts))
	if err != nil && p.opts&unix.PTRACE_O_SUSPEND_SECCOMP != 0 && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL)) {
		// The error without it is the one that tells (ESRCH, or a
		// tracer already there).
		if err = raw.Ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(p.opts&^unix.PTRACE_O_SUSPEND_SECCOMP)); err == nil {
			p.opts &^= unix.PTRACE_O_SUSPEND_SECCOMP
		}
	}
	return err
}

// SeccompSuspended says whether the seccomp filters of p's threads are
// suspended while it is traced (PTRACE_O_SUSPEND_SECCOMP): injected
// system calls then pass whatever filter a thread has.
func (p *Proc) SeccompSuspended() bool { return p.opts&unix.PTRACE_O_SUSPEND_SECCOMP != 0 }

// SeccompFilter returns the program (struct sock_filter array) and the
// flags (SECCOMP_FILTER_FLAG_LOG) of filter index of th, 0 being the
// oldest (the first installed); unix.ENOENT past the newest. It needs
// CAP_SYS_ADMIN and a tracer not under seccomp.
func (p *Proc) SeccompFilter(th *Thread, index int) (prog []byte, flags uint64, err error) {
	err = p.t.Do(func() (err error) {
		if prog, err = raw.PtraceSeccompGetFilter(th.TID, index); err != nil {
			return err
		}
		flags, err = raw.PtraceSeccompGetMetadata(th.TID, index)
		return err
	})
	return prog, flags, err
}

// waitEventStop waits until th is in a ptrace event stop (the result of
// PTRACE_INTERRUPT), stealing any signal delivered on the way. It returns
// false if the thread exited.
//
// Preconditions: on the tracer thread.
func (p *Proc) waitEventStop(th *Thread) (bool, error) {
	for {
		ws, err := wait(th.TID)
		if err != nil {
			if errors.Is(err, unix.ECHILD) {
				return false, nil
			}
			return false, fmt.Errorf("wait for thread %d: %w", th.TID, err)
		}
		switch {
		case ws.Exited() || ws.Signaled():
			return false, nil
		case !ws.Stopped():
			continue
		}
		sig := ws.StopSignal()
		if event(ws) == unix.PTRACE_EVENT_STOP {
			// An interrupt, or a group stop (SIGSTOP and friends): the
			// process was stopped by job control and stays so on detach.
			switch sig {
			case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
				th.groupStop = sig
			}
			return true, nil
		}
		if sig == unix.SIGTRAP|0x80 || event(ws) > 0 {
			// A syscall or other event stop: go on to the interrupt.
			if err := raw.Ptrace(unix.PTRACE_CONT, th.TID, 0, 0); err != nil {
				return false, fmt.Errorf("continue thread %d: %w", th.TID, err)
			}
			continue
		}
		// Signal-delivery stop: keep the signal for later, go on to the
		// pending interrupt.
		if si, err := raw.PtraceGetSiginfo(th.TID); err == nil {
			th.Stolen = append(th.Stolen, si)
		}
		if err := raw.Ptrace(unix.PTRACE_CONT, th.TID, 0, 0); err != nil {
			return false, fmt.Errorf("continue thread %d: %w", th.TID, err)
		}
	}
}

// event returns the PTRACE_EVENT_* of a ptrace stop (0 if none). Unlike
// WaitStatus.TrapCause it also sees group stops, reported under
// PTRACE_SEIZE as PTRACE_EVENT_STOP with the stopping signal.
func event(ws unix.WaitStatus) int {
	if !ws.Stopped() {
		return 0
	}
	return int(ws>>16) & 0xff
}

func wait(tid int) (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	err := raw.IgnoringEINTR(func() error {
		_, err := unix.Wait4(tid, &ws, unix.WALL, nil)
		return err
	})
	return ws, err
}

// loadRegs reads the registers and undoes an interrupted system call so that
// it runs again when the thread resumes (or when its image is restored).
//
// -ERESTART_RESTARTBLOCK (nanosleep, clock_nanosleep, poll and futex waits
// with a timeout) is re-executed with its original arguments too: exact for
// absolute sleeps, a slightly longer wait for relative ones, where turning it
// into -EINTR (CRIU's choice) kills programs that treat EINTR as fatal.
func (th *Thread) loadRegs() error {
	if err := unix.PtraceGetRegs(th.TID, &th.Regs); err != nil {
		return fmt.Errorf("get registers of thread %d: %w", th.TID, err)
	}
	kernel := th.Regs
	if rewindSyscall(&th.Regs) {
		rewound := th.Regs
		th.interrupted, th.rewound = &kernel, &rewound
		// Regs, not the thread's own yet: written only if something
		// else changes them (an injection, a restore). A thread detached
		// untouched keeps the kernel's interrupted call, whose restart
		// the kernel decides: a signal handled before the thread runs
		// again ends sigsuspend or pause with EINTR, as it must. Rewound,
		// the call ran again after the handler, and a shell waiting in
		// sigsuspend for SIGCHLD never woke (a refused dump of it).
		th.Restart = "restart"
	}
	return nil
}

// Sigmask returns the blocked-signal mask of th.
func (p *Proc) Sigmask(th *Thread) (uint64, error) {
	var m uint64
	err := p.t.Do(func() (err error) { m, err = raw.PtraceGetSigmask(th.TID); return })
	return m, err
}

// SetSigmask sets the blocked-signal mask of th.
func (p *Proc) SetSigmask(th *Thread, m uint64) error {
	return p.t.Do(func() error { return raw.PtraceSetSigmask(th.TID, m) })
}

// Xstate returns the NT_X86_XSTATE register set of th.
func (p *Proc) Xstate(th *Thread) ([]byte, error) {
	var x []byte
	err := p.t.Do(func() (err error) { x, err = getXstate(th.TID); return })
	return x, err
}

// SetXstate writes the NT_X86_XSTATE register set of th.
func (p *Proc) SetXstate(th *Thread, x []byte) error {
	return p.t.Do(func() error { return setXstate(th.TID, x) })
}

// SetRegs sets the registers th resumes with.
func (p *Proc) SetRegs(th *Thread, r *unix.PtraceRegs) error {
	th.Regs = *r
	th.regsChanged = true
	return nil
}

// RestartCode returns the code (-rax) of the system call the kernel
// interrupted when th was seized, if it is one whose restart the kernel
// can decide again at the detach or restore (ERESTARTSYS, ERESTARTNOINTR,
// ERESTARTNOHAND); else 0.
func (th *Thread) RestartCode() int {
	if th.interrupted == nil {
		return 0
	}
	switch code := -int64(th.interrupted.Rax); code {
	case errRestartSys, errRestartNoIntr, errRestartNoHand:
		return int(code)
	}
	return 0
}

// SetRegsInterrupted sets the registers th resumes with to r, those of a
// thread stopped in a system call the kernel interrupted with -code (one
// RestartCode gives), rewound (rip at its syscall instruction, rax its
// number, orig_rax -1): the detach gives the kernel the call as it was
// interrupted, to run again or end as it decides (see backToRestart).
func (p *Proc) SetRegsInterrupted(th *Thread, r *unix.PtraceRegs, code int) error {
	switch code {
	case errRestartSys, errRestartNoIntr, errRestartNoHand:
	default:
		return fmt.Errorf("thread %d: restart code %d", th.TID, code)
	}
	p.SetRegs(th, r)
	kernel, rewound := *r, *r
	kernel.Orig_rax = r.Rax
	kernel.Rax = uint64(-int64(code))
	kernel.Rip = r.Rip + uint64(len(syscallInsn))
	th.interrupted, th.rewound = &kernel, &rewound
	return nil
}

// PendingSignals returns the queued signals of th, and, if shared, those
// of the whole process.
func (p *Proc) PendingSignals(th *Thread, shared bool) ([][]byte, error) {
	var out [][]byte
	err := p.t.Do(func() (err error) { out, err = raw.PtracePeekSiginfo(th.TID, shared); return })
	return out, err
}

// Rseq returns the rseq registration of th (address, length, signature).
func (p *Proc) Rseq(th *Thread) (addr uint64, length, sig uint32, err error) {
	var c raw.PtraceRseqConfiguration
	err = p.t.Do(func() (err error) { c, err = raw.PtraceGetRseqConfiguration(th.TID); return })
	return c.Addr, c.Len, c.Sig, err
}

// Detach lets every thread run on from where it stopped, with the registers
// in Thread.Regs, and gives back stolen signals. A process that was stopped
// by job control is stopped again.
func (p *Proc) Detach() error {
	stopped := p.Stopped()
	if err := p.t.Do(func() error { return p.detachAll(0) }); err != nil {
		return err
	}
	if stopped {
		// The stop takes effect as the thread leaves the kernel: wait for
		// it, so that the caller sees the process stopped as before.
		for i := 0; i < 200; i++ {
			if st := stateOf(p.PID); st == 'T' || st == 0 || st == 'Z' {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// PrepareDetach does what Detach does but the detach itself: every
// thread gets its registers, the signals taken from it and its CPU mask
// back, and stays stopped under the tracer until Detach, which then only
// lets the threads go. For a tree resumed one depth after the other
// (children first): the work of every process at the same time, then the
// short detaches depth by depth. Nothing may be injected in between.
func (p *Proc) PrepareDetach() error {
	return p.t.Do(func() error {
		if !p.prepared {
			p.prepErr = p.prepareDetach()
			p.prepared = true
		}
		return p.prepErr
	})
}

// stateOf returns the state letter of /proc/PID/stat, 0 if it is gone.
func stateOf(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// detachAll detaches every thread, put back first (prepareDetach) unless
// PrepareDetach did it. Preconditions: on the tracer thread.
func (p *Proc) detachAll(_ int) error {
	first := p.prepErr
	if !p.prepared {
		first = p.prepareDetach()
	}
	for _, th := range p.Threads {
		if th.TID == 0 {
			continue
		}
		if err := raw.Ptrace(unix.PTRACE_DETACH, th.TID, 0, 0); err != nil && first == nil && !errors.Is(err, unix.ESRCH) {
			first = fmt.Errorf("detach thread %d: %w", th.TID, err)
		}
	}
	return first
}

// prepareDetach puts every thread back as Detach lets it go: its
// registers, the signals taken from it, its CPU mask. The threads stay
// stopped. It goes on past an error, and returns the first.
// Preconditions: on the tracer thread.
func (p *Proc) prepareDetach() error {
	// A thread injected into (or restored) whose registers are those of
	// the call the seize interrupted is first taken back into the
	// kernel's signal delivery (backToRestart), which lets it run to a
	// stop: while the process is still bound to the tracer's CPU (Pin),
	// where the tracer waits for it, so it runs at once. Unbound first,
	// it waited for a CPU of its own: 1.5-3.5 ms for one process in two
	// of a PostgreSQL tree resumed on a busy machine, in the downtime.
	var first error
	restarted := make(map[*Thread]bool)
	for _, th := range p.Threads {
		if th.TID == 0 || !th.regsChanged || th.interrupted == nil || th.Regs != *th.rewound {
			continue
		}
		// The interrupted call's registers get the kernel's restart
		// (see backToRestart).
		if ok, err := p.backToRestart(th); err != nil && first == nil {
			first = err
		} else if ok {
			restarted[th] = true
		}
	}
	if err := p.Unpin(); err != nil && first == nil {
		first = err
	}
	for _, th := range p.Threads {
		if th.TID == 0 {
			continue
		}
		if th.regsChanged {
			regs := &th.Regs
			if restarted[th] {
				regs = th.interrupted
			}
			if err := unix.PtraceSetRegs(th.TID, regs); err != nil && first == nil && !errors.Is(err, unix.ESRCH) {
				first = fmt.Errorf("restore registers of thread %d: %w", th.TID, err)
			}
		}
		// Signals go back before the detach, queued while the thread is
		// still stopped, so it meets them before running a single
		// instruction: PTRACE_DETACH's own signal argument is ignored in a
		// syscall stop, where an injection leaves the thread. One sent
		// with sigqueue (or by a timer, an AIO completion...) goes back
		// with its siginfo, value included; the kernel lets no one else
		// forge a kill's or the kernel's, so those come back from tgkill,
		// as sent by this process (a dump keeps their siginfo in the
		// image).
		for _, si := range th.Stolen {
			if len(si) < raw.SiginfoSize {
				continue // (PTRACE_GETSIGINFO makes them whole)
			}
			sig := nativeEndianUint32(si)
			if code := int32(nativeEndianUint32(si[8:])); code < 0 && code != siTkill &&
				raw.Tgsigqueueinfo(p.PID, th.TID, sig, si) == nil {
				continue
			}
			unix.Tgkill(p.PID, th.TID, syscall.Signal(sig))
		}
		th.Stolen = nil
		if th.groupStop != 0 {
			unix.Tgkill(p.PID, th.TID, th.groupStop)
		}
	}
	return first
}

// backToRestart takes th, which an injection left in a syscall stop (or
// the signal-delivery stop of a batch's trap; or a restore in any stop),
// back to a stop inside the kernel's signal delivery, where the kernel
// decides, once the thread goes on, what becomes of the system call the
// seize interrupted (th.interrupted): run again if no signal handler
// runs first, else ended by the handler as the call's restart code says
// (EINTR for pause, sigsuspend, ...). Left in the syscall stop, the
// thread could only be given the call rewound: run again after a handler
// too, it waited for ever for the signal it had just handled (a pause
// ended by a signal sent right after a dump --leave-running). It returns
// false if th exited.
//
// The thread goes on with its registers rewound (the call runs again if
// anything went wrong) and PTRACE_INTERRUPT pending: on its way out of
// the syscall stop the kernel meets the pending signal work first and
// stops it in an event stop (waitEventStop), before it runs a single
// instruction.
//
// Preconditions: on the tracer thread.
func (p *Proc) backToRestart(th *Thread) (bool, error) {
	if err := unix.PtraceSetRegs(th.TID, th.rewound); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("restore registers of thread %d: %w", th.TID, err)
	}
	if err := raw.Ptrace(unix.PTRACE_INTERRUPT, th.TID, 0, 0); err != nil {
		return false, fmt.Errorf("interrupt thread %d: %w", th.TID, err)
	}
	if err := raw.Ptrace(unix.PTRACE_CONT, th.TID, 0, 0); err != nil {
		return false, fmt.Errorf("continue thread %d: %w", th.TID, err)
	}
	ok, err := p.waitEventStop(th)
	if ok {
		th.ranInjected = false
	}
	return ok, err
}

// Kill kills the process with SIGKILL and waits until every thread is
// dead. With reap, the process is collected too (only for a child of this
// process that nobody else waits for); otherwise it stays a zombie for its
// parent to reap once the tracer lets go of it.
func (p *Proc) Kill(reap bool) error {
	return p.t.Do(func() error {
		// A pidfd taken before the kill, to free its memory from here
		// too once it dies (a GiB takes tens of milliseconds to tear
		// down, which the exit alone does on one CPU).
		pidfd, perr := unix.PidfdOpen(p.PID, 0)
		if perr == nil {
			defer unix.Close(pidfd)
		}
		if err := unix.Kill(p.PID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill %d: %w", p.PID, err)
		}
		if perr == nil {
			raw.ProcessMrelease(pidfd) // best effort: the exit frees it anyway
		}
		wait := func(tid, opts int) {
			var info unix.Siginfo
			raw.IgnoringEINTR(func() error { return unix.Waitid(unix.P_PID, tid, &info, opts, nil) })
		}
		// Other threads first, always collected: a traced thread stays a
		// zombie until its tracer waits for it, and the leader's death is
		// reported only once the others are gone. In whatever order they
		// end: the last thread of a PID namespace's init to exit waits in
		// the kernel for every other task of the namespace to be reaped,
		// its traced sibling threads among them, so a wait for one thread
		// in particular could wait for ever (it did, for a container
		// whose init has threads).
		var left []*Thread
		for _, th := range p.Threads[1:] {
			if th.TID != 0 {
				left = append(left, th)
			}
		}
		for len(left) > 0 {
			collected := false
			for i := 0; i < len(left); {
				var info unix.Siginfo
				err := raw.IgnoringEINTR(func() error {
					return unix.Waitid(unix.P_PID, left[i].TID, &info, unix.WEXITED|unix.WALL|unix.WNOHANG, nil)
				})
				// Signo 0: not ended yet (WNOHANG); an error: not
				// ours to wait for any more (ECHILD).
				if err == nil && info.Signo == 0 {
					i++
					continue
				}
				left[i].TID = 0
				left = append(left[:i], left[i+1:]...)
				collected = true
			}
			if !collected && len(left) > 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
		if lead := p.Threads[0]; lead.TID != 0 {
			opts := unix.WEXITED | unix.WALL
			if !reap {
				opts |= unix.WNOWAIT
			}
			wait(lead.TID, opts)
			lead.TID = 0
		}
		return nil
	})
}

// siTkill is the si_code of a signal sent with tgkill.
const siTkill = -6

func nativeEndianUint32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// DropStolen forgets the signals sig that injections took from the
// threads, so that Detach does not give them back.
func (p *Proc) DropStolen(sig unix.Signal) {
	for _, th := range p.Threads {
		kept := th.Stolen[:0]
		for _, si := range th.Stolen {
			if unix.Signal(nativeEndianUint32(si)) != sig {
				kept = append(kept, si)
			}
		}
		th.Stolen = kept
	}
}
