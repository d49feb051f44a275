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
// all holds the root on entry and gets every frozen descendant, parents
// before children.
func freezeTree(ss *session, all *[]*dumper, img *core.Image) ([]core.Process, error) {
	root := (*all)[0]
	seize := func(pid int) (*ptrace.Proc, error) {
		p, err := ss.tr.Seize(pid)
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			return nil, &BadTargetError{PID: pid, Reason: te.Error()}
		}
		return p, err
	}
	var err error
	if root.p, err = seize(root.pid); err != nil {
		return nil, err
	}
	if !ss.opts.Tree {
		return nil, nil
	}
	var zombies []core.Process
	seen := map[int]bool{root.pid: true}
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
				if err := checkMember(kid, status); err != nil {
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
