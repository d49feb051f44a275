package target

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
)

// Only the PIDs inside a container matter to its processes: those
// outside (the source's, migrate's namespace's) may be taken here. A
// restore then gives the container's processes and threads other PIDs
// outside (renumberContainer), and so does a live migration, for the
// whole session (outerPIDs): whatever the source names by its outer PID
// (a layout's processes, a page stream's, the state's image) is read
// through the map as it comes in, so that the builder, the check and the
// report know the PIDs here only.

// freePIDs hands out PIDs free here for processes and threads renumbered
// outside a container: past those the kernel hands out next, so that
// the process forked next on this host does not find its PID taken by
// the container.
type freePIDs struct {
	next, max int
}

func newFreePIDs() *freePIDs {
	readInt := func(name string) int {
		b, _ := os.ReadFile(name)
		n, _ := strconv.Atoi(string(trimSpace(b)))
		return n
	}
	f := &freePIDs{max: readInt("/proc/sys/kernel/pid_max")}
	if f.max < 1000 {
		f.max = 1 << 15
	}
	f.next = readInt("/proc/sys/kernel/ns_last_pid") + 1000
	return f
}

// take returns a PID free here that avoid does not reject.
func (f *freePIDs) take(avoid func(int) bool) (int, error) {
	for tries := 0; tries <= f.max; tries++ {
		if f.next >= f.max {
			f.next = 300
		}
		n := f.next
		f.next++
		if !avoid(n) && pidFree(n) == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("no free PID here (pid_max %d)", f.max)
}

// outerPIDs maps the outer PIDs and TIDs of a container moved live, as
// the source names them, to those its processes and threads have here:
// the same where it was free when the process (or thread) was made here,
// another free one where it was taken. The map holds the tree's
// processes as the latest layout named them and, once the state came,
// its threads. Not safe for concurrent use: the session's goroutine
// (the layouts and the state) changes it, and the page streams of a
// layout are taken after it (acceptStreams).
type outerPIDs struct {
	here map[int]int // source's -> here
	// given are the PIDs here the session gave out, to whom (the
	// source's): kept after their process left, so that no newcomer
	// takes one of them for its own while it may still be held.
	given map[int]int
	free  *freePIDs
}

func newOuterPIDs() *outerPIDs {
	return &outerPIDs{here: map[int]int{}, given: map[int]int{}}
}

// local returns what the process or thread the source names pid is here;
// ok is false if the map does not hold it.
func (o *outerPIDs) local(pid int) (int, bool) {
	n, ok := o.here[pid]
	return n, ok
}

// assign gives pid a PID here if the map does not hold it yet: its own
// where that is free (with wait, a zombie holding it is waited for a
// moment: see pidFree) and not given to another, else a free one that is none
// of named (the IDs the source names with it: those of the processes
// and threads being assigned, which may keep theirs, and the parents,
// groups and sessions outside the container, which a PID here must not
// be taken for).
func (o *outerPIDs) assign(pid int, named map[int]bool, wait bool) error {
	if _, ok := o.here[pid]; ok {
		return nil
	}
	free := pidTaken
	if wait {
		free = pidFree
	}
	n := pid
	if _, given := o.given[pid]; given || free(pid) != nil {
		if o.free == nil {
			o.free = newFreePIDs()
		}
		var err error
		n, err = o.free.take(func(c int) bool { _, ok := o.given[c]; return ok || named[c] })
		if err != nil {
			return fmt.Errorf("pid %d of the container is taken here: %w", pid, err)
		}
	}
	o.here[pid], o.given[n] = n, pid
	return nil
}

// layout assigns a PID here to each process of layout ll (those of the
// layouts before keep theirs), forgets those it no longer names, and
// renumbers ll (its processes, and the PIDs inside listed for them).
func (o *outerPIDs) layout(ll *handoff.LiveLayout) error {
	procs := append([]core.Process{ll.Process}, ll.Tree...)
	members := map[int]bool{}
	for _, p := range procs {
		members[p.PID] = true
	}
	// Those gone are forgotten: the source may give their PIDs to
	// newcomers, which get PIDs here of their own.
	for pid := range o.here {
		if !members[pid] {
			delete(o.here, pid)
		}
	}
	named := namedIDs(procs)
	for _, p := range procs {
		if err := o.assign(p.PID, named, true); err != nil {
			return err
		}
	}
	img := layoutImage(ll)
	img.RenumberOuter(o.here)
	ll.Process = img.Process // (the tree and namespaces are ll's own)
	return nil
}

// image assigns a PID here to each process and thread of img, the
// state's, and renumbers it.
func (o *outerPIDs) image(img *core.Image) error {
	procs := append([]core.Process{img.Process}, img.Tree...)
	var ids []int
	for _, p := range procs {
		ids = append(ids, p.PID)
		for _, th := range p.Threads {
			ids = append(ids, th.TID)
		}
	}
	named := namedIDs(procs)
	for _, id := range ids {
		// (In the frozen window: no wait for a zombie.)
		if err := o.assign(id, named, false); err != nil {
			return err
		}
	}
	img.RenumberOuter(o.here)
	return nil
}

// move gives the processes and threads that have the PIDs here m's keys
// m's values instead (all at once): a rootless container's tasks that the
// restore made with other PIDs (moveOuter).
func (o *outerPIDs) move(m map[int]int) {
	for src, h := range o.here {
		if n, ok := m[h]; ok {
			o.here[src], o.given[n] = n, src
		}
	}
}

// moved lists, sorted, the PIDs and TIDs the map changes.
func (o *outerPIDs) moved() []handoff.Renumbered {
	var out []handoff.Renumbered
	for pid, n := range o.here {
		if pid != n {
			out = append(out, handoff.Renumbered{PID: pid, TargetPID: n})
		}
	}
	slices.SortFunc(out, func(a, b handoff.Renumbered) int { return a.PID - b.PID })
	return out
}

// describeMoves says which outer PIDs a container got here, for a
// report's warnings.
func describeMoves(moves []handoff.Renumbered) string {
	var s []string
	for _, m := range moves {
		s = append(s, m.String())
	}
	return fmt.Sprintf("the container's PIDs here are taken: its processes and threads get other PIDs outside it (%s), the same inside",
		strings.Join(s, " "))
}

// namedIDs are the IDs procs name: their PIDs, parents, groups,
// sessions and threads.
func namedIDs(procs []core.Process) map[int]bool {
	named := map[int]bool{}
	for _, p := range procs {
		named[p.PID], named[p.PPID], named[p.PGID], named[p.SID] = true, true, true, true
		for _, th := range p.Threads {
			named[th.TID] = true
		}
	}
	return named
}
