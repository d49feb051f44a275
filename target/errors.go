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

// FDLimitError says an fd of the process is above the RLIMIT_NOFILE hard
// limit the restored process starts with here (the service's), which the
// service cannot raise (no CAP_SYS_RESOURCE).
type FDLimitError struct {
	FD  int    // the highest fd number of the process
	Max uint64 // the hard limit here
	Err error
}

func (e *FDLimitError) Error() string {
	return fmt.Sprintf("fd %d is above the RLIMIT_NOFILE hard limit %d of this service, which it cannot raise (%v); start the service with a higher limit (e.g. LimitNOFILE= of its unit)", e.FD, e.Max, e.Err)
}

func (e *FDLimitError) Unwrap() error { return e.Err }
