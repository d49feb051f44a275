package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/procmig/migrate/core/proc"
)

// checkTarget refuses PIDs that cannot or must not be dumped, before
// anything touches the process.
func checkTarget(pid int) (*proc.Stat, *proc.Status, error) {
	if pid <= 0 {
		return nil, nil, &BadTargetError{PID: pid, Reason: "not a valid process ID"}
	}
	if pid == os.Getpid() {
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is migrate itself"}
	}
	if pid == os.Getppid() {
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is migrate's parent"}
	}
	if pid == 1 {
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is init of this PID namespace"}
	}
	st, err := proc.ReadStat(pid)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, &BadTargetError{PID: pid, Reason: "no such process"}
		}
		return nil, nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if st.PID != pid {
		// A thread ID that is not a thread group leader.
		return nil, nil, &BadTargetError{PID: pid, Reason: "not a process"}
	}
	if kt, _ := proc.IsKernelThread(pid); kt {
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is a kernel thread"}
	}
	switch st.State {
	case 'Z':
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is a zombie"}
	case 'X':
		return nil, nil, &BadTargetError{PID: pid, Reason: "it is exiting"}
	}
	status, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if status.Tgid != pid {
		return nil, nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("it is a thread of process %d", status.Tgid)}
	}
	if status.TracerPID != 0 {
		return nil, nil, &BadTargetError{PID: pid, Reason: fmt.Sprintf("it is traced by process %d (a debugger?)", status.TracerPID)}
	}
	if err := checkMember(pid, pid, status); err != nil {
		return nil, nil, err
	}
	return st, status, nil
}

// checkMember refuses a process of the dump (the root or a descendant)
// that the user running migrate may not trace, or whose state the restore
// would not bring back: seccomp state it cannot carry, or namespaces of
// its own (but those of the container whose init is root, the root of
// the dump).
func checkMember(pid, root int, status *proc.Status) error {
	if err := checkAccess(pid, status, invoker()); err != nil {
		return err
	}
	if err := checkSeccomp(pid); err != nil {
		return err
	}
	if err := checkNamespaces(pid, root, status); err != nil {
		return err
	}
	if err := checkSecurityLabel(pid); err != nil {
		return err
	}
	return checkMounts(pid)
}

// capSysPtrace is CAP_SYS_PTRACE.
const capSysPtrace = 19

// caller is who runs migrate, as checkAccess sees it.
type caller struct {
	UID, GID  uint32
	SysPtrace bool // CAP_SYS_PTRACE in the effective set
}

// invoker is the user who runs migrate: its real ids (migrate refuses to
// run set-user-ID, see cmd/migrate, so they are its effective ones too).
func invoker() caller {
	c := caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if st, err := proc.ReadStatus(os.Getpid()); err == nil {
		c.SysPtrace = st.CapEff&(1<<capSysPtrace) != 0
	}
	return c
}

// checkAccess refuses a process the invoking user may not trace, judged
// as the kernel judges ptrace access with PTRACE_MODE_REALCREDS: with
// CAP_SYS_PTRACE, or else only a process whose real, effective and saved
// uids are the caller's real uid, whose gids its real gid, and which is
// dumpable (the files of /proc/PID then belong to its user, not to
// root). Refused here, the process is not touched; migrate would otherwise
// fail later on a raw kernel error.
func checkAccess(pid int, status *proc.Status, c caller) error {
	if c.SysPtrace {
		return nil
	}
	same := func(ids [4]uint32, id uint32) bool { return ids[0] == id && ids[1] == id && ids[2] == id }
	if !same(status.UID, c.UID) || !same(status.GID, c.GID) {
		return &AccessError{PID: pid, UID: c.UID, Reason: fmt.Sprintf("it runs as uid %d gid %d (real, effective, saved: %v, %v)",
			status.UID[1], status.GID[1], status.UID[:3], status.GID[:3])}
	}
	// A file of /proc/PID (not the directory, which keeps the process's
	// owner) belongs to root if the process is not dumpable.
	fi, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != c.UID {
		return &AccessError{PID: pid, UID: c.UID, Reason: "it is not dumpable (it changed its credentials, or PR_SET_DUMPABLE)"}
	}
	return nil
}
