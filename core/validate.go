package core

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
)

// Bounds of the values a restore acts on. A value outside them is refused
// by Validate, before anything is created, instead of failing (or worse,
// doing something else) once the process exists.
const (
	// MaxPID bounds PIDs and TIDs (PID_MAX_LIMIT, 4M on 64-bit).
	MaxPID = 1 << 22
	// MaxFD bounds fd numbers: fs.nr_open can be raised no higher
	// (sysctl_nr_open_max on 64-bit). The restore also checks this host's
	// fs.nr_open.
	MaxFD = 1<<31 - 64
	// MaxInotifyWD bounds inotify watch descriptors: a restore makes a gap
	// of n descriptors with n inotify_add_watch calls (~4 µs each, so the
	// bound costs ~4 s at most).
	MaxInotifyWD = 1 << 20
	// MaxAuxvWords is the largest auxiliary vector PR_SET_MM_MAP takes on
	// x86-64 (AT_VECTOR_SIZE, 2*(3+22+1) words in Linux 6.12+).
	MaxAuxvWords = 52
	// MaxGroups is NGROUPS_MAX.
	MaxGroups = 65536
	// MaxSignals bounds pending signals and POSIX timers of one process.
	MaxSignals = 1 << 16
	// maxList bounds the other lists of a process (areas, fds, threads,
	// epoll registrations).
	maxList = 1 << 22
	// userTop is the end of the x86-64 user address space.
	userTop = 1 << 47
	// nRlimits is RLIM_NLIMITS.
	nRlimits = 16
	// sigevSignal, sigevNone and sigevThreadID are the sigev_notify values
	// a POSIX timer of an image may have.
	sigevSignal, sigevNone, sigevThreadID = 0, 1, 4
	// siginfoSize is sizeof(siginfo_t).
	siginfoSize = 128
	// noID is (uid_t)-1, which setresuid takes as "unchanged".
	noID = ^uint32(0)
)

// posixTimerClocks are the clocks timer_create takes: REALTIME,
// MONOTONIC, the CPU clocks, BOOTTIME, the alarm clocks, TAI (the raw and
// coarse clocks have no timers).
var posixTimerClocks = map[int]bool{0: true, 1: true, 2: true, 3: true, 7: true, 8: true, 9: true, 11: true}

// timerfdClocks are the clocks timerfd_create takes.
var timerfdClocks = map[int]bool{0: true, 1: true, 7: true, 8: true, 9: true}

// sigaltstack: SS_DISABLE, and MINSIGSTKSZ.
const (
	ssDisable   = 2
	minSigStkSz = 2048
)

// validZombieStatus checks a zombie's wait status: an exit code, or a
// signal whose default action ends the process (the restore sends it).
func validZombieStatus(st int) error {
	if st < 0 || st > 0xffff {
		return fmt.Errorf("wait status %#x", st)
	}
	sig := st & 0x7f
	if sig == 0 {
		if st&0xff != 0 {
			return fmt.Errorf("wait status %#x", st)
		}
		return nil
	}
	if sig > 64 || sig >= 17 && sig <= 23 || sig == 28 { // SIGCHLD..SIGURG, SIGWINCH
		return fmt.Errorf("wait status %#x: signal %d does not end a process", st, sig)
	}
	return nil
}

// madviseRestored is the advice a restore re-applies (MADV_DONTFORK,
// DONTDUMP, HUGEPAGE, NOHUGEPAGE, WIPEONFORK, MERGEABLE): nothing that
// would drop the contents just written (MADV_DONTNEED, REMOVE, FREE...).
var madviseRestored = map[int]bool{10: true, 16: true, 14: true, 15: true, 18: true, 12: true}

// ErrBadPath: a path of the image is not absolute and clean, holds a NUL
// byte or is longer than PATH_MAX. The restore opens these paths, binds and
// connects to them: a relative one ("../../etc/shadow") would be resolved
// against the restorer's own working directory.
var ErrBadPath = errors.New("path is not absolute and clean")

// validPath checks a path of the dumping host the restore opens: absolute,
// clean (as the kernel reports paths: no "..", ".", "//" or trailing
// slash), no NUL byte, shorter than PATH_MAX.
func validPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 || len(p) >= 4096 || filepath.Clean(p) != p {
		return fmt.Errorf("%w: %q", ErrBadPath, p)
	}
	return nil
}

// ValidPath is the check of every path of the dumping host a restore
// opens, binds or connects to (executable, directories, mapped and open
// files, deleted files' directories, watches, unix socket files and
// peers): absolute, clean, no NUL byte, shorter than PATH_MAX.
func ValidPath(p string) error { return validPath(p) }

// validFileRef checks the path of a file reference: a deleted file's path
// too (its copy is made in the same directory), but not a memfd's
// ("/memfd:NAME", a name, never opened as a path).
func validFileRef(f *FileRef) error {
	if f.SHA256 != "" {
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("file %q: content hash %q is not a hex SHA-256", f.Path, f.SHA256)
		}
	}
	if name, ok := strings.CutPrefix(f.Path, "/memfd:"); ok && f.Deleted {
		if strings.IndexByte(name, 0) >= 0 {
			return fmt.Errorf("%w: %q", ErrBadPath, f.Path)
		}
		return nil
	}
	return validPath(f.Path)
}

// maxPackets caps the packets of a pipe (a pipe holds at most 1 MiB by
// default, in buffers of a page or more); maxPacket the length of one (a
// page: a longer write is split into page-long packets).
const (
	maxPackets = 1 << 20
	maxPacket  = 64 << 10
)

// validExtents checks the data extents of a sparse file: in order, not
// overlapping, inside its size.
func validExtents(f *FileRef) error {
	if len(f.Extents) > 0 && f.Blob == "" {
		return errors.New("extents of a file without its contents")
	}
	end := int64(0)
	for _, e := range f.Extents {
		if e.Off < end || e.Len <= 0 || e.Off > f.Size || e.Len > f.Size-e.Off {
			return fmt.Errorf("file extent %d+%d out of order or outside its %d bytes", e.Off, e.Len, f.Size)
		}
		end = e.Off + e.Len
	}
	return nil
}

// validSockName checks a unix socket address that is a path (an abstract
// one starts with a NUL byte).
func validSockName(name []byte) error {
	if len(name) == 0 || name[0] == 0 {
		return nil
	}
	return validPath(string(name))
}

// validateState checks the values of a live process that the restore
// hands to the kernel, each against what the kernel takes.
func validateState(p *Process) error {
	if p.PPID < 0 || p.PPID > MaxPID || p.PGID < 0 || p.PGID > MaxPID || p.SID < 0 || p.SID > MaxPID {
		return fmt.Errorf("ppid %d, pgid %d, sid %d out of range", p.PPID, p.PGID, p.SID)
	}
	if err := validPath(p.Exe.Path); err != nil {
		return fmt.Errorf("executable: %w", err)
	}
	if err := validPath(p.Cwd); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if err := validPath(p.Root); err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	if p.Umask > 0o777 {
		return fmt.Errorf("umask %#o", p.Umask)
	}
	// personality(0xffffffff) queries instead of setting.
	if p.MlockAll != 0 && p.MlockAll != MclFuture && p.MlockAll != MclFuture|MclOnfault {
		return fmt.Errorf("mlockall flags %#x (MCL_FUTURE, with MCL_ONFAULT or not)", p.MlockAll)
	}
	if p.Personality >= 0xffffffff {
		return fmt.Errorf("personality %#x", p.Personality)
	}
	if a := p.Attrs; a != nil {
		if a.OOMScoreAdj < -1000 || a.OOMScoreAdj > 1000 {
			return fmt.Errorf("oom_score_adj %d out of -1000..1000", a.OOMScoreAdj)
		}
		if a.THPDisable != 0 && a.THPDisable != THPDisableAll && a.THPDisable != THPDisableExceptAdvised {
			return fmt.Errorf("THP disable %d (0, 1 or 3)", a.THPDisable)
		}
		if a.Membarrier&^MembarrierRegistrations != 0 || a.Membarrier < 0 {
			return fmt.Errorf("membarrier registrations %#x", a.Membarrier)
		}
		if f := a.CoredumpFilter; f != nil && *f > MaxCoredumpFilter {
			return fmt.Errorf("coredump filter %#x (at most %#x)", *f, MaxCoredumpFilter)
		}
		// PR_SET_MDWE takes NO_INHERIT only with REFUSE_EXEC_GAIN.
		if a.MDWE != 0 && a.MDWE != 1 && a.MDWE != 3 {
			return fmt.Errorf("memory-deny-write-execute flags %#x", a.MDWE)
		}
	}
	if err := validateCreds(&p.Creds); err != nil {
		return err
	}
	if err := validateCgroups(p.Cgroups); err != nil {
		return err
	}
	for _, t := range p.Threads {
		if err := validateCgroups(t.Cgroups); err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
		if t.Creds != nil {
			if err := validateCreds(t.Creds); err != nil {
				return fmt.Errorf("thread %d: %w", t.TID, err)
			}
		}
	}
	seen := map[int]bool{}
	for _, l := range p.Rlimits {
		if l.Resource < 0 || l.Resource >= nRlimits || seen[l.Resource] {
			return fmt.Errorf("rlimit resource %d unknown or listed twice", l.Resource)
		}
		seen[l.Resource] = true
		if l.Cur > l.Max {
			return fmt.Errorf("rlimit %d: soft limit %d above hard limit %d", l.Resource, l.Cur, l.Max)
		}
	}
	clear(seen)
	for _, it := range p.Itimers {
		if it.Which < 0 || it.Which > 2 || seen[it.Which] {
			return fmt.Errorf("itimer %d unknown or listed twice", it.Which)
		}
		seen[it.Which] = true
		if it.IntervalUS < 0 || it.RemainingUS < 0 {
			return fmt.Errorf("itimer %d: negative time (%d µs interval, %d µs left)", it.Which, it.IntervalUS, it.RemainingUS)
		}
	}
	if len(p.PosixTimers) > MaxSignals {
		return fmt.Errorf("%d POSIX timers, at most %d", len(p.PosixTimers), MaxSignals)
	}
	tids := map[int]bool{}
	for _, t := range p.Threads {
		tids[t.TID] = true
	}
	clear(seen)
	for _, t := range p.PosixTimers {
		if t.ID < 0 || t.ID > 1<<31-1 || seen[t.ID] {
			return fmt.Errorf("POSIX timer %d out of range or listed twice", t.ID)
		}
		seen[t.ID] = true
		switch t.Notify {
		case sigevNone:
		case sigevSignal, sigevThreadID:
			if t.Signo < 1 || t.Signo > 64 {
				return fmt.Errorf("POSIX timer %d: signal %d", t.ID, t.Signo)
			}
			if t.Notify == sigevThreadID && !tids[t.TID] {
				return fmt.Errorf("POSIX timer %d: notifies thread %d, not one of the process", t.ID, t.TID)
			}
		default:
			return fmt.Errorf("POSIX timer %d: notification %d", t.ID, t.Notify)
		}
		if t.ValueNS < 0 || t.IntervalNS < 0 {
			return fmt.Errorf("POSIX timer %d: negative time", t.ID)
		}
		// The clocks timer_create takes; a negative one is a CPU clock.
		if t.Clock >= 0 && !posixTimerClocks[t.Clock] || t.Clock < -(1<<31) {
			return fmt.Errorf("POSIX timer %d: clock %d", t.ID, t.Clock)
		}
	}
	if err := validateMM(&p.MM); err != nil {
		return err
	}
	if len(p.SharedPending) > MaxSignals {
		return fmt.Errorf("%d pending signals, at most %d", len(p.SharedPending), MaxSignals)
	}
	for _, si := range p.SharedPending {
		if err := validSiginfo(si); err != nil {
			return err
		}
	}
	if err := validateSeccomp(p); err != nil {
		return err
	}
	for _, t := range p.Threads {
		switch t.Restart {
		case "", "restart", "eintr":
		default:
			return fmt.Errorf("thread %d: restart %q", t.TID, t.Restart)
		}
		switch t.RestartCode {
		case 0:
		case 512, 513, 514:
			if t.Restart != "restart" {
				return fmt.Errorf("thread %d: restart code %d without a call to restart", t.TID, t.RestartCode)
			}
		default:
			return fmt.Errorf("thread %d: restart code %d", t.TID, t.RestartCode)
		}
		// set_robust_list takes only sizeof(struct robust_list_head).
		if t.RobustList != 0 && t.RobustLen != 24 {
			return fmt.Errorf("thread %d: robust list of length %d", t.TID, t.RobustLen)
		}
		if t.AltStack.Flags&ssDisable == 0 && t.AltStack.SP != 0 && (t.AltStack.Size < minSigStkSz || t.AltStack.Size > 1<<40) {
			return fmt.Errorf("thread %d: signal stack of %d bytes", t.TID, t.AltStack.Size)
		}
		if err := validateRegs(&t.Regs); err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
		// The legacy area and the header, at least (the kernel checks the
		// rest against this CPU).
		if n := len(t.Xstate); n != 0 && n < 512+64 {
			return fmt.Errorf("thread %d: xstate of %d bytes", t.TID, n)
		}
		if t.Sched != nil {
			if err := validateSched(t.Sched); err != nil {
				return fmt.Errorf("thread %d: %w", t.TID, err)
			}
		}
		if len(t.Pending) > MaxSignals {
			return fmt.Errorf("thread %d: %d pending signals, at most %d", t.TID, len(t.Pending), MaxSignals)
		}
		for _, si := range t.Pending {
			if err := validSiginfo(si); err != nil {
				return fmt.Errorf("thread %d: %w", t.TID, err)
			}
		}
	}
	return nil
}

// MaxCPUs bounds an affinity mask: a dump reads masks of 1024 CPUs (the
// size of glibc's cpu_set_t).
const MaxCPUs = 1024

// A thread's own time slice is clamped to 0.1..100 ms by the kernel.
const (
	MinSliceNS = 100_000
	MaxSliceNS = 100_000_000
)

// validateSched checks what sched_setattr, setpriority,
// sched_setaffinity, timerslack_ns and PR_SET_PDEATHSIG take.
func validateSched(s *Sched) error {
	switch s.Policy {
	case SchedFIFO, SchedRR:
		if s.Priority < 1 || s.Priority > 99 {
			return fmt.Errorf("real-time priority %d out of 1..99", s.Priority)
		}
		if s.TimerSlackNS != 0 {
			return fmt.Errorf("real-time thread with timer slack %d ns", s.TimerSlackNS)
		}
	case SchedOther, SchedBatch, SchedIdle:
		if s.Priority != 0 {
			return fmt.Errorf("priority %d for policy %d", s.Priority, s.Policy)
		}
		if s.TimerSlackNS == 0 {
			return errors.New("timer slack 0 for a thread that is not real-time")
		}
	default:
		return fmt.Errorf("scheduling policy %d", s.Policy)
	}
	if s.SliceNS != 0 && (s.Policy == SchedFIFO || s.Policy == SchedRR || s.SliceNS < MinSliceNS || s.SliceNS > MaxSliceNS) {
		return fmt.Errorf("time slice %d ns (%d..%d, fair and idle policies only)", s.SliceNS, MinSliceNS, MaxSliceNS)
	}
	if s.Nice < -20 || s.Nice > 19 {
		return fmt.Errorf("nice %d out of -20..19", s.Nice)
	}
	if len(s.Affinity) == 0 || len(s.Affinity) > MaxCPUs/64 {
		return fmt.Errorf("affinity mask of %d words", len(s.Affinity))
	}
	var any uint64
	for _, w := range s.Affinity {
		any |= w
	}
	if any == 0 {
		return errors.New("empty affinity mask")
	}
	if s.TimerSlackNS > 1<<62 {
		return fmt.Errorf("timer slack %d ns", s.TimerSlackNS)
	}
	if class := s.IOPrio >> 13; s.IOPrio != 0 && (s.IOPrio < 0 || class < 1 || class > 3) {
		return fmt.Errorf("I/O priority %#x", s.IOPrio)
	}
	if s.PdeathSignal < 0 || s.PdeathSignal > 64 {
		return fmt.Errorf("parent-death signal %d", s.PdeathSignal)
	}
	if s.MCEKill != 0 && s.MCEKill != MCEKillLate && s.MCEKill != MCEKillEarly {
		return fmt.Errorf("memory-error kill policy %d", s.MCEKill)
	}
	return nil
}

// Set tells whether the mm fields were collected (a process always has
// code).
func (m *MM) Set() bool { return m.EndCode != 0 || len(m.Auxv) != 0 }

// validateRegs checks the registers the kernel would refuse to set (or set
// otherwise) for a 64-bit user process: its code and stack segments, data
// selectors of user privilege, and TLS bases in user space.
func validateRegs(r *Regs) error {
	const userCS, userDS = 0x33, 0x2b // __USER_CS, __USER_DS
	if r.CS == 0 && r.SS == 0 && r.RIP == 0 {
		return nil // not collected yet (a live migration's first layouts)
	}
	if r.CS != userCS || r.SS != userDS {
		return fmt.Errorf("segments cs %#x ss %#x, not a 64-bit user process's", r.CS, r.SS)
	}
	for _, sel := range []uint64{r.DS, r.ES, r.FS, r.GS} {
		if sel > 0xffff || sel != 0 && sel&3 != 3 {
			return fmt.Errorf("segment selector %#x", sel)
		}
	}
	if r.FSBase >= userTop || r.GSBase >= userTop {
		return fmt.Errorf("fs base %#x, gs base %#x beyond user space", r.FSBase, r.GSBase)
	}
	return nil
}

func validSiginfo(si Siginfo) error {
	if si.Signo < 1 || si.Signo > 64 || len(si.Raw) != siginfoSize {
		return fmt.Errorf("pending signal %d with %d bytes of siginfo", si.Signo, len(si.Raw))
	}
	return nil
}

// validateMM checks what PR_SET_MM_MAP checks: every address in user
// space, the pairs in order, and an auxiliary vector it takes. A zero MM
// is "not collected yet" (a live migration's first layouts); a restore
// refuses it (MM.Set).
func validateMM(m *MM) error {
	if !m.Set() {
		return nil
	}
	for _, a := range []uint64{m.StartCode, m.EndCode, m.StartData, m.EndData, m.StartBrk, m.Brk,
		m.StartStack, m.ArgStart, m.ArgEnd, m.EnvStart, m.EnvEnd} {
		if a >= userTop {
			return fmt.Errorf("mm: address %#x beyond user space", a)
		}
	}
	if m.StartCode >= m.EndCode || m.StartData > m.EndData || m.StartBrk > m.Brk ||
		m.ArgStart > m.ArgEnd || m.EnvStart > m.EnvEnd {
		return errors.New("mm: code, data, brk, argument or environment bounds out of order")
	}
	n := len(m.Auxv)
	if n%2 != 0 || n > MaxAuxvWords || (n > 0 && (m.Auxv[n-2] != 0 || m.Auxv[n-1] != 0)) {
		return fmt.Errorf("auxiliary vector of %d words not ending in AT_NULL (at most %d)", n, MaxAuxvWords)
	}
	return nil
}

// maxSeals holds every F_SEAL_* bit: SEAL, SHRINK, GROW, WRITE,
// FUTURE_WRITE, EXEC.
const maxSeals = 0x3f

// validateVMA checks the values of an area the restore maps.
func validateVMA(v *VMA) error {
	if v.Prot&^7 != 0 {
		return fmt.Errorf("protection %#x", v.Prot)
	}
	const mapShared, mapPrivate, mapGrowsdown, mapNoreserve = 1, 2, 0x100, 0x4000
	if sp := v.Flags &^ (mapGrowsdown | mapNoreserve); sp != mapShared && sp != mapPrivate {
		return fmt.Errorf("flags %#x (one of MAP_SHARED, MAP_PRIVATE, and MAP_GROWSDOWN, MAP_NORESERVE)", v.Flags)
	}
	if v.Offset%4096 != 0 || v.Offset > 1<<62 {
		return fmt.Errorf("file offset %#x", v.Offset)
	}
	if v.File != nil {
		if err := validExtents(v.File); err != nil {
			return err
		}
		if err := validFileRef(v.File); err != nil {
			return err
		}
	}
	if v.Seals&^maxSeals != 0 || (v.Seals != 0 && (v.File == nil || !strings.HasPrefix(v.File.Path, "/memfd:"))) {
		return fmt.Errorf("seals %#x (F_SEAL_* of a mapped memfd)", v.Seals)
	}
	if v.MayWrite && v.Kind != VMASharedFile && v.Kind != VMASysV {
		return fmt.Errorf("may_write on a %s area (shared file and System V mappings only)", v.Kind)
	}
	if v.Lock != "" && v.Lock != LockAll && v.Lock != LockOnFault {
		return fmt.Errorf("lock %q (one of %q and %q)", v.Lock, LockAll, LockOnFault)
	}
	if len(v.Madvise) > len(madviseRestored) {
		return fmt.Errorf("%d madvise advices", len(v.Madvise))
	}
	for _, a := range v.Madvise {
		if !madviseRestored[a] {
			return fmt.Errorf("madvise advice %d is not one a restore re-applies", a)
		}
	}
	return nil
}

// validateFD checks the values of an fd the restore opens, beyond its
// number and blobs.
func validateFD(f *FD) error {
	if f.Pos < 0 {
		return fmt.Errorf("offset %d", f.Pos)
	}
	if err := validateLocks(f); err != nil {
		return err
	}
	if f.Seals&^maxSeals != 0 || (f.Seals != 0 && f.Kind != FDMemfd) {
		return fmt.Errorf("seals %#x (F_SEAL_* of a memfd)", f.Seals)
	}
	if f.File != nil {
		if err := validExtents(f.File); err != nil {
			return err
		}
	}
	if len(f.Packets) > 0 && f.Data == "" || len(f.Packets) > maxPackets {
		return fmt.Errorf("%d packets queued in a pipe, with no data or more than %d", len(f.Packets), maxPackets)
	}
	for _, n := range f.Packets {
		if n <= 0 || n > maxPacket {
			return fmt.Errorf("a %d-byte packet queued in a pipe (1 to %d)", n, maxPacket)
		}
	}
	if o := f.Owner; o != nil && (o.Type < 0 || o.Type > 2 || o.PID <= 0 || o.PID > MaxPID) {
		return fmt.Errorf("fd owner %d of type %d", o.PID, o.Type)
	}
	if f.Signal < 0 || f.Signal > 64 {
		return fmt.Errorf("F_SETSIG signal %d", f.Signal)
	}
	switch f.Kind {
	case FDFile, FDDir, FDChar, FDFIFO, FDMemfd:
		if f.File == nil {
			return fmt.Errorf("%s without its file", f.Kind)
		}
		if f.Kind != FDMemfd {
			if err := validFileRef(f.File); err != nil {
				return err
			}
		}
	case FDPipe, FDSocket, FDEpoll, FDSignalfd:
	case FDExternal:
		if !ValidExternal(f.External) {
			return fmt.Errorf("external object %q", f.External)
		}
	case FDPidfd:
		if f.PidfdPID <= 0 || f.PidfdPID > MaxPID {
			return fmt.Errorf("pidfd of pid %d", f.PidfdPID)
		}
	case FDEventfd:
		// An eventfd counter holds at most 2^64-2.
		if f.Count == ^uint64(0) {
			return fmt.Errorf("eventfd count %#x", f.Count)
		}
	case FDTimerfd:
		if t := f.Timerfd; t == nil || t.ValueNS < 0 || t.IntervalNS < 0 || !timerfdClocks[t.Clock] {
			return errors.New("timerfd without its state, with a negative time or a clock it cannot have")
		}
	case FDInotify:
		if len(f.Inotify) > MaxInotifyWD {
			return fmt.Errorf("%d inotify watches", len(f.Inotify))
		}
		wds := map[int]bool{}
		for _, w := range f.Inotify {
			if w.WD < 1 || w.WD > MaxInotifyWD || wds[w.WD] {
				return fmt.Errorf("inotify watch descriptor %d out of range (1..%d) or listed twice", w.WD, MaxInotifyWD)
			}
			wds[w.WD] = true
			if err := validPath(w.Path); err != nil {
				return fmt.Errorf("inotify watch %d: %w", w.WD, err)
			}
		}
	default:
		return fmt.Errorf("unknown kind %q", f.Kind)
	}
	if (f.Kind == FDExternal) != (f.External != "") {
		return errors.New("an external object named on an fd of another kind, or an external fd without it")
	}
	if (f.Kind == FDSocket) != (f.Socket != nil) {
		return errors.New("socket state on a non-socket fd, or a socket without it")
	}
	if len(f.Epoll) > maxList {
		return fmt.Errorf("%d epoll registrations", len(f.Epoll))
	}
	for _, e := range f.Epoll {
		if e.FD < 0 || e.FD >= MaxFD {
			return fmt.Errorf("epoll registration of fd %d", e.FD)
		}
	}
	if s := f.Socket; s != nil {
		if len(s.Name) > 108 || len(s.PeerName) > 108 {
			return errors.New("unix socket name longer than sun_path")
		}
		// Bound to s.File.Path, else to s.Name as it is; connected
		// (datagrams) to s.PeerName.
		if s.File != nil {
			if err := validPath(s.File.Path); err != nil {
				return fmt.Errorf("unix socket file: %w", err)
			}
		} else if err := validSockName(s.Name); err != nil {
			return fmt.Errorf("unix socket name: %w", err)
		}
		if err := validSockName(s.PeerName); err != nil {
			return fmt.Errorf("unix socket peer: %w", err)
		}
		if s.Backlog < 0 || s.Backlog > 1<<20 {
			return fmt.Errorf("socket backlog %d", s.Backlog)
		}
		if len(s.Options) > 256 {
			return fmt.Errorf("%d socket options", len(s.Options))
		}
		if (s.Family == afNetlink) != (s.Netlink != nil) {
			return errors.New("netlink state on a socket of another family, or a netlink socket without it")
		}
		if n := s.Netlink; n != nil {
			if _, ok := NetlinkProtocols[s.Protocol]; !ok {
				return fmt.Errorf("netlink protocol %d", s.Protocol)
			}
			if err := n.Validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

// validateCreds checks credentials a restore hands to setresuid and
// friends: no -1 ("unchanged" to the kernel), at most NGROUPS_MAX groups.
func validateCreds(c *Creds) error {
	for _, id := range []uint32{c.UID[0], c.UID[1], c.UID[2], c.GID[0], c.GID[1], c.GID[2], c.FSUID, c.FSGID} {
		if id == noID {
			return errors.New("credentials hold uid or gid -1 (\"unchanged\" to the kernel)")
		}
	}
	if len(c.Groups) > MaxGroups {
		return fmt.Errorf("%d supplementary groups, at most %d", len(c.Groups), MaxGroups)
	}
	for _, g := range c.Groups {
		if g == noID {
			return errors.New("supplementary group -1")
		}
	}
	return nil
}

// MaxCgroupHierarchies bounds the cgroup hierarchies of a process: the
// kernel has at most 16 controllers, each in at most one v1 hierarchy, and
// named v1 hierarchies are rare.
const MaxCgroupHierarchies = 64

// validateCgroups checks cgroup places the restore writes a PID into:
// each hierarchy once, controllers as the kernel names them, and a path
// that is absolute and clean (it is opened below the hierarchy's mount,
// never above it).
func validateCgroups(cgs []Cgroup) error {
	if len(cgs) > MaxCgroupHierarchies {
		return fmt.Errorf("%d cgroup hierarchies, at most %d", len(cgs), MaxCgroupHierarchies)
	}
	seen := make(map[string]bool, len(cgs))
	for _, c := range cgs {
		if len(c.Controllers) > 256 || strings.Trim(c.Controllers, "abcdefghijklmnopqrstuvwxyz0123456789_,=.-") != "" {
			return fmt.Errorf("cgroup controllers %q", c.Controllers)
		}
		if seen[c.Controllers] {
			return fmt.Errorf("cgroup hierarchy %q listed twice", c.Controllers)
		}
		seen[c.Controllers] = true
		if err := validPath(c.Path); err != nil {
			return fmt.Errorf("cgroup %q: %w", c.Controllers, err)
		}
	}
	return nil
}

// MaxLocksPerFD bounds the file locks of one fd in an image.
const MaxLocksPerFD = 4096

// validateLocks checks the file locks a restore takes through fd f: only
// on a file (regular, or a directory for flock), of a kind it knows, with
// a range fcntl takes.
func validateLocks(f *FD) error {
	if len(f.Locks) == 0 {
		return nil
	}
	if len(f.Locks) > MaxLocksPerFD {
		return fmt.Errorf("%d file locks, at most %d", len(f.Locks), MaxLocksPerFD)
	}
	if f.Kind != FDFile && f.Kind != FDDir {
		return fmt.Errorf("file locks on a %s", f.Kind)
	}
	for _, l := range f.Locks {
		switch l.Kind {
		case LockFlock:
			if l.Start != 0 || l.Len != 0 {
				return fmt.Errorf("flock lock with a range %d+%d", l.Start, l.Len)
			}
		case LockPOSIX, LockOFD:
			if l.Start < 0 || l.Len < 0 || l.Start > math.MaxInt64-l.Len {
				return fmt.Errorf("%s lock on %d+%d", l.Kind, l.Start, l.Len)
			}
		default:
			return fmt.Errorf("file lock of kind %q", l.Kind)
		}
	}
	return nil
}

// validateSeccomp checks the seccomp filters of a process and the threads'
// modes: each filter a program CheckSeccompProg takes, stacked on one
// before it in the list, used by a thread, and no thread's chain longer
// than the kernel takes (MAX_INSNS_PER_PATH), so that a restore installs
// nothing unbounded.
func validateSeccomp(p *Process) error {
	fs := p.SeccompFilters
	if len(fs) > maxSeccompFilters {
		return fmt.Errorf("%d seccomp filters, at most %d", len(fs), maxSeccompFilters)
	}
	// path[i]: the instructions the kernel counts for the chain ending in i.
	path := make([]int, len(fs))
	for i, f := range fs {
		if f.Prev < -1 || f.Prev >= i {
			return fmt.Errorf("seccomp filter %d: stacked on filter %d, not one before it", i, f.Prev)
		}
		if err := CheckSeccompProg(f.Prog); err != nil {
			return fmt.Errorf("seccomp filter %d: %w", i, err)
		}
		path[i] = len(f.Prog) / 8
		if f.Prev >= 0 {
			path[i] += path[f.Prev] + seccompFilterCost
		}
		if path[i] > MaxSeccompPathInsns {
			return fmt.Errorf("seccomp filter %d: %d instructions in its chain, the kernel takes %d", i, path[i], MaxSeccompPathInsns)
		}
	}
	used := make([]bool, len(fs))
	for _, t := range p.Threads {
		s := t.Seccomp
		if s == nil {
			continue
		}
		switch s.Mode {
		case SeccompModeStrict:
			if s.Filter != -1 {
				return fmt.Errorf("thread %d: strict seccomp with filter %d", t.TID, s.Filter)
			}
		case SeccompModeFilter:
			if s.Filter < 0 || s.Filter >= len(fs) {
				return fmt.Errorf("thread %d: seccomp filter %d of %d", t.TID, s.Filter, len(fs))
			}
			for i := s.Filter; i >= 0 && !used[i]; i = fs[i].Prev {
				used[i] = true
			}
		default:
			return fmt.Errorf("thread %d: seccomp mode %d", t.TID, s.Mode)
		}
	}
	for i, u := range used {
		if !u {
			return fmt.Errorf("seccomp filter %d is no thread's", i)
		}
	}
	return nil
}

// ValidExternal says whether id names an object outside a dump as an
// image may: "pipe:[N]" or "socket:[N]", N a decimal inode number.
func ValidExternal(id string) bool {
	for _, kind := range []string{"pipe:[", "socket:["} {
		if n, ok := strings.CutPrefix(id, kind); ok {
			n, ok = strings.CutSuffix(n, "]")
			if !ok || n == "" || len(n) > 20 {
				return false
			}
			_, err := strconv.ParseUint(n, 10, 64)
			return err == nil
		}
	}
	return false
}
