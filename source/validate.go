package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"migrate/core/proc"
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
	if err := checkMember(pid, status); err != nil {
		return nil, nil, err
	}
	return st, status, nil
}

// checkMember refuses a process of the dump (the root or a descendant)
// whose state the restore would not bring back: a seccomp filter, or
// namespaces of its own.
func checkMember(pid int, status *proc.Status) error {
	if status.Seccomp != 0 {
		return &BadTargetError{PID: pid, Reason: "it runs under seccomp, which migrate does not restore yet"}
	}
	return checkNamespaces(pid)
}
