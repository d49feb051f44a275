package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
)

// The clocks of a dump (core.Clocks): the host's CLOCK_MONOTONIC and
// CLOCK_BOOTTIME with CLOCK_REALTIME, and the offsets of the processes'
// time namespace, which a restore composes into the offsets of the time
// namespace it makes for them (target/timens.go).

// readClocks reads the clocks of the processes pids, which share one time
// namespace (checkTimeNamespaces).
func readClocks(pids []int) (*core.Clocks, error) {
	id, err := proc.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil, fmt.Errorf("boot id: %w", err)
	}
	self, err := proc.ReadTimeOffsets(0)
	if err != nil {
		return nil, err
	}
	theirs, err := proc.ReadTimeOffsets(pids[0])
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pids[0], err)
	}
	now, err := proc.ReadClocks()
	if err != nil {
		return nil, err
	}
	return &core.Clocks{
		BootID:   strings.TrimSpace(string(id)),
		Realtime: now.Realtime,
		// The host's clocks, not those of migrate's namespace.
		Monotonic: now.Monotonic - self.Monotonic,
		Boottime:  now.Boottime - self.Boottime,
		Offsets:   core.TimeOffsets{Monotonic: theirs.Monotonic, Boottime: theirs.Boottime},
	}, nil
}

// checkTimeNamespace refuses a process that made a time namespace for its
// children to come (unshare(CLONE_NEWTIME) without a fork since): the
// restore puts every process in one namespace, and the children it forks
// after the restore would not get the one it made. A process in a time
// namespace of its own is carried (its offsets are in the image).
func checkTimeNamespace(pid int) error {
	now, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a kernel without time namespaces
	}
	if err != nil {
		return fmt.Errorf("process %d: time namespace: %w", pid, err)
	}
	next, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/time_for_children", pid))
	if err != nil {
		return fmt.Errorf("process %d: time namespace of its children: %w", pid, err)
	}
	if now != next {
		return &BadTargetError{PID: pid, Reason: fmt.Sprintf("it made a time namespace (%s) that its children would enter, other than its own (%s): "+
			"a restore does not carry that", next, now)}
	}
	return nil
}

// checkTimeNamespaces refuses a tree whose processes do not all live in
// the root's time namespace: a restore makes one for the whole tree.
func checkTimeNamespaces(pids []int) error {
	root, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", pids[0]))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("process %d: time namespace: %w", pids[0], err)
	}
	for _, pid := range pids[1:] {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/time", pid))
		if err != nil {
			continue // gone, or a zombie: left to the dump
		}
		if ns != root {
			return &BadTargetError{PID: pid, Reason: fmt.Sprintf("it lives in time namespace %s, process %d in %s: "+
				"a restore puts a tree in one time namespace", ns, pids[0], root)}
		}
	}
	return nil
}

// cpuFeatures are the XSAVE features of this CPU and of the processes'
// threads (nil where the CPU has no XSAVE), to be checked as
// DumpOptions.CPUInUseOnly says.
func (ss *session) cpuFeatures(procs []*core.Process) *core.CPUFeatures {
	xcr0, ok := raw.XCR0()
	if !ok {
		return nil
	}
	f := &core.CPUFeatures{XCR0: xcr0, OnlyInUse: ss.opts.CPUInUseOnly}
	for _, p := range procs {
		for _, t := range p.Threads {
			f.InUse |= core.XstateBV(t.Xstate)
		}
	}
	return f
}
