package target

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/handoff"
)

// A tree changes while pre-copy runs: a process forks into it, one
// exits (a zombie its parent has not reaped yet) or leaves it (reaped, or
// gone with its parent). The builder follows, between rounds: Join forks
// the newcomer out of its parent, as built so far; Die makes a process
// end as the zombie it became; Leave kills one that left and has its
// parent reap it, so that nothing of it is seen once the tree runs.

// maxBuilt caps the processes one builder creates, joined ones included:
// a source that makes the tree fork and exit round after round must not
// make this service fork without end.
const maxBuilt = 1 << 14

// Join creates process p, which forked into the tree since the first
// layout: forked (with its PID) out of its parent, a process of the tree
// being built, then laid out as p says, or made a zombie. Its pages come
// with the rounds that follow.
//
// Preconditions: p was checked as part of its layout (checkIncoming);
// no page stream writes into the tree meanwhile.
func (b *Builder) Join(ctx context.Context, p *core.Process) error {
	if b.byPID[p.PID] != nil {
		return fmt.Errorf("process %d joins the tree, which has it already", p.PID)
	}
	if b.built >= maxBuilt {
		return fmt.Errorf("process %d joins the tree: %d processes were built already", p.PID, b.built)
	}
	parent := b.byPID[p.PPID]
	if parent == nil || parent.p == nil || parent.proc.Zombie != nil {
		return fmt.Errorf("process %d joins the tree: its parent %d is not a running process of it", p.PID, p.PPID)
	}
	if p.Zombie == nil {
		if err := validateLiveProcess(newPathRoot(b.ss.img.Mounts), p, mappedFiles{}); err != nil {
			return err
		}
	}
	if err := pidFree(p.PID); err != nil {
		return err
	}
	// In a container, its PID inside (the layout's, see
	// liveTarget.regroup), which is what its parent sees.
	inner, want := 0, p.PID
	if b.ss != nil && b.ss.container() {
		if inner = b.ss.inner(p.PID); inner == 0 {
			return fmt.Errorf("process %d joins the container: the layout does not give its PID inside", p.PID)
		}
		want = inner
	}
	r := &restorer{session: b.ss, proc: p, pagesInfo: p.Pages, pid: p.PID, agentFD: -1, parent: parent, live: true}
	if inner != 0 {
		// It cannot open a pidfd of migrate from inside the container:
		// it keeps the one its parent has (the fork copies it).
		r.inheritedAgentFD = parent.agentFD
	}
	var err error
	r.p, err = forkPIDAt(parent.p, p.PID, inner, want, 0, parent.scratch)
	if err != nil {
		return fmt.Errorf("process %d joins the tree: fork it out of %d: %w", p.PID, p.PPID, err)
	}
	if r.p.PID != p.PID {
		// (A rootless container's: moveOuter; its layout is not the
		// session's image.)
		r.p.Kill(false)
		return fmt.Errorf("process %d joins the tree: %w", p.PID, &PIDRaceError{PID: p.PID, Got: r.p.PID})
	}
	b.built++
	b.all = append(b.all, r)
	b.byPID[r.pid] = r
	fail := func(err error) error {
		return fmt.Errorf("process %d joins the tree: %w", p.PID, err)
	}
	if p.Zombie != nil {
		if err := r.exitAsZombie(); err != nil {
			return fail(err)
		}
		return nil
	}
	if err := r.joinSession(); err != nil {
		return fail(err)
	}
	if p.SID != p.PID { // as createTree does
		if err := r.joinGroup(); err != nil {
			return fail(err)
		}
	}
	if err := r.joinProcessCgroups(ctx); err != nil {
		return fail(err)
	}
	// Its address space is a copy of its parent's: layout unmaps all of
	// it but vdso and vvar, and maps p's areas fresh (zero), as the
	// first layout does out of a husk's.
	if err := r.layout(ctx); err != nil {
		return fail(err)
	}
	return nil
}

// Die makes process pid, running until now, end as the zombie p (its
// description now) says: its parent finds it exited so.
//
// Preconditions: no page stream writes into the tree meanwhile.
func (b *Builder) Die(p *core.Process) error {
	r := b.byPID[p.PID]
	if r == nil || r == b.all[0] || r.p == nil || r.proc.Zombie != nil || p.Zombie == nil {
		return fmt.Errorf("process %d is not a running process of the tree being built", p.PID)
	}
	r.proc = p
	b.forgetShmem(r)
	if err := r.exitAsZombie(); err != nil {
		return fmt.Errorf("process %d exited: %w", p.PID, err)
	}
	return nil
}

// Leave removes process pid from the tree being built: it is killed if
// it runs, and its parent reaps it (an injected wait4), forgetting the
// SIGCHLD its death sent.
//
// Preconditions: pid has no children in the tree (they left first); no
// page stream writes into the tree meanwhile.
func (b *Builder) Leave(pid int) error {
	r := b.byPID[pid]
	if r == nil || r == b.all[0] {
		return fmt.Errorf("process %d leaves the tree, which does not have it (or it is the root)", pid)
	}
	for _, c := range b.all {
		if c.parent == r {
			return fmt.Errorf("process %d leaves the tree before its child %d", pid, c.pid)
		}
	}
	b.forgetShmem(r)
	if r.p != nil {
		// Reaped by its tracer (this service), a process that is not its
		// child goes back to its parent, a zombie for it to reap.
		if err := r.p.Kill(true); err != nil {
			return fmt.Errorf("process %d left: kill it: %w", pid, err)
		}
		r.p = nil
	}
	parent := r.parent
	if parent.p == nil {
		return fmt.Errorf("process %d left: its parent %d is not running", pid, parent.pid)
	}
	// Its PID as its parent sees it (inside a container, the inner one).
	seen := pid
	if b.ss != nil {
		seen = b.ss.inner(pid)
	}
	if _, err := parent.sys("wait4", unix.SYS_WAIT4, uint64(seen), 0, unix.WALL|unix.WNOHANG); err != nil {
		return fmt.Errorf("process %d left: reap it in %d: %w", pid, parent.pid, err)
	}
	if st, err := proc.ReadStat(pid); err == nil {
		return fmt.Errorf("process %d left, but is still here (%c)", pid, st.State)
	}
	dropSIGCHLDFrom(parent, seen)
	b.all = slices.DeleteFunc(b.all, func(x *restorer) bool { return x == r })
	delete(b.byPID, pid)
	return nil
}

// forgetShmem points the shared anonymous objects process r mapped first
// at another process of the tree that maps them (r leaves, or exits):
// a process that maps one later finds it there. One that no other
// process maps is forgotten.
func (b *Builder) forgetShmem(r *restorer) {
	for shm, a := range b.ss.shmem {
		if a.pid != r.pid {
			continue
		}
		delete(b.ss.shmem, shm)
		for _, o := range b.all {
			if o == r || o.p == nil || o.proc.Zombie != nil {
				continue
			}
			if i := slices.IndexFunc(o.mapped, func(v core.VMA) bool { return v.Kind == core.VMASharedAnon && v.Shm == shm }); i >= 0 {
				b.ss.shmem[shm] = shmemArea{pid: o.pid, start: o.mapped[i].Start, end: o.mapped[i].End}
				break
			}
		}
	}
}

// dropSIGCHLDFrom forgets the SIGCHLD child's death sent parent, which an
// injection into parent took (see dropZombieSIGCHLD).
func dropSIGCHLDFrom(parent *restorer, child int) {
	if parent.p == nil {
		return
	}
	for _, th := range parent.p.Threads {
		th.Stolen = slices.DeleteFunc(th.Stolen, func(si []byte) bool { return sigchldFrom(si, map[int32]bool{int32(child): true}) })
	}
}

// regroup follows the membership of a later round's layout ll (round):
// processes gone are removed, children first, ones that exited made
// zombies, new ones created, each with its page stream taken (the source
// opened it before the layout). It returns the PIDs that joined (laid
// out already). Anything a layout may not say is an error: a change of
// membership the first layout did not allow (LiveLayout.Members), a
// process with another parent than before, a zombie running again, the
// root leaving.
func (t *liveTarget) regroup(ctx context.Context, ll *handoff.LiveLayout, round int) (map[int]bool, error) {
	now := layoutMembers(ll)
	var left, died []int
	joined := map[int]bool{}
	var joins []*core.Process
	for pid, w := range t.members {
		m, ok := now[pid]
		switch {
		case !ok:
			left = append(left, pid)
		case m.ppid != w.ppid:
			return nil, fmt.Errorf("process %d: parent %d, %d before", pid, m.ppid, w.ppid)
		case w.zombie && !m.zombie:
			return nil, fmt.Errorf("process %d: running again after it exited", pid)
		case m.zombie && !w.zombie:
			died = append(died, pid)
		}
	}
	for i := range ll.Tree {
		if p := &ll.Tree[i]; !t.hasMember(p.PID) {
			joins = append(joins, p)
			joined[p.PID] = true
		}
	}
	if len(left)+len(died)+len(joins) == 0 {
		return nil, nil
	}
	if !t.changes {
		return nil, fmt.Errorf("processes %v, the first layout had %v (the source did not say the tree may change)", slices.Sorted(maps.Keys(now)), slices.Sorted(maps.Keys(t.members)))
	}
	container := t.b.ss != nil && t.b.ss.container()
	if container && (ll.Namespaces == nil || ll.Namespaces.PID == nil) {
		return nil, fmt.Errorf("processes %v, the first layout had %v: the layout of a container gives no PIDs inside", slices.Sorted(maps.Keys(now)), slices.Sorted(maps.Keys(t.members)))
	}
	// Children first: the deepest first, as the tree was.
	depth := func(pid int) int {
		n := 0
		for p := t.members[pid].ppid; n <= len(t.members); p = t.members[p].ppid {
			if _, ok := t.members[p]; !ok {
				break
			}
			n++
		}
		return n
	}
	slices.SortFunc(left, func(a, b int) int { return depth(b) - depth(a) })
	gone := append(slices.Clone(left), died...)
	t.mu.Lock()
	for _, in := range t.ins {
		if slices.Contains(gone, in.pid) {
			in.left = true
		}
	}
	t.cond.Broadcast()
	t.mu.Unlock()
	byPID := map[int]*core.Process{}
	for i := range ll.Tree {
		byPID[ll.Tree[i].PID] = &ll.Tree[i]
	}
	// Those that left first: a parent that exited reaps no child.
	for _, pid := range left {
		if err := t.b.Leave(pid); err != nil {
			return nil, err
		}
	}
	for _, pid := range died {
		p, ok := byPID[pid]
		if !ok {
			return nil, fmt.Errorf("process %d: the root cannot exit", pid)
		}
		c := *p // a copy: the builder keeps it
		if err := t.b.Die(&c); err != nil {
			return nil, err
		}
	}
	if container {
		// The PIDs inside as this layout gives them (checked with it:
		// one each, for its processes only), once those that left were
		// reaped by theirs: a PID inside may have been reused since.
		t.b.ss.img.Namespaces.PID.IDs = slices.Clone(ll.Namespaces.PID.IDs)
	}
	var streams []int
	for _, p := range joins {
		// A copy: the builder keeps it.
		c := *p
		if err := t.b.Join(ctx, &c); err != nil {
			return nil, err
		}
		if c.Zombie == nil {
			streams = append(streams, c.PID)
		}
	}
	t.members = now
	t.log.Info("the tree changed", "round", round, "joined", len(joins), "exited", len(died), "left", len(left))
	if err := t.acceptStreams(ctx, streams, round); err != nil {
		return nil, err
	}
	return joined, nil
}

func (t *liveTarget) hasMember(pid int) bool {
	_, ok := t.members[pid]
	return ok
}
