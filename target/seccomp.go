package target

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// restoreSeccomp gives every thread its seccomp mode and filters, the
// oldest filter first. The filters every thread has (the image names the
// same filter for them: they shared it) are installed once, in the
// leader, with SECCOMP_FILTER_FLAG_TSYNC, so that the threads share them
// again; each thread then stacks the rest of its own chain by itself
// (filters shared by some threads only come back one copy per thread:
// only inheritance at clone could share them, and the threads already
// exist). Every thread's mode and filter count are checked afterwards: a
// restored thread never has fewer filters than the original.
//
// Preconditions: the threads are created and traced with their filters
// suspended (ptrace.Proc.SeccompSuspended: the calls injected after this
// pass them), and still have the restorer's credentials: installing a
// filter takes CAP_SYS_ADMIN or no_new_privs, and the original may have
// installed it with a capability it dropped since (the credentials, and
// no_new_privs, come after). The restorer has no no_new_privs
// (restoreCreds refuses that), which TSYNC would give every thread.
func (r *restorer) restoreSeccomp() error {
	p := r.proc
	any := false
	for _, t := range p.Threads {
		any = any || t.Seccomp != nil
	}
	if !any {
		return nil
	}
	if !r.p.SeccompSuspended() {
		return fmt.Errorf("the image has seccomp filters, and this restorer cannot suspend them while it works (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN in the initial user namespace, and migrate not itself under seccomp)")
	}
	chains := make([][]int, len(p.Threads))
	for i, t := range p.Threads {
		if t.Seccomp != nil && t.Seccomp.Mode == core.SeccompModeFilter {
			chains[i] = core.SeccompChain(p.SeccompFilters, t.Seccomp.Filter)
		}
	}
	// The common trunk, if every thread has one: TSYNC gives the filter
	// to every thread, one without seccomp too.
	trunk := chains[0]
	for _, c := range chains[1:] {
		n := 0
		for n < len(trunk) && n < len(c) && trunk[n] == c[n] {
			n++
		}
		trunk = trunk[:n]
	}
	if len(p.Threads) == 1 {
		trunk = nil
	}
	for _, f := range trunk {
		if err := r.installFilter(r.p.Leader(), f, unix.SECCOMP_FILTER_FLAG_TSYNC); err != nil {
			return fmt.Errorf("thread %d: filter %d for every thread: %w", p.Threads[0].TID, f, err)
		}
	}
	for i, t := range p.Threads {
		th := r.p.Threads[i]
		for _, f := range chains[i][len(trunk):] {
			if err := r.installFilter(th, f, 0); err != nil {
				return fmt.Errorf("thread %d: filter %d: %w", t.TID, f, err)
			}
		}
		if t.Seccomp != nil && t.Seccomp.Mode == core.SeccompModeStrict {
			if _, err := r.p.Syscall(th, "seccomp(SECCOMP_SET_MODE_STRICT)", unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_STRICT, 0, 0); err != nil {
				return fmt.Errorf("thread %d: strict mode: %w", t.TID, err)
			}
		}
	}
	for i, t := range p.Threads {
		st, err := proc.ReadTaskStatus(r.pid, t.TID)
		if err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
		mode := 0
		if t.Seccomp != nil {
			mode = t.Seccomp.Mode
		}
		if st.Seccomp != mode || st.SeccompFilters != len(chains[i]) {
			return fmt.Errorf("thread %d: seccomp mode %d with %d filters after the restore, want mode %d with %d", t.TID, st.Seccomp, st.SeccompFilters, mode, len(chains[i]))
		}
	}
	return nil
}

// installFilter installs filter f of the image in thread th, with flags
// (SECCOMP_FILTER_FLAG_TSYNC, or 0) and the filter's own.
func (r *restorer) installFilter(th *ptrace.Thread, f int, flags uint64) error {
	filter := r.proc.SeccompFilters[f]
	if filter.Log {
		flags |= unix.SECCOMP_FILTER_FLAG_LOG
	}
	const progOff = 64
	prog, err := r.put(progOff, filter.Prog)
	if err != nil {
		return err
	}
	// struct sock_fprog: unsigned short len, then the pointer.
	var fprog [16]byte
	binary.LittleEndian.PutUint16(fprog[0:], uint16(len(filter.Prog)/8))
	binary.LittleEndian.PutUint64(fprog[8:], prog)
	addr, err := r.put(0, fprog[:])
	if err != nil {
		return err
	}
	ret, err := r.p.Syscall(th, "seccomp(SECCOMP_SET_MODE_FILTER)", unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, addr)
	if err != nil {
		return err
	}
	if ret != 0 {
		// TSYNC names the thread that cannot take the filter.
		return fmt.Errorf("thread %d cannot be given the filter (SECCOMP_FILTER_FLAG_TSYNC)", ret)
	}
	return nil
}
