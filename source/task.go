package source

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// collectTask gathers what /proc and ptrace tell without injecting anything.
//
// Preconditions: the process is frozen.
func (d *dumper) collectTask() error {
	p := d.proc
	// Read again now that the process is frozen: what was read before
	// may be of the middle of an execve (its new name and the old
	// program's memory bounds, seen once by ExampleDump), or changed
	// since (a setsid, a prctl(PR_SET_MM)).
	if st, err := proc.ReadStat(d.pid); err == nil {
		d.stat = st
	}
	d.frozenStatus = nil
	if status, err := proc.ReadStatus(d.pid); err == nil {
		d.status, d.frozenStatus = status, status
	}
	st, status := d.stat, d.status
	p.PID = d.pid
	p.PPID, p.PGID, p.SID = st.PPID, st.PGRP, st.Session
	p.Comm = st.Comm
	p.Stopped = d.p.Stopped()
	if status.HasUmask {
		p.Umask = status.Umask
	}
	var err error
	if p.Cwd, err = os.Readlink(fmt.Sprintf("/proc/%d/cwd", d.pid)); err != nil {
		return fmt.Errorf("process %d: cwd: %w", d.pid, err)
	}
	if p.Root, err = os.Readlink(fmt.Sprintf("/proc/%d/root", d.pid)); err != nil {
		return fmt.Errorf("process %d: root: %w", d.pid, err)
	}
	exe, err := fileRef(fmt.Sprintf("/proc/%d/exe", d.pid))
	if err != nil {
		return fmt.Errorf("process %d: executable: %w", d.pid, err)
	}
	hashCode(fmt.Sprintf("/proc/%d/exe", d.pid), exe)
	if exe.Deleted {
		return &BadTargetError{PID: d.pid, Reason: fmt.Sprintf("its executable %s was deleted", exe.Path)}
	}
	p.Exe = *exe
	p.Cmdline, _ = proc.ReadCmdline(d.pid)
	if p.Audit, err = readAudit(d.pid); err != nil {
		return err
	}

	auxv, err := proc.ReadAuxv(d.pid)
	if err != nil {
		return fmt.Errorf("process %d: auxv: %w", d.pid, err)
	}
	p.MM = core.MM{
		StartCode: st.StartCode, EndCode: st.EndCode,
		StartData: st.StartData, EndData: st.EndData,
		StartBrk: st.StartBrk, StartStack: st.StartStack,
		ArgStart: st.ArgStart, ArgEnd: st.ArgEnd,
		EnvStart: st.EnvStart, EnvEnd: st.EnvEnd,
		Auxv: auxv,
	}

	p.Threads = nil // (a live migration announced a placeholder leader)
	p.SeccompFilters = nil
	for _, th := range d.p.Threads {
		t, err := d.collectThread(th)
		if err != nil {
			return err
		}
		p.Threads = append(p.Threads, t)
	}
	foldCgroups(p)
	tids := make([]int, len(p.Threads))
	for i, t := range p.Threads {
		tids[i] = t.TID
	}
	if p.Attrs, p.Personality, err = readProcAttrs(d.pid, tids); err != nil {
		return err
	}
	shared, err := d.p.PendingSignals(d.p.Leader(), true)
	if err != nil {
		return fmt.Errorf("process %d: shared pending signals: %w", d.pid, err)
	}
	p.SharedPending = siginfos(shared)
	return nil
}

// foldCreds makes the leader's credentials the process's, and keeps a
// thread's own only where they differ.
func foldCreds(p *core.Process) {
	if len(p.Threads) == 0 || p.Threads[0].Creds == nil {
		return
	}
	p.Creds = *p.Threads[0].Creds
	for i := range p.Threads {
		if c := p.Threads[i].Creds; c != nil && c.Equal(&p.Creds) {
			p.Threads[i].Creds = nil
		}
	}
}

func siginfos(raw [][]byte) []core.Siginfo {
	var out []core.Siginfo
	for _, si := range raw {
		out = append(out, core.Siginfo{Signo: int(int32(binary.LittleEndian.Uint32(si))), Raw: si})
	}
	return out
}

func (d *dumper) collectThread(th *ptrace.Thread) (core.Thread, error) {
	t := core.Thread{TID: th.TID, Regs: regsToCore(&th.Regs), Restart: th.Restart, RestartCode: th.RestartCode()}
	// Credentials are per thread; read now that the thread is stopped.
	// collectInjected adds the securebits and folds them into the
	// process's (foldCreds).
	status, err := proc.ReadTaskStatus(d.pid, th.TID)
	if err != nil {
		return t, fmt.Errorf("thread %d: credentials: %w", th.TID, err)
	}
	t.Creds = status.Creds()
	if t.Cgroups, err = readCgroups(d.pid, th.TID); err != nil {
		return t, err
	}
	if t.Seccomp, err = collectSeccomp(d.p, th, status, &d.proc.SeccompFilters); err != nil {
		return t, err
	}
	if t.Xstate, err = d.p.Xstate(th); err != nil {
		return t, fmt.Errorf("thread %d: xstate: %w", th.TID, err)
	}
	if t.SigMask, err = d.p.Sigmask(th); err != nil {
		return t, fmt.Errorf("thread %d: signal mask: %w", th.TID, err)
	}
	pend, err := d.p.PendingSignals(th, false)
	if err != nil {
		return t, fmt.Errorf("thread %d: pending signals: %w", th.TID, err)
	}
	// Signals the freeze took off the queue count as pending.
	t.Pending = siginfos(append(pend, th.Stolen...))
	if b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", d.pid, th.TID)); err == nil {
		t.Comm = string(trimNL(b))
	}
	// get_robust_list works from outside with ptrace access.
	head, size, err := raw.GetRobustList(th.TID)
	if err != nil {
		return t, fmt.Errorf("thread %d: get_robust_list: %w", th.TID, err)
	}
	t.RobustList, t.RobustLen = head, size
	// A thread registered with rseq (glibc registers every thread) that
	// came back unregistered would read a stale CPU number: the dump is
	// refused if the registration cannot be read (Linux 5.13+).
	addr, length, sig, err := d.p.Rseq(th)
	if err != nil {
		return t, fmt.Errorf("thread %d: rseq registration (PTRACE_GET_RSEQ_CONFIGURATION): %w", th.TID, err)
	}
	if addr != 0 {
		t.Rseq = core.Rseq{Addr: addr, Len: length, Sig: sig}
	}
	if t.Sched, err = d.readSched(th.TID); err != nil {
		return t, err
	}
	return t, nil
}

// fileRef describes the file a /proc link (exe, map_files, fd) points to.
func fileRef(link string) (*core.FileRef, error) {
	path, err := os.Readlink(link)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", link, err)
	}
	ref := &core.FileRef{
		Path:  path,
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Mode:  st.Mode,
		UID:   st.Uid,
		GID:   st.Gid,
		Dev:   st.Dev,
		Ino:   st.Ino,
	}
	if strings.HasSuffix(path, " (deleted)") && st.Nlink == 0 {
		ref.Path = strings.TrimSuffix(path, " (deleted)")
		ref.Deleted = true
	}
	return ref, nil
}
