package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// childrenOf lists the child processes of pid, from the children files of
// all its threads (a child belongs to the thread that forked it).
func childrenOf(pid int) ([]int, error) {
	tids, err := proc.ReadTIDs(pid)
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, tid := range tids {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, tid))
		if err != nil {
			continue // the thread exited
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				kids = append(kids, n)
			}
		}
	}
	sort.Ints(kids)
	return kids, nil
}

// freezeTree seizes the root and, with opts.Tree, every descendant, until
// no frozen process has a child that is not frozen (a process that was
// forking while its parent was seized shows up on the next pass). Zombies
// cannot be seized: they are described and returned.
//
// all holds the root on entry (and, for a live migration, the
// descendants its pre-copy tracked, parents first, seized in that order)
// and gets every other frozen descendant, parents before children.
//
// With ss.freezer, the cgroup of the tree is frozen first, and thawed
// once every process is seized (or on the way out, whatever the way):
// the processes stay stopped by ptrace (see freezer.go).
func freezeTree(ctx context.Context, ss *session, all *[]*dumper, img *core.Image) ([]core.Process, error) {
	start := time.Now()
	ss.froze = "ptrace"
	if ss.freezer != nil && ss.freezer.stop(ctx) {
		ss.froze = "cgroup"
	}
	defer ss.freezer.thaw()
	if ss.froze == "cgroup" {
		if err := ss.hook(stageCgroupFrozen); err != nil {
			return nil, err
		}
	}
	zombies, err := seizeTree(ss, all)
	ss.freezer.thaw()
	ss.freezeTime = time.Since(start)
	if err == nil {
		ss.log.Debug("tree stopped", "by", ss.froze, "processes", len(*all), "took", ss.freezeTime)
	}
	return zombies, err
}

// seizeTree is freezeTree's seize.
func seizeTree(ss *session, all *[]*dumper) ([]core.Process, error) {
	seized := 0
	seize := func(pid int) (*ptrace.Proc, error) {
		p, err := ss.tracerFor(seized).Seize(pid)
		if err == nil {
			seized++
		}
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			return nil, &BadTargetError{PID: pid, Reason: te.Error()}
		}
		return p, err
	}
	seen := map[int]bool{}
	// The processes known are seized at the same time, each on its
	// tracer: the tree stops sooner, and closer to at once.
	known := *all
	trs := make([]*ptrace.Tracer, len(known))
	for i := range known {
		trs[i] = ss.tracerFor(i)
	}
	errs := make([]error, len(known))
	if len(known) == 1 {
		known[0].p, errs[0] = trs[0].Seize(known[0].pid)
	} else {
		var wg sync.WaitGroup
		for i, d := range known {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.p, errs[i] = trs[i].Seize(d.pid)
			}()
		}
		wg.Wait()
	}
	for i, d := range known {
		err := errs[i]
		if err == nil {
			seized++
		}
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			err = &BadTargetError{PID: d.pid, Reason: te.Error()}
		}
		if err != nil {
			d.p = nil
			if i > 0 && ss.regroup != nil && exited(d.pid) {
				// It exited since the tree was read: the caller sees
				// it without a tracee (and, a zombie, among the
				// zombies).
				continue
			}
			return nil, err
		}
		seen[d.pid] = true
	}
	if !ss.opts.Tree {
		return nil, nil
	}
	var zombies []core.Process
	for changed := true; changed; {
		changed = false
		for i := 0; i < len(*all); i++ {
			parent := (*all)[i]
			if parent.p == nil {
				continue // exited
			}
			kids, err := childrenOf(parent.pid)
			if err != nil {
				return nil, fmt.Errorf("children of process %d: %w", parent.pid, err)
			}
			for _, kid := range kids {
				if seen[kid] {
					continue
				}
				seen[kid] = true
				changed = true
				// A live migration takes a child that exits before it is
				// seized as what it is then: a zombie, or nothing.
				live := ss.regroup != nil
				st, err := proc.ReadStat(kid)
				if err != nil && live {
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("child %d of process %d: %w", kid, parent.pid, err)
				}
				if st.State == 'Z' || st.State == 'X' {
					zombies = append(zombies, core.Process{
						PID: kid, PPID: parent.pid, PGID: st.PGRP, SID: st.Session, Comm: st.Comm,
						Zombie: &core.Zombie{ExitCode: st.ExitCode},
					})
					continue
				}
				status, err := proc.ReadStatus(kid)
				if err != nil && live {
					delete(seen, kid)
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("child %d of process %d: %w", kid, parent.pid, err)
				}
				if status.TracerPID != 0 && status.TracerPID != os.Getpid() {
					return nil, &BadTargetError{PID: kid, Reason: fmt.Sprintf("this child of %d is traced by process %d", parent.pid, status.TracerPID)}
				}
				if err := checkMember(kid, ss.opts.PID, status); err != nil {
					if live && exited(kid) {
						delete(seen, kid)
						continue
					}
					return nil, err
				}
				d := &dumper{
					session: ss, pid: kid, stat: st, status: status,
					proc:  &core.Process{},
					pages: &core.PagesInfo{File: pagesFile(kid, false), Codec: ss.codec.String()},
				}
				d.proc.Pages = d.pages
				if d.p, err = seize(kid); err != nil {
					if live && exited(kid) {
						delete(seen, kid)
						continue
					}
					return nil, err
				}
				*all = append(*all, d)
			}
		}
	}
	return zombies, nil
}

// exited says whether process pid exited: gone, a zombie, or on its
// way (PF_EXITING: its memory may be gone already).
func exited(pid int) bool {
	const pfExiting = 0x4
	st, err := proc.ReadStat(pid)
	return err != nil || st.State == 'Z' || st.State == 'X' || st.Flags&pfExiting != 0
}

// descendantOf says whether process pid is a descendant of root now (its
// parents up to root, read from /proc).
func descendantOf(pid, root int) bool {
	for i := 0; i < 1<<16 && pid > 1; i++ {
		st, err := proc.ReadStat(pid)
		if err != nil {
			return false
		}
		if st.PPID == root {
			return true
		}
		pid = st.PPID
	}
	return false
}

// treeMember is a process of a running tree: its parent, whether it is
// a zombie, and its start time (which tells a process from another that
// took its PID).
type treeMember struct {
	ppid   int
	zombie bool
	start  uint64
}

// walkTree lists root and its descendants as they run, parents first.
// Nothing stops them: a process may fork or exit meanwhile (what pre-copy
// looks for, round after round: diffTree).
func walkTree(root int) ([]int, map[int]treeMember, error) {
	pids := []int{root}
	members := map[int]treeMember{root: {}}
	if st, err := proc.ReadStat(root); err == nil {
		members[root] = treeMember{start: st.StartTime}
	}
	for i := 0; i < len(pids); i++ {
		kids, err := childrenOf(pids[i])
		if err != nil {
			if i == 0 {
				return nil, nil, fmt.Errorf("children of process %d: %w", pids[i], err)
			}
			continue // it exited: its children, if any, went to a reaper
		}
		for _, kid := range kids {
			if _, ok := members[kid]; ok {
				continue
			}
			st, err := proc.ReadStat(kid)
			if err != nil {
				continue // gone already, reaped
			}
			members[kid] = treeMember{ppid: pids[i], zombie: st.State == 'Z' || st.State == 'X', start: st.StartTime}
			pids = append(pids, kid)
		}
	}
	return pids, members, nil
}

// treeDelta is how a tree changed between two reads (diffTree).
type treeDelta struct {
	// joined forked into the tree, parents first (zombies too: a
	// process that forked and exited in between joins as a zombie).
	joined []int
	// died were running and are zombies now; left are gone (reaped, or
	// out of the tree with a parent that left), children first.
	died, left []int
}

func (d treeDelta) empty() bool { return len(d.joined)+len(d.died)+len(d.left) == 0 }

// diffTree compares a tree with what it was (order: now's processes,
// parents first, as walkTree lists them). What a migration cannot follow
// is a *TreeChangedError: a process that stayed but has another parent
// now (an orphan the root, a subreaper, took in), or a PID that another
// process took since (its start time differs); the target cannot give a
// process another parent, nor tell the two apart.
func diffTree(was, now map[int]treeMember, order []int) (treeDelta, error) {
	var d treeDelta
	for _, pid := range order {
		m := now[pid]
		w, ok := was[pid]
		switch {
		case !ok:
			d.joined = append(d.joined, pid)
		case w.start != m.start:
			return d, &TreeChangedError{PID: pid, Parent: w.ppid, Change: "exited, and another process took its PID"}
		case w.ppid != m.ppid:
			return d, &TreeChangedError{PID: pid, Parent: w.ppid, Change: fmt.Sprintf("lost its parent (now a child of %d)", m.ppid)}
		case m.zombie && !w.zombie:
			d.died = append(d.died, pid)
		case !m.zombie && w.zombie:
			return d, &TreeChangedError{PID: pid, Parent: w.ppid, Change: "exited, and another process took its PID"}
		}
	}
	for _, pid := range sortedKeys(was) {
		if _, ok := now[pid]; !ok {
			d.left = append(d.left, pid)
		}
	}
	// Children first: deepest first, by the depth each had.
	depth := func(pid int) int {
		n := 0
		for p := was[pid].ppid; p != 0 && n < len(was); p = was[p].ppid {
			n++
		}
		return n
	}
	sort.SliceStable(d.left, func(i, j int) bool { return depth(d.left[i]) > depth(d.left[j]) })
	return d, nil
}

func sortedKeys(m map[int]treeMember) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
