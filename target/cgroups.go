package target

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// CgroupError says a process or thread cannot be put where the image has
// it in a cgroup hierarchy: the restore fails rather than leave it in the
// restorer's cgroups, under other limits and accounting than the original.
type CgroupError struct {
	PID, TID    int // TID 0: the whole process
	Controllers string
	Path        string
	Reason      string
	// File, Want and Have, for a limit (core.CgroupLimits): the file, the
	// image's value and this host's.
	File, Want, Have string
	Err              error
}

func (e *CgroupError) Error() string {
	who := fmt.Sprintf("process %d", e.PID)
	if e.TID != 0 {
		who += fmt.Sprintf(" thread %d", e.TID)
	}
	h := "cgroup v2"
	if e.Controllers != "" {
		h = "cgroup v1 " + e.Controllers
	}
	s := fmt.Sprintf("%s: %s %s: %s", who, h, e.Path, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *CgroupError) AbortCode() string { return "cgroup" }

func (e *CgroupError) Unwrap() error { return e.Err }

// joinCgroups puts the whole process (tid 0) or one of its threads into
// the cgroups want names, hierarchy by hierarchy, where it is not there
// already, and checks that the kernel has it there. A hierarchy or a
// cgroup this host does not have is refused, naming it. The directory is
// opened below the hierarchy's mount and never through a symbolic link,
// whatever the image says.
func joinCgroups(pid, tid int, want []core.Cgroup) error {
	id := tid
	if tid == 0 {
		id = pid
	}
	have, err := currentCgroups(pid, id)
	if err != nil {
		return &CgroupError{PID: pid, TID: tid, Reason: "cannot read its cgroups", Err: err}
	}
	var mounts []proc.CgroupMount
	for _, w := range want {
		cur, ok := have[w.Controllers]
		if ok && cur == w.Path {
			continue
		}
		fail := func(reason string, err error) error {
			return &CgroupError{PID: pid, TID: tid, Controllers: w.Controllers, Path: w.Path, Reason: reason, Err: err}
		}
		if !ok {
			return fail("this host has no such hierarchy", nil)
		}
		if mounts == nil {
			if mounts, err = proc.ReadCgroupMounts(); err != nil {
				return fail("cannot list the cgroup mounts", err)
			}
		}
		m, rel, ok := cgroupMountFor(mounts, w)
		if !ok {
			return fail("the hierarchy is not mounted here (or not its part holding this path)", nil)
		}
		file := "cgroup.procs"
		switch {
		case tid != 0 && w.Controllers == "":
			file = "cgroup.threads"
		case tid != 0:
			file = "tasks"
		}
		if err := writeCgroupFile(m.Dir, rel, file, id); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return fail("no such cgroup on this host (create it first)", err)
			}
			return fail("cannot move it there", err)
		}
	}
	if len(want) == 0 {
		return nil
	}
	// The kernel may have put it elsewhere (a v2 cgroup with controllers
	// enabled below it takes no process): check.
	if have, err = currentCgroups(pid, id); err != nil {
		return &CgroupError{PID: pid, TID: tid, Reason: "cannot read its cgroups", Err: err}
	}
	for _, w := range want {
		if have[w.Controllers] != w.Path {
			return &CgroupError{PID: pid, TID: tid, Controllers: w.Controllers, Path: w.Path, Reason: "the kernel has it in " + have[w.Controllers]}
		}
	}
	return nil
}

func currentCgroups(pid, tid int) (map[string]string, error) {
	cgs, err := proc.ReadCgroups(pid, tid)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(cgs))
	for _, c := range cgs {
		m[c.Controllers] = c.Path
	}
	return m, nil
}

// cgroupMountFor finds a mount of w's hierarchy that shows w.Path, and
// the path of w's directory relative to it.
func cgroupMountFor(mounts []proc.CgroupMount, w core.Cgroup) (proc.CgroupMount, string, bool) {
	return proc.CgroupMountFor(mounts, w.Controllers, w.Path)
}

// writeCgroupFile writes id into file of directory rel below the mount
// at dir, resolving rel beneath dir without symbolic links.
func writeCgroupFile(dir, rel, file string, id int) error {
	return writeCgroupString(dir, rel, file, strconv.Itoa(id))
}

// writeCgroupString writes v into file of directory rel below the mount
// at dir (proc.OpenBeneath).
func writeCgroupString(dir, rel, file, v string) error {
	f, err := proc.OpenBeneath(dir, rel+"/"+file, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(v); err != nil {
		return err
	}
	return nil
}

// joinProcessCgroups puts a process of the image into its cgroups: before
// its memory is laid out (so that its pages are charged there), and again
// after the final image came if that moved it.
func (r *restorer) joinProcessCgroups(_ context.Context) error {
	if r.proc.Cgroups == nil {
		return &CgroupError{PID: r.pid, Reason: "the image does not record its cgroups (made by an older migrate); it would run in the restorer's"}
	}
	return joinCgroups(r.pid, 0, r.proc.Cgroups)
}

// joinThreadCgroups puts each thread that had cgroups of its own (v1
// hierarchies, v2 threaded cgroups) into them; the others are where
// their creator, the leader, is.
func (r *restorer) joinThreadCgroups(_ context.Context) error {
	for _, t := range r.proc.Threads {
		if t.Cgroups == nil || slices.Equal(t.Cgroups, r.proc.Cgroups) {
			continue
		}
		if err := joinCgroups(r.pid, t.TID, t.Cgroups); err != nil {
			return err
		}
	}
	return nil
}

// joinAllCgroups is the last word on cgroups, once the threads exist: the
// process where the final image has it (a no-op unless it moved since
// the first layout), then the threads with cgroups of their own.
func (r *restorer) joinAllCgroups(ctx context.Context) error {
	if err := r.joinProcessCgroups(ctx); err != nil {
		return err
	}
	return r.joinThreadCgroups(ctx)
}
