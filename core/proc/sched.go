package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Sched is the scheduling state of one thread as the kernel reports it to
// another process: sched_getattr, getpriority, sched_getaffinity and
// /proc/TID/timerslack_ns.
type Sched struct {
	Policy      int // SCHED_* (6 is SCHED_DEADLINE)
	Priority    int // real-time priority, 0 for other policies
	ResetOnFork bool
	Nice        int      // -20..19, whatever the policy
	Affinity    []uint64 // CPU i in bit i%64 of word i/64, without trailing zero words
	TimerSlack  uint64   // ns
	// Slice is the time slice of a thread of a fair or idle policy
	// (sched_attr.sched_runtime, Linux 6.12+): the kernel's default, or
	// one of its own.
	Slice uint64 // ns
	// UtilMin and UtilMax are the utilization clamps, 0 and 0 on a kernel
	// without CONFIG_UCLAMP_TASK.
	UtilMin, UtilMax uint32
	// IOPrio is what ioprio_get tells: the I/O priority the thread set,
	// or the one its nice value and policy give it.
	IOPrio int
}

// ioprioWhoProcess is IOPRIO_WHO_PROCESS: a thread, by TID.
const ioprioWhoProcess = 1

// ReadSched reads the scheduling state of thread tid. Reading the timer
// slack of another process's thread needs CAP_SYS_NICE and ptrace access.
// Affinity masks of at most 1024 CPUs are read.
func ReadSched(tid int) (*Sched, error) {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return nil, fmt.Errorf("sched_getattr %d: %w", tid, err)
	}
	s := &Sched{Policy: int(attr.Policy), ResetOnFork: attr.Flags&unix.SCHED_FLAG_RESET_ON_FORK != 0}
	switch s.Policy {
	case unix.SCHED_FIFO, unix.SCHED_RR:
		s.Priority = int(attr.Priority)
	case unix.SCHED_DEADLINE:
	default:
		s.Slice = attr.Runtime
	}
	s.UtilMin, s.UtilMax = attr.Util_min, attr.Util_max
	// sched_getattr tells the nice value of fair policies only; a
	// real-time thread keeps one too, for when it leaves its policy. The
	// system call returns 20-nice.
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return nil, fmt.Errorf("getpriority %d: %w", tid, err)
	}
	s.Nice = 20 - prio
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity %d (more than %d CPUs?): %w", tid, len(set)*64, err)
	}
	n := len(set)
	for n > 1 && set[n-1] == 0 {
		n--
	}
	s.Affinity = make([]uint64, n)
	for i := range n {
		s.Affinity[i] = uint64(set[i])
	}
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if e != 0 {
		return nil, fmt.Errorf("ioprio_get %d: %w", tid, e)
	}
	s.IOPrio = int(r)
	// /proc/TID (not /proc/PID/task/TID, which has no such file) is the
	// thread's own entry.
	path := fmt.Sprintf("/proc/%d/timerslack_ns", tid)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if s.TimerSlack, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err != nil {
		return nil, &ParseError{File: path, Field: "timerslack_ns", Value: clip(string(b)), Err: err}
	}
	return s, nil
}

// I/O priority classes.
const (
	ioprioClassRT   = 1
	ioprioClassBE   = 2
	ioprioClassIdle = 3
)

// OwnIOPrio returns the I/O priority the thread set itself, 0 if none:
// ioprio_get reports 0 for a thread that did no I/O yet, else the class of
// its policy at the level of its nice value, if it set none. (One that set
// exactly that value counts as none.)
func (s *Sched) OwnIOPrio() int {
	if s.IOPrio == 0 {
		return 0
	}
	class := ioprioClassBE
	switch s.Policy {
	case unix.SCHED_IDLE:
		class = ioprioClassIdle
	case unix.SCHED_FIFO, unix.SCHED_RR:
		class = ioprioClassRT
	}
	if s.IOPrio == class<<13|(s.Nice+20)/5 {
		return 0
	}
	return s.IOPrio
}
