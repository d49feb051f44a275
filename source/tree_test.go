package source

import (
	"errors"
	"slices"
	"testing"
)

// TestDiffTree: between two reads of a tree, the processes that forked
// into it (parents first, zombies too), those that exited (zombies now)
// and those gone (children first) are told apart; what a target cannot
// follow (another parent, a PID another process took) is a
// *TreeChangedError naming the process.
func TestDiffTree(t *testing.T) {
	was := map[int]treeMember{
		10: {start: 1}, 11: {ppid: 10, start: 2}, 12: {ppid: 10, start: 3},
		13: {ppid: 11, zombie: true, start: 4}, 14: {ppid: 12, start: 5}, 15: {ppid: 14, start: 6},
	}
	wasOrder := []int{10, 11, 12, 13, 14, 15}
	with := func(changes map[int]*treeMember) (map[int]treeMember, []int) {
		now := map[int]treeMember{}
		var order []int
		for _, pid := range wasOrder {
			if c, ok := changes[pid]; ok && c == nil {
				continue
			}
			now[pid] = was[pid]
			if c := changes[pid]; c != nil {
				now[pid] = *c
			}
			order = append(order, pid)
		}
		for _, pid := range []int{20, 21, 9} {
			if c := changes[pid]; c != nil {
				now[pid] = *c
				order = append(order, pid)
			}
		}
		return now, order
	}
	for name, c := range map[string]struct {
		changes            map[int]*treeMember
		joined, died, left []int
		change             *TreeChangedError
	}{
		"same": {},
		"forked, and its child too": {changes: map[int]*treeMember{20: {ppid: 12, start: 7}, 21: {ppid: 20, start: 8}},
			joined: []int{20, 21}},
		"forked and exited": {changes: map[int]*treeMember{20: {ppid: 15, zombie: true, start: 7}}, joined: []int{20}},
		"a zombie now":      {changes: map[int]*treeMember{12: {ppid: 10, zombie: true, start: 3}, 14: nil, 15: nil}, died: []int{12}, left: []int{15, 14}},
		"reaped":            {changes: map[int]*treeMember{13: nil}, left: []int{13}},
		"gone with its children": {changes: map[int]*treeMember{12: nil, 14: nil, 15: nil},
			left: []int{15, 14, 12}},
		"gone, and forked": {changes: map[int]*treeMember{11: nil, 13: nil, 9: {ppid: 12, start: 9}},
			joined: []int{9}, left: []int{13, 11}},
		"taken in by the root": {changes: map[int]*treeMember{14: nil, 15: {ppid: 10, start: 6}},
			change: &TreeChangedError{PID: 15, Parent: 14, Change: "lost its parent (now a child of 10)"}},
		"its PID taken": {changes: map[int]*treeMember{14: {ppid: 12, start: 50}},
			change: &TreeChangedError{PID: 14, Parent: 12, Change: "exited, and another process took its PID"}},
		"a zombie running again": {changes: map[int]*treeMember{13: {ppid: 11, start: 4}},
			change: &TreeChangedError{PID: 13, Parent: 11, Change: "exited, and another process took its PID"}},
	} {
		now, order := with(c.changes)
		d, err := diffTree(was, now, order)
		if c.change != nil {
			var tc *TreeChangedError
			if !errors.As(err, &tc) || *tc != *c.change {
				t.Errorf("%s: %v, want %+v", name, err, *c.change)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !slices.Equal(d.joined, c.joined) || !slices.Equal(d.died, c.died) || !slices.Equal(d.left, c.left) {
			t.Errorf("%s: joined %v, died %v, left %v; want %v, %v, %v", name, d.joined, d.died, d.left, c.joined, c.died, c.left)
		}
		if d.empty() != (len(c.joined)+len(c.died)+len(c.left) == 0) {
			t.Errorf("%s: empty() is %v", name, d.empty())
		}
	}
}
