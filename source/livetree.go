package source

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/transport"
)

// A live migration moves the tree as it is when it is frozen. Pre-copy
// takes it again at the start of each round (regroup): a process that
// forked into it since joins (tracked from then on, with a page stream
// of its own that begins with all its memory), one that exited leaves
// (its tracking and stream end; a zombie moves as one), and each round's
// layout names the tree as it is (handoff.LiveLayout.Members). The
// freeze stops the whole tree at once (freezeTree, until no frozen
// process has a child that is not frozen: a frozen process forks no
// more, and exits no more), and settleFrozen takes the frozen tree as it
// is: a process forked since the last round joins in the frozen window,
// with all its memory in the final round; one that exited leaves.

// pagesOut is the page stream of one process to the target. It opens
// with the layout that names the process first (openPages); what is
// written before waits: a process that leaves before (it exits as it
// joins, or the policy stops the pre-copy before the round it joined)
// leaves no stream behind, which the target would take for another's.
type pagesOut struct {
	conn    net.Conn
	w       io.Writer // conn, or conn under the migration's bandwidth; nil until open
	waiting []byte
}

func (po *pagesOut) Write(p []byte) (int, error) {
	if po.w == nil {
		po.waiting = append(po.waiting, p...)
		return len(p), nil
	}
	return po.w.Write(p)
}

// open opens the page stream of process pid, which begins with its PID
// in a tree (handoff.LiveLayout.Members), and sends what waits.
func (po *pagesOut) open(a *liveSource, pid int) error {
	conn, err := a.sess.OpenStream(transport.KindPages)
	if err != nil {
		return err
	}
	po.conn, po.w = conn, conn
	if a.budget != nil {
		po.w = &limitedWriter{w: conn, b: a.budget}
	}
	if a.tree {
		var b [handoff.PagesPIDLen]byte
		binary.LittleEndian.PutUint32(b[:], uint32(pid))
		if _, err := conn.Write(b[:]); err != nil {
			return err
		}
	}
	_, err = po.w.Write(po.waiting)
	po.waiting = nil
	return err
}

// closePages closes every page stream still open.
func (a *liveSource) closePages() {
	for d, pos := range a.pages {
		for _, po := range pos {
			if po.conn != nil {
				po.conn.Close()
			}
		}
		delete(a.pages, d)
	}
}

// join makes d a process of the migration: what the target needs to
// create it (identify), its tracking begun if tracked (pre-copy: d.track;
// frozen, a wholeTracker is given it), and its page stream and sink.
func (a *liveSource) join(d *dumper, tracked bool) error {
	if err := identify(d); err != nil {
		return err
	}
	if tracked {
		if err := d.track(); err != nil {
			return err
		}
	}
	name := "the page stream to the target"
	if a.tree {
		name = fmt.Sprintf("the page stream of process %d to the target", d.pid)
	}
	// Several page streams a process (MigrateOptions.Streams), each
	// compressed, sent, read and written into the process on its own.
	pos := make([]*pagesOut, max(a.streams, 1))
	ws := make([]io.Writer, len(pos))
	for i := range pos {
		pos[i] = &pagesOut{}
		ws[i] = pos[i]
	}
	var err error
	if d.sink, err = d.newSinks(d.codec, ws, name); err != nil {
		return err
	}
	if tracked {
		d.armSink()
	}
	a.pages[d] = pos
	return nil
}

// openPages opens the page streams of the processes that joined since
// the last layout, just before the layout that names them.
func (a *liveSource) openPages() error {
	for _, d := range a.all {
		for _, po := range a.pages[d] {
			if po.w == nil {
				if err := po.open(a, d.pid); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// leave ends what the migration had of process d, which left the tree
// or exited: its tracking (nothing of it is left in the process, if it
// runs on), its page stream (ended: the target removes the process).
func (a *liveSource) leave(d *dumper) {
	a.left = append(a.left, d)
	if d.tracker != nil {
		if err := d.tracker.Close(); err != nil {
			d.log.Debug("stop the tracking of a process that left the tree", "pid", d.pid, "err", err)
		}
		d.tracker = nil
	}
	if d.sink != nil && !d.sink.closed {
		if _, err := d.sink.finish(); err != nil {
			d.sink.abort()
		}
	}
	for _, po := range a.pages[d] {
		if po.conn != nil {
			po.conn.Close()
		}
	}
	delete(a.pages, d)
}

// newMember is a dumper for pid, a process of the tree that
// the migration does not have yet, once it passes the checks each
// process of the tree passes.
func (a *liveSource) newMember(pid int) (*dumper, error) {
	ss := a.d.session
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil, err
	}
	status, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	if err := checkMember(pid, a.d.pid, status); err != nil {
		return nil, err
	}
	if err := refuseDeletedMappings(pid); err != nil {
		return nil, err
	}
	d := &dumper{session: ss, pid: pid, stat: st, status: status, proc: &core.Process{},
		pages: &core.PagesInfo{File: pagesFile(pid, false), Codec: ss.codec.String()}}
	d.proc.Pages = d.pages
	return d, nil
}

// zombieOf describes pid, a zombie child of ppid.
func zombieOf(pid, ppid int) (core.Process, error) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return core.Process{}, err
	}
	if st.State != 'Z' && st.State != 'X' {
		return core.Process{}, fmt.Errorf("process %d is not a zombie (%c)", pid, st.State)
	}
	return core.Process{PID: pid, PPID: ppid, PGID: st.PGRP, SID: st.Session, Comm: st.Comm,
		Zombie: &core.Zombie{ExitCode: st.ExitCode}}, nil
}

// regroup is the session's regroup (pre-copy, at the start of each
// round): the tree is read again, and a.all follows it. A process that
// exits before it is taken in is left out (it joins at a later round if
// it is a zombie then), and so are its children. What cannot be followed
// is a *TreeChangedError (diffTree).
func (a *liveSource) regroup(_ context.Context, _ []*dumper) (_ []*dumper, err error) {
	// The processes taken in by this call: on an error, a.all stays as
	// it was and they are let go (the rollback sees a.all).
	var fresh []*dumper
	defer func() {
		if err != nil {
			for _, d := range fresh {
				a.leave(d)
			}
		}
	}()
	pids, now, err := walkTree(a.d.pid)
	if err != nil {
		return nil, err
	}
	delta, err := diffTree(a.members, now, pids)
	if err != nil {
		return nil, err
	}
	if a.d.container && a.d.sink != nil {
		if err := containerChange(delta, a.members, now); err != nil {
			return nil, err
		}
	}
	if a.d.sink == nil {
		// The first round: the page streams a process, fewer for a tree
		// of many processes, whose streams (one each already) keep the
		// CPUs busy by themselves and must all wait, opened, for the
		// target to take them at the first layout (see
		// maxPendingStreams).
		a.streams = max(1, min(a.streams, maxPendingStreams/len(pids)))
		// The root joins first.
		if err := a.join(a.d, true); err != nil {
			return nil, err
		}
	}
	gone := map[int]bool{}
	for _, pid := range append(slices.Clone(delta.left), delta.died...) {
		gone[pid] = true
	}
	kept := a.all[:0:0]
	for _, d := range a.all {
		if gone[d.pid] {
			a.leave(d)
			continue
		}
		kept = append(kept, d)
	}
	joined := map[int]bool{}
	for _, pid := range delta.joined {
		joined[pid] = true
	}
	oldZombies := map[int]core.Process{}
	for _, z := range a.zombies {
		oldZombies[z.PID] = z
	}
	var zombies []core.Process
	for _, pid := range pids[1:] {
		m := now[pid]
		if p, ok := now[m.ppid]; !ok || p.zombie {
			// Its parent was not taken in (or is a zombie now: the
			// walk raced with its exit, and the child is not in the
			// tree any more).
			delete(now, pid)
			continue
		}
		if m.zombie {
			z, ok := oldZombies[pid]
			if !ok {
				if z, err = zombieOf(pid, m.ppid); err != nil {
					delete(now, pid) // reaped since
					continue
				}
			}
			zombies = append(zombies, z)
			continue
		}
		if !joined[pid] {
			continue // in kept
		}
		d, err := a.newMember(pid)
		if err == nil {
			err = a.join(d, true)
		}
		if err != nil {
			if d != nil {
				a.leave(d)
			}
			if exited(pid) {
				delete(now, pid)
				continue
			}
			return nil, err
		}
		// All its memory in its first round (a forked child shares its
		// pages with its parent until either writes them: it is sent
		// as its own).
		d.pending = wholeRanges(d.preLayout)
		kept = append(kept, d)
		fresh = append(fresh, d)
	}
	if !delta.empty() {
		a.d.log.Info("pre-copy: the tree changed", "joined", len(delta.joined), "exited", len(delta.died), "left", len(delta.left), "processes", len(kept), "zombies", len(zombies))
	}
	a.all, a.zombies, a.members = kept, zombies, now
	return a.all, nil
}

// settleFrozen takes the frozen tree as it is (all, zombies: what
// freezeTree found, a.all first): a process forked since the last round
// joins now, with all its memory for the final round; one that exited
// (not seized), or that left the tree (its parent exited: it was seized
// but runs on), leaves. Nothing of a.all changes on an error.
//
// Preconditions: every process of all with a tracee is frozen.
func (a *liveSource) settleFrozen(all []*dumper, zombies []core.Process) (err error) {
	in := map[int]bool{}
	now := map[int]treeMember{}
	var kept, out []*dumper
	for i, d := range all {
		if d.p == nil {
			continue // exited before it was seized
		}
		st, err := proc.ReadStat(d.pid)
		if err != nil {
			return fmt.Errorf("process %d, frozen: %w", d.pid, err)
		}
		m, was := a.members[d.pid]
		switch {
		case i == 0:
		case !in[st.PPID]:
			out = append(out, d)
			continue
		case was && m.ppid != st.PPID:
			return &TreeChangedError{PID: d.pid, Parent: m.ppid, Change: fmt.Sprintf("lost its parent (now a child of %d)", st.PPID)}
		case was && m.start != st.StartTime:
			return &TreeChangedError{PID: d.pid, Parent: m.ppid, Change: "exited, and another process took its PID"}
		}
		in[d.pid] = true
		now[d.pid] = treeMember{ppid: st.PPID, start: st.StartTime}
		if i == 0 {
			now[d.pid] = treeMember{start: st.StartTime}
		}
		kept = append(kept, d)
	}
	var zs []core.Process
	for _, z := range zombies {
		if in[z.PPID] {
			zs = append(zs, z)
			now[z.PID] = treeMember{ppid: z.PPID, zombie: true}
		}
	}
	if a.d.container {
		var order []int
		for _, d := range kept {
			order = append(order, d.pid)
		}
		for _, z := range zs {
			order = append(order, z.PID)
		}
		delta, err := diffTree(a.members, now, order)
		if err == nil {
			err = containerChange(delta, a.members, now)
		}
		if err != nil {
			return err
		}
	}
	// Newcomers: their memory goes whole in the final round.
	isMember := map[*dumper]bool{}
	for _, d := range a.all {
		isMember[d] = true
	}
	var fresh []*dumper
	defer func() {
		if err != nil {
			for _, d := range fresh {
				a.leave(d) // (the caller detaches it)
			}
		}
	}()
	for _, d := range kept {
		if isMember[d] {
			continue
		}
		d.tracker = wholeTracker{}
		fresh = append(fresh, d)
		if err := a.join(d, false); err != nil {
			return err
		}
	}
	// Those that left run on, untouched.
	for _, d := range out {
		if err := d.p.Detach(); err != nil {
			return fmt.Errorf("process %d left the tree as it was frozen: %w", d.pid, err)
		}
		d.p = nil
	}
	keptSet := map[*dumper]bool{}
	for _, d := range kept {
		keptSet[d] = true
	}
	for _, d := range a.all {
		if !keptSet[d] {
			a.leave(d)
		}
	}
	changed := len(kept) != len(a.all) || len(zs) != len(a.zombies)
	for i := range min(len(kept), len(a.all)) {
		changed = changed || kept[i] != a.all[i]
	}
	if changed {
		a.d.log.Info("the tree changed as it was frozen", "processes", len(kept), "was", len(a.all), "zombies", len(zs), "were", len(a.zombies))
	}
	a.all, a.zombies, a.members = kept, zs, now
	if changed && a.record != "" {
		// The record names the frozen tree (for `migrate recover`).
		var tree []int
		for _, d := range a.all[1:] {
			tree = append(tree, d.pid)
		}
		if rec, err := writeRecord(a.d.pid, a.hookEnv["MIGRATE_SESSION"], a.hookEnv["MIGRATE_TARGET"], tree, a.shm); err == nil {
			a.record = rec
		}
	}
	return nil
}

// containerChange is a *TreeChangedError for the first change of delta
// (between was and now), nil if there is none: a container moved whole
// keeps its tree until it is frozen (each layout names the PIDs inside of
// the processes the target creates at the first).
func containerChange(delta treeDelta, was, now map[int]treeMember) error {
	const why = " (a container's processes cannot change while it moves)"
	switch {
	case len(delta.joined) > 0:
		return &TreeChangedError{PID: delta.joined[0], Parent: now[delta.joined[0]].ppid, Change: "forked" + why}
	case len(delta.died) > 0:
		return &TreeChangedError{PID: delta.died[0], Parent: was[delta.died[0]].ppid, Change: "exited" + why}
	case len(delta.left) > 0:
		return &TreeChangedError{PID: delta.left[0], Parent: was[delta.left[0]].ppid, Change: "exited" + why}
	}
	return nil
}

// wholeRanges are the areas of vmas that hold pages, whole.
func wholeRanges(vmas []core.VMA) []PageRange {
	var out []PageRange
	for _, v := range vmas {
		if holdsPages(v.Kind) {
			out = append(out, PageRange{Start: v.Start, End: v.End})
		}
	}
	return out
}

// wholeTracker is the tracker of a process that joined a live
// migration's tree in the frozen window: every page it holds is dirty.
type wholeTracker struct{}

func (wholeTracker) Name() string                         { return "whole" }
func (wholeTracker) Start(*ptrace.Proc, []core.VMA) error { return nil }
func (wholeTracker) Dirty(vmas []core.VMA) ([]PageRange, error) {
	return wholeRanges(vmas), nil
}
func (wholeTracker) Held() time.Duration { return 0 }
func (wholeTracker) Close() error        { return nil }

// maxPendingStreams bounds the page streams of the processes a tree's
// first layout names, which are all opened before the target accepts
// any: well within what a transport session holds unaccepted (yamux's
// backlog and the session's queue, 64 each), as one stream a process
// has been.
const maxPendingStreams = 32
