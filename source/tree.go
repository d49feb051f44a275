package source

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

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
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, tid))
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
func freezeTree(ss *session, all *[]*dumper, img *core.Image) ([]core.Process, error) {
	seize := func(pid int) (*ptrace.Proc, error) {
		p, err := ss.tr.Seize(pid)
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			return nil, &BadTargetError{PID: pid, Reason: te.Error()}
		}
		return p, err
	}
	seen := map[int]bool{}
	for _, d := range *all {
		var err error
		if d.p, err = seize(d.pid); err != nil {
			return nil, ss.memberGone(d.pid, err)
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
				st, err := proc.ReadStat(kid)
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
				if err != nil {
					return nil, fmt.Errorf("child %d of process %d: %w", kid, parent.pid, err)
				}
				if status.TracerPID != 0 && status.TracerPID != os.Getpid() {
					return nil, &BadTargetError{PID: kid, Reason: fmt.Sprintf("this child of %d is traced by process %d", parent.pid, status.TracerPID)}
				}
				if err := checkMember(kid, ss.opts.PID, status); err != nil {
					return nil, err
				}
				d := &dumper{
					session: ss, pid: kid, stat: st, status: status,
					proc:  &core.Process{},
					pages: &core.PagesInfo{File: pagesFile(kid, false), Codec: ss.codec.String()},
				}
				d.proc.Pages = d.pages
				*all = append(*all, d)
				if d.p, err = seize(kid); err != nil {
					return nil, err
				}
			}
		}
	}
	return zombies, nil
}

// treeMember is a process of a running tree: its parent, and whether it
// is a zombie.
type treeMember struct {
	ppid   int
	zombie bool
}

// walkTree lists root and its descendants as they run, parents first.
// Nothing stops them: a process may fork or exit meanwhile (what the
// shape check of a live migration looks for, round after round).
func walkTree(root int) ([]int, map[int]treeMember, error) {
	pids := []int{root}
	members := map[int]treeMember{root: {}}
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
			m := treeMember{ppid: pids[i]}
			if st, err := proc.ReadStat(kid); err == nil && (st.State == 'Z' || st.State == 'X') {
				m.zombie = true
			}
			members[kid] = m
			pids = append(pids, kid)
		}
	}
	return pids, members, nil
}

// treeChange compares a tree with what it was: the first process that
// forked into it or exited from it, as a *TreeChangedError, or nil.
func treeChange(was, now map[int]treeMember) error {
	for _, pid := range sortedKeys(now) {
		m := now[pid]
		w, ok := was[pid]
		switch {
		case !ok:
			return &TreeChangedError{PID: pid, Parent: m.ppid, Change: "forked"}
		case m.zombie && !w.zombie:
			return &TreeChangedError{PID: pid, Parent: w.ppid, Change: "exited"}
		}
	}
	for _, pid := range sortedKeys(was) {
		if _, ok := now[pid]; !ok {
			return &TreeChangedError{PID: pid, Parent: was[pid].ppid, Change: "exited"}
		}
	}
	return nil
}

func sortedKeys(m map[int]treeMember) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
