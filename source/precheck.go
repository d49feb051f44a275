package source

import (
	"context"
	"fmt"

	"migrate/core"
)

// precheckFDs reads the fds of the process pid (and with tree, of its
// descendants) while they run, the way the dump will read them frozen, and
// returns the error the dump would give for the first fd it cannot move
// (an *UnsupportedFDError: a pipe to a process outside, a netlink socket,
// a pidfd, ...). It runs before anything is frozen and before pre-copy
// sends a page, so a process migrate cannot move is refused at once, not
// after all its memory went over.
//
// Nothing is kept and nothing the process could notice is read (see
// session.probe). What may change until the freeze (an accept queue, a
// connection being made, fds opened meanwhile) is checked again there.
func precheckFDs(ctx context.Context, opts DumpOptions) error {
	ss := &session{opts: opts, pipes: map[uint64][]pipeEnd{}, probe: true}
	pids := []int{opts.PID}
	if opts.Tree {
		for i := 0; i < len(pids); i++ {
			kids, err := childrenOf(pids[i])
			if err != nil {
				return fmt.Errorf("children of process %d: %w", pids[i], err)
			}
			pids = append(pids, kids...)
		}
	}
	for _, pid := range pids {
		d := &dumper{session: ss, pid: pid, proc: &core.Process{}}
		set, err := d.collectFDs(ctx)
		if set != nil {
			defer set.close()
		}
		if err != nil {
			return err
		}
		d.fdset = set
	}
	return ss.resolvePipes()
}
