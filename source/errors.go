package source

import "fmt"

// UnsupportedFDError names an open file descriptor that migrate cannot dump.
type UnsupportedFDError struct {
	PID    int
	FD     int
	Kind   string // what the fd is, e.g. "socket:[1234]"
	Reason string
}

func (e *UnsupportedFDError) Error() string {
	s := fmt.Sprintf("process %d: fd %d (%s) is not supported", e.PID, e.FD, e.Kind)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// BadTargetError says why a PID cannot be dumped at all.
type BadTargetError struct {
	PID    int
	Reason string
}

func (e *BadTargetError) Error() string {
	return fmt.Sprintf("cannot dump process %d: %s", e.PID, e.Reason)
}

// AccessError is a process the user who runs migrate may not trace.
type AccessError struct {
	PID    int
	UID    uint32 // the real uid of the user running migrate
	Reason string
}

func (e *AccessError) Error() string {
	return fmt.Sprintf("process %d: you (uid %d) may not trace it: %s; only root or a user with CAP_SYS_PTRACE may migrate another user's process", e.PID, e.UID, e.Reason)
}

// UnsupportedMappingError names a memory area migrate cannot dump.
type UnsupportedMappingError struct {
	PID    int
	Start  uint64
	End    uint64
	Name   string
	Reason string // why, when the name does not say it
}

func (e *UnsupportedMappingError) Error() string {
	s := fmt.Sprintf("process %d: mapping %#x-%#x %q is not supported", e.PID, e.Start, e.End, e.Name)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}
