package migrate

import (
	"context"
	"errors"
	"os"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// The errors of Dump, Restore, Migrate and Recover are, where a caller can
// act on them, one of the types below. Each wraps the error the work returned
// (Err) and says the same (Error is Err's text): errors.As still finds
// the detailed types of packages source, target and transport inside.

// RefusedError: migrate refused the process, or the image, for a state it
// does not handle, before it changed anything: the process was not dumped
// or moved (it runs on as it was), or nothing was restored. Trying again
// as it is will fail the same way: Kind says what to change.
type RefusedError struct {
	Kind RefusalKind
	PID  int // the process refused, when known
	Err  error
}

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// RefusalKind says what state was refused.
type RefusalKind string

// The states refused.
const (
	// RefusedProcess: the process as a whole (under seccomp, traced, with children in a live migration, a
	// deleted executable, a scheduling policy a restore does not make,
	// ...): source.BadTargetError.
	RefusedProcess RefusalKind = "process"
	// RefusedFD: an open file descriptor (a file lock in a live
	// migration, a socket kind, ...): source.UnsupportedFDError.
	RefusedFD RefusalKind = "fd"
	// RefusedMapping: a memory area: source.UnsupportedMappingError.
	RefusedMapping RefusalKind = "mapping"
	// RefusedAccess: the caller may not trace the process:
	// source.AccessError.
	RefusedAccess RefusalKind = "access"
	// RefusedPIDInUse: the PID (or a TID) is taken where the process is
	// restored: target.PIDInUseError.
	RefusedPIDInUse RefusalKind = "pid-in-use"
	// RefusedVDSO: this kernel's vdso differs from the dumping one's, and
	// the vdso proxy cannot serve the process (a function of the old vdso
	// that this kernel's lacks, an image without a copy of its vdso):
	// target.VDSOMismatchError.
	RefusedVDSO RefusalKind = "vdso"
	// RefusedAffinity: a thread is bound to CPUs this host does not have:
	// target.AffinityError.
	RefusedAffinity RefusalKind = "affinity"
	// RefusedAttribute: an attribute of the process that the kernel would
	// not set as the image has it: target.AttrError.
	RefusedAttribute RefusalKind = "attribute"
	// RefusedImage: a file of the image is missing, damaged or not what
	// the image says: core.ImageError.
	RefusedImage RefusalKind = "image"
	// RefusedSeccomp: a thread's seccomp state (a filter with a
	// user-space listener, ...): source.SeccompError.
	RefusedSeccomp RefusalKind = "seccomp"
	// RefusedLandlock: a thread sandboxed by Landlock, whose rules cannot
	// be read or carried: source.LandlockError.
	RefusedLandlock RefusalKind = "landlock"
	// RefusedLock: a file lock of the image that another process took
	// since the dump: target.LockError.
	RefusedLock RefusalKind = "lock"
	// RefusedCgroup: a cgroup (or hierarchy) of the image that this host
	// lacks or will not take the process in: target.CgroupError; or,
	// with --freeze cgroup, a tree whose cgroup freezer cannot be used:
	// source.FreezerError.
	RefusedCgroup RefusalKind = "cgroup"
	// RefusedDiffers: the restored process differs from its image
	// (RestoreOptions.Check): target.CheckError.
	RefusedDiffers RefusalKind = "differs"
	// RefusedShm: a System V shared memory segment of the image whose ID
	// or key another segment of this host holds: target.ShmError.
	RefusedShm RefusalKind = "sysv-shm"
	// RefusedAudit: the process's audit login uid and session differ from
	// the restorer's, which it would get: target.AuditError.
	RefusedAudit RefusalKind = "audit"
	// RefusedInherit: an object outside the dump that the image names
	// (DumpOptions.External) was not given to the restore, or a file given
	// (RestoreOptions.Inherit) names none of the image's, or does not fit
	// it: target.InheritError, source.InheritError.
	RefusedInherit RefusalKind = "inherit"
	// RefusedClock: the restore cannot keep the process's monotonic and
	// boot-time clocks going on from the source's (a kernel without time
	// namespaces, offsets out of the kernel's range, an image without
	// clock readings): target.TimeNamespaceError.
	RefusedClock RefusalKind = "clock"
	// RefusedCPU: the process uses, or may use, XSAVE features (AVX,
	// AVX-512, AMX...) this CPU lacks: target.CPUFeatureError.
	RefusedCPU RefusalKind = "cpu"
	// RefusedNamespace: the process lives in namespaces migrate does not
	// carry, or inside a container it is not the init of:
	// source.NamespaceError (its Kinds name them).
	RefusedNamespace RefusalKind = "namespace"
	// RefusedUserNamespace: the process lives in a user namespace of its
	// own (a rootless container), nested, shared with a process outside
	// the dump, or one of its namespaces is owned by another user
	// namespace than its own: source.UserNamespaceError (its Problem
	// says which).
	RefusedUserNamespace RefusalKind = "user-namespace"
	// RefusedIPC: a System V semaphore set or message queue of a
	// container could not be made again as it was (target.IPCError), or
	// the process uses one of the host's, which is not carried
	// (source.HostIPCError).
	RefusedIPC RefusalKind = "sysv-ipc"
	// RefusedMount: a mount of the process's mount namespace that cannot
	// be rebuilt (source.UnsupportedMountError), or a host mount or path
	// the image needs that the restoring host lacks (target.MountError).
	RefusedMount RefusalKind = "mount"
	// RefusedFilesNotShared: the processes write files the target does
	// not share (no shared storage) and MigrateOptions.Sync does not copy
	// (source.FilesNotSharedError), or a synced file the target will not
	// write (another owner's file at its path, a symlink on the way:
	// target.FilesError).
	RefusedFilesNotShared RefusalKind = "files-not-shared"
)

// peerRefusals are the kinds a target names in its abort (AbortCode of
// its typed errors), mapped back to a RefusedError at the source.
var peerRefusals = map[RefusalKind]bool{
	RefusedPIDInUse: true, RefusedVDSO: true, RefusedAffinity: true, RefusedAttribute: true,
	RefusedLock: true, RefusedCgroup: true, RefusedDiffers: true, RefusedShm: true, RefusedAudit: true,
	RefusedInherit: true, RefusedClock: true, RefusedCPU: true, RefusedIPC: true, RefusedMount: true,
	RefusedFilesNotShared: true,
}

// PeerError: the other end of a migration gave up, and said why (an
// Abort, or an Error with a code).
type PeerError struct {
	Abort bool   // an Abort; else an Error with Code
	Code  string // of an Error
	Text  string // the peer's reason
	Err   error
}

func (e *PeerError) Error() string { return e.Err.Error() }
func (e *PeerError) Unwrap() error { return e.Err }

// TimeoutError: the other end did not answer in time, or a deadline of
// ctx passed.
type TimeoutError struct{ Err error }

func (e *TimeoutError) Error() string { return e.Err.Error() }
func (e *TimeoutError) Unwrap() error { return e.Err }

// Timeout is true: net.Error's test.
func (e *TimeoutError) Timeout() bool { return true }

// HostLimitError: the image needs more of something than this host allows
// (What: "fs.nr_open", "RLIMIT_NOFILE"): target.HostLimitError.
type HostLimitError struct {
	What  string
	Need  uint64
	Limit uint64
	Err   error
}

func (e *HostLimitError) Error() string { return e.Err.Error() }
func (e *HostLimitError) Unwrap() error { return e.Err }

// UndecidedError: Migrate sent the commit and could not learn what the
// target did with it. The original is left frozen (stopped, its
// connections silent) on this host: resuming it could make two copies of
// the process, killing it none. Do neither by hand: Recover (`migrate
// recover`) asks the target and settles it.
type UndecidedError struct {
	PID     int
	Session string
	Target  string
	Err     error
}

func (e *UndecidedError) Error() string { return e.Err.Error() }
func (e *UndecidedError) Unwrap() error { return e.Err }

// KillError: the process runs on the target, but Migrate could not kill
// the frozen original. It must be killed, never resumed.
type KillError struct {
	PID int
	Err error
}

func (e *KillError) Error() string { return e.Err.Error() }
func (e *KillError) Unwrap() error { return e.Err }

// PostCopyLostError: the process resumed on the target in post-copy and
// the pages it still lacked could not all be brought over (the link or
// this side failed): the target kills its copy, so the process is lost.
// The original is left frozen on this host as it was at the freeze; it
// is not the process as it ran on the target.
type PostCopyLostError struct {
	PID int
	Err error
}

func (e *PostCopyLostError) Error() string { return e.Err.Error() }
func (e *PostCopyLostError) Unwrap() error { return e.Err }

// wrapErr wraps err in the type above that describes it, if one does.
func wrapErr(err error) error {
	if err == nil {
		return nil
	}
	// The outcomes of a commit first: whatever failed on the way, the
	// caller must act on where the process is.
	var ue *handoff.UndecidedError
	if errors.As(err, &ue) {
		return &UndecidedError{PID: ue.PID, Session: ue.Session, Target: ue.Target, Err: err}
	}
	var pce *handoff.PostCopyError
	if errors.As(err, &pce) {
		return &PostCopyLostError{PID: pce.PID, Err: err}
	}
	var ke *handoff.KillError
	if errors.As(err, &ke) {
		return &KillError{PID: ke.PID, Err: err}
	}
	if r := refusal(err); r != nil {
		return r
	}
	var hl *target.HostLimitError
	if errors.As(err, &hl) {
		return &HostLimitError{What: hl.What, Need: hl.Need, Limit: hl.Limit, Err: err}
	}
	var pe *handoff.PeerError
	if errors.As(err, &pe) && pe.Abort && peerRefusals[RefusalKind(pe.Code)] {
		// The target refused, naming the kind (its typed error's
		// AbortCode): the source sees the same kind as a restore would.
		return &RefusedError{Kind: RefusalKind(pe.Code), Err: err}
	}
	if errors.As(err, &pe) {
		return &PeerError{Abort: pe.Abort, Code: pe.Code, Text: pe.Text, Err: err}
	}
	var he *transport.HandshakeError
	if errors.Is(err, handoff.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &he) && he.Timeout()) {
		return &TimeoutError{Err: err}
	}
	return err
}

// refusal returns the *RefusedError err is, or nil.
func refusal(err error) *RefusedError {
	var (
		bt  *source.BadTargetError
		fd  *source.UnsupportedFDError
		mp  *source.UnsupportedMappingError
		ac  *source.AccessError
		pid *target.PIDInUseError
		vd  *target.VDSOMismatchError
		af  *target.AffinityError
		at  *target.AttrError
		im  *core.ImageError
		sc  *source.SeccompError
		ll  *source.LandlockError
		lk  *target.LockError
		cg  *target.CgroupError
		ck  *target.CheckError
		sh  *target.ShmError
		au  *target.AuditError
		in  *target.InheritError
		si  *source.InheritError
		tn  *target.TimeNamespaceError
		cpu *target.CPUFeatureError
		ns  *source.NamespaceError
		uns *source.UserNamespaceError
		ipc *target.IPCError
		hip *source.HostIPCError
		um  *source.UnsupportedMountError
		tm  *target.MountError
		fns *source.FilesNotSharedError
		tfe *target.FilesError
		fz  *source.FreezerError
	)
	switch {
	case errors.As(err, &ac):
		return &RefusedError{Kind: RefusedAccess, PID: ac.PID, Err: err}
	case errors.As(err, &bt):
		return &RefusedError{Kind: RefusedProcess, PID: bt.PID, Err: err}
	case errors.As(err, &fd):
		return &RefusedError{Kind: RefusedFD, PID: fd.PID, Err: err}
	case errors.As(err, &mp):
		return &RefusedError{Kind: RefusedMapping, PID: mp.PID, Err: err}
	case errors.As(err, &pid):
		return &RefusedError{Kind: RefusedPIDInUse, PID: pid.PID, Err: err}
	case errors.As(err, &vd):
		return &RefusedError{Kind: RefusedVDSO, Err: err}
	case errors.As(err, &af):
		return &RefusedError{Kind: RefusedAffinity, PID: af.PID, Err: err}
	case errors.As(err, &at):
		return &RefusedError{Kind: RefusedAttribute, PID: at.PID, Err: err}
	case errors.As(err, &im):
		return &RefusedError{Kind: RefusedImage, Err: err}
	case errors.As(err, &sc):
		return &RefusedError{Kind: RefusedSeccomp, PID: sc.PID, Err: err}
	case errors.As(err, &ll):
		return &RefusedError{Kind: RefusedLandlock, PID: ll.PID, Err: err}
	case errors.As(err, &lk):
		return &RefusedError{Kind: RefusedLock, PID: lk.PID, Err: err}
	case errors.As(err, &cg):
		return &RefusedError{Kind: RefusedCgroup, PID: cg.PID, Err: err}
	case errors.As(err, &ck):
		return &RefusedError{Kind: RefusedDiffers, Err: err}
	case errors.As(err, &sh):
		return &RefusedError{Kind: RefusedShm, Err: err}
	case errors.As(err, &au):
		return &RefusedError{Kind: RefusedAudit, PID: au.PID, Err: err}
	case errors.As(err, &in), errors.As(err, &si):
		return &RefusedError{Kind: RefusedInherit, Err: err}
	case errors.As(err, &tn):
		return &RefusedError{Kind: RefusedClock, Err: err}
	case errors.As(err, &cpu):
		return &RefusedError{Kind: RefusedCPU, Err: err}
	case errors.As(err, &ns):
		return &RefusedError{Kind: RefusedNamespace, PID: ns.PID, Err: err}
	case errors.As(err, &uns):
		return &RefusedError{Kind: RefusedUserNamespace, PID: uns.PID, Err: err}
	case errors.As(err, &ipc):
		return &RefusedError{Kind: RefusedIPC, Err: err}
	case errors.As(err, &hip):
		return &RefusedError{Kind: RefusedIPC, PID: hip.PID, Err: err}
	case errors.As(err, &um):
		return &RefusedError{Kind: RefusedMount, PID: um.PID, Err: err}
	case errors.As(err, &tm):
		return &RefusedError{Kind: RefusedMount, Err: err}
	case errors.As(err, &fns):
		return &RefusedError{Kind: RefusedFilesNotShared, PID: fns.PID, Err: err}
	case errors.As(err, &tfe):
		return &RefusedError{Kind: RefusedFilesNotShared, Err: err}
	case errors.As(err, &fz):
		return &RefusedError{Kind: RefusedCgroup, PID: fz.PID, Err: err}
	}
	return nil
}
