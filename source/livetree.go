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
// runs on; treeFollow.leave), its page stream (ended: the target removes
// the process).
func (a *liveSource) leave(d *dumper) {
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

// treeFollow follows a tree that runs while pre-copy copies it (a live
// migration's, a dump's with --pre-copy): all are the processes that are
// not zombies, parents first, and zombies the others; members is the
// tree's shape as the latest round (or the freeze) took it; left are the
// processes that left (their sinks' figures count). onJoin gives a process
// that joins what the copy needs of it (its tracking begun if tracked,
// a sink); onLeave ends what it had (after the tracking: leave).
type treeFollow struct {
	root    *dumper
	all     []*dumper
	left    []*dumper
	zombies []core.Process
	members map[int]treeMember
	onJoin  func(d *dumper, tracked bool) error
	onLeave func(d *dumper)
}

func newTreeFollow(root *dumper, m treeMember) *treeFollow {
	return &treeFollow{root: root, all: []*dumper{root}, members: map[int]treeMember{root.pid: m}}
}

// leave ends what the copy had of process d, which left the tree or
// exited: its tracking (nothing of it is left in the process, if it runs
// on), then onLeave.
func (t *treeFollow) leave(d *dumper) {
	t.left = append(t.left, d)
	if d.tracker != nil {
		if err := d.tracker.Close(); err != nil {
			d.log.Debug("stop the tracking of a process that left the tree", "pid", d.pid, "err", err)
		}
		d.tracker = nil
	}
	t.onLeave(d)
}

// newMember is a dumper for pid, a process of the tree that
// the migration does not have yet, once it passes the checks each
// process of the tree passes.
func (t *treeFollow) newMember(pid int) (*dumper, error) {
	ss := t.root.session
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil, err
	}
	status, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	if err := checkMember(pid, t.root.pid, status); err != nil {
		return nil, err
	}
	ss.noteInner(pid, status)
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
// round): the tree is read again, and t.all follows it. A process that
// exits before it is taken in is left out (it joins at a later round if
// it is a zombie then), and so are its children. What cannot be followed
// is a *TreeChangedError (diffTree).
func (t *treeFollow) regroup(_ context.Context, _ []*dumper) (_ []*dumper, err error) {
	// The processes taken in by this call: on an error, t.all stays as
	// it was and they are let go (the rollback sees t.all).
	var fresh []*dumper
	defer func() {
		if err != nil {
			for _, d := range fresh {
				t.leave(d)
			}
		}
	}()
	pids, now, err := walkTree(t.root.pid)
	if err != nil {
		return nil, err
	}
	delta, err := diffTree(t.members, now, pids)
	if err != nil {
		return nil, err
	}
	if t.root.tracker == nil {
		// The first round: the root joins first.
		if err := t.onJoin(t.root, true); err != nil {
			return nil, err
		}
	}
	gone := map[int]bool{}
	for _, pid := range append(slices.Clone(delta.left), delta.died...) {
		gone[pid] = true
	}
	kept := t.all[:0:0]
	for _, d := range t.all {
		if gone[d.pid] {
			t.leave(d)
			continue
		}
		kept = append(kept, d)
	}
	joined := map[int]bool{}
	for _, pid := range delta.joined {
		joined[pid] = true
	}
	oldZombies := map[int]core.Process{}
	for _, z := range t.zombies {
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
				if z, err = zombieOf(pid, m.ppid); err == nil && t.root.container {
					var st *proc.Status
					if st, err = proc.ReadStatus(pid); err == nil {
						t.root.noteInner(pid, st)
					}
				}
				if err != nil {
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
		d, err := t.newMember(pid)
		if err == nil {
			err = t.onJoin(d, true)
		}
		if err != nil {
			if d != nil {
				t.leave(d)
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
		t.root.log.Info("pre-copy: the tree changed", "joined", len(delta.joined), "exited", len(delta.died), "left", len(delta.left), "processes", len(kept), "zombies", len(zombies))
	}
	t.all, t.zombies, t.members = kept, zombies, now
	return t.all, nil
}

// settleFrozen takes the frozen tree as it is (all, zombies: what
// freezeTree found, t.all first): a process forked since the last round
// joins now, with all its memory for the final round; one that exited
// (not seized), or that left the tree (its parent exited: it was seized
// but runs on), leaves. Nothing of t.all changes on an error; changed says whether the tree did.
//
// Preconditions: every process of all with a tracee is frozen.
func (t *treeFollow) settleFrozen(all []*dumper, zombies []core.Process) (changed bool, err error) {
	in := map[int]bool{}
	now := map[int]treeMember{}
	var kept, out []*dumper
	for i, d := range all {
		if d.p == nil {
			continue // exited before it was seized
		}
		st, err := proc.ReadStat(d.pid)
		if err != nil {
			return false, fmt.Errorf("process %d, frozen: %w", d.pid, err)
		}
		m, was := t.members[d.pid]
		switch {
		case i == 0:
		case !in[st.PPID]:
			out = append(out, d)
			continue
		case was && m.ppid != st.PPID:
			return false, &TreeChangedError{PID: d.pid, Parent: m.ppid, Change: fmt.Sprintf("lost its parent (now a child of %d)", st.PPID)}
		case was && m.start != st.StartTime:
			return false, &TreeChangedError{PID: d.pid, Parent: m.ppid, Change: "exited, and another process took its PID"}
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
	// Newcomers: their memory goes whole in the final round.
	isMember := map[*dumper]bool{}
	for _, d := range t.all {
		isMember[d] = true
	}
	var fresh []*dumper
	defer func() {
		if err != nil {
			for _, d := range fresh {
				t.leave(d) // (the caller detaches it)
			}
		}
	}()
	for _, d := range kept {
		if isMember[d] {
			continue
		}
		d.tracker = wholeTracker{}
		fresh = append(fresh, d)
		if err := t.onJoin(d, false); err != nil {
			return false, err
		}
	}
	// Those that left run on, untouched.
	for _, d := range out {
		if err := d.p.Detach(); err != nil {
			return false, fmt.Errorf("process %d left the tree as it was frozen: %w", d.pid, err)
		}
		d.p = nil
	}
	keptSet := map[*dumper]bool{}
	for _, d := range kept {
		keptSet[d] = true
	}
	for _, d := range t.all {
		if !keptSet[d] {
			t.leave(d)
		}
	}
	changed = len(kept) != len(t.all) || len(zs) != len(t.zombies)
	for i := range min(len(kept), len(t.all)) {
		changed = changed || kept[i] != t.all[i]
	}
	if changed {
		t.root.log.Info("the tree changed as it was frozen", "processes", len(kept), "was", len(t.all), "zombies", len(zs), "were", len(t.zombies))
	}
	t.all, t.zombies, t.members = kept, zs, now
	return changed, nil
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
