package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// readCgroups reads where thread tid of process pid is in each cgroup
// hierarchy (tid = pid: the process's, its leader's). The paths are from
// the root of migrate's cgroup namespace, which is the process's (one in
// another cgroup namespace is refused: refuseNamespaces).
func readCgroups(pid, tid int) ([]core.Cgroup, error) {
	cgs, err := proc.ReadCgroups(pid, tid)
	if err != nil {
		return nil, fmt.Errorf("thread %d: cgroups: %w", tid, err)
	}
	out := make([]core.Cgroup, 0, len(cgs))
	for _, c := range cgs {
		out = append(out, core.Cgroup{Controllers: c.Controllers, Path: c.Path})
	}
	return out, nil
}

// foldCgroups makes the leader's cgroups the process's, and keeps a
// thread's own only where they differ.
func foldCgroups(p *core.Process) {
	if len(p.Threads) == 0 || p.Threads[0].Cgroups == nil {
		return
	}
	p.Cgroups = p.Threads[0].Cgroups
	for i := range p.Threads {
		if slices.Equal(p.Threads[i].Cgroups, p.Cgroups) {
			p.Threads[i].Cgroups = nil
		}
	}
}

// readCgroupLimits records the limits of the cgroup v2 cgroups of procs
// (core.CgroupLimits): every one but the root and the one migrate runs
// in, each once, where migrate sees the cgroup2 hierarchy mounted. A
// limit file the cgroup lacks (its controller not enabled) is left out.
func readCgroupLimits(procs []core.Process) ([]core.CgroupLimits, error) {
	own, err := proc.ReadCgroups(os.Getpid(), os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("migrate's cgroups: %w", err)
	}
	skip := map[string]bool{"/": true}
	for _, c := range own {
		if c.Controllers == "" {
			skip[c.Path] = true
		}
	}
	var mounts []proc.CgroupMount
	var out []core.CgroupLimits
	for i := range procs {
		for _, c := range procs[i].Cgroups {
			if c.Controllers != "" || skip[c.Path] {
				continue
			}
			skip[c.Path] = true
			if mounts == nil {
				if mounts, err = proc.ReadCgroupMounts(); err != nil {
					return nil, fmt.Errorf("cgroup mounts: %w", err)
				}
			}
			m, rel, ok := proc.CgroupMountFor(mounts, "", c.Path)
			if !ok {
				// Not mounted in migrate's mount namespace: its limits
				// are not recorded, and the target must have the
				// cgroup, as for one without limits.
				continue
			}
			cl, err := readLimits(m.Dir, rel, c.Path)
			if err != nil {
				return nil, err
			}
			out = append(out, cl)
		}
	}
	return out, nil
}

// readLimits reads the limits of cgroup path, directory rel below the
// cgroup2 mount at dir.
func readLimits(dir, rel, path string) (core.CgroupLimits, error) {
	cl := core.CgroupLimits{Path: path, Files: map[string]string{}}
	parent := filepath.Dir(rel)
	sub, err := proc.ReadCgroupFile(dir, parent, "cgroup.subtree_control")
	if err != nil {
		return cl, fmt.Errorf("cgroup v2 %s: its parent's controllers: %w", path, err)
	}
	for _, ctl := range strings.Fields(sub) {
		if slices.Contains(core.CgroupLimitControllers, ctl) {
			cl.Controllers = append(cl.Controllers, ctl)
		}
	}
	for _, name := range core.CgroupLimitFiles {
		v, err := proc.ReadCgroupFile(dir, rel, name)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return cl, fmt.Errorf("cgroup v2 %s: %w", path, err)
		}
		cl.Files[name] = v
	}
	return cl, nil
}
