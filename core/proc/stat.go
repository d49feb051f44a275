package proc

import (
	"bytes"
	"errors"
)

// PF_KTHREAD is the per-task flag of a kernel thread (include/linux/sched.h),
// bit 21 of the flags field of /proc/PID/stat.
const PF_KTHREAD = 0x00200000

// PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE: both are set on a thread that
// made itself an I/O flusher (PR_SET_IO_FLUSHER), in the flags field of
// /proc/PID/task/TID/stat (the same bits since Linux 5.8, which added the
// prctl).
const (
	PF_MEMALLOC_NOIO  = 0x00080000
	PF_LOCAL_THROTTLE = 0x00100000
)

// Stat is /proc/PID/stat or /proc/PID/task/TID/stat (proc(5) field numbers in
// the comments). Address fields (25-27, 44-50) read 0 for a process whose
// memory is gone (zombie, kernel thread) or when the reader may not ptrace it.
type Stat struct {
	PID        int    // 1
	Comm       string // 2, raw: may hold spaces, parentheses and newlines
	State      byte   // 3: R S D T t Z X I ...
	PPID       int    // 4
	PGRP       int    // 5
	Session    int    // 6
	TTYNr      int    // 7
	TPGID      int    // 8
	Flags      uint64 // 9, PF_* flags
	NumThreads int    // 20
	StartTime  uint64 // 22, clock ticks after boot
	VSize      uint64 // 23, bytes
	RSS        int64  // 24, pages
	ExitSignal int    // 38
	StartCode  uint64 // 26
	EndCode    uint64 // 27
	StartStack uint64 // 28
	StartData  uint64 // 45
	EndData    uint64 // 46
	StartBrk   uint64 // 47
	ArgStart   uint64 // 48
	ArgEnd     uint64 // 49
	EnvStart   uint64 // 50
	EnvEnd     uint64 // 51

	// Additions.
	Utime, Stime uint64 // 14, 15, clock ticks
	Priority     int    // 18
	Nice         int    // 19
	Processor    int    // 39, CPU last run on
	RTPriority   uint32 // 40
	Policy       uint32 // 41, SCHED_*
	ExitCode     int    // 52, as waitpid reports it; 0 unless a zombie
}

// statFields is the number of fields of stat on Linux 3.5 and later.
const statFields = 52

// ParseStat parses /proc/PID/stat. The comm field (2) is whatever the task
// named itself and may contain spaces, parentheses and newlines, so it is
// taken between the first '(' and the last ')'.
func ParseStat(data []byte) (*Stat, error) {
	return parseStat(data, "stat")
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	return readStat(pidPath(pid, "stat"))
}

// ReadTaskStat reads /proc/PID/task/TID/stat.
func ReadTaskStat(pid, tid int) (*Stat, error) {
	return readStat(taskPath(pid, tid, "stat"))
}

func readStat(path string) (*Stat, error) {
	data, err := readFile(path, 512)
	if err != nil {
		return nil, err
	}
	return parseStat(data, path)
}

// IsKernelThread reports whether pid is a kernel thread (PF_KTHREAD).
func IsKernelThread(pid int) (bool, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return false, err
	}
	return st.Flags&PF_KTHREAD != 0, nil
}

// ThreadState returns the state letter (field 3) of thread tid of pid.
func ThreadState(pid, tid int) (byte, error) {
	st, err := ReadTaskStat(pid, tid)
	if err != nil {
		return 0, err
	}
	return st.State, nil
}

func parseStat(data []byte, file string) (*Stat, error) {
	open := bytes.IndexByte(data, '(')
	closing := bytes.LastIndexByte(data, ')')
	if open < 0 || closing < open {
		return nil, parseErr(file, 0, "comm", data, errors.New("no (comm)"))
	}
	st := &Stat{Comm: string(data[open+1 : closing])}
	pid, err := parseInt(trimSpace(data[:open]), bitsInt)
	if err != nil {
		return nil, parseErr(file, 0, "pid", data[:open], err)
	}
	st.PID = int(pid)

	// Fields 3 and on, single spaces between them.
	rest := data[closing+1:]
	if len(rest) > 0 && rest[len(rest)-1] == '\n' {
		rest = rest[:len(rest)-1]
	}
	var f [statFields + 1][]byte // f[i] is field i; 1 and 2 unused
	n := 2
	for n < statFields {
		var field []byte
		field, rest = nextField(rest)
		if len(field) == 0 {
			break
		}
		n++
		f[n] = field
	}
	// Fields 39-52 came with Linux 2.6 to 3.5; require what every
	// supported kernel prints.
	if n < statFields {
		return nil, parseErr(file, 0, statName(n+1), nil, errMissing)
	}

	if len(f[3]) != 1 {
		return nil, parseErr(file, 0, "state", f[3], errSyntax)
	}
	st.State = f[3][0]

	ints := []struct {
		i   int
		dst *int
	}{
		{4, &st.PPID}, {5, &st.PGRP}, {6, &st.Session}, {7, &st.TTYNr},
		{8, &st.TPGID}, {18, &st.Priority}, {19, &st.Nice},
		{20, &st.NumThreads}, {38, &st.ExitSignal}, {39, &st.Processor},
		{52, &st.ExitCode},
	}
	for _, x := range ints {
		v, err := parseInt(f[x.i], bitsInt)
		if err != nil {
			return nil, parseErr(file, 0, statName(x.i), f[x.i], err)
		}
		*x.dst = int(v)
	}
	uints := []struct {
		i   int
		dst *uint64
	}{
		{9, &st.Flags}, {14, &st.Utime}, {15, &st.Stime},
		{22, &st.StartTime}, {23, &st.VSize},
		{26, &st.StartCode}, {27, &st.EndCode}, {28, &st.StartStack},
		{45, &st.StartData}, {46, &st.EndData}, {47, &st.StartBrk},
		{48, &st.ArgStart}, {49, &st.ArgEnd}, {50, &st.EnvStart}, {51, &st.EnvEnd},
	}
	for _, x := range uints {
		v, err := parseDec(f[x.i])
		if err != nil {
			return nil, parseErr(file, 0, statName(x.i), f[x.i], err)
		}
		*x.dst = v
	}
	for _, x := range []struct {
		i   int
		dst *uint32
	}{{40, &st.RTPriority}, {41, &st.Policy}} {
		v, err := parseUintBits(f[x.i], 10, 32)
		if err != nil {
			return nil, parseErr(file, 0, statName(x.i), f[x.i], err)
		}
		*x.dst = uint32(v)
	}
	rss, err := parseInt(f[24], bitsInt64)
	if err != nil {
		return nil, parseErr(file, 0, statName(24), f[24], err)
	}
	st.RSS = rss
	return st, nil
}

// statNames are the proc(5) names of the stat fields, 1-based.
var statNames = [...]string{"", "pid", "comm", "state", "ppid", "pgrp",
	"session", "tty_nr", "tpgid", "flags", "minflt", "cminflt", "majflt",
	"cmajflt", "utime", "stime", "cutime", "cstime", "priority", "nice",
	"num_threads", "itrealvalue", "starttime", "vsize", "rss", "rsslim",
	"startcode", "endcode", "startstack", "kstkesp", "kstkeip", "signal",
	"blocked", "sigignore", "sigcatch", "wchan", "nswap", "cnswap",
	"exit_signal", "processor", "rt_priority", "policy",
	"delayacct_blkio_ticks", "guest_time", "cguest_time", "start_data",
	"end_data", "start_brk", "arg_start", "arg_end", "env_start", "env_end",
	"exit_code"}

func statName(i int) string {
	if i > 0 && i < len(statNames) {
		return statNames[i]
	}
	return "field " + string(rune('0'+i/10)) + string(rune('0'+i%10))
}
