package source

import (
	"errors"
	"testing"
)

// TestTreeChange: the first process that forked into a tree or exited
// from it (a zombie now, or gone) is named, with its parent.
func TestTreeChange(t *testing.T) {
	was := map[int]treeMember{10: {}, 11: {ppid: 10}, 12: {ppid: 10}, 13: {ppid: 11, zombie: true}}
	for name, c := range map[string]struct {
		now    map[int]treeMember
		change *TreeChangedError
	}{
		"same":             {was, nil},
		"forked":           {map[int]treeMember{10: {}, 11: {ppid: 10}, 12: {ppid: 10}, 13: {ppid: 11, zombie: true}, 20: {ppid: 12}}, &TreeChangedError{PID: 20, Parent: 12, Change: "forked"}},
		"a zombie now":     {map[int]treeMember{10: {}, 11: {ppid: 10}, 12: {ppid: 10, zombie: true}, 13: {ppid: 11, zombie: true}}, &TreeChangedError{PID: 12, Parent: 10, Change: "exited"}},
		"reaped":           {map[int]treeMember{10: {}, 11: {ppid: 10}, 12: {ppid: 10}}, &TreeChangedError{PID: 13, Parent: 11, Change: "exited"}},
		"gone, and forked": {map[int]treeMember{10: {}, 11: {ppid: 10}, 13: {ppid: 11, zombie: true}, 9: {ppid: 11}}, &TreeChangedError{PID: 9, Parent: 11, Change: "forked"}},
	} {
		err := treeChange(was, c.now)
		if c.change == nil {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		var tc *TreeChangedError
		if !errors.As(err, &tc) || *tc != *c.change {
			t.Errorf("%s: %v, want %+v", name, err, *c.change)
		}
	}
}
