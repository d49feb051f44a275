package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ImageVersion is the version of the image metadata written by this build.
// A reader refuses any other version. Version 2 added Image.Blobs (the size
// and SHA-256 of every file under files/), the owners of files
// (FileRef.UID, GID), the securebits, no_new_privs and per-thread
// credentials, and Dumpable: a version 1 image cannot have its blobs
// checked, and restoring one would make its recreated files root's and
// lose the process's privilege limits. It is refused with ErrBadVersion:
// dump the process again.
const ImageVersion = 2

// Names of the files in an image directory.
const (
	MetaFile  = "image.json" // Image, JSON, written last
	PagesFile = "pages.img"  // pagestream of memory pages
	FilesDir  = "files"      // contents of deleted files, memfds, pipe buffers
	ImageKind = "migrate-image"
)

// Image is the metadata of a checkpoint: everything but page contents and
// blobs, which live in files next to it and are named by Blob entries.
type Image struct {
	Kind    string    `json:"kind"`    // always ImageKind
	Version int       `json:"version"` // ImageVersion
	Created time.Time `json:"created"`
	Host    string    `json:"host"`
	Kernel  string    `json:"kernel"` // uname release of the dumping host
	Arch    string    `json:"arch"`   // "amd64"

	// Pages describes the page stream file.
	Pages PagesInfo `json:"pages"`

	// Process is the process the dump was asked for (the root of the tree).
	// Its pages are in Pages.
	Process Process `json:"process"`
	// Tree holds the root's descendants, each after its parent, with their
	// own page streams (Process.Pages).
	Tree []Process `json:"tree,omitempty"`
	// Shm are the System V shared memory segments the processes attach
	// (areas of kind VMASysV), each once.
	Shm []ShmSegment `json:"shm,omitempty"`
	// Namespaces, if set, are the namespaces of its own the tree lived in
	// (a container whose init is the root), made anew by the restore.
	Namespaces *Namespaces `json:"namespaces,omitempty"`
	// NetLock names the nftables table (core/netlock) that keeps the
	// dumping host from answering the image's TCP connections and
	// listening ports; the restore removes it once the process runs.
	NetLock string `json:"net_lock,omitempty"`
	// Blobs are the files under FilesDir, by name (as Blob fields and
	// FD.Data name them): every one a process names is listed, and a
	// restore reads none whose size or hash differs.
	Blobs map[string]Blob `json:"blobs,omitempty"`
	// Clocks are the dumping host's clocks and the processes' time
	// namespace offsets at the freeze (nil: an image of a migrate older
	// than this field, which a restore refuses).
	Clocks *Clocks `json:"clocks,omitempty"`
	// CPU are the XSAVE features of the dumping CPU and of the processes
	// (nil: not recorded, by an older migrate or on another
	// architecture).
	CPU *CPUFeatures `json:"cpu,omitempty"`
	// Mounts is the processes' mount namespace when it was not the
	// dumping migrate's (see MountNS).
	Mounts *MountNS `json:"mounts,omitempty"`
	// CgroupLimits are the limits of the processes' cgroup v2 cgroups
	// (not the root's, not the dumping migrate's).
	CgroupLimits []CgroupLimits `json:"cgroup_limits,omitempty"`
}

// Blob is the size and SHA-256 (hex) of one file of the image.
type Blob struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// PagesInfo describes the page data of an image.
type PagesInfo struct {
	File  string `json:"file"`  // relative to the image directory
	Size  int64  `json:"size"`  // bytes in the file
	Pages uint64 `json:"pages"` // pages stored, zero pages included
	Codec string `json:"codec"` // codec used for page frames
	// Rounds is the number of rounds in the stream (pre-copy rounds plus
	// the final one). A page sent in several rounds counts in Pages once
	// per round; the newest copy wins.
	Rounds int `json:"rounds"`
}

// Process is one process of the image.
type Process struct {
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	PGID int    `json:"pgid"`
	SID  int    `json:"sid"`
	Comm string `json:"comm"`
	// Stopped is set if job control (SIGSTOP, SIGTSTP...) had the process
	// stopped: it comes back stopped.
	Stopped bool `json:"stopped,omitempty"`

	Exe     FileRef  `json:"exe"`
	Cmdline []string `json:"cmdline,omitempty"` // informational
	Cwd     string   `json:"cwd"`
	Root    string   `json:"root"`
	Umask   uint32   `json:"umask"`

	Personality uint64 `json:"personality"`
	Creds       Creds  `json:"creds"`
	// Cgroups is the process's place in each cgroup hierarchy (nil: not
	// recorded, by a migrate older than this field; a restore refuses
	// that rather than leave the process in the restorer's cgroups).
	Cgroups []Cgroup `json:"cgroups,omitempty"`
	// Attrs are the process-wide attributes of prctl, membarrier and
	// /proc (nil: not collected, as in a live migration's first layouts;
	// a restore refuses that).
	Attrs *ProcAttrs `json:"attrs,omitempty"`
	// Dumpable is prctl(PR_GET_DUMPABLE): 1 if the process's user may
	// trace it and its /proc files are the user's, 0 (or 2) if changing
	// credentials made it not dumpable.
	Dumpable int `json:"dumpable"`
	// Audit is the process's audit login uid and session id
	// (/proc/PID/loginuid, sessionid; 4294967295: unset), which a restored
	// process inherits from the restorer: nil if not recorded.
	Audit   *Audit   `json:"audit,omitempty"`
	Rlimits []Rlimit `json:"rlimits"`
	Itimers []Itimer `json:"itimers,omitempty"` // ITIMER_REAL, VIRTUAL, PROF
	// PosixTimers are the timers of timer_create(2), by ID.
	PosixTimers []PosixTimer `json:"posix_timers,omitempty"`

	MM   MM    `json:"mm"`
	VMAs []VMA `json:"vmas"`
	// MlockAll holds the mlockall(2) flags in effect for areas mapped
	// from now on: MCL_FUTURE, with MCL_ONFAULT or not; 0 if none.
	MlockAll int `json:"mlockall,omitempty"`

	Threads    []Thread    `json:"threads"`
	Sigactions []Sigaction `json:"sigactions"` // signals 1..64, index = signo-1
	// SharedPending are the process-wide pending signals.
	SharedPending []Siginfo `json:"shared_pending,omitempty"`
	// SeccompFilters are the seccomp filters of the threads (Thread.Seccomp
	// names them), each once however many threads share it.
	SeccompFilters []SeccompFilter `json:"seccomp_filters,omitempty"`

	FDs []FD `json:"fds"`

	// Pages describes the page stream of a process of Image.Tree (the
	// root's is Image.Pages).
	Pages *PagesInfo `json:"pages,omitempty"`
	// Zombie is set for a process of the tree that had exited and was
	// not yet reaped by its parent: nothing else of it is kept.
	Zombie *Zombie `json:"zombie,omitempty"`
}

// Cgroup is a place in one cgroup hierarchy, as a line of /proc/PID/cgroup
// gives it. The hierarchy is named by its controllers: "" for the unified
// (v2) hierarchy, "cpu,cpuacct" or "name=systemd" for a v1 one (hierarchy
// numbers differ from host to host). Path is from the hierarchy's root,
// which is also migrate's cgroup namespace's (a process in another cgroup
// namespace is refused).
type Cgroup struct {
	Controllers string `json:"controllers,omitempty"`
	Path        string `json:"path"`
}

// Audit is a process's audit identity.
type Audit struct {
	LoginUID  uint32 `json:"loginuid"`
	SessionID uint32 `json:"sessionid"`
}

// Zombie is how a zombie process of the tree ended.
type Zombie struct {
	ExitCode int `json:"exit_code"` // as wait(2) reports it: status<<8, or the signal
}

// FileRef names a file on the dumping host and how to check that the file
// found at restore time is the same one.
type FileRef struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Mode  uint32 `json:"mode"`
	// UID and GID own the file. A file the restore recreates (deleted
	// file, memfd) gets them back, and its set-id bits only with them.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	Dev uint64 `json:"dev,omitempty"`
	Ino uint64 `json:"ino,omitempty"`
	// Deleted is true when the file was unlinked while open; its contents
	// are then stored in Blob.
	Deleted bool   `json:"deleted,omitempty"`
	Blob    string `json:"blob,omitempty"`
	// Extents, when set, are the parts of a sparse file (a deleted file
	// or a memfd) that hold data, in order; Blob holds only their bytes,
	// one after the other, and the rest of the Size bytes are holes.
	Extents []Extent `json:"extents,omitempty"`
	// SHA256 is the hex SHA-256 of the contents of a file of code (the
	// executable, and every file mapped executable anywhere): a restore
	// takes the file found at Path when its contents are these, even if
	// its time differs (the same package installed on another host).
	// Empty: compared by size and time only.
	SHA256 string `json:"sha256,omitempty"`
}

// Extent is a range of a file that holds data (SEEK_DATA to SEEK_HOLE).
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// Creds are the process credentials.
type Creds struct {
	UID    [3]uint32 `json:"uid"` // real, effective, saved
	GID    [3]uint32 `json:"gid"`
	FSUID  uint32    `json:"fsuid"`
	FSGID  uint32    `json:"fsgid"`
	Groups []uint32  `json:"groups,omitempty"`
	CapInh uint64    `json:"cap_inh"`
	CapPrm uint64    `json:"cap_prm"`
	CapEff uint64    `json:"cap_eff"`
	CapBnd uint64    `json:"cap_bnd"`
	CapAmb uint64    `json:"cap_amb"`
	// Securebits are the SECBIT_* flags (prctl PR_GET_SECUREBITS).
	Securebits uint32 `json:"securebits,omitempty"`
	NoNewPrivs bool   `json:"no_new_privs,omitempty"`
}

// Equal tells whether c and o are the same credentials.
func (c *Creds) Equal(o *Creds) bool {
	if len(c.Groups) != len(o.Groups) {
		return false
	}
	for i := range c.Groups {
		if c.Groups[i] != o.Groups[i] {
			return false
		}
	}
	a, b := *c, *o
	a.Groups, b.Groups = nil, nil
	return reflect.DeepEqual(a, b)
}

// Rlimit is one resource limit.
type Rlimit struct {
	Resource int    `json:"resource"`
	Cur      uint64 `json:"cur"`
	Max      uint64 `json:"max"`
}

// Itimer is the state of one interval timer (getitimer).
type Itimer struct {
	Which       int   `json:"which"`
	IntervalUS  int64 `json:"interval_us"`
	RemainingUS int64 `json:"remaining_us"`
}

// PosixTimer is one timer of timer_create(2).
type PosixTimer struct {
	ID     int    `json:"id"`
	Clock  int    `json:"clock"`
	Signo  int    `json:"signo"`
	Value  uint64 `json:"sigev_value"`
	Notify int    `json:"notify"` // SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID
	TID    int    `json:"tid,omitempty"`
	// Time to the next expiry (0: disarmed) and the interval.
	ValueNS    int64 `json:"value_ns"`
	IntervalNS int64 `json:"interval_ns"`
}

// MM holds the fields of struct prctl_mm_map.
type MM struct {
	StartCode  uint64   `json:"start_code"`
	EndCode    uint64   `json:"end_code"`
	StartData  uint64   `json:"start_data"`
	EndData    uint64   `json:"end_data"`
	StartBrk   uint64   `json:"start_brk"`
	Brk        uint64   `json:"brk"`
	StartStack uint64   `json:"start_stack"`
	ArgStart   uint64   `json:"arg_start"`
	ArgEnd     uint64   `json:"arg_end"`
	EnvStart   uint64   `json:"env_start"`
	EnvEnd     uint64   `json:"env_end"`
	Auxv       []uint64 `json:"auxv"`
}

// VMA kinds.
const (
	VMAAnon       = "anon"        // private anonymous (heap, stack, malloc)
	VMASharedAnon = "shared-anon" // MAP_SHARED|MAP_ANONYMOUS, or /dev/zero shared
	VMAFile       = "file"        // private file mapping
	VMASharedFile = "shared-file" // shared file mapping
	VMAVDSO       = "vdso"        // [vdso]
	VMAVVar       = "vvar"        // [vvar], [vvar_vclock]
	VMASysV       = "sysv"        // System V shared memory (shmat): VMA.Shm is the segment's ID
)

// VMA is one memory area.
type VMA struct {
	Start  uint64 `json:"start"`
	End    uint64 `json:"end"`
	Prot   int    `json:"prot"`  // PROT_*
	Flags  int    `json:"flags"` // MAP_SHARED or MAP_PRIVATE, plus MAP_GROWSDOWN, MAP_NORESERVE
	Kind   string `json:"kind"`
	Name   string `json:"name,omitempty"` // [heap], [stack], [vdso] ...
	Offset uint64 `json:"offset,omitempty"`
	// File is set for file mappings.
	File *FileRef `json:"file,omitempty"`
	// Shm identifies the shmem object behind a shared anonymous area (its
	// inode): areas of the tree with the same Shm map one object (a fork
	// shares it between parent and child), and are restored so. 0: not
	// recorded, each area its own object. For a System V area (VMASysV),
	// the segment's ID (Image.Shm).
	Shm uint64 `json:"shm,omitempty"`
	// Madvise lists MADV_* advice to re-apply (MADV_DONTFORK, ...).
	Madvise []int `json:"madvise,omitempty"`
	// MayWrite is set for a shared file mapping whose file was opened for
	// writing (VM_MAYWRITE): mprotect may make it writable, even if it is
	// not now. Without it, a shared file mapping is mapped from a
	// read-only open, and mprotect(PROT_WRITE) fails as it did.
	MayWrite bool `json:"may_write,omitempty"`
	// Seals are the F_SEAL_* seals of a mapped memfd.
	Seals int `json:"seals,omitempty"`
	// Lock is how the area is locked in memory: "" (it is not),
	// LockAll (mlock: every page resident) or LockOnFault (mlock2 with
	// MLOCK_ONFAULT: the pages faulted in stay).
	Lock string `json:"lock,omitempty"`
	// Hash is the SHA-256 of the contents of a [vdso] area: a kernel
	// whose vdso differs gets a proxy of it (Code).
	Hash string `json:"hash,omitempty"`
	// Code is the contents of a [vdso] area (its ELF image): on a kernel
	// whose vdso differs, the restore maps a copy of it whose functions
	// jump to that kernel's. Empty in images of older builds: refused there.
	Code []byte `json:"code,omitempty"`
	// Pages is the number of pages of this area stored in the page stream.
	Pages uint64 `json:"pages"`
}

// Len is the length of the area in bytes.
func (v *VMA) Len() uint64 { return v.End - v.Start }

// Thread is the state of one thread.
type Thread struct {
	TID  int    `json:"tid"`
	Comm string `json:"comm"`
	// Regs is struct user_regs_struct (x86-64) as 27 words.
	Regs Regs `json:"regs"`
	// Xstate is the NT_X86_XSTATE register set.
	Xstate []byte `json:"xstate"`
	// SigMask is the blocked signal mask.
	SigMask    uint64    `json:"sigmask"`
	Pending    []Siginfo `json:"pending,omitempty"`
	AltStack   AltStack  `json:"altstack"`
	ClearTID   uint64    `json:"clear_child_tid"`
	RobustList uint64    `json:"robust_list"`
	RobustLen  uint64    `json:"robust_list_len"`
	Rseq       Rseq      `json:"rseq"`
	// Sched is the thread's scheduling state and the other attributes
	// the kernel keeps per thread (nil: not collected; a restore refuses
	// that).
	Sched *Sched `json:"sched,omitempty"`
	// Creds are the thread's credentials when they differ from the
	// process's (Process.Creds, the leader's): credentials are per thread
	// in Linux, and a raw setuid or capset changes only the caller's.
	Creds *Creds `json:"creds,omitempty"`
	// Cgroups is the thread's place in the cgroup hierarchies where it
	// differs from the process's (a v1 hierarchy, or a v2 threaded
	// cgroup); nil if it is in the process's cgroups everywhere.
	Cgroups []Cgroup `json:"cgroups,omitempty"`
	// Seccomp is the thread's seccomp mode and filters; nil: none (the
	// image of a build that refused a process under seccomp has none).
	Seccomp *Seccomp `json:"seccomp,omitempty"`
	// Restart says how the thread's interrupted system call, if any, is to be
	// continued at restore: "" (not in a syscall), "restart", or "eintr".
	Restart string `json:"restart,omitempty"`
	// RestartCode is, for a thread stopped in a system call the kernel
	// interrupted with -ERESTARTSYS (512), -ERESTARTNOINTR (513) or
	// -ERESTARTNOHAND (514), that code (Regs are rewound all the same):
	// the restore gives the kernel the call back as it was interrupted, to
	// run again or end as it decides, a signal handled first ending pause
	// or sigsuspend with EINTR. 0: none, or -ERESTART_RESTARTBLOCK, whose
	// restart needs the kernel's own record of the call (the call is run
	// again as Regs have it). An image without it restores as before.
	RestartCode int `json:"restart_code,omitempty"`
}

// Scheduling policies (SCHED_DEADLINE, 6, is refused at the dump).
const (
	SchedOther = 0
	SchedFIFO  = 1
	SchedRR    = 2
	SchedBatch = 3
	SchedIdle  = 5
)

// Sched is what the kernel keeps per thread about its scheduling and
// timers: sched_getattr, getpriority, sched_getaffinity,
// /proc/TID/timerslack_ns and PR_GET_PDEATHSIG.
type Sched struct {
	Policy int `json:"policy"` // SCHED_OTHER, FIFO, RR, BATCH or IDLE
	// Priority is the real-time priority: 1..99 for FIFO and RR, else 0.
	Priority    int  `json:"priority"`
	ResetOnFork bool `json:"reset_on_fork,omitempty"`
	Nice        int  `json:"nice"` // -20..19, kept for every policy
	// SliceNS is a time slice of the thread's own (sched_attr.sched_runtime
	// of a fair or idle thread, Linux 6.12+); 0: the kernel's default.
	SliceNS uint64 `json:"slice_ns,omitempty"`
	// Affinity is the CPU mask, CPU i in bit i%64 of word i/64.
	Affinity []uint64 `json:"affinity"`
	// TimerSlackNS is the thread's timer slack (0 for a real-time
	// thread, which has none).
	TimerSlackNS uint64 `json:"timer_slack_ns"`
	// IOPrio is the I/O priority the thread set (ioprio_set: class<<13
	// | hints<<3 | level); 0: none, it follows nice and policy.
	IOPrio int `json:"ioprio,omitempty"`
	// PdeathSignal is the signal sent when the parent thread dies, 0 if
	// none (PR_SET_PDEATHSIG).
	PdeathSignal int `json:"pdeath_signal,omitempty"`
	// MCEKill is the thread's machine-check memory-error policy of its
	// own (PR_MCE_KILL): 0 none (the system's), MCEKillLate or
	// MCEKillEarly.
	MCEKill int `json:"mce_kill,omitempty"`
	// TSCSigsegv: the thread's rdtsc raises SIGSEGV (PR_SET_TSC
	// PR_TSC_SIGSEGV, as record-and-replay tools set it).
	TSCSigsegv bool `json:"tsc_sigsegv,omitempty"`
}

// Sched.MCEKill values.
const (
	MCEKillLate  = 1 // PR_MCE_KILL_LATE: killed when it touches a bad page
	MCEKillEarly = 2 // PR_MCE_KILL_EARLY: told as soon as one is found
)

// THP_DISABLE values of PR_GET_THP_DISABLE: off, all areas, all but the
// areas advised MADV_HUGEPAGE (Linux 6.18).
const (
	THPDisableAll           = 1
	THPDisableExceptAdvised = 3
)

// Membarrier registrations (the commands MEMBARRIER_CMD_GET_REGISTRATIONS
// reports): GLOBAL_EXPEDITED, PRIVATE_EXPEDITED, ..._SYNC_CORE, ..._RSEQ.
const MembarrierRegistrations = 1<<2 | 1<<4 | 1<<6 | 1<<8

// ProcAttrs are the process-wide attributes a restore sets besides
// credentials, limits and signals.
type ProcAttrs struct {
	OOMScoreAdj int `json:"oom_score_adj"` // -1000..1000
	// THPDisable is PR_GET_THP_DISABLE: 0, THPDisableAll or
	// THPDisableExceptAdvised.
	THPDisable     int  `json:"thp_disable,omitempty"`
	ChildSubreaper bool `json:"child_subreaper,omitempty"`
	// Membarrier is the mask of membarrier registration commands the
	// process issued (MembarrierRegistrations).
	Membarrier int `json:"membarrier,omitempty"`
	// MDWE is PR_GET_MDWE: memory-deny-write-execute
	// (PR_MDWE_REFUSE_EXEC_GAIN 1, PR_MDWE_NO_INHERIT 2).
	MDWE int `json:"mdwe,omitempty"`
	// MemoryMerge is PR_GET_MEMORY_MERGE: KSM merges every area.
	MemoryMerge bool `json:"memory_merge,omitempty"`
	// CoredumpFilter is /proc/PID/coredump_filter: which kinds of
	// memory a core dump of the process holds (nil in an image of a
	// migrate that did not record it: left as the restore finds it).
	CoredumpFilter *uint32 `json:"coredump_filter,omitempty"`
}

// MaxCoredumpFilter bounds ProcAttrs.CoredumpFilter (the kernel's filter
// bits: MMF_DUMP_FILTER_BITS).
const MaxCoredumpFilter = 1<<9 - 1

// Regs mirrors struct user_regs_struct on x86-64.
type Regs struct {
	R15, R14, R13, R12, RBP, RBX, R11, R10 uint64
	R9, R8, RAX, RCX, RDX, RSI, RDI        uint64
	OrigRAX, RIP, CS, EFLAGS, RSP, SS      uint64
	FSBase, GSBase, DS, ES, FS, GS         uint64
}

// Rseq is a thread's rseq registration (zero if none).
type Rseq struct {
	Addr uint64 `json:"addr"`
	Len  uint32 `json:"len"`
	Sig  uint32 `json:"sig"`
}

// AltStack is a stack_t.
type AltStack struct {
	SP    uint64 `json:"sp"`
	Flags int32  `json:"flags"`
	Size  uint64 `json:"size"`
}

// VMA.Lock values.
const (
	LockAll     = "locked"
	LockOnFault = "onfault"
)

// mlockall(2) flags of Process.MlockAll.
const (
	MclFuture  = 2
	MclOnfault = 4
)

// Sigaction is a kernel struct sigaction (x86-64 layout).
type Sigaction struct {
	Handler  uint64 `json:"handler"`
	Flags    uint64 `json:"flags"`
	Restorer uint64 `json:"restorer"`
	Mask     uint64 `json:"mask"`
}

// Siginfo is a raw 128-byte siginfo_t of a pending signal.
type Siginfo struct {
	Signo int    `json:"signo"`
	Raw   []byte `json:"raw"`
}

// FD kinds.
const (
	FDFile     = "file"    // regular file
	FDDir      = "dir"     // directory
	FDChar     = "chardev" // character device, reopened by path
	FDPipe     = "pipe"    // anonymous pipe end
	FDFIFO     = "fifo"    // named pipe
	FDEventfd  = "eventfd"
	FDMemfd    = "memfd"
	FDSocket   = "socket"
	FDEpoll    = "epoll"
	FDTimerfd  = "timerfd"
	FDSignalfd = "signalfd"
	FDInotify  = "inotify"
	FDPidfd    = "pidfd" // pidfd_open: FD.PidfdPID is the process (or thread) it refers to
	// FDExternal is an fd of an object outside the dump (FD.External
	// names it) which the restore is given in its place (--inherit-fd).
	FDExternal = "external"
)

// FD is one open file descriptor.
type FD struct {
	FD      int    `json:"fd"`
	Kind    string `json:"kind"`
	Flags   int    `json:"flags"`   // file status flags (O_*), from fdinfo
	Cloexec bool   `json:"cloexec"` // FD_CLOEXEC
	Pos     int64  `json:"pos"`
	// File is set for files, directories, devices, FIFOs and memfds.
	File *FileRef `json:"file,omitempty"`
	// Pipe is the pipe inode, shared by the two ends of one pipe.
	Pipe uint64 `json:"pipe,omitempty"`
	// Data names a blob holding buffered pipe data, stored once per pipe
	// (on the read end).
	Data string `json:"data,omitempty"`
	// PipeSize is F_GETPIPE_SZ.
	PipeSize int `json:"pipe_size,omitempty"`
	// Packets, when set, are the lengths of the packets queued in a
	// packet-mode pipe (written with O_DIRECT), in order: Data holds
	// their bytes, one after the other.
	Packets []int `json:"packets,omitempty"`
	// Owner is who gets the signals of signal-driven I/O (F_SETOWN_EX),
	// Signal the signal sent (F_SETSIG; 0: SIGIO).
	Owner  *FDOwner `json:"owner,omitempty"`
	Signal int      `json:"signal,omitempty"`
	// Eventfd state.
	Count     uint64 `json:"count,omitempty"`
	Semaphore bool   `json:"semaphore,omitempty"`
	// Memfd state.
	MemfdName string `json:"memfd_name,omitempty"`
	Seals     int    `json:"seals,omitempty"`
	// Socket is set for sockets (see socket.go).
	Socket *Socket `json:"socket,omitempty"`
	// Epoll lists the registrations of an epoll fd.
	Epoll []EpollTarget `json:"epoll,omitempty"`
	// Timerfd is the state of a timerfd.
	Timerfd *Timerfd `json:"timerfd,omitempty"`
	// Inotify lists the watches of an inotify fd, by watch descriptor.
	Inotify []InotifyWatch `json:"inotify,omitempty"`
	// SigMask is the mask of a signalfd.
	SigMask uint64 `json:"sigmask,omitempty"`
	// Key identifies the open file description (dev:ino:pos-independent id),
	// so fds sharing one description are restored sharing it.
	Key string `json:"key,omitempty"`
	// PidfdPID is the process (a thread, with PIDFD_THREAD in Flags) a
	// pidfd refers to: one of the dump's.
	PidfdPID int `json:"pidfd_pid,omitempty"`
	// External names the object outside the dump of an FDExternal fd, as
	// /proc/PID/fd showed it: "pipe:[1234]" or "socket:[5678]".
	External string `json:"external,omitempty"`
	// Locks are the file locks held through this fd: POSIX record locks
	// the process took through it, and the flock and OFD locks of its
	// open file description.
	Locks []FileLock `json:"locks,omitempty"`
}

// FDOwner is the owner of an open file description (struct f_owner_ex):
// Type is F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
type FDOwner struct {
	Type int `json:"type"`
	PID  int `json:"pid"`
}

// FileLock kinds.
const (
	LockPOSIX = "posix" // fcntl F_SETLK: owned by the process
	LockFlock = "flock" // flock(2): owned by the open file description
	LockOFD   = "ofd"   // fcntl F_OFD_SETLK: owned by the open file description
)

// FileLock is a file lock: a byte range (Len 0: to the end of the file,
// and beyond) for POSIX and OFD locks, the whole file for flock.
type FileLock struct {
	Kind  string `json:"kind"`
	Write bool   `json:"write,omitempty"`
	Start int64  `json:"start,omitempty"`
	Len   int64  `json:"len,omitempty"`
}

func (l FileLock) String() string {
	rw := "read"
	if l.Write {
		rw = "write"
	}
	if l.Kind == LockFlock {
		return fmt.Sprintf("flock %s lock", rw)
	}
	end := "end of file"
	if l.Len != 0 {
		end = fmt.Sprint(l.Start + l.Len - 1)
	}
	return fmt.Sprintf("%s %s lock on bytes %d-%s", l.Kind, rw, l.Start, end)
}

// EpollTarget is one registration of an epoll instance.
type EpollTarget struct {
	FD     int    `json:"fd"`
	Events uint32 `json:"events"`
	Data   uint64 `json:"data"`
}

// InotifyWatch is one watch of an inotify instance.
type InotifyWatch struct {
	WD   int    `json:"wd"`
	Path string `json:"path"`
	Mask uint32 `json:"mask"`
}

// Timerfd is the state of a timerfd.
type Timerfd struct {
	Clock      int    `json:"clock"`
	Flags      int    `json:"settime_flags"` // TFD_TIMER_ABSTIME ...
	Ticks      uint64 `json:"ticks"`         // expirations not yet read
	ValueNS    int64  `json:"value_ns"`      // time to the next expiry, 0 if disarmed
	IntervalNS int64  `json:"interval_ns"`
}

// Sentinel errors of image decoding.
var (
	ErrNotImage   = errors.New("not a migrate image")
	ErrBadVersion = errors.New("unsupported image version")
	ErrWrongArch  = errors.New("image of another architecture")
	// ErrInconsistent: the metadata decodes, but a value is out of range
	// or contradicts another (Image.Validate).
	ErrInconsistent = errors.New("inconsistent image")
	// ErrNotRegular: a file of the image is a symlink, FIFO, device or
	// anything but a regular file.
	ErrNotRegular = errors.New("not a regular file")
)

// ImageError reports a problem with one file of an image.
type ImageError struct {
	File   string
	Reason string
	Err    error
}

func (e *ImageError) Error() string {
	s := e.File + ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ImageError) Unwrap() error { return e.Err }

// maxMetaSize caps the metadata file; a real one is a few hundred KiB.
const maxMetaSize = 64 << 20

// DecodeImage reads and validates image metadata. The decoding is strict:
// an unknown key (a field this build would ignore) or anything after the
// object is refused, so that nothing in the file goes unread.
func DecodeImage(r io.Reader) (*Image, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxMetaSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxMetaSize {
		return nil, fmt.Errorf("metadata larger than %d bytes", maxMetaSize)
	}
	// Kind and version first: a newer image is refused as such, not for
	// the keys it added.
	var head struct {
		Kind    string `json:"kind"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotImage, err)
	}
	if head.Kind != ImageKind {
		return nil, fmt.Errorf("%w: kind %q", ErrNotImage, head.Kind)
	}
	if head.Version != ImageVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d (dump again with this build)", ErrBadVersion, head.Version, ImageVersion)
	}
	var img Image
	// What decoding would allocate, before decoding (DecodeBounded).
	if err := CheckDecodeBudget(data, &img, DefaultDecodeBudget); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&img); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotImage, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the metadata object", ErrNotImage)
	}
	if img.Arch != runtime.GOARCH {
		return nil, fmt.Errorf("%w: dumped on %q, this is %q", ErrWrongArch, img.Arch, runtime.GOARCH)
	}
	if err := img.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInconsistent, err)
	}
	return &img, nil
}

// Validate checks the internal consistency of the metadata, so that a
// restore never acts on a hostile or corrupt image.
func (img *Image) Validate() error {
	for name, b := range img.Blobs {
		if !validBlob(name) {
			return fmt.Errorf("bad blob name %q", name)
		}
		if err := validBlobInfo(b); err != nil {
			return fmt.Errorf("blob %s: %w", name, err)
		}
	}
	if err := validateProcess(&img.Process, img.Blobs); err != nil {
		return err
	}
	if img.Pages.File != PagesFile {
		return fmt.Errorf("pages file %q, want %q", img.Pages.File, PagesFile)
	}
	if img.Process.Pages != nil || img.Process.Zombie != nil {
		return errors.New("the root process has pages of its own or is a zombie")
	}
	if len(img.Tree) > maxList {
		return fmt.Errorf("%d processes in the tree", len(img.Tree))
	}
	if err := validateShm(img); err != nil {
		return err
	}
	if err := validateCgroupLimits(img.CgroupLimits); err != nil {
		return err
	}
	if img.Clocks != nil {
		if err := img.Clocks.Validate(); err != nil {
			return err
		}
	}
	if err := validateNamespaces(img); err != nil {
		return err
	}
	if err := validateMounts(img.Mounts, img.Blobs); err != nil {
		return err
	}
	if err := validateContainerMounts(img); err != nil {
		return err
	}
	// Every PID and TID once in the whole image: clone3 cannot make one
	// twice.
	ids := map[int]bool{}
	for _, p := range append([]Process{img.Process}, img.Tree...) {
		if p.Zombie != nil {
			if ids[p.PID] {
				return fmt.Errorf("pid %d used twice", p.PID)
			}
			ids[p.PID] = true
		}
		for _, t := range p.Threads {
			if ids[t.TID] {
				return fmt.Errorf("pid or tid %d used twice", t.TID)
			}
			ids[t.TID] = true
		}
	}
	// A pidfd refers to a process (or thread) of the image: the restore
	// opens it on the process it made.
	for _, p := range append([]Process{img.Process}, img.Tree...) {
		for _, f := range p.FDs {
			if f.Kind == FDPidfd && !ids[f.PidfdPID] {
				return fmt.Errorf("process %d fd %d: a pidfd of %d, not a process of the image", p.PID, f.FD, f.PidfdPID)
			}
		}
	}
	// The tree: unique PIDs, each parent before its children.
	pids := map[int]bool{img.Process.PID: true}
	pageFiles := map[string]bool{}
	for i := range img.Tree {
		p := &img.Tree[i]
		if pids[p.PID] {
			return fmt.Errorf("process %d listed twice", p.PID)
		}
		if !pids[p.PPID] {
			return fmt.Errorf("process %d: parent %d is not before it in the image", p.PID, p.PPID)
		}
		if p.Zombie != nil {
			if p.PID <= 0 || p.PID > 1<<22 || len(p.Threads) != 0 || len(p.VMAs) != 0 || len(p.FDs) != 0 || p.Pages != nil {
				return fmt.Errorf("zombie %d has state of a live process", p.PID)
			}
			if err := validZombieStatus(p.Zombie.ExitCode); err != nil {
				return fmt.Errorf("zombie %d: %w", p.PID, err)
			}
		} else {
			if err := validateProcess(p, img.Blobs); err != nil {
				return fmt.Errorf("process %d: %w", p.PID, err)
			}
			// pages-PID.img, by the PID the dump saw (a container's
			// processes renumbered outside keep their files: RenumberOuter).
			if p.Pages == nil || !treePagesFile(p.Pages.File) || pageFiles[p.Pages.File] {
				return fmt.Errorf("process %d: pages file missing, misnamed or another's", p.PID)
			}
			pageFiles[p.Pages.File] = true
		}
		pids[p.PID] = true
	}
	return nil
}

// treePagesFile says whether name is that of a tree process's page
// stream: pages-PID.img.
func treePagesFile(name string) bool {
	num, ok1 := strings.CutPrefix(name, "pages-")
	num, ok2 := strings.CutSuffix(num, ".img")
	if !ok1 || !ok2 {
		return false
	}
	n, err := strconv.Atoi(num)
	return err == nil && n > 0 && n <= 1<<22 && fmt.Sprintf("pages-%d.img", n) == name
}

// validateProcess checks one live process of an image; blobs are the
// image's.
func validateProcess(p *Process, blobs map[string]Blob) error {
	if p.PID <= 0 || p.PID > 1<<22 {
		return fmt.Errorf("bad pid %d", p.PID)
	}
	if len(p.Threads) == 0 {
		return errors.New("no threads")
	}
	if len(p.Threads) > maxList || len(p.VMAs) > maxList || len(p.FDs) > maxList {
		return fmt.Errorf("%d threads, %d areas, %d fds: more than %d", len(p.Threads), len(p.VMAs), len(p.FDs), maxList)
	}
	for i, t := range p.Threads {
		if t.TID <= 0 || t.TID > 1<<22 {
			return fmt.Errorf("thread %d: bad tid %d", i, t.TID)
		}
		if len(t.Xstate) > 1<<16 {
			return fmt.Errorf("thread %d: xstate of %d bytes", t.TID, len(t.Xstate))
		}
	}
	if p.Threads[0].TID != p.PID {
		return fmt.Errorf("first thread %d is not the leader %d", p.Threads[0].TID, p.PID)
	}
	if err := validateState(p); err != nil {
		return err
	}
	if len(p.Sigactions) != 0 && len(p.Sigactions) != 64 {
		return fmt.Errorf("%d sigactions, want 64", len(p.Sigactions))
	}
	var prev uint64
	for i, v := range p.VMAs {
		if v.Start%4096 != 0 || v.End%4096 != 0 || v.End <= v.Start {
			return fmt.Errorf("vma %d: bad range %#x-%#x", i, v.Start, v.End)
		}
		if v.Start < prev {
			return fmt.Errorf("vma %d: %#x-%#x overlaps or is out of order", i, v.Start, v.End)
		}
		if v.End > 1<<47 {
			return fmt.Errorf("vma %d: %#x beyond user address space", i, v.End)
		}
		prev = v.End
		switch v.Kind {
		case VMAAnon, VMASharedAnon, VMAVDSO, VMAVVar:
		case VMASysV:
			if v.Flags&1 == 0 || v.Pages != 0 {
				return fmt.Errorf("vma %d: a System V area that is not shared or has pages of its own", i)
			}
		case VMAFile, VMASharedFile:
			if v.File == nil || v.File.Path == "" {
				return fmt.Errorf("vma %d: file mapping without a file", i)
			}
		default:
			return fmt.Errorf("vma %d: unknown kind %q", i, v.Kind)
		}
		if v.Pages > v.Len()/4096 {
			return fmt.Errorf("vma %d: %d pages in %d-byte area", i, v.Pages, v.Len())
		}
		if len(v.Code) != 0 && (v.Kind != VMAVDSO || uint64(len(v.Code)) != v.Len()) {
			return fmt.Errorf("vma %d: %d bytes of code for a %d-byte %s area", i, len(v.Code), v.Len(), v.Kind)
		}
		if err := validateVMA(&p.VMAs[i]); err != nil {
			return fmt.Errorf("vma %#x-%#x: %w", v.Start, v.End, err)
		}
	}
	seen := map[int]bool{}
	for _, f := range p.FDs {
		if f.FD < 0 || f.FD >= MaxFD {
			return fmt.Errorf("bad fd %d", f.FD)
		}
		if err := validateFD(&f); err != nil {
			return fmt.Errorf("fd %d: %w", f.FD, err)
		}
		if seen[f.FD] {
			return fmt.Errorf("fd %d listed twice", f.FD)
		}
		seen[f.FD] = true
		if f.Socket != nil {
			if t := f.Socket.TCP; t != nil {
				if err := t.Validate(); err != nil {
					return fmt.Errorf("fd %d: %w", f.FD, err)
				}
				for _, q := range []struct {
					blob string
					n    int
				}{{t.SendQueue, t.SendLen}, {t.RecvQueue, t.RecvLen}} {
					if b, ok := blobs[q.blob]; ok && b.Size != int64(q.n) {
						return fmt.Errorf("fd %d: TCP queue of %d bytes in a %d-byte blob", f.FD, q.n, b.Size)
					}
				}
			}
		}
	}
	for _, b := range p.BlobNames() {
		if !validBlob(b) {
			return fmt.Errorf("bad blob name %q", b)
		}
		if _, ok := blobs[b]; !ok {
			return fmt.Errorf("blob %s is not listed in the image", b)
		}
	}
	return nil
}

func blobOf(f *FileRef) string {
	if f == nil {
		return ""
	}
	return f.Blob
}

// ValidBlobName accepts only plain names under FilesDir ("files/NAME"), so
// a hostile image cannot make a restore read outside its directory: no
// absolute name, no "..", no further directory.
func ValidBlobName(name string) bool { return validBlob(name) }

func validBlob(name string) bool {
	dir, base := filepath.Split(name)
	return dir == FilesDir+"/" && base != "" && base != "." && base != ".." && filepath.Clean(name) == name
}

// ReadImage reads DIR/image.json. It opens no symlink and reads only a
// regular file: a FIFO or a device there is refused, not waited on.
func ReadImage(dir string) (*Image, error) {
	path := filepath.Join(dir, MetaFile)
	// O_NONBLOCK: opening a FIFO for reading does not wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, &ImageError{File: path, Reason: "is a symbolic link", Err: ErrNotRegular}
		}
		return nil, &ImageError{File: path, Reason: "cannot open", Err: err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, &ImageError{File: path, Reason: "cannot stat", Err: err}
	}
	if !fi.Mode().IsRegular() {
		return nil, &ImageError{File: path, Reason: "is a " + FileType(fi.Mode()), Err: ErrNotRegular}
	}
	img, err := DecodeImage(f)
	if err != nil {
		return nil, &ImageError{File: path, Reason: "invalid metadata", Err: err}
	}
	return img, nil
}

// FileType names the type of a file mode, for errors.
func FileType(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// WriteImage writes DIR/image.json atomically (temporary file, fsync, rename).
func WriteImage(dir string, img *Image) error {
	data, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+MetaFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, MetaFile))
}

// Processes returns the live processes of the image with their page
// streams, the root first, parents before children.
func (img *Image) Processes() []ProcessPages {
	out := []ProcessPages{{&img.Process, &img.Pages}}
	for i := range img.Tree {
		if p := &img.Tree[i]; p.Zombie == nil {
			out = append(out, ProcessPages{p, p.Pages})
		}
	}
	return out
}

// ProcessPages is a process with its page stream.
type ProcessPages struct {
	Process *Process
	Pages   *PagesInfo
}
