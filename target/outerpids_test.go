package target

import (
	"os"
	"slices"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
)

// TestOuterPIDs: the map of a container's PIDs outside it, as a live
// migration keeps it layout after layout: a PID free here stays, a taken
// one (this test's own, init's) gets a free one, the same for the whole
// session; a process that left is forgotten, and a newcomer never gets a
// PID given to another; the state's threads get theirs too.
func TestOuterPIDs(t *testing.T) {
	me := os.Getpid() // taken here
	f := newFreePIDs()
	var free []int
	for range 3 {
		n, err := f.take(func(n int) bool { return slices.Contains(free, n) })
		if err != nil {
			t.Fatal(err)
		}
		free = append(free, n)
	}
	child, thread, other := free[0], free[1], free[2]
	layout := func(root int, tree ...int) *handoff.LiveLayout {
		ll := &handoff.LiveLayout{Process: core.Process{PID: root, PPID: 7, SID: root, PGID: root},
			Namespaces: &core.Namespaces{PID: &core.PIDNamespace{IDs: []core.NSID{{Outer: root, Inner: 1}}}}}
		for i, pid := range tree {
			ll.Tree = append(ll.Tree, core.Process{PID: pid, PPID: root, SID: root, PGID: pid})
			ll.Namespaces.PID.IDs = append(ll.Namespaces.PID.IDs, core.NSID{Outer: pid, Inner: i + 2})
		}
		return ll
	}
	o := newOuterPIDs()
	// The free PIDs it gives out: past those of this test.
	o.free = &freePIDs{next: f.next, max: f.max}

	ll := layout(me, child)
	if err := o.layout(ll); err != nil {
		t.Fatal(err)
	}
	root := ll.Process.PID
	if root == me || pidFree(root) != nil {
		t.Fatalf("the root, whose PID %d is taken here, got %d", me, root)
	}
	if p := ll.Tree[0]; p.PID != child || p.PPID != root || p.SID != root || p.PGID != child {
		t.Errorf("the child, whose PID is free: %+v (root %d)", p, root)
	}
	if ll.Process.PPID != 7 || ll.Process.SID != root || ll.Process.PGID != root {
		t.Errorf("the root renumbered: %+v", ll.Process)
	}
	if ids := ll.Namespaces.PID.IDs; ids[0] != (core.NSID{Outer: root, Inner: 1}) || ids[1] != (core.NSID{Outer: child, Inner: 2}) {
		t.Errorf("the PIDs inside: %+v", ids)
	}

	// A later layout: the same PIDs here; a newcomer whose PID is
	// taken (init's) gets a free one.
	ll = layout(me, child, 1)
	if err := o.layout(ll); err != nil {
		t.Fatal(err)
	}
	if ll.Process.PID != root || ll.Tree[0].PID != child {
		t.Errorf("a later layout: root %d, child %d; want %d, %d", ll.Process.PID, ll.Tree[0].PID, root, child)
	}
	one := ll.Tree[1].PID
	if one == 1 || one == root || pidFree(one) != nil {
		t.Errorf("the newcomer whose PID 1 is taken got %d", one)
	}

	// The child leaves; a newcomer with the PID here of the root (free
	// at the source's) gets another.
	ll = layout(me, 1, root)
	if err := o.layout(ll); err != nil {
		t.Fatal(err)
	}
	if _, ok := o.local(child); ok {
		t.Errorf("the child that left is still mapped")
	}
	if ll.Tree[0].PID != one {
		t.Errorf("the newcomer of the layout before: %d, want %d", ll.Tree[0].PID, one)
	}
	if n := ll.Tree[1].PID; n == root || n == one || n == me {
		t.Errorf("a newcomer named %d (the root's PID here) got %d", root, n)
	}
	newcomer := ll.Tree[1].PID

	// The state: the threads get PIDs here too, and every field
	// naming a PID follows.
	img := &core.Image{Process: core.Process{PID: me, PPID: 7, SID: me, PGID: me,
		Threads: []core.Thread{{TID: me}, {TID: thread}, {TID: other}},
		FDs:     []core.FD{{FD: 3, Kind: core.FDPidfd, PidfdPID: root}}},
		Tree: []core.Process{{PID: 1, PPID: me, SID: me, PGID: 1, Threads: []core.Thread{{TID: 1}}},
			{PID: root, PPID: me, SID: me, PGID: root, Threads: []core.Thread{{TID: root}}}}}
	if err := o.image(img); err != nil {
		t.Fatal(err)
	}
	if img.Process.PID != root || img.Tree[0].PID != one || img.Tree[1].PID != newcomer || img.Tree[1].PPID != root {
		t.Errorf("the state's processes: %d, %d, %d (parent %d)", img.Process.PID, img.Tree[0].PID, img.Tree[1].PID, img.Tree[1].PPID)
	}
	if th := img.Process.Threads; th[0].TID != root || th[1].TID != thread || th[2].TID != other {
		t.Errorf("the state's threads: %+v", th)
	}
	if fd := img.Process.FDs[0]; fd.PidfdPID != newcomer {
		t.Errorf("a pidfd of the source's %d: of %d here, want %d", root, fd.PidfdPID, newcomer)
	}
	// A free PID the source names is not one a taken one gets.
	o2 := newOuterPIDs()
	o2.free = &freePIDs{next: child, max: f.max}
	ll = layout(me, child)
	if err := o2.layout(ll); err != nil {
		t.Fatal(err)
	}
	if ll.Process.PID == child || ll.Tree[0].PID != child {
		t.Errorf("the root, whose PID is taken, got %d, the child %d (its own, free: %d)", ll.Process.PID, ll.Tree[0].PID, child)
	}

	want := []handoff.Renumbered{{PID: 1, TargetPID: one}, {PID: me, TargetPID: root}, {PID: root, TargetPID: newcomer}}
	slices.SortFunc(want, func(a, b handoff.Renumbered) int { return a.PID - b.PID })
	if got := o.moved(); !slices.Equal(got, want) {
		t.Errorf("moved %+v, want %+v", got, want)
	}
}

// TestOuterPIDsMove: tasks moved after they were made (a rootless
// container's, moveOuter) are read through the map with their new PIDs,
// all at once (a move onto a PID the map gave another, which moves on).
func TestOuterPIDsMove(t *testing.T) {
	o := newOuterPIDs()
	o.here = map[int]int{100: 100, 101: 101, 102: 102}
	o.given = map[int]int{100: 100, 101: 101, 102: 102}
	o.move(map[int]int{101: 102, 102: 5000})
	if n, _ := o.local(101); n != 102 {
		t.Errorf("101 is %d here, want 102", n)
	}
	if n, _ := o.local(102); n != 5000 {
		t.Errorf("102 is %d here, want 5000", n)
	}
	if n, _ := o.local(100); n != 100 {
		t.Errorf("100 is %d here, want 100", n)
	}
	if o.given[102] != 101 || o.given[5000] != 102 {
		t.Errorf("given %v", o.given)
	}
}
