package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// precheckFDs reads the fds of the process opts.PID (and with opts.Tree,
// of its descendants) while they run, the way the dump will read them
// frozen, and returns the error the dump would give for the first fd it
// cannot move (an *UnsupportedFDError: a pipe to a process outside, a
// netlink socket, a pidfd, a file lock, a pty, ...) or a descendant it
// cannot take (a *BadTargetError, a *SeccompError, a *SharedFDTableError,
// a *ControllingTTYError). It runs before anything is frozen and before
// pre-copy sends a page, so a process migrate cannot move is refused at
// once, not after all its memory went over.
//
// Nothing is kept and nothing the process could notice is read (see
// session.probe). The process runs meanwhile: an fd closed or reused under
// the probe is not held against it, and any other failure is left to the
// dump itself, which reads every fd again once the process is frozen.
func precheckFDs(ctx context.Context, opts DumpOptions) error {
	var race error
	defer func() {
		if race != nil && opts.Logger != nil {
			opts.Logger.Debug("fds not probed: left to the freeze", "pid", opts.PID, "err", race)
		}
	}()
	for attempt := 0; attempt < 3; attempt++ {
		err := probeFDs(ctx, opts)
		if err == nil || ctx.Err() != nil {
			race = nil
			return err
		}
		var bt *BadTargetError
		var se *SeccompError
		var ft *SharedFDTableError
		var ct *ControllingTTYError
		if errors.As(err, &bt) || errors.As(err, &se) || errors.As(err, &ft) || errors.As(err, &ct) {
			return err
		}
		var ue *UnsupportedFDError
		if !errors.As(err, &ue) {
			// A race with the running process (an fd closed or a child
			// gone under the probe): probed again, and after the third
			// the freeze reads again. (Once, under load, a unix socket
			// connected outside went through to the freeze when this gave
			// up at the first such error, which was not logged then:
			// TestLiveRefusedBeforePrecopy. It is logged now.)
			race = err
			continue
		}
		race = nil
		// The refusal stands if the fd is still what the probe saw.
		if link, lerr := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", ue.PID, ue.FD)); lerr == nil && link == ue.Kind {
			return err
		}
	}
	return nil
}

// refuseDeletedMappings refuses, for a live migration, a process that maps
// a deleted file or a memfd (its executable or a library replaced by an
// upgrade, say): the target lays out the memory from the first round on,
// but the file's copy is only made at the freeze. `migrate dump` carries
// such mappings.
func refuseDeletedMappings(pid int) error {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	for _, m := range maps {
		if m.IsSysVShm() {
			continue // carried (Image.Shm); precheckMappings checks it
		}
		if !m.Deleted || !strings.HasPrefix(m.Path, "/") || m.Path == "/dev/zero" {
			continue
		}
		return &UnsupportedMappingError{PID: pid, Start: m.Start, End: m.End, Name: m.Path,
			Reason: "a deleted file (or memfd) mapped: live migration cannot carry it yet (migrate dump can)"}
	}
	return nil
}

// precheckMappings refuses, before anything is frozen, a process of the
// dump (the root, and with opts.Tree its descendants) with an area that
// refuseMapping refuses. It reads /proc/PID/maps, which does not walk the
// page tables; a hugetlbfs file mapping shows as such only in smaps, which
// the dump reads frozen.
func precheckMappings(opts DumpOptions) error {
	pids := []int{opts.PID}
	for i := 0; opts.Tree && i < len(pids); i++ {
		kids, err := childrenOf(pids[i])
		if err != nil {
			return nil // left to the dump
		}
		pids = append(pids, kids...)
	}
	// One time namespace for the tree, as the restore makes (not a
	// mapping, but this is where the tree is listed before the freeze).
	if err := checkTimeNamespaces(pids); err != nil {
		return err
	}
	if err := precheckHostIPC(pids); err != nil {
		return err
	}
	sysv := map[int][]proc.Mapping{} // System V segment -> its areas
	sysvPID := map[int]int{}
	for _, pid := range pids {
		maps, err := proc.ReadMaps(pid)
		if err != nil {
			continue // gone or a zombie: left to the dump
		}
		// The code files' contents, hashed now rather than frozen.
		prehashCode(pid, maps)
		for i := range maps {
			if err := refuseMapping(pid, &maps[i]); err != nil {
				return err
			}
			if m := maps[i]; m.IsSysVShm() {
				sysv[int(m.Inode)] = append(sysv[int(m.Inode)], m)
				sysvPID[int(m.Inode)] = pid
			}
		}
	}
	// A segment some process outside attaches too, now rather than at
	// the freeze (the frozen dump checks again: readSysV).
	ss := &session{opts: opts}
	if len(sysv) > 0 {
		if err := ss.noteContainer(&opts); err != nil {
			return err
		}
	}
	for id, areas := range sysv {
		var reason string
		if err := ss.inIPC(func() error { _, reason = statSegment(id, len(areas)); return nil }); err != nil {
			return err
		}
		if reason != "" {
			return &UnsupportedMappingError{PID: sysvPID[id], Start: areas[0].Start, End: areas[0].End,
				Name: fmt.Sprintf("System V segment %d", id), Reason: reason}
		}
	}
	return nil
}

// probeFDs is one pass of precheckFDs.
func probeFDs(ctx context.Context, opts DumpOptions) error {
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
	live := pids[:1]
	for _, pid := range pids[1:] {
		// The root was checked; a descendant is checked again as it is
		// frozen. One gone meanwhile, or a zombie, has no fds.
		st, err := proc.ReadStat(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			continue
		}
		status, err := proc.ReadStatus(pid)
		if err != nil {
			continue
		}
		if err := checkMember(pid, opts.PID, status); err != nil {
			return err
		}
		live = append(live, pid)
	}
	var all []*dumper
	for _, pid := range live {
		if err := refuseSchedState(pid); err != nil {
			return err
		}
		d := &dumper{session: ss, pid: pid, proc: &core.Process{}}
		set, err := d.collectFDs(ctx)
		if set != nil {
			defer set.close()
		}
		if err != nil {
			return err
		}
		d.fdset = set
		all = append(all, d)
	}
	if err := checkFDRefs(all); err != nil {
		return err
	}
	return ss.resolvePipes()
}
