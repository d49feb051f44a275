package source

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// SeccompError names a thread whose seccomp state migrate cannot carry.
type SeccompError struct {
	PID, TID int
	// Filter is the filter at fault, 0 being the thread's oldest (as
	// PTRACE_SECCOMP_GET_FILTER counts them); -1 if the refusal is not
	// about one filter.
	Filter int
	Reason string
	Err    error
}

func (e *SeccompError) Error() string {
	s := fmt.Sprintf("process %d: thread %d: seccomp", e.PID, e.TID)
	if e.Filter >= 0 {
		s += fmt.Sprintf(" filter %d (0 is the oldest)", e.Filter)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *SeccompError) Unwrap() error { return e.Err }

// collectSeccomp reads the seccomp state of thread th (status is its
// /proc status): its mode, and in filter mode its filters, which are added
// to filters (the process's) unless a thread read before has them.
//
// The kernel gives no way to tell whether two threads share a filter
// (kcmp has no seccomp type; the metadata has only the flags): filters
// are taken as shared if they have the same program and flags, stacked on
// filters taken as shared. Threads that share a filter got it from one
// another (inherited at clone, or SECCOMP_FILTER_FLAG_TSYNC); threads that
// installed the same program each on its own come back sharing it too,
// which only a later TSYNC could tell (it would succeed where it failed).
//
// Preconditions: th is stopped, on the tracer thread.
func collectSeccomp(p *ptrace.Proc, th *ptrace.Thread, status *proc.Status, filters *[]core.SeccompFilter) (*core.Seccomp, error) {
	refuse := func(filter int, reason string, err error) error {
		return &SeccompError{PID: p.PID, TID: th.TID, Filter: filter, Reason: reason, Err: err}
	}
	switch status.Seccomp {
	case 0:
		return nil, nil
	case core.SeccompModeStrict, core.SeccompModeFilter:
	default:
		return nil, refuse(-1, fmt.Sprintf("mode %d, unknown to migrate", status.Seccomp), nil)
	}
	// Without the filters suspended, the calls migrate injects (at the
	// dump, and at the restore after the filters) would meet them.
	if !p.SeccompSuspended() {
		return nil, refuse(-1, "migrate cannot suspend the filters while it works on the process (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN in the initial user namespace, and migrate not itself under seccomp)", nil)
	}
	if status.Seccomp == core.SeccompModeStrict {
		return &core.Seccomp{Mode: core.SeccompModeStrict, Filter: -1}, nil
	}
	type filter struct {
		prog []byte
		log  bool
	}
	var chain []filter // the oldest first, as the kernel indexes them
	for i := 0; ; i++ {
		prog, flags, err := p.SeccompFilter(th, i)
		if errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return nil, refuse(i, "cannot read it (PTRACE_SECCOMP_GET_FILTER)", err)
		}
		if err := core.CheckSeccompProg(prog); err != nil {
			return nil, refuse(i, "a restore cannot install it", err)
		}
		if flags&^unix.SECCOMP_FILTER_FLAG_LOG != 0 {
			return nil, refuse(i, fmt.Sprintf("flags %#x unknown to migrate", flags), nil)
		}
		chain = append(chain, filter{prog, flags&unix.SECCOMP_FILTER_FLAG_LOG != 0})
		if i > core.MaxSeccompPathInsns {
			return nil, refuse(-1, "more filters than the kernel takes", nil)
		}
	}
	if len(chain) == 0 || len(chain) != status.SeccompFilters {
		return nil, refuse(-1, fmt.Sprintf("%d filters read, %d in /proc", len(chain), status.SeccompFilters), nil)
	}
	prev := -1
	for _, f := range chain {
		found := -1
		for j := prev + 1; j < len(*filters); j++ {
			if g := (*filters)[j]; g.Prev == prev && g.Log == f.log && bytes.Equal(g.Prog, f.prog) {
				found = j
				break
			}
		}
		if found < 0 {
			*filters = append(*filters, core.SeccompFilter{Prev: prev, Log: f.log, Prog: f.prog})
			found = len(*filters) - 1
		}
		prev = found
	}
	return &core.Seccomp{Mode: core.SeccompModeFilter, Filter: prev}, nil
}

// checkSeccomp refuses, before the process is frozen, a process with a
// thread whose seccomp state a dump would refuse (collectSeccomp): it
// stops the process for as long as reading the filters takes, if any
// thread has seccomp at all.
func checkSeccomp(pid int) error {
	tids, err := proc.ReadTIDs(pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	under := false
	for _, tid := range tids {
		if st, err := proc.ReadTaskStatus(pid, tid); err == nil && st.Seccomp != 0 {
			under = true
			break
		}
	}
	if !under {
		return nil
	}
	tr := ptrace.NewTracer()
	defer tr.Close()
	p, err := tr.Seize(pid)
	if err != nil {
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			return &BadTargetError{PID: pid, Reason: te.Error()}
		}
		return nil // gone, or another failure the freeze meets again
	}
	defer p.Detach()
	var filters []core.SeccompFilter
	for _, th := range p.Threads {
		st, err := proc.ReadTaskStatus(pid, th.TID)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.TID, err)
		}
		if _, err := collectSeccomp(p, th, st, &filters); err != nil {
			return err
		}
	}
	return nil
}
