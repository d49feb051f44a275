package target

import "fmt"

// PIDInUseError says the PID (or a TID) to restore is taken on this host.
type PIDInUseError struct {
	PID    int
	Holder string // comm of the process holding it
}

func (e *PIDInUseError) Error() string {
	return fmt.Sprintf("pid %d is already in use by %q (pid %d); stop it or restore elsewhere", e.PID, e.Holder, e.PID)
}

// VDSOMismatchError says this kernel's vdso differs from the dumping one's.
type VDSOMismatchError struct{ Reason string }

func (e *VDSOMismatchError) Error() string {
	return "this kernel's vdso differs from the one the process was dumped on: " + e.Reason
}

// HostLimitError says the image needs more of something than this host
// allows (an fd number above fs.nr_open, or an RLIMIT_NOFILE above the
// hard limit without CAP_SYS_RESOURCE to raise it).
type HostLimitError struct {
	What  string // "fs.nr_open", "RLIMIT_NOFILE"
	Need  uint64
	Limit uint64
	Hint  string
}

func (e *HostLimitError) Error() string {
	s := fmt.Sprintf("the image needs %s %d, this host allows %d", e.What, e.Need, e.Limit)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}
