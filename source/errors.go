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

// TreeChangedError says that the process tree a live migration moves
// changed during the pre-copy in a way the target cannot follow: a
// process that stayed in the tree with another parent, or whose PID
// another process took (a tree that merely forks and exits is moved as
// it is when frozen). The migration was given up, the original tree runs
// on; moving it again finds the tree as it is then.
type TreeChangedError struct {
	PID    int    // the process
	Parent int    // its parent (0 if unknown)
	Change string // what it did: "lost its parent (...)", "exited, and another process took its PID"
}

func (e *TreeChangedError) Error() string {
	s := fmt.Sprintf("the process tree changed during the migration: process %d %s", e.PID, e.Change)
	if e.Parent > 0 {
		s = fmt.Sprintf("the process tree changed during the migration: process %d (a child of %d) %s", e.PID, e.Parent, e.Change)
	}
	return s + "; a tree moves live only if its processes keep their parents until it is frozen"
}
