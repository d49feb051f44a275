package target

import (
	"fmt"

	"github.com/procmig/migrate/core"
)

// PIDInUseError says the PID (or a TID) to restore is taken on this host.
type PIDInUseError struct {
	PID    int
	Holder string // comm of the process holding it
}

func (e *PIDInUseError) Error() string {
	return fmt.Sprintf("pid %d is already in use by %q (pid %d); stop it or restore elsewhere", e.PID, e.Holder, e.PID)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *PIDInUseError) AbortCode() string { return "pid-in-use" }

// VDSOMismatchError says this kernel's vdso differs from the dumping
// one's, and a proxy of the old one cannot serve the process (Reason says
// why: a function this kernel's vdso lacks, named), or the layout of a
// later pre-copy round collides with where this kernel's vdso was put.
type VDSOMismatchError struct {
	Reason string
	// Missing are the functions of the old vdso that this kernel's lacks
	// and the proxy cannot make (none of them system calls).
	Missing []string
}

func (e *VDSOMismatchError) Error() string {
	return "this kernel's vdso differs from the one the process was dumped on: " + e.Reason
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *VDSOMismatchError) AbortCode() string { return "vdso" }

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

// AffinityError says a thread of the image may run on CPUs this host does
// not have: the restore is refused before anything is created, rather
// than run the thread on fewer CPUs than it had.
type AffinityError struct {
	PID, TID int
	Want     string // the thread's CPUs, "0-3"
	Have     string // this host's online CPUs
}

func (e *AffinityError) Error() string {
	return fmt.Sprintf("process %d thread %d: bound to CPUs %s, this host has %s (a restore does not run it on fewer)", e.PID, e.TID, e.Want, e.Have)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *AffinityError) AbortCode() string { return "affinity" }

// AttrError says an attribute of a process or thread could not be set as
// the image has it, or the kernel set something else (Got): the restore
// fails rather than give back a process that differs from the original.
type AttrError struct {
	PID, TID int // TID 0: a process-wide attribute
	Attr     string
	Want     string
	Got      string // what the kernel set, if it took the call
	Err      error
}

func (e *AttrError) Error() string {
	who := fmt.Sprintf("process %d", e.PID)
	if e.TID != 0 {
		who += fmt.Sprintf(" thread %d", e.TID)
	}
	if e.Err != nil {
		return fmt.Sprintf("%s: %s %s cannot be set: %v", who, e.Attr, e.Want, e.Err)
	}
	return fmt.Sprintf("%s: %s %s set, the kernel made it %s", who, e.Attr, e.Want, e.Got)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *AttrError) AbortCode() string { return "attribute" }

func (e *AttrError) Unwrap() error { return e.Err }

// LockError says a file lock of the image could not be taken again: most
// often another process took a conflicting one since the dump (Holder, if
// the kernel names it). The restore fails rather than run the process
// without a lock it held.
type LockError struct {
	PID, FD int
	Path    string
	Lock    core.FileLock
	Holder  int // the PID holding a conflicting lock, 0 if unknown
	Err     error
}

func (e *LockError) Error() string {
	s := fmt.Sprintf("process %d fd %d (%s): cannot take its %s again", e.PID, e.FD, e.Path, e.Lock)
	if e.Holder > 0 {
		s += fmt.Sprintf(": process %d holds a conflicting lock", e.Holder)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *LockError) AbortCode() string { return "lock" }

func (e *LockError) Unwrap() error { return e.Err }
