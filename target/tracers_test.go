package target

import (
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
)

// TestByDepth: the resume's depths put every process after all the
// processes below it (children first), a process not built (a zombie)
// in none, and a process whose parent comes after it in the tree's list
// (one that joined later) still below its parent.
func TestByDepth(t *testing.T) {
	mk := func(pid int, parent *restorer, built bool) *restorer {
		r := &restorer{pid: pid, parent: parent, proc: &core.Process{PID: pid}}
		if built {
			r.p = &ptrace.Proc{PID: pid}
		}
		return r
	}
	root := mk(1, nil, true)
	a := mk(2, root, true)
	b := mk(3, root, true)
	zombie := mk(4, root, false)
	aa := mk(5, a, true)
	late := mk(7, nil, true)
	lateKid := mk(6, late, true)
	late.parent = aa
	all := []*restorer{root, a, b, zombie, aa, lateKid, late}
	levels := byDepth(all)
	var got [][]int
	for _, l := range levels {
		var pids []int
		for _, r := range l {
			pids = append(pids, r.pid)
		}
		got = append(got, pids)
	}
	want := [][]int{{1}, {3, 2}, {5}, {7}, {6}}
	if len(got) != len(want) {
		t.Fatalf("depths %v, want %v", got, want)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("depths %v, want %v", got, want)
		}
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Fatalf("depths %v, want %v", got, want)
			}
		}
	}
}
