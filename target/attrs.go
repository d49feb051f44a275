package target

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// checkAttrs checks, before anything is created, that the image carries
// the attributes of p and its threads, and that this host has every CPU a
// thread may run on.
func checkAttrs(p *core.Process) error {
	if p.Attrs == nil {
		return fmt.Errorf("%w: no process attributes (oom_score_adj, THP, subreaper, membarrier): an image of an older build; dump again", core.ErrInconsistent)
	}
	b, err := proc.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return fmt.Errorf("CPUs of this host: %w", err)
	}
	online, err := core.ParseCPUList(string(b))
	if err != nil {
		return fmt.Errorf("CPUs of this host: %w", err)
	}
	for _, t := range p.Threads {
		if t.Sched == nil {
			return fmt.Errorf("%w: thread %d has no scheduling state: an image of an older build; dump again", core.ErrInconsistent, t.TID)
		}
		for i, w := range t.Sched.Affinity {
			var have uint64
			if i < len(online) {
				have = online[i]
			}
			if w&^have != 0 {
				return &AffinityError{PID: p.PID, TID: t.TID, Want: core.CPUList(t.Sched.Affinity), Have: core.CPUList(online)}
			}
		}
	}
	return nil
}

// ioprioWhoProcess is IOPRIO_WHO_PROCESS: a thread, by TID.
const ioprioWhoProcess = 1

// prctl and membarrier commands of restoreProcAttrs.
const (
	prThpDisableExceptAdvised = 1 << 1
	membarrierFirstRegister   = 1 << 2
)

// restoreProcAttrs sets the process-wide attributes: THP disable (which
// the husk inherited from migrate, so it is set either way), the
// child-subreaper flag, the membarrier registrations, KSM merge-any and
// memory-deny-write-execute by injection, and oom_score_adj from outside.
//
// Preconditions: the credentials are not dropped yet (none of these needs
// privileges the process has, but oom_score_adj is written by migrate
// while it may still).
func (r *restorer) restoreProcAttrs() error {
	a := r.proc.Attrs
	if a == nil { // checkAttrs refuses such an image; never act on one
		return fmt.Errorf("%w: no process attributes", core.ErrInconsistent)
	}
	var off, flags uint64
	if a.THPDisable != 0 {
		off, flags = 1, uint64(a.THPDisable&prThpDisableExceptAdvised)
	}
	if _, err := r.sys("prctl(PR_SET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE, off, flags, 0, 0); err != nil {
		return fmt.Errorf("THP disable %d: %w", a.THPDisable, err)
	}
	if a.ChildSubreaper {
		if _, err := r.sys("prctl(PR_SET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	for cmd := membarrierFirstRegister; cmd <= core.MembarrierRegistrations; cmd <<= 1 {
		if a.Membarrier&cmd == 0 {
			continue
		}
		if _, err := r.sys(fmt.Sprintf("membarrier(register %#x)", cmd), unix.SYS_MEMBARRIER, uint64(cmd), 0, 0); err != nil {
			return fmt.Errorf("membarrier registration %#x: %w", cmd, err)
		}
	}
	if a.MemoryMerge {
		// Needs CAP_SYS_RESOURCE.
		if _, err := r.sys("prctl(PR_SET_MEMORY_MERGE)", unix.SYS_PRCTL, unix.PR_SET_MEMORY_MERGE, 1, 0, 0, 0); err != nil {
			return &AttrError{PID: r.pid, Attr: "KSM merge-any (PR_SET_MEMORY_MERGE)", Want: "1", Err: err}
		}
	}
	// Last of these: it cannot be undone, and the areas have their
	// protections already (the "set protections" step).
	if a.MDWE != 0 {
		if _, err := r.sys("prctl(PR_SET_MDWE)", unix.SYS_PRCTL, unix.PR_SET_MDWE, uint64(a.MDWE), 0, 0, 0); err != nil {
			return &AttrError{PID: r.pid, Attr: "memory-deny-write-execute (PR_SET_MDWE)", Want: fmt.Sprint(a.MDWE), Err: err}
		}
	}
	if f := a.CoredumpFilter; f != nil {
		// The husk has migrate's: set either way.
		path := fmt.Sprintf("/proc/%d/coredump_filter", r.pid)
		if err := os.WriteFile(path, []byte(fmt.Sprintf("%#x", *f)), 0); err != nil {
			return &AttrError{PID: r.pid, Attr: "coredump_filter", Want: fmt.Sprintf("%#x", *f), Err: err}
		}
	}
	path := fmt.Sprintf("/proc/%d/oom_score_adj", r.pid)
	if err := os.WriteFile(path, []byte(strconv.Itoa(a.OOMScoreAdj)), 0); err != nil {
		// Below the minimum the husk inherited, only with CAP_SYS_RESOURCE.
		return &AttrError{PID: r.pid, Attr: "oom_score_adj", Want: strconv.Itoa(a.OOMScoreAdj), Err: err}
	}
	return nil
}

// restoreThreadFlags sets, by injection in thread i, the memory-error
// kill policy and the rdtsc mode of the image's thread t that are not the
// defaults a new thread has (the husk's threads never set either).
func (r *restorer) restoreThreadFlags(i int, t core.Thread) error {
	if t.Sched == nil {
		return nil
	}
	th := r.p.Threads[i]
	if k := t.Sched.MCEKill; k != 0 {
		how := uint64(unix.PR_MCE_KILL_LATE)
		if k == core.MCEKillEarly {
			how = unix.PR_MCE_KILL_EARLY
		}
		if _, err := r.p.Syscall(th, "prctl(PR_MCE_KILL)", unix.SYS_PRCTL, unix.PR_MCE_KILL, unix.PR_MCE_KILL_SET, how, 0, 0); err != nil {
			return &AttrError{PID: r.pid, TID: t.TID, Attr: "memory-error kill policy (PR_MCE_KILL)", Want: strconv.Itoa(k), Err: err}
		}
	}
	// Last: from here on rdtsc faults in the thread (nothing injected
	// uses it).
	if t.Sched.TSCSigsegv {
		if _, err := r.p.Syscall(th, "prctl(PR_SET_TSC)", unix.SYS_PRCTL, unix.PR_SET_TSC, unix.PR_TSC_SIGSEGV, 0, 0, 0); err != nil {
			return &AttrError{PID: r.pid, TID: t.TID, Attr: "rdtsc mode (PR_SET_TSC)", Want: "SIGSEGV", Err: err}
		}
	}
	return nil
}

// restoreSched sets the scheduling state of thread tid from outside:
// nice, policy and priority, affinity, I/O priority, then the timer slack (which a
// real-time policy forces to 0), and reads it all back: a kernel that
// quietly set something else (an affinity narrowed by a cpuset, say) fails
// the restore.
func (r *restorer) restoreSched(tid int, s *core.Sched) error {
	if s == nil {
		return fmt.Errorf("%w: thread %d has no scheduling state", core.ErrInconsistent, tid)
	}
	fail := func(attr, want string, err error) error {
		return &AttrError{PID: r.pid, TID: tid, Attr: attr, Want: want, Err: err}
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, s.Nice); err != nil {
		return fail("nice", strconv.Itoa(s.Nice), err)
	}
	attr := unix.SchedAttr{Policy: uint32(s.Policy), Priority: uint32(s.Priority), Nice: int32(s.Nice), Runtime: s.SliceNS}
	if s.ResetOnFork {
		attr.Flags |= unix.SCHED_FLAG_RESET_ON_FORK
	}
	if s.Policy == core.SchedIdle && s.SliceNS != 0 {
		// SCHED_IDLE keeps the slice the thread had under a fair policy.
		fair := unix.SchedAttr{Policy: core.SchedOther, Nice: int32(s.Nice), Runtime: s.SliceNS}
		if err := unix.SchedSetAttr(tid, &fair, 0); err != nil {
			return fail("time slice", strconv.FormatUint(s.SliceNS, 10), err)
		}
	}
	if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
		return fail("scheduling policy", fmt.Sprintf("%d priority %d", s.Policy, s.Priority), err)
	}
	var set unix.CPUSet
	for c := 0; c < len(s.Affinity)*64; c++ {
		if s.Affinity[c/64]&(1<<(c%64)) != 0 {
			set.Set(c)
		}
	}
	// Through the tracer's Proc: while pinned next to the tracer the
	// thread gets its mask at the detach.
	kset, err := r.p.SetAffinity(tid, set)
	if err != nil {
		return fail("CPU affinity", core.CPUList(s.Affinity), err)
	}
	if s.Policy != core.SchedFIFO && s.Policy != core.SchedRR {
		path := fmt.Sprintf("/proc/%d/timerslack_ns", tid)
		if err := os.WriteFile(path, []byte(strconv.FormatUint(s.TimerSlackNS, 10)), 0); err != nil {
			return fail("timer slack", strconv.FormatUint(s.TimerSlackNS, 10), err)
		}
	}
	// Also 0 (none: it follows nice and policy) if the husk inherited one
	// from migrate; else a thread without any stays without.
	if cur, err := proc.ReadSched(tid); err != nil || s.IOPrio != 0 || cur.OwnIOPrio() != 0 {
		if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), uintptr(s.IOPrio)); e != 0 {
			return fail("I/O priority", fmt.Sprintf("%#x", s.IOPrio), e)
		}
	}
	got, err := proc.ReadSched(tid)
	if err != nil {
		return fmt.Errorf("thread %d: %w", tid, err)
	}
	got.Affinity = make([]uint64, len(kset))
	for i := range kset {
		got.Affinity[i] = uint64(kset[i])
	}
	ioprio := got.OwnIOPrio()
	slice := got.Slice
	if s.SliceNS == 0 {
		slice = 0 // the kernel's default: this host's
	}
	for _, c := range []struct {
		attr      string
		want, got string
	}{
		{"time slice", strconv.FormatUint(s.SliceNS, 10), strconv.FormatUint(slice, 10)},
		{"scheduling policy", fmt.Sprintf("%d priority %d reset-on-fork %t", s.Policy, s.Priority, s.ResetOnFork),
			fmt.Sprintf("%d priority %d reset-on-fork %t", got.Policy, got.Priority, got.ResetOnFork)},
		{"nice", strconv.Itoa(s.Nice), strconv.Itoa(got.Nice)},
		{"CPU affinity", core.CPUList(s.Affinity), core.CPUList(got.Affinity)},
		{"timer slack", strconv.FormatUint(s.TimerSlackNS, 10), strconv.FormatUint(got.TimerSlack, 10)},
		{"I/O priority", fmt.Sprintf("%#x", s.IOPrio), fmt.Sprintf("%#x", ioprio)},
	} {
		if c.want != c.got {
			return &AttrError{PID: r.pid, TID: tid, Attr: c.attr, Want: c.want, Got: c.got}
		}
	}
	return nil
}
