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
