package target

import (
	"context"
	"log/slog"
	"time"

	"github.com/procmig/migrate/core"
)

// RestoreOptions configure a restore from a directory.
type RestoreOptions struct {
	Dir    string
	Logger *slog.Logger
	// Check compares the restored processes with the image before they
	// run (Builder.Check), and refuses the restore if they differ.
	Check bool
	// Progress, if set, is told every quarter of a second while the
	// pages are written how many were, of those the image holds, from a
	// goroutine of the restore's own: it must not block.
	Progress func(pages, planned uint64, elapsed time.Duration)
	// Inherit gives the files the image's external objects are replaced
	// with: each one, and no other (an *InheritError otherwise, before
	// anything is built).
	Inherit []Inherit
	// ApplyCgroupLimits: a cgroup v2 cgroup of the image that this host
	// has with other limits (core.CgroupLimits) gets the image's, where
	// by default the restore is refused (a *CgroupError naming the file
	// and both values). A cgroup this host lacks is created with them
	// either way.
	ApplyCgroupLimits bool
	// CgroupRoot, if set, is the cgroup v2 directory (from the root of
	// the hierarchy, as /proc/PID/cgroup shows it) under which the
	// processes' cgroups are made and joined, in place of the image's
	// paths.
	CgroupRoot string
	// VDSOProxy lays out the processes' vdso through a proxy (this
	// kernel's [vdso] elsewhere, the image's old one's functions jumping
	// to it) even if this kernel's vdso is the image's, as a kernel whose
	// vdso differs needs: for tests of the proxy on one kernel.
	VDSOProxy bool
	// NetAttach, if set, is the bridge here on which the other end of
	// each veth of a container's network namespace is put (else it is
	// left, up, for a hook: MIGRATE_NET_HOST names them).
	NetAttach string
	// IgnoreCgroups leaves the processes in the restorer's cgroups: the
	// image's are not joined, made or compared (a host whose cgroup
	// hierarchies differ, as a VM's cgroup v2 from a host's v1). The
	// processes then run under this host's limits and accounting, and
	// /proc/PID/cgroup shows other paths. --cgroups ignore.
	IgnoreCgroups bool
}

// RestoreReport says what a restore did.
type RestoreReport struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	// Processes is the number of processes restored (the tree).
	Processes int           `json:"processes"`
	Pages     uint64        `json:"pages"`
	Total     time.Duration `json:"-"`
	TotalMS   float64       `json:"total_ms"`
	MemoryMS  float64       `json:"memory_ms"`
	// Steps says where the time went.
	Steps []Step `json:"steps"`
	// TimeNamespace are the offsets (from the host's clocks) of the time
	// namespace made for the processes so that their monotonic and
	// boot-time clocks go on from the source's; nil: they live in the
	// restorer's (their clocks are this host's).
	TimeNamespace *core.TimeOffsets `json:"time_namespace,omitempty"`
	// VDSOProxy: this kernel's vdso is not the image's, and the processes
	// call it through a proxy at the old one's address (vdsoproxy.go).
	VDSOProxy bool `json:"vdso_proxy,omitempty"`
	// Warnings lists what could not be restored exactly (for example a hard
	// rlimit above this host's, or a session that cannot be re-joined).
	Warnings []string `json:"warnings,omitempty"`
}

// Restore recreates the process stored in opts.Dir. It returns once the
// process runs, detached from the caller.
func Restore(ctx context.Context, opts RestoreOptions) (*RestoreReport, error) {
	return restore(ctx, opts)
}

// Step is the duration of one step of a restore.
type Step struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}
