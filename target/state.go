package target

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// prctlMMMap is struct prctl_mm_map.
type prctlMMMap struct {
	StartCode, EndCode, StartData, EndData, StartBrk, Brk, StartStack uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd                                uint64
	Auxv                                                              uint64
	AuxvSize                                                          uint32
	ExeFD                                                             uint32
}

// restoreState restores the process-wide state: signal handlers, umask,
// cwd and root, personality, interval timers, session, the mm fields and
// executable, rlimits, THP disable, subreaper, membarrier, oom_score_adj.
// The credentials come last of all, in restoreThreads (restoreCreds).
func (r *restorer) restoreState(context.Context) error {
	p := r.proc
	le := binary.LittleEndian

	// Every disposition is set, SIG_DFL ones too: the process is a clone
	// of the husk, whose dispositions are not all SIG_DFL when the service
	// runs with a signal ignored (nohup, a supervisor): SIG_IGN survives
	// exec, and a SIGTERM the original died of would be ignored. All but
	// those it has already (an injected call each, most of the 64): the
	// husk catches no signal and changes none of its actions, which exec
	// left without flags, mask or restorer, SIG_IGN where the service
	// ignored the signal and SIG_DFL elsewhere.
	var asHusk func(sig int, sa core.Sigaction) bool
	if st, err := proc.ReadStatus(r.pid); err == nil && st.SigCgt == 0 {
		asHusk = func(sig int, sa core.Sigaction) bool {
			handler := uint64(0) // SIG_DFL
			if st.SigIgn&(1<<(sig-1)) != 0 {
				handler = 1 // SIG_IGN
			}
			return sa == core.Sigaction{Handler: handler}
		}
	}
	// In one batch, each action from its 32 bytes of the scratch area,
	// but SIGTRAP's: the batch ends on a SIGTRAP, which the kernel makes
	// SIG_DFL if it is ignored by then (see ptrace.SyscallBatch).
	var acts []byte
	var calls []ptrace.Call
	var trap *ptrace.Call
	for i, sa := range p.Sigactions {
		sig := i + 1
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) || asHusk != nil && asHusk(sig, sa) {
			continue
		}
		var b [32]byte
		le.PutUint64(b[0:], sa.Handler)
		le.PutUint64(b[8:], sa.Flags)
		le.PutUint64(b[16:], sa.Restorer)
		le.PutUint64(b[24:], sa.Mask)
		c := ptrace.Call{Name: "rt_sigaction(" + strconv.Itoa(sig) + ")", Nr: unix.SYS_RT_SIGACTION,
			Args: [6]uint64{uint64(sig), r.scratch + uint64(len(acts)), 0, 8}}
		acts = append(acts, b[:]...)
		if sig == int(unix.SIGTRAP) {
			trap = &c
			continue
		}
		calls = append(calls, c)
	}
	if len(acts) > 0 {
		if _, err := r.put(0, acts); err != nil {
			return err
		}
	}
	// The umask, root, working directory, personality and interval
	// timers in the same batch, their arguments after its table (a
	// call each, one by one, was ~0.3 ms a process on a loaded 2-CPU
	// machine). A call that fails names what it set.
	args := uint64(stateArgs)
	put := func(b []byte) (uint64, error) {
		addr, err := r.put(args, b)
		args += uint64(len(b)+7) &^ 7
		return addr, err
	}
	calls = append(calls, ptrace.Call{Name: "umask", Nr: unix.SYS_UMASK, Args: [6]uint64{uint64(p.Umask)}})
	if p.Root != "/" {
		addr, err := put(cstring(p.Root))
		if err != nil {
			return err
		}
		calls = append(calls, ptrace.Call{Name: "chroot(" + p.Root + ")", Nr: unix.SYS_CHROOT, Args: [6]uint64{addr}})
	}
	addr, err := put(cstring(p.Cwd))
	if err != nil {
		return err
	}
	calls = append(calls, ptrace.Call{Name: "chdir(" + p.Cwd + ")", Nr: unix.SYS_CHDIR, Args: [6]uint64{addr}},
		ptrace.Call{Name: "personality", Nr: unix.SYS_PERSONALITY, Args: [6]uint64{p.Personality}})
	for _, it := range p.Itimers {
		var b [32]byte
		le.PutUint64(b[0:], uint64(it.IntervalUS/1e6))
		le.PutUint64(b[8:], uint64(it.IntervalUS%1e6))
		rem := it.RemainingUS
		if rem == 0 {
			rem = 1 // zero would disarm a timer that was about to fire
		}
		le.PutUint64(b[16:], uint64(rem/1e6))
		le.PutUint64(b[24:], uint64(rem%1e6))
		addr, err := put(b[:])
		if err != nil {
			return err
		}
		calls = append(calls, ptrace.Call{Name: "setitimer(" + strconv.Itoa(it.Which) + ")", Nr: unix.SYS_SETITIMER, Args: [6]uint64{uint64(it.Which), addr}})
	}
	if off := batchTable + uint64(ptrace.BatchTableSize(len(calls))); off > stateArgs {
		return fmt.Errorf("%d calls of process state: their table (%d bytes) runs into their arguments", len(calls), off-batchTable)
	}
	if _, err := r.p.SyscallBatch(r.p.Leader(), r.scratch+batchTable, calls); err != nil {
		return err
	}
	if trap != nil {
		if _, err := r.sys(trap.Name, trap.Nr, trap.Args[:4]...); err != nil {
			return err
		}
	}
	for _, l := range p.Rlimits {
		lim := unix.Rlimit{Cur: l.Cur, Max: l.Max}
		if err := unix.Prlimit(r.pid, l.Resource, &lim, nil); err != nil {
			var old unix.Rlimit
			unix.Prlimit(r.pid, l.Resource, nil, &old)
			lim.Max = min(lim.Max, old.Max)
			lim.Cur = min(lim.Cur, lim.Max)
			if err2 := unix.Prlimit(r.pid, l.Resource, &lim, nil); err2 != nil {
				return fmt.Errorf("rlimit %d: %w", l.Resource, err2)
			}
			r.warnDiff(r.pid, 0, fmt.Sprintf("rlimit %d", l.Resource), "rlimit %d: wanted %d/%d, kernel refused (%v); set %d/%d", l.Resource, l.Cur, l.Max, err, lim.Cur, lim.Max)
		}
	}
	if err := r.setMM(); err != nil {
		return err
	}
	return r.restoreProcAttrs()
}

// setMM sets the mm fields and the executable with PR_SET_MM_MAP.
func (r *restorer) setMM() error {
	p := r.proc
	exe, err := openMappable(r.paths, p.Exe.Path, os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("executable: %w", err)
	}
	r.keep(exe)
	exeFD, err := r.install(exe)
	if err != nil {
		return err
	}
	defer r.sys("close", unix.SYS_CLOSE, uint64(exeFD))
	auxv := make([]byte, 8*len(p.MM.Auxv))
	for i, w := range p.MM.Auxv {
		binary.LittleEndian.PutUint64(auxv[8*i:], w)
	}
	auxvAddr, err := r.put(1024, auxv)
	if err != nil {
		return err
	}
	mm := prctlMMMap{
		StartCode: p.MM.StartCode, EndCode: p.MM.EndCode,
		StartData: p.MM.StartData, EndData: p.MM.EndData,
		StartBrk: p.MM.StartBrk, Brk: p.MM.Brk, StartStack: p.MM.StartStack,
		ArgStart: p.MM.ArgStart, ArgEnd: p.MM.ArgEnd,
		EnvStart: p.MM.EnvStart, EnvEnd: p.MM.EnvEnd,
		Auxv: auxvAddr, AuxvSize: uint32(len(auxv)), ExeFD: uint32(exeFD),
	}
	addr, err := r.put(0, raw.Bytes(&mm))
	if err != nil {
		return err
	}
	if _, err := r.sys("prctl(PR_SET_MM_MAP)", unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, addr, uint64(len(raw.Bytes(&mm))), 0); err != nil {
		return err
	}
	return nil
}

func cstring(s string) []byte { return append([]byte(s), 0) }

// threadFlags are the clone flags of a thread of the same process.
const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_THREAD | unix.CLONE_SYSVSEM

// createThreads creates every thread but the leader with its original TID
// (clone3 with set_tid, injected into the leader). They start stopped and
// traced, and get their registers with the rest of their state.
func (r *restorer) createThreads() error {
	for k, t := range r.proc.Threads[1:] {
		tids := []int32{int32(t.TID)}
		want := t.TID
		if r.container() {
			// Its TID inside first, as clone3 returns it.
			want = r.inner(t.TID)
			if want == 0 {
				return fmt.Errorf("thread %d: no TID inside the container in the image", t.TID)
			}
			tids = []int32{int32(want), int32(t.TID)}
		}
		// From inside a user namespace of its own, the TID inside alone
		// (userns.go).
		fromUserNS := r.userNS() != nil
		if fromUserNS {
			tids = tids[:1]
		}
		var tidAddr uint64
		for i := range tids {
			addr, err := r.put(256+uint64(4*i), raw.Bytes(&tids[i]))
			if err != nil {
				return err
			}
			if i == 0 {
				tidAddr = addr
			}
		}
		ca := cloneArgs{Flags: threadFlags, SetTID: tidAddr, SetTIDSize: uint64(len(tids))}
		addr, err := r.put(0, raw.Bytes(&ca))
		if err != nil {
			return err
		}
		var got uint64
		clone := func() (err error) {
			got, err = r.sys("clone3(thread)", unix.SYS_CLONE3, addr, uint64(len(raw.Bytes(&ca))))
			return err
		}
		if fromUserNS {
			if err := r.ensureFreeOuter(t.TID, nil); err != nil {
				return err
			}
			t = r.proc.Threads[k+1] // (its TID may have moved)
			if err := pidFree(t.TID); err != nil {
				return fmt.Errorf("thread %d: %w", t.TID, err)
			}
			err = withNextPID(t.TID, clone)
			if err == nil && int(got) == want && !taskIs(r.pid, t.TID, want) {
				// Traced from birth: adopted, so that a kill of the
				// process waits for it too.
				stray := r.strayThread(want)
				if stray == 0 {
					return &PIDRaceError{PID: t.TID}
				}
				if _, err := r.p.AdoptThread(stray); err != nil {
					return err
				}
				if err := r.moveOuter(t.TID, stray, nil); err != nil {
					return err
				}
				continue
			}
		} else {
			err = clone()
		}
		if err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
		if int(got) != want {
			return fmt.Errorf("clone3 made thread %d, want %d", got, want)
		}
		if _, err := r.p.AdoptThread(t.TID); err != nil {
			return err
		}
	}
	return nil
}

// restoreThreads restores each thread's own state and registers, queues
// the pending signals, and removes migrate's scratch area and pidfd.
func (r *restorer) restoreThreads(context.Context) error {
	p := r.proc
	le := binary.LittleEndian
	if err := r.threadsOutOfVDSO(); err != nil {
		return err
	}
	if err := r.createThreads(); err != nil {
		return err
	}
	for i, t := range p.Threads {
		th := r.p.Threads[i]
		if th.TID != t.TID {
			return fmt.Errorf("thread %d built as %d", t.TID, th.TID)
		}
		// In one batch on the thread: its alternate stack (from the
		// scratch area at 0), clear_child_tid, robust list, rseq area
		// and name (from 32).
		var args [32 + 16]byte
		calls := make([]ptrace.Call, 0, 5)
		if t.AltStack.Flags&ssDisable == 0 && t.AltStack.SP != 0 {
			le.PutUint64(args[0:], t.AltStack.SP)
			le.PutUint32(args[8:], uint32(t.AltStack.Flags&^ssOnstack))
			le.PutUint64(args[16:], t.AltStack.Size)
			calls = append(calls, ptrace.Call{Name: "sigaltstack", Nr: unix.SYS_SIGALTSTACK, Args: [6]uint64{r.scratch}})
		}
		calls = append(calls, ptrace.Call{Name: "set_tid_address", Nr: unix.SYS_SET_TID_ADDRESS, Args: [6]uint64{t.ClearTID}})
		if t.RobustList != 0 {
			calls = append(calls, ptrace.Call{Name: "set_robust_list", Nr: unix.SYS_SET_ROBUST_LIST, Args: [6]uint64{t.RobustList, t.RobustLen}})
		}
		if t.Rseq.Addr != 0 {
			calls = append(calls, ptrace.Call{Name: "rseq", Nr: unix.SYS_RSEQ, Args: [6]uint64{t.Rseq.Addr, uint64(t.Rseq.Len), 0, uint64(t.Rseq.Sig)}})
		}
		if t.Comm != "" {
			// /proc/PID/comm takes writes only from the thread group
			// itself. PR_SET_NAME reads 15 bytes at most (then the
			// check names a longer one).
			copy(args[32:32+15], t.Comm)
			calls = append(calls, ptrace.Call{Name: "prctl(PR_SET_NAME)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_SET_NAME, r.scratch + 32}})
		}
		if _, err := r.put(0, args[:]); err != nil {
			return err
		}
		_, err := r.p.SyscallBatch(th, r.scratch+batchTable, calls)
		var se *ptrace.SyscallError
		if errors.As(err, &se) && se.Name == "rseq" && t.Rseq.Addr != 0 {
			return fmt.Errorf("thread %d: rseq area %#x (%d bytes) not registered again: %w", t.TID, t.Rseq.Addr, t.Rseq.Len, err)
		}
		if err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
		if err := r.p.SetSigmask(th, t.SigMask); err != nil {
			return fmt.Errorf("thread %d: signal mask: %w", t.TID, err)
		}
	}
	if err := r.restoreTimers(); err != nil {
		return err
	}
	// Seccomp filters before the credentials (see restoreSeccomp).
	if err := r.restoreSeccomp(); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	// Credentials last: dropping them may take the right to run what came
	// before (clone3 with set_tid, PR_SET_MM, timer IDs...). What follows
	// needs none: signals queued to the process itself, its own fd closed,
	// its own memory unmapped.
	if err := r.restoreCreds(); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	// After the credentials: a change of them clears it.
	for i, t := range p.Threads {
		if t.Sched != nil && t.Sched.PdeathSignal != 0 {
			if _, err := r.p.Syscall(r.p.Threads[i], "prctl(PR_SET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(t.Sched.PdeathSignal)); err != nil {
				return fmt.Errorf("thread %d: parent-death signal: %w", t.TID, err)
			}
		}
		if err := r.restoreThreadFlags(i, t); err != nil {
			return err
		}
	}
	// Pending signals, now that the masks keep blocked ones pending.
	for _, si := range p.SharedPending {
		addr, err := r.put(0, si.Raw)
		if err != nil {
			return err
		}
		if _, err := r.sys("rt_sigqueueinfo", unix.SYS_RT_SIGQUEUEINFO, uint64(r.inner(r.pid)), uint64(si.Signo), addr); err != nil {
			return fmt.Errorf("pending signal %d: %w", si.Signo, err)
		}
	}
	for i, t := range p.Threads {
		for _, si := range t.Pending {
			addr, err := r.put(0, si.Raw)
			if err != nil {
				return err
			}
			if _, err := r.p.Syscall(r.p.Threads[i], "rt_tgsigqueueinfo", unix.SYS_RT_TGSIGQUEUEINFO, uint64(r.inner(r.pid)), uint64(r.inner(t.TID)), uint64(si.Signo), addr); err != nil {
				return fmt.Errorf("thread %d: pending signal %d: %w", t.TID, si.Signo, err)
			}
		}
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, uint64(r.agentFD)); err != nil {
		return err
	}
	if _, err := r.sys("munmap", unix.SYS_MUNMAP, r.scratch, scratchMapped); err != nil {
		return err
	}
	r.p.ForgetBatchCode()
	// Scheduling last: no call is injected into the threads after it
	// (one of SCHED_IDLE would run it slowly).
	for _, t := range p.Threads {
		if err := r.restoreSched(t.TID, t.Sched); err != nil {
			return err
		}
	}
	hereSize := 0 // this CPU's XSAVE area, as the kernel gives it
	for i, t := range p.Threads {
		th := r.p.Threads[i]
		x := t.Xstate
		if len(x) > 0 && hereSize == 0 {
			own, err := r.p.Xstate(th)
			if err != nil {
				return fmt.Errorf("thread %d: xstate: %w", t.TID, err)
			}
			hereSize = len(own)
		}
		x, err := fitXstate(x, hereSize)
		if err != nil {
			return fmt.Errorf("thread %d: xstate: %w", t.TID, err)
		}
		if err := r.p.SetXstate(th, x); err != nil {
			return fmt.Errorf("thread %d: xstate: %w", t.TID, err)
		}
		regs := regsFromCore(&t.Regs)
		if t.Restart == "restart" && t.RestartCode != 0 {
			// The kernel decides, as the thread resumes, whether the
			// call runs again or ends (a signal handled first ends a
			// pause with EINTR).
			if err := r.p.SetRegsInterrupted(th, &regs, t.RestartCode); err != nil {
				return err
			}
			continue
		}
		r.p.SetRegs(th, &regs)
	}
	return nil
}

// sigaltstack flags.
const (
	ssOnstack = 1
	ssDisable = 2
)

// prctl(PR_TIMER_CREATE_RESTORE_IDS): timer_create takes the timer ID from
// its timerid argument (Linux 6.15+).
const (
	prTimerCreateRestoreIDs   = 77
	prTimerCreateRestoreIDsOn = 1
)

// restoreTimers recreates the POSIX timers with their IDs, notification and
// remaining time. Done late, so that the time left is measured from close
// to the moment the process resumes.
func (r *restorer) restoreTimers() error {
	timers := r.proc.PosixTimers
	if len(timers) == 0 {
		return nil
	}
	le := binary.LittleEndian
	if _, err := r.sys("prctl(PR_TIMER_CREATE_RESTORE_IDS)", unix.SYS_PRCTL, prTimerCreateRestoreIDs, prTimerCreateRestoreIDsOn, 0, 0, 0); err != nil {
		return fmt.Errorf("this kernel cannot create POSIX timers with given IDs (Linux 6.15+ needed): %w", err)
	}
	for _, t := range timers {
		var ev [64]byte // struct sigevent
		le.PutUint64(ev[0:], t.Value)
		le.PutUint32(ev[8:], uint32(t.Signo))
		le.PutUint32(ev[12:], uint32(t.Notify))
		le.PutUint32(ev[16:], uint32(r.inner(t.TID))) // as the process names it
		evAddr, err := r.put(0, ev[:])
		if err != nil {
			return err
		}
		var id [4]byte
		le.PutUint32(id[:], uint32(t.ID))
		idAddr, err := r.put(128, id[:])
		if err != nil {
			return err
		}
		if _, err := r.sys("timer_create", unix.SYS_TIMER_CREATE, uint64(t.Clock), evAddr, idAddr); err != nil {
			return fmt.Errorf("timer %d: %w", t.ID, err)
		}
		if t.ValueNS == 0 {
			continue
		}
		var spec [32]byte
		le.PutUint64(spec[0:], uint64(t.IntervalNS/1e9))
		le.PutUint64(spec[8:], uint64(t.IntervalNS%1e9))
		le.PutUint64(spec[16:], uint64(t.ValueNS/1e9))
		le.PutUint64(spec[24:], uint64(t.ValueNS%1e9))
		specAddr, err := r.put(256, spec[:])
		if err != nil {
			return err
		}
		if _, err := r.sys("timer_settime", unix.SYS_TIMER_SETTIME, uint64(t.ID), 0, specAddr, 0); err != nil {
			return fmt.Errorf("timer %d: %w", t.ID, err)
		}
	}
	_, err := r.sys("prctl(PR_TIMER_CREATE_RESTORE_IDS)", unix.SYS_PRCTL, prTimerCreateRestoreIDs, 0, 0, 0, 0)
	return err
}

// joinSession gives a process that led a session a new one, before its
// children are forked (they are born in it). The root stays in migrate's
// session if that was its session; otherwise it gets one of its own, so
// that it does not hang on migrate's terminal, and a warning says so.
func (r *restorer) joinSession() error {
	p := r.proc
	if p.SID != p.PID && r.parent != nil {
		// Born into its parent's session, as before; if the parent's was
		// replaced (a session outside the image), so is this one.
		r.mu.Lock()
		replaced := p.SID == r.parent.proc.SID && r.accepted[accepted{r.parent.pid, 0, "session"}]
		r.mu.Unlock()
		if replaced {
			r.accept(p.PID, 0, "session")
		}
		return nil
	}
	if sid, err := unix.Getsid(0); err == nil && p.SID != p.PID && sid == p.SID {
		return nil // the root's session is migrate's own: it stays in it
	}
	if _, err := r.sys("setsid", unix.SYS_SETSID); err != nil {
		return err
	}
	r.sessionLeader = true
	if p.SID != p.PID {
		if p.PGID == p.PID {
			r.warnDiff(p.PID, 0, "session", "process %d: session %d is not in the image; the process leads a session of its own", p.PID, p.SID)
		} else {
			r.warnDiff(p.PID, 0, "process group", "process %d: process group %d and session %d are not in the image; the process got a session of its own", p.PID, p.PGID, p.SID)
			r.accept(p.PID, 0, "session")
		}
	}
	return nil
}

// joinGroup puts a process that does not lead a session in its process
// group: its own if it led one, else its leader's, made before.
func (r *restorer) joinGroup() error {
	if r.sessionLeader {
		return nil
	}
	p := r.proc
	// The group as the process names it (inside its container).
	pgid := uint64(r.inner(p.PGID))
	if p.PGID == p.PID {
		pgid = 0
	}
	if p.PGID == 0 || (p.PGID != p.PID && pgid == 0) {
		// Its group was outside its PID namespace (stat shows 0): not one
		// this host can give it back. It leads a group of its own rather
		// than stay in the restoring service's.
		if _, err := r.sys("setpgid", unix.SYS_SETPGID, 0, 0); err != nil {
			return fmt.Errorf("process %d: cannot lead a process group of its own: %w", p.PID, err)
		}
		r.warnDiff(p.PID, 0, "process group", "process %d: its process group was outside its PID namespace; it leads a group of its own", p.PID)
		return nil
	}
	if _, err := r.sys("setpgid", unix.SYS_SETPGID, 0, pgid); err != nil {
		// The group is gone (its processes were not in the image). The
		// process would stay in the husk's, the restoring service's: a
		// signal to the service's group would reach it. It leads a group
		// of its own instead.
		if _, err2 := r.sys("setpgid", unix.SYS_SETPGID, 0, 0); err2 != nil {
			return fmt.Errorf("process %d: cannot join process group %d (%v), nor lead its own: %w", p.PID, p.PGID, err, err2)
		}
		r.warnDiff(p.PID, 0, "process group", "process %d: cannot join process group %d (%v); it leads a group of its own", p.PID, p.PGID, err)
	}
	return nil
}
