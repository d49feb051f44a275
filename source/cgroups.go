package source

import (
	"fmt"
	"slices"

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
