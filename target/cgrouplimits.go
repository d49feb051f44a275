package target

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// madeCgroup is a cgroup directory a restore created: rel below the
// cgroup2 mount at dir.
type madeCgroup struct{ dir, rel string }

// prepareCgroups makes ready the cgroup v2 cgroups of the image that carry
// limits (core.CgroupLimits), before the processes join them: one this
// host lacks is created, with its missing parents and the controllers it
// needs enabled in them, and given the image's limits; one it has must
// have the image's limits already, or gets them with apply. What it
// created is listed for discardCgroups.
func (ss *session) prepareCgroups(pid int, img *core.Image, apply bool) error {
	if len(img.CgroupLimits) == 0 {
		return nil
	}
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		return &CgroupError{PID: pid, Reason: "cannot list the cgroup mounts", Err: err}
	}
	for _, cl := range img.CgroupLimits {
		m, rel, ok := proc.CgroupMountFor(mounts, "", cl.Path)
		if !ok {
			return &CgroupError{PID: pid, Path: cl.Path, Reason: "the cgroup v2 hierarchy is not mounted here (or not its part holding this path)"}
		}
		if err := ss.makeCgroup(pid, m.Dir, rel, cl, apply); err != nil {
			return err
		}
	}
	return nil
}

// makeCgroup is prepareCgroups for one cgroup, directory rel below the
// mount at dir.
func (ss *session) makeCgroup(pid int, dir, rel string, cl core.CgroupLimits, apply bool) error {
	fail := func(reason string, err error) error {
		return &CgroupError{PID: pid, Path: cl.Path, Reason: reason, Err: err}
	}
	cur, created := ".", false
	for _, name := range strings.Split(rel, "/") {
		if name == "." {
			continue
		}
		next := path.Join(cur, name)
		f, err := proc.OpenBeneath(dir, next, unix.O_PATH|unix.O_DIRECTORY)
		if err == nil {
			f.Close()
			cur = next
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return fail("cannot open "+next, err)
		}
		if err := enableControllers(dir, cur, cl.Controllers); err != nil {
			return fail("cannot enable the controllers "+strings.Join(cl.Controllers, " ")+" in "+cur+"/cgroup.subtree_control", err)
		}
		pf, err := proc.OpenBeneath(dir, cur, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return fail("cannot open "+cur, err)
		}
		err = unix.Mkdirat(int(pf.Fd()), name, 0o755)
		pf.Close()
		if err != nil {
			return fail("cannot create "+next, err)
		}
		ss.cgroupsMade = append(ss.cgroupsMade, madeCgroup{dir: dir, rel: next})
		cur, created = next, true
	}
	for _, name := range core.CgroupLimitFiles {
		want, ok := cl.Files[name]
		if !ok {
			continue
		}
		if !created {
			have, err := proc.ReadCgroupFile(dir, cur, name)
			if err != nil {
				return &CgroupError{PID: pid, Path: cl.Path, File: name, Want: want, Reason: "cannot read " + name + " (its controller not enabled here?)", Err: err}
			}
			if have == want {
				continue
			}
			if !apply {
				return &CgroupError{PID: pid, Path: cl.Path, File: name, Want: want, Have: have,
					Reason: fmt.Sprintf("%s is %q here, %q in the image (--cgroup-limits=apply sets it)", name, have, want)}
			}
		}
		if err := writeCgroupString(dir, cur, name, want); err != nil {
			return &CgroupError{PID: pid, Path: cl.Path, File: name, Want: want, Reason: "cannot set " + name + " to " + want, Err: err}
		}
		if have, err := proc.ReadCgroupFile(dir, cur, name); err != nil || have != want {
			return &CgroupError{PID: pid, Path: cl.Path, File: name, Want: want, Have: have, Reason: fmt.Sprintf("%s set to %q reads %q", name, want, have), Err: err}
		}
	}
	return nil
}

// enableControllers enables ctls in cgroup.subtree_control of directory
// rel below the mount at dir, those it does not enable already. The
// kernel refuses in a cgroup with processes of its own (EBUSY: the
// no-internal-process rule) or one whose parent does not enable them.
func enableControllers(dir, rel string, ctls []string) error {
	have, err := proc.ReadCgroupFile(dir, rel, "cgroup.subtree_control")
	if err != nil {
		return err
	}
	var add []string
	for _, c := range ctls {
		if !slices.Contains(strings.Fields(have), c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	err = writeCgroupString(dir, rel, "cgroup.subtree_control", strings.Join(add, " "))
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("it has processes of its own, and the kernel enables controllers only for a cgroup's children when it has none: %w", err)
	}
	return err
}

// discardCgroups removes the cgroups the restore created, deepest first,
// once their processes are gone (killed by Discard: a cgroup is removed
// only when none is left in it).
func (ss *session) discardCgroups() {
	for i := len(ss.cgroupsMade) - 1; i >= 0; i-- {
		c := ss.cgroupsMade[i]
		pf, err := proc.OpenBeneath(c.dir, path.Dir(c.rel), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			ss.log.Warn("cgroup not removed", "cgroup", c.rel, "err", err)
			continue
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			err = unix.Unlinkat(int(pf.Fd()), path.Base(c.rel), unix.AT_REMOVEDIR)
			if err != unix.EBUSY || time.Now().After(deadline) {
				break
			}
			// The killed processes are not all reaped yet.
			time.Sleep(10 * time.Millisecond)
		}
		pf.Close()
		if err != nil {
			ss.log.Warn("cgroup not removed", "cgroup", c.rel, "err", err)
		}
	}
	ss.cgroupsMade = nil
}

// relocateCgroups puts the image's cgroup v2 paths, of its processes,
// threads and limits, under root (RestoreOptions.CgroupRoot).
func relocateCgroups(img *core.Image, root string) error {
	if err := core.ValidPath(root); err != nil {
		return fmt.Errorf("cgroup root: %w", err)
	}
	relocate(root, img.CgroupLimits, &img.Process)
	for i := range img.Tree {
		relocate(root, nil, &img.Tree[i])
	}
	relocateCgroupNS(root, img.Namespaces)
	return nil
}

// relocateCgroupNS puts the cgroup v2 root of a container's cgroup
// namespace under root, as its processes' cgroups: inside, they see the
// same paths.
func relocateCgroupNS(root string, ns *core.Namespaces) {
	if ns == nil || ns.Cgroup == nil {
		return
	}
	relocate(root, nil, &core.Process{Cgroups: ns.Cgroup.Roots})
}

// relocate puts the cgroup v2 paths of procs, their threads and limits
// under root, a valid path.
func relocate(root string, limits []core.CgroupLimits, procs ...*core.Process) {
	move := func(cgs []core.Cgroup) {
		for i := range cgs {
			if cgs[i].Controllers == "" {
				cgs[i].Path = path.Join(root, cgs[i].Path)
			}
		}
	}
	for _, p := range procs {
		move(p.Cgroups)
		for i := range p.Threads {
			move(p.Threads[i].Cgroups)
		}
	}
	for i := range limits {
		limits[i].Path = path.Join(root, limits[i].Path)
	}
}

// checkCgroupLimits compares the limits of the image's cgroups
// (core.CgroupLimits) with those the kernel shows.
func (b *Builder) checkCgroupLimits() []Difference {
	cls := b.ss.img.CgroupLimits
	if len(cls) == 0 {
		return nil
	}
	c := &checker{pid: b.all[0].pid}
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		c.unreadable(0, "cgroup mounts", err)
		return c.diffs
	}
	for _, cl := range cls {
		m, rel, ok := proc.CgroupMountFor(mounts, "", cl.Path)
		if !ok {
			c.diff(0, "cgroup "+cl.Path, "mounted", "not mounted")
			continue
		}
		for _, name := range core.CgroupLimitFiles {
			want, ok := cl.Files[name]
			if !ok {
				continue
			}
			have, err := proc.ReadCgroupFile(m.Dir, rel, name)
			if err != nil {
				c.unreadable(0, "cgroup "+cl.Path+" "+name, err)
				continue
			}
			cmp(c, 0, "cgroup "+cl.Path+" "+name, want, have)
		}
	}
	return c.diffs
}

// dropCgroups forgets the cgroups of the processes of a layout or image
// (RestoreOptions.IgnoreCgroups): they stay in the restorer's, with no
// cgroup made and none compared. A container's cgroup namespace, made at
// its cgroups, cannot be: refused.
func dropCgroups(limits *[]core.CgroupLimits, ns *core.Namespaces, procs ...*core.Process) error {
	if ns != nil && ns.Cgroup != nil {
		return &CgroupError{Reason: "a container's cgroup namespace is made at its cgroups: they cannot be ignored (--cgroups ignore)"}
	}
	*limits = nil
	for _, p := range procs {
		p.Cgroups = []core.Cgroup{}
		for i := range p.Threads {
			p.Threads[i].Cgroups = nil
		}
	}
	return nil
}

// dropImageCgroups is dropCgroups for every process of img.
func dropImageCgroups(img *core.Image) error {
	procs := []*core.Process{&img.Process}
	for i := range img.Tree {
		procs = append(procs, &img.Tree[i])
	}
	return dropCgroups(&img.CgroupLimits, img.Namespaces, procs...)
}
