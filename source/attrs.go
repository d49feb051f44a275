package source

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// schedDeadline is SCHED_DEADLINE: its runtime and period are a
// reservation the target's admission control may refuse, and a restore
// does not make it.
const schedDeadline = 6

// readSched reads the scheduling state of thread tid of process pid from
// outside (sched_getattr, getpriority, sched_getaffinity and
// /proc/TID/timerslack_ns need no injection). PdeathSignal is left to the
// injected calls.
//
// Preconditions: the process is frozen (a thread may change all of it).
// The CPU mask is the thread's own, not the one it has while pinned
// (ptrace.Proc.Pin).
func (d *dumper) readSched(tid int) (*core.Sched, error) {
	pid := d.pid
	ps, err := proc.ReadSched(tid)
	if err != nil {
		return nil, fmt.Errorf("thread %d: %w", tid, err)
	}
	set, err := d.p.Affinity(tid)
	if err != nil {
		return nil, fmt.Errorf("thread %d: CPU mask: %w", tid, err)
	}
	ps.Affinity = cpuMask(&set)
	switch ps.Policy {
	case schedDeadline:
		return nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d runs under SCHED_DEADLINE, which a restore does not make", tid)}
	case core.SchedOther, core.SchedFIFO, core.SchedRR, core.SchedBatch, core.SchedIdle:
	default:
		return nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d has scheduling policy %d, which migrate does not know", tid, ps.Policy)}
	}
	if ps.TimerSlack == 0 && ps.Policy != core.SchedFIFO && ps.Policy != core.SchedRR {
		// Made by a real-time thread, and real-time since: a slack of 0
		// written or set by prctl means "the default", which is the
		// creator's slack at clone.
		return nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d has timer slack 0 under policy %d (it was created by a real-time thread), which a restore cannot set", tid, ps.Policy)}
	}
	if err := refuseThreadState(pid, tid); err != nil {
		return nil, err
	}
	if !uclampDefault(ps) {
		return nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d has utilization clamps %d..%d of its own, which a restore does not make", tid, ps.UtilMin, ps.UtilMax)}
	}
	s := &core.Sched{
		Policy: ps.Policy, Priority: ps.Priority, ResetOnFork: ps.ResetOnFork, Nice: ps.Nice,
		Affinity: ps.Affinity, TimerSlackNS: ps.TimerSlack,
	}
	s.IOPrio = ps.OwnIOPrio()
	// A slice that is not this host's default is the thread's own: the
	// default is migrate's (which sets none).
	if ps.Slice != 0 && ps.Slice != d.baseSlice() {
		s.SliceNS = ps.Slice
	}
	return s, nil
}

// baseSlice is the time slice of a fair thread that did not choose one:
// the calling thread's (0 on a kernel before 6.12, which reports none).
func (d *dumper) baseSlice() uint64 {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil || attr.Policy != core.SchedOther {
		return 0
	}
	return attr.Runtime
}

// uclampDefault tells whether a thread's utilization clamps are those it
// has without setting any: none at all (a kernel without
// CONFIG_UCLAMP_TASK reports 0 and 0), else no cap (1024) and no boost, or
// for a real-time thread the sysctl's default boost.
func uclampDefault(s *proc.Sched) bool {
	if s.UtilMin == 0 && s.UtilMax == 0 {
		return true
	}
	if s.UtilMax != 1024 {
		return false
	}
	if s.Policy != core.SchedFIFO && s.Policy != core.SchedRR {
		return s.UtilMin == 0
	}
	b, err := proc.ReadFile("/proc/sys/kernel/sched_util_clamp_min_rt_default")
	if err != nil {
		return false
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	return err == nil && uint32(v) == s.UtilMin
}

// cpuMask is a CPU set as words, without trailing zero words.
func cpuMask(set *unix.CPUSet) []uint64 {
	n := len(set)
	for n > 1 && set[n-1] == 0 {
		n--
	}
	m := make([]uint64, n)
	for i := range n {
		m[i] = uint64(set[i])
	}
	return m
}

// readProcAttrs reads the process-wide attributes /proc gives, and checks
// that every thread has the leader's personality (a restore sets one for
// the whole process).
//
// Preconditions: the process is frozen.
func readProcAttrs(pid int, tids []int) (*core.ProcAttrs, uint64, error) {
	adj, err := proc.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		return nil, 0, fmt.Errorf("process %d: oom_score_adj: %w", pid, err)
	}
	if err := refuseAutogroup(pid); err != nil {
		return nil, 0, err
	}
	a := &core.ProcAttrs{}
	if a.OOMScoreAdj, err = strconv.Atoi(strings.TrimSpace(string(adj))); err != nil {
		return nil, 0, fmt.Errorf("process %d: oom_score_adj %q: %w", pid, adj, err)
	}
	cdf, err := proc.ReadFile(fmt.Sprintf("/proc/%d/coredump_filter", pid))
	if err != nil {
		return nil, 0, fmt.Errorf("process %d: coredump_filter: %w", pid, err)
	}
	f, err := strconv.ParseUint(strings.TrimSpace(string(cdf)), 16, 32)
	if err != nil || f > core.MaxCoredumpFilter {
		return nil, 0, fmt.Errorf("process %d: coredump_filter %q: not a filter of the known bits (%v)", pid, cdf, err)
	}
	filter := uint32(f)
	a.CoredumpFilter = &filter
	var pers uint64
	for i, tid := range tids {
		// /proc/TID/personality: reading it needs ptrace access, which a
		// tracer has.
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/personality", pid, tid))
		if err != nil {
			return nil, 0, fmt.Errorf("thread %d: personality: %w", tid, err)
		}
		p, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
		if err != nil {
			return nil, 0, fmt.Errorf("thread %d: personality %q: %w", tid, b, err)
		}
		if i == 0 {
			pers = p
		} else if p != pers {
			return nil, 0, &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d has personality %#x and the leader %#x; a restore sets one for the process", tid, p, pers)}
		}
	}
	return a, pers, nil
}

// prctl and membarrier commands read by injection.
const (
	prGetChildSubreaper = unix.PR_GET_CHILD_SUBREAPER
	prGetThpDisable     = unix.PR_GET_THP_DISABLE
	prGetPdeathsig      = unix.PR_GET_PDEATHSIG
	// membarrierGetRegistrations is MEMBARRIER_CMD_GET_REGISTRATIONS
	// (Linux 6.3+).
	membarrierGetRegistrations = 1 << 9
	// mpolDefault is MPOL_DEFAULT.
	mpolDefault = 0
)

// membarrierProbes are the private expedited membarrier commands, each
// with the registration it needs: issued unregistered, it fails with
// EPERM.
var membarrierProbes = []struct {
	name     string
	cmd, reg uint64
}{
	{"PRIVATE_EXPEDITED", 1 << 3, 1 << 4},
	{"PRIVATE_EXPEDITED_SYNC_CORE", 1 << 5, 1 << 6},
	{"PRIVATE_EXPEDITED_RSEQ", 1 << 7, 1 << 8},
}

// membarrierGlobal is MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED.
const membarrierGlobal = 1 << 2

// probeMembarrier tells the membarrier registrations of a process on a
// kernel without MEMBARRIER_CMD_GET_REGISTRATIONS (before 6.3): each
// private expedited command is issued in the process (a memory barrier
// on its threads, all stopped: nothing else), and succeeds only if it
// registered for it. The global expedited registration shows in nothing
// the process can do; it is taken as made: a restore registers it, and
// the only effect of a registration the process did not make is that
// other processes' global expedited barriers reach it too (a barrier
// more, never one less).
func (d *dumper) probeMembarrier(lead *ptrace.Thread) (uint64, error) {
	mb := uint64(membarrierGlobal)
	for _, pr := range membarrierProbes {
		_, err := d.p.Syscall(lead, "membarrier(MEMBARRIER_CMD_"+pr.name+")", unix.SYS_MEMBARRIER, pr.cmd, 0, 0)
		switch {
		case err == nil:
			mb |= pr.reg
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EINVAL):
			// Not registered, or a command this kernel lacks (so
			// it could not register either).
		default:
			return 0, err
		}
	}
	return mb, nil
}

// collectInjectedAttrs reads what only the process itself can tell: each
// thread's parent-death signal, memory policy, memory-error kill policy
// and rdtsc mode, and the process's
// child-subreaper flag, THP disable, membarrier registrations,
// memory-deny-write-execute and KSM merge-any.
//
// Preconditions: the process is frozen, the scratch page is mapped, and
// collectTask has filled Threads[i].Sched and Attrs.
func (d *dumper) collectInjectedAttrs() error {
	p := d.proc
	le := binary.LittleEndian
	for i, th := range d.p.Threads {
		// Each thread's on itself, in one batch, the leader's with the
		// process's: an int each at d.scratch+0, 8, 16 and 24.
		calls := []ptrace.Call{
			{Name: "prctl(PR_GET_PDEATHSIG)", Nr: unix.SYS_PRCTL, Args: [6]uint64{prGetPdeathsig, d.scratch}},
			{Name: "prctl(PR_MCE_KILL_GET)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_MCE_KILL_GET}},
			{Name: "prctl(PR_GET_TSC)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_TSC, d.scratch + 8}},
			{Name: "get_mempolicy", Nr: unix.SYS_GET_MEMPOLICY, Args: [6]uint64{d.scratch + 16}},
		}
		if i == 0 {
			calls = append(calls,
				ptrace.Call{Name: "prctl(PR_GET_CHILD_SUBREAPER)", Nr: unix.SYS_PRCTL, Args: [6]uint64{prGetChildSubreaper, d.scratch + 24}},
				ptrace.Call{Name: "prctl(PR_GET_THP_DISABLE)", Nr: unix.SYS_PRCTL, Args: [6]uint64{prGetThpDisable}},
				ptrace.Call{Name: "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)", Nr: unix.SYS_MEMBARRIER, Args: [6]uint64{membarrierGetRegistrations}},
				ptrace.Call{Name: "prctl(PR_GET_MDWE)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_MDWE}},
				ptrace.Call{Name: "prctl(PR_GET_MEMORY_MERGE)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_MEMORY_MERGE}})
		}
		ret, err := d.batch(th, calls...)
		if se := (*ptrace.SyscallError)(nil); err != nil && !errors.As(err, &se) {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		// result k: its value, or its error (named).
		result := func(k int) (uint64, error) {
			if e := int64(ret[k]); e < 0 && e > -4096 {
				return 0, &ptrace.SyscallError{PID: d.pid, Name: calls[k].Name, Errno: unix.Errno(-e)}
			}
			return ret[k], nil
		}
		b, err := d.results(32)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		if _, err := result(0); err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		p.Threads[i].Sched.PdeathSignal = int(int32(le.Uint32(b)))
		// The memory-error policy and the rdtsc mode: thread flags
		// no /proc file shows.
		mce, err := result(1)
		switch {
		case errors.Is(err, unix.EINVAL): // a kernel without memory failure handling: none
		case err != nil:
			return fmt.Errorf("thread %d: %w", th.TID, err)
		case mce == unix.PR_MCE_KILL_EARLY:
			p.Threads[i].Sched.MCEKill = core.MCEKillEarly
		case mce == unix.PR_MCE_KILL_LATE:
			p.Threads[i].Sched.MCEKill = core.MCEKillLate
		case mce != unix.PR_MCE_KILL_DEFAULT:
			return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("thread %d has memory-error kill policy %d, which migrate does not know", th.TID, mce)}
		}
		_, err = result(2)
		switch {
		case errors.Is(err, unix.EINVAL): // an architecture without it
		case err != nil:
			return fmt.Errorf("thread %d: %w", th.TID, err)
		case le.Uint32(b[8:]) == unix.PR_TSC_SIGSEGV:
			p.Threads[i].Sched.TSCSigsegv = true
		case le.Uint32(b[8:]) != unix.PR_TSC_ENABLE:
			return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("thread %d has rdtsc mode %d, which migrate does not know", th.TID, le.Uint32(b[8:]))}
		}
		// The NUMA memory policy is not carried: one that is not the
		// default refuses the dump.
		// (A kernel without NUMA has none: ENOSYS.)
		_, err = result(3)
		switch {
		case errors.Is(err, unix.ENOSYS):
		case err != nil:
			return fmt.Errorf("thread %d: %w", th.TID, err)
		case le.Uint32(b[16:]) != mpolDefault:
			return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("thread %d has NUMA memory policy %d (set_mempolicy), which a restore does not make", th.TID, le.Uint32(b[16:]))}
		}
		if i == 0 {
			if err := d.processAttrs(b[24:], result); err != nil {
				return err
			}
		}
	}
	return nil
}

// processAttrs reads the process's attributes from the leader's batch of
// collectInjectedAttrs: subreaper (its int in b), then results 4 to 8.
func (d *dumper) processAttrs(b []byte, result func(int) (uint64, error)) error {
	p := d.proc
	if _, err := result(4); err != nil {
		return err
	}
	p.Attrs.ChildSubreaper = binary.LittleEndian.Uint32(b) != 0
	thp, err := result(5)
	if err != nil {
		return err
	}
	p.Attrs.THPDisable = int(thp)
	mb, err := result(6)
	if errors.Is(err, unix.EINVAL) {
		mb, err = d.probeMembarrier(d.p.Leader())
	}
	if err != nil {
		return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("its membarrier registrations cannot be read: %v", err)}
	}
	if mb&^core.MembarrierRegistrations != 0 {
		return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("membarrier registrations %#x include ones migrate does not know", mb)}
	}
	p.Attrs.Membarrier = int(mb)
	// MDWE (Linux 6.3+) and KSM's merge-any (6.4+, CONFIG_KSM): a kernel
	// that does not know the prctl (EINVAL) has neither set.
	mdwe, err := result(7)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	p.Attrs.MDWE = int(mdwe)
	merge, err := result(8)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	p.Attrs.MemoryMerge = merge == 1
	return nil
}

// refuseThreadState refuses a thread state a restore does not make and
// that no other check reads: an I/O flusher (PR_SET_IO_FLUSHER, which
// only a thread with CAP_SYS_RESOURCE sets on itself), a core-scheduling
// cookie (PR_SCHED_CORE: the threads that may share a core; a restore
// would have to make the same groups). It runs before anything is frozen
// (refuseSchedState) and again, frozen, for each thread (readSched).
func refuseThreadState(pid, tid int) error {
	if st, err := proc.ReadTaskStat(pid, tid); err == nil && st.Flags&(proc.PF_MEMALLOC_NOIO|proc.PF_LOCAL_THROTTLE) == proc.PF_MEMALLOC_NOIO|proc.PF_LOCAL_THROTTLE {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d is an I/O flusher (PR_SET_IO_FLUSHER), which a restore does not make", tid)}
	}
	var cookie uint64
	// ENODEV: no core scheduling here (no SMT, or a kernel without it),
	// so no cookies; EINVAL: a kernel before 5.14.
	err := raw.SchedCoreGet(tid, &cookie)
	if err == nil && cookie != 0 {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d has a core-scheduling cookie (PR_SCHED_CORE), which a restore does not make", tid)}
	}
	return nil
}

// refuseAutogroup refuses a process whose autogroup (the scheduling group
// of its session, CONFIG_SCHED_AUTOGROUP) has a nice value of its own: it
// is the session's, which a restore does not set.
func refuseAutogroup(pid int) error {
	b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/autogroup", pid))
	if err != nil {
		return nil // a kernel without autogroups, or the process gone
	}
	// "/autogroup-N nice X"
	f := strings.Fields(string(b))
	if len(f) == 3 && f[1] == "nice" && f[2] != "0" {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("its session's autogroup has nice %s (/proc/%d/autogroup), which a restore does not set", f[2], pid)}
	}
	return nil
}

// refuseSchedState refuses, before anything is frozen, a process a thread
// of which runs under SCHED_DEADLINE, or has a state refuseThreadState
// names, or an autogroup with a nice value (the dump checks again,
// frozen).
func refuseSchedState(pid int) error {
	if err := refuseAutogroup(pid); err != nil {
		return err
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil // gone or a zombie: the dump tells
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if attr, err := unix.SchedGetAttr(tid, 0); err == nil && attr.Policy == schedDeadline {
			return &BadTargetError{PID: pid, Reason: fmt.Sprintf("thread %d runs under SCHED_DEADLINE, which a restore does not make", tid)}
		}
		if err := refuseThreadState(pid, tid); err != nil {
			return err
		}
	}
	return nil
}
