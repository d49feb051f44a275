package target

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/par"
	"github.com/procmig/migrate/internal/raw"
)

// Difference is one way a process differs from its image.
type Difference struct {
	PID  int    `json:"pid"`
	TID  int    `json:"tid,omitempty"` // 0: process-wide
	What string `json:"what"`
	Want string `json:"want"` // as the image has it
	Got  string `json:"got"`  // as the kernel shows it
}

func (d Difference) String() string {
	who := fmt.Sprintf("process %d", d.PID)
	if d.TID != 0 {
		who += fmt.Sprintf(" thread %d", d.TID)
	}
	return fmt.Sprintf("%s: %s is %s, the image has %s", who, d.What, d.Got, d.Want)
}

// CheckError says a restored process differs from its image (Check): the
// restore is refused before the process runs.
type CheckError struct {
	Diffs []Difference
}

func (e *CheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the restored process differs from its image in %d ways", len(e.Diffs))
	for i, d := range e.Diffs {
		if i == 10 {
			fmt.Fprintf(&b, "; and %d more", len(e.Diffs)-i)
			break
		}
		b.WriteString("; ")
		b.WriteString(d.String())
	}
	return b.String()
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *CheckError) AbortCode() string { return "differs" }

// Check compares process p.PID as the kernel shows it now with p, its
// image, and lists the differences. It reads only /proc and what the
// kernel tells any process with ptrace access to it (sched_getaffinity,
// prlimit): a view independent of how the restore set things, as the
// tests take it. What it compares: identity (comm, process group,
// session, and the parent for a process of a tree), the threads and their
// names, credentials, blocked signals, seccomp mode and number of
// filters, scheduling, CPU masks, timer slack and cgroups, each thread's
// own; signal dispositions (ignored or
// caught), umask, personality, oom_score_adj, coredump_filter, resource limits, the
// working, root and executable paths; every area of the image's layout
// (range, protection, sharing, the file mapped; this kernel's vdso mapped,
// at the image's place or elsewhere with a proxy there); every fd (the same
// numbers and no other, what each points at, its status flags,
// close-on-exec, offset of a regular file, and the file locks held
// through it), and of a netlink socket its protocol, port id, groups and
// destination. It does not compare memory contents, registers, pending
// signals or other socket state.
//
// root says whether p is the root of the image (its parent is not in it,
// so its PPID is not compared).
func Check(p *core.Process, root bool) []Difference {
	c := &checker{pid: p.PID}
	c.check(p, root)
	return c.diffs
}

func (c *checker) check(p *core.Process, root bool) {
	c.process(p, root)
	c.threads(p)
	c.memory(p)
	c.fds(p)
}

type checker struct {
	pid   int
	diffs []Difference
	// status is the process's /proc/PID/status as process read it: its
	// leader's, which thread takes instead of reading it again.
	status *proc.Status
	// maps is the process's memory layout as memory read it.
	maps []proc.Mapping
	// affinity, if set, returns a thread's CPU mask as it will be when
	// it runs: the one the restore gave it, kept in the restorer's books
	// while the process is pinned to its tracer's CPU (ptrace.Proc.Pin).
	// Nil: the kernel's.
	affinity func(tid int) (unix.CPUSet, error)
}

func (c *checker) diff(tid int, what string, want, got any) {
	c.diffs = append(c.diffs, Difference{PID: c.pid, TID: tid, What: what, Want: fmt.Sprint(want), Got: fmt.Sprint(got)})
}

// cmp records a difference if want and got differ.
func cmp[T comparable](c *checker, tid int, what string, want, got T) {
	if want != got {
		c.diff(tid, what, want, got)
	}
}

func (c *checker) unreadable(tid int, what string, err error) {
	c.diff(tid, what, "readable", err)
}

func (c *checker) process(p *core.Process, root bool) {
	st, err := proc.ReadStat(c.pid)
	if err != nil {
		c.unreadable(0, "stat", err)
		return
	}
	cmp(c, 0, "comm", p.Comm, st.Comm)
	cmp(c, 0, "process group", p.PGID, st.PGRP)
	cmp(c, 0, "session", p.SID, st.Session)
	if !root {
		cmp(c, 0, "parent", p.PPID, st.PPID)
	}
	status, err := proc.ReadStatus(c.pid)
	if err != nil {
		c.unreadable(0, "status", err)
		return
	}
	c.status = status
	if status.HasUmask {
		cmp(c, 0, "umask", fmt.Sprintf("%#o", p.Umask), fmt.Sprintf("%#o", status.Umask))
	}
	var ign, cgt uint64
	for i, sa := range p.Sigactions {
		switch {
		case sa.Handler == 1:
			ign |= 1 << i
		case sa.Handler > 1:
			cgt |= 1 << i
		}
	}
	cmp(c, 0, "ignored signals", fmt.Sprintf("%#x", ign), fmt.Sprintf("%#x", status.SigIgn))
	cmp(c, 0, "caught signals", fmt.Sprintf("%#x", cgt), fmt.Sprintf("%#x", status.SigCgt))
	if b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/personality", c.pid)); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64); err == nil {
			cmp(c, 0, "personality", fmt.Sprintf("%#x", p.Personality), fmt.Sprintf("%#x", v))
		}
	}
	if a := p.Audit; a != nil {
		if l, s, err := proc.ReadAudit(c.pid); err == nil {
			cmp(c, 0, "audit login uid", int32(a.LoginUID), int32(l))
			cmp(c, 0, "audit session", int32(a.SessionID), int32(s))
		}
	}
	if p.Attrs != nil {
		if b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", c.pid)); err == nil {
			cmp(c, 0, "oom_score_adj", strconv.Itoa(p.Attrs.OOMScoreAdj), strings.TrimSpace(string(b)))
		}
		if f := p.Attrs.CoredumpFilter; f != nil {
			if b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/coredump_filter", c.pid)); err == nil {
				got, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
				cmp(c, 0, "coredump_filter", fmt.Sprintf("%#x", *f), fmt.Sprintf("%#x", got))
			}
		}
	}
	if len(p.Rlimits) > 0 {
		// /proc/PID/limits: prlimit(2) on another user's process needs
		// CAP_SYS_RESOURCE even to read.
		lims, err := proc.ReadLimits(c.pid)
		if err != nil {
			c.unreadable(0, "resource limits", err)
		}
		for _, l := range p.Rlimits {
			if err != nil {
				break
			}
			what := fmt.Sprintf("rlimit %d", l.Resource)
			if l.Resource >= len(lims) {
				c.diff(0, what, fmt.Sprintf("%d/%d", l.Cur, l.Max), "not shown")
				continue
			}
			got := lims[l.Resource]
			cmp(c, 0, what, fmt.Sprintf("%d/%d", l.Cur, l.Max), fmt.Sprintf("%d/%d", got.Cur, got.Max))
		}
	}
	for _, l := range []struct{ what, link, want string }{
		{"working directory", "cwd", p.Cwd}, {"root directory", "root", p.Root}, {"executable", "exe", p.Exe.Path},
	} {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/%s", c.pid, l.link))
		if err != nil {
			c.unreadable(0, l.what, err)
			continue
		}
		cmp(c, 0, l.what, l.want, got)
	}
}

func (c *checker) threads(p *core.Process) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", c.pid))
	if err != nil {
		c.unreadable(0, "threads", err)
		return
	}
	var got, want []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			got = append(got, tid)
		}
	}
	for _, t := range p.Threads {
		want = append(want, t.TID)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		c.diff(0, "threads", want, got)
		return
	}
	for i := range p.Threads {
		c.thread(p, &p.Threads[i])
	}
}

func (c *checker) thread(p *core.Process, t *core.Thread) {
	tid := t.TID
	status, err := c.status, error(nil)
	if tid != c.pid || status == nil {
		status, err = proc.ReadTaskStatus(c.pid, tid)
	}
	if err != nil {
		c.unreadable(tid, "status", err)
		return
	}
	if t.Comm != "" {
		cmp(c, tid, "name", t.Comm, status.Name)
	}
	want := p.Creds
	if t.Creds != nil {
		want = *t.Creds
	}
	got := status.Creds()
	got.Securebits = want.Securebits // not in /proc
	if !want.Equal(got) {
		c.diff(tid, "credentials", fmt.Sprintf("%+v", want), fmt.Sprintf("%+v", *got))
	}
	cmp(c, tid, "blocked signals", fmt.Sprintf("%#x", t.SigMask), fmt.Sprintf("%#x", status.SigBlk))
	mode, filters := 0, 0
	if sc := t.Seccomp; sc != nil {
		mode = sc.Mode
		if sc.Mode == core.SeccompModeFilter {
			filters = len(core.SeccompChain(p.SeccompFilters, sc.Filter))
		}
	}
	cmp(c, tid, "seccomp mode", mode, status.Seccomp)
	cmp(c, tid, "seccomp filters", filters, status.SeccompFilters)
	if cgs := t.Cgroups; cgs != nil || p.Cgroups != nil {
		if cgs == nil {
			cgs = p.Cgroups
		}
		have, err := currentCgroups(c.pid, tid)
		if err != nil {
			c.unreadable(tid, "cgroups", err)
		}
		for _, w := range cgs {
			cmp(c, tid, "cgroup "+hierarchyName(w.Controllers), w.Path, have[w.Controllers])
		}
	}
	if s := t.Sched; s != nil {
		ps, err := proc.ReadSched(tid)
		if err != nil {
			c.unreadable(tid, "scheduling", err)
			return
		}
		cmp(c, tid, "scheduling policy", s.Policy, ps.Policy)
		cmp(c, tid, "real-time priority", s.Priority, ps.Priority)
		cmp(c, tid, "reset-on-fork", s.ResetOnFork, ps.ResetOnFork)
		cmp(c, tid, "nice", s.Nice, ps.Nice)
		cmp(c, tid, "timer slack", s.TimerSlackNS, ps.TimerSlack)
		var set unix.CPUSet
		if c.affinity != nil {
			set, err = c.affinity(tid)
		} else {
			err = unix.SchedGetaffinity(tid, &set)
		}
		if err != nil {
			c.unreadable(tid, "CPU mask", err)
			return
		}
		if got := cpuWords(&set); !slices.Equal(trimWords(s.Affinity), got) {
			c.diff(tid, "CPU mask", core.CPUList(s.Affinity), core.CPUList(got))
		}
	}
}

func hierarchyName(controllers string) string {
	if controllers == "" {
		return "v2"
	}
	return "v1 " + controllers
}

// cpuWords is a CPU set as 64-bit words, without trailing zero words.
func cpuWords(set *unix.CPUSet) []uint64 {
	var out []uint64
	for i := 0; i < len(set)*64 && i < core.MaxCPUs; i++ {
		if set.IsSet(i) {
			for len(out) <= i/64 {
				out = append(out, 0)
			}
			out[i/64] |= 1 << (i % 64)
		}
	}
	return out
}

func trimWords(w []uint64) []uint64 {
	for len(w) > 0 && w[len(w)-1] == 0 {
		w = w[:len(w)-1]
	}
	return w
}

// memory checks that every area of the image is mapped over its whole
// range with its protection, sharing and file.
func (c *checker) memory(p *core.Process) {
	maps, err := proc.ReadMaps(c.pid)
	if err != nil {
		c.unreadable(0, "memory layout", err)
		return
	}
	c.maps = maps
	const rwx = unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC
	for i := range p.VMAs {
		v := &p.VMAs[i]
		at := v.Start
		area := func() string { return fmt.Sprintf("area %#x-%#x", v.Start, v.End) } // only for a difference
		// The mappings that cover v, one after the other from its start
		// (maps is sorted and its mappings do not overlap).
		for k := sort.Search(len(maps), func(k int) bool { return maps[k].End > at }); k < len(maps) && maps[k].Start <= at; k++ {
			m := &maps[k]
			if v.Prot&rwx != m.Prot&rwx {
				c.diff(0, area()+" protection", protString(v.Prot), protString(m.Prot))
			}
			if shared := v.Flags&unix.MAP_SHARED != 0; shared != m.Shared {
				c.diff(0, area()+" sharing", shared, m.Shared)
			}
			if v.Kind == core.VMASysV && v.Shm != m.Inode {
				c.diff(0, area()+" System V segment", v.Shm, m.Inode)
			}
			if v.File != nil && !strings.HasPrefix(v.File.Path, "/memfd:") && !v.File.Deleted && v.File.Path != m.Path {
				c.diff(0, area()+" file", v.File.Path, m.Path)
			}
			if (v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar) && m.Path != v.Name && m.Path != "" {
				// This kernel's [vdso] or [vvar*] moved there, or the
				// proxy of the old vdso and zero pages (vdsoproxy.go).
				c.diff(0, area()+" "+v.Name, v.Name+" or its proxy", m.Path)
			}
			at = m.End
			if at >= v.End {
				break
			}
		}
		if at < v.End {
			c.diff(0, fmt.Sprintf("area %#x-%#x", v.Start, v.End), "mapped", fmt.Sprintf("not mapped from %#x", at))
		}
	}
	c.vdso(p, maps)
}

// vdso checks that a process whose image has a [vdso] has this kernel's
// somewhere, and that a proxy in place of the image's starts as the
// image's did (its ELF header).
func (c *checker) vdso(p *core.Process, maps []proc.Mapping) {
	old := imageVDSO(p.VMAs)
	if old == nil {
		return
	}
	i := slices.IndexFunc(maps, func(m proc.Mapping) bool { return m.Path == "[vdso]" })
	if i < 0 {
		c.diff(0, "vdso", "this kernel's [vdso] mapped", "none")
		return
	}
	if maps[i].Start == old.Start || len(old.Code) < 64 {
		return
	}
	hdr := make([]byte, 64)
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", c.pid))
	if err == nil {
		_, err = f.ReadAt(hdr, int64(old.Start))
		f.Close()
	}
	if err != nil {
		c.unreadable(0, "vdso proxy", err)
		return
	}
	cmp(c, 0, fmt.Sprintf("vdso proxy at %#x: ELF header", old.Start), fmt.Sprintf("%x", old.Code[:64]), fmt.Sprintf("%x", hdr))
}

func protString(prot int) string {
	b := []byte("---")
	if prot&unix.PROT_READ != 0 {
		b[0] = 'r'
	}
	if prot&unix.PROT_WRITE != 0 {
		b[1] = 'w'
	}
	if prot&unix.PROT_EXEC != 0 {
		b[2] = 'x'
	}
	return string(b)
}

// statusFlags are the file status flags the restore sets and compares.
const statusFlags = unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_DIRECT | unix.O_NOATIME | unix.O_DSYNC | unix.O_SYNC | unix.O_ASYNC | unix.O_PATH

// fds checks that the process has the image's fds and no other, each
// pointing at what it did, with its flags, offset and locks.
func (c *checker) fds(p *core.Process) {
	links, err := proc.ReadFDs(c.pid)
	if err != nil {
		c.unreadable(0, "fds", err)
		return
	}
	have := map[int]string{}
	for _, l := range links {
		have[l.FD] = l.Target
	}
	want := map[int]bool{}
	for i := range p.FDs {
		want[p.FDs[i].FD] = true
	}
	// An fdinfo read each: a few at a time where there are many (hundreds
	// of connections: the check is in the frozen window).
	workers := 1
	if len(p.FDs) > 64 {
		workers = min(4, runtime.GOMAXPROCS(0))
	}
	subs := make([]*checker, workers)
	var wg sync.WaitGroup
	for w := range subs {
		sub := &checker{pid: c.pid}
		subs[w] = sub
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(p.FDs); i += workers {
				sub.fd(&p.FDs[i], have)
			}
		}()
	}
	wg.Wait()
	for _, sub := range subs {
		c.diffs = append(c.diffs, sub.diffs...)
	}
	for n, target := range have {
		if !want[n] {
			c.diff(0, fmt.Sprintf("fd %d", n), "not open", target)
		}
	}
}

// fd checks one fd of the image against the process's (have: fd ->
// link).
func (c *checker) fd(fd *core.FD, have map[int]string) {
	what := fmt.Sprintf("fd %d", fd.FD)
	target, ok := have[fd.FD]
	if !ok {
		c.diff(0, what, fd.Kind, "not open")
		return
	}
	if fd.File != nil && (fd.Kind == core.FDFile || fd.Kind == core.FDDir) && !fd.File.Deleted {
		cmp(c, 0, what+" file", fd.File.Path, target)
	}
	info, err := proc.ReadFDInfo(c.pid, fd.FD)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.unreadable(0, what+" fdinfo", err)
		}
		return
	}
	cmp(c, 0, what+" flags", fmt.Sprintf("%#o", fd.Flags&statusFlags), fmt.Sprintf("%#o", info.Flags&statusFlags))
	cmp(c, 0, what+" close-on-exec", fd.Cloexec, info.Flags&unix.O_CLOEXEC != 0)
	if fd.Kind == core.FDFile {
		cmp(c, 0, what+" offset", fd.Pos, info.Pos)
	}
	if fd.Kind == core.FDPidfd {
		cmp(c, 0, what+" pidfd's process", strconv.Itoa(fd.PidfdPID), strings.TrimSpace(info.Extra["Pid"]))
	}
	if fd.Kind == core.FDSocket && fd.Socket != nil && fd.Socket.Netlink != nil {
		c.netlink(what, fd)
	}
	c.locks(what, fd, info)
}

// netlink compares a netlink socket's protocol, port id, groups and
// destination with the image, through a duplicate of the fd
// (pidfd_getfd: what ptrace access allows).
func (c *checker) netlink(what string, fd *core.FD) {
	pidfd, err := unix.PidfdOpen(c.pid, 0)
	if err != nil {
		c.unreadable(0, what+" netlink socket", err)
		return
	}
	defer unix.Close(pidfd)
	sfd, err := unix.PidfdGetfd(pidfd, fd.FD, 0)
	if err != nil {
		c.unreadable(0, what+" netlink socket", err)
		return
	}
	defer unix.Close(sfd)
	s, n := fd.Socket, fd.Socket.Netlink
	if v, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || v != unix.AF_NETLINK {
		c.diff(0, what+" socket family", "AF_NETLINK", fmt.Sprint(v, err))
		return
	}
	proto, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		c.unreadable(0, what+" netlink protocol", err)
	}
	cmp(c, 0, what+" netlink protocol", s.Protocol, proto)
	if sa, err := unix.Getsockname(sfd); err != nil {
		c.unreadable(0, what+" netlink port id", err)
	} else if l, ok := sa.(*unix.SockaddrNetlink); ok {
		cmp(c, 0, what+" netlink port id", n.PortID, l.Pid)
	}
	groups, err := raw.NetlinkGroups(sfd)
	if err != nil {
		c.unreadable(0, what+" netlink groups", err)
	} else {
		cmp(c, 0, what+" netlink groups", fmt.Sprint(n.Groups), fmt.Sprint(groups))
	}
	var dst, dstGroup uint32
	if sa, err := unix.Getpeername(sfd); err == nil {
		if d, ok := sa.(*unix.SockaddrNetlink); ok {
			dst = d.Pid
			if d.Groups != 0 {
				dstGroup = uint32(bits.TrailingZeros32(d.Groups)) + 1
			}
		}
	}
	cmp(c, 0, what+" netlink destination", fmt.Sprintf("port %d group %d", n.DstPortID, n.DstGroup), fmt.Sprintf("port %d group %d", dst, dstGroup))
}

func (c *checker) locks(what string, fd *core.FD, info *proc.FDInfo) {
	got, err := info.FileLocks()
	if err != nil {
		c.unreadable(0, what+" locks", err)
		return
	}
	var gs, ws []string
	for _, l := range got {
		gs = append(gs, fmt.Sprintf("%s %s %d-%d eof=%v", l.Kind, l.Access, l.Start, l.End, l.ToEOF))
	}
	for _, l := range fd.Locks {
		kind := map[string]string{core.LockPOSIX: "POSIX", core.LockFlock: "FLOCK", core.LockOFD: "OFDLCK"}[l.Kind]
		access := "READ"
		if l.Write {
			access = "WRITE"
		}
		var start, end uint64
		eof := l.Len == 0
		if l.Kind != core.LockFlock {
			start = uint64(l.Start)
			if !eof {
				end = uint64(l.Start + l.Len - 1)
			}
		} else {
			eof = true
		}
		ws = append(ws, fmt.Sprintf("%s %s %d-%d eof=%v", kind, access, start, end, eof))
	}
	slices.Sort(gs)
	slices.Sort(ws)
	if !slices.Equal(gs, ws) {
		c.diff(0, what+" locks", ws, gs)
	}
}

// Check compares every process built with its image (see the function
// Check), once Finish has run and before Resume: a process that differs
// is refused (*CheckError) before it runs.
func (b *Builder) Check() error {
	return b.run(context.Background(), []stage{{"check", b.check}})
}

func (b *Builder) check() error {
	// The processes stay pinned to their tracers' CPUs until the resume
	// (ptrace.Proc.Pin: a thread the detach wakes runs at once, next to
	// its tracer); the check takes the threads' own CPU masks from the
	// restorer's books (checker.affinity), where the restore put the
	// kernel's answer to each, and which the detach gives them.
	// Each process is compared with its image from /proc alone: a tree's
	// at the same time, a few at once, and with them what the processes
	// share (memory, System V objects, namespaces, mounts, cgroups).
	shared := []func() []Difference{b.checkSysV, b.checkNamespaces, b.checkMounts, b.checkCgroupLimits, b.checkDescriptions}
	found := make([][]Difference, len(b.all))
	maps := make([][]proc.Mapping, len(b.all))
	sharedFound := make([][]Difference, len(shared))
	jobs := len(b.all) + len(shared)
	tc := planTimeCheck(b.ss.img)
	par.Do(jobs, min(runtime.GOMAXPROCS(0), 4), func(i int) {
		if i >= len(b.all) {
			sharedFound[i-len(b.all)] = shared[i-len(b.all)]()
			return
		}
		r := b.all[i]
		if r.proc.Zombie != nil {
			return
		}
		c := &checker{pid: r.pid}
		if r.p != nil {
			c.affinity = r.p.Affinity
		}
		c.check(r.proc, i == 0)
		checkTime(c, tc)
		found[i], maps[i] = c.diffs, c.maps
	})
	var diffs []Difference
	for _, ds := range found {
		for _, d := range ds {
			if !b.ss.accepted[accepted{d.PID, d.TID, d.What}] {
				diffs = append(diffs, d)
			}
		}
	}
	diffs = append(diffs, b.checkSharing(maps)...)
	for _, ds := range sharedFound {
		diffs = append(diffs, ds...)
	}
	if len(diffs) > 0 {
		return &CheckError{Diffs: diffs}
	}
	return nil
}

// checkDescriptions checks that the fds of the tree that shared an open
// file description share one again (see checkDescs).
func (b *Builder) checkDescriptions() []Difference {
	var holders []descHolder
	for _, r := range b.all {
		if r.proc.Zombie == nil {
			holders = append(holders, descHolder{pid: r.pid, proc: r.proc})
		}
	}
	return checkDescs(holders)
}

// descHolder is a process whose fds checkDescs compares: its PID here
// and its image.
type descHolder struct {
	pid  int
	proc *core.Process
}

// kcmpFile is KCMP_FILE.
const kcmpFile = 0

// checkDescs checks that every fd of ps that shared an open file
// description with an fd before it (core.FD.Key: in the same process, a
// dup, or another, inherited by fork or passed) holds the very
// description the first one does, as kcmp(KCMP_FILE) sees them: one
// offset, one set of status flags, the locks of one description. (Each
// fd's own state is compared by the check of its process; fds that had
// descriptions of their own are not compared with each other, which
// would take a call for each pair.) A kernel without kcmp compares
// nothing.
func checkDescs(ps []descHolder) []Difference {
	type holder struct{ pid, fd int }
	first := map[string]holder{}
	var diffs []Difference
	for _, p := range ps {
		for i := range p.proc.FDs {
			fd := &p.proc.FDs[i]
			key := descKey(p.proc, fd)
			h, ok := first[key]
			if !ok {
				first[key] = holder{p.pid, fd.FD}
				continue
			}
			what := fmt.Sprintf("fd %d description", fd.FD)
			want := fmt.Sprintf("that of process %d fd %d", h.pid, h.fd)
			r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(h.pid), uintptr(p.pid), kcmpFile, uintptr(h.fd), uintptr(fd.FD), 0)
			switch {
			case e == unix.ENOSYS:
				return nil
			case e != 0:
				diffs = append(diffs, Difference{PID: p.pid, What: what, Want: want, Got: "kcmp: " + e.Error()})
			case r != 0:
				diffs = append(diffs, Difference{PID: p.pid, What: what, Want: want, Got: "another"})
			}
		}
	}
	return diffs
}

// checkSharing checks that the areas of the tree that mapped one shared
// anonymous object (VMA.Shm) map one object again: in the layouts of
// have (by the index of b.all), read from /proc where it has none.
func (b *Builder) checkSharing(have [][]proc.Mapping) []Difference {
	type place struct {
		pid   int
		start uint64
	}
	objects := map[uint64]map[uint64][]place{} // image's -> restored inode -> areas
	for n, r := range b.all {
		if r.proc.Zombie != nil {
			continue
		}
		var maps []proc.Mapping
		if n < len(have) {
			maps = have[n]
		}
		for i := range r.proc.VMAs {
			v := &r.proc.VMAs[i]
			if v.Kind != core.VMASharedAnon || v.Shm == 0 {
				continue
			}
			if maps == nil {
				var err error
				if maps, err = proc.ReadMaps(r.pid); err != nil {
					return []Difference{{PID: r.pid, What: "memory layout", Want: "readable", Got: err.Error()}}
				}
			}
			for _, m := range maps {
				if m.Start <= v.Start && v.Start < m.End {
					if objects[v.Shm] == nil {
						objects[v.Shm] = map[uint64][]place{}
					}
					objects[v.Shm][m.Inode] = append(objects[v.Shm][m.Inode], place{r.pid, v.Start})
				}
			}
		}
	}
	var diffs []Difference
	for shm, got := range objects {
		if len(got) > 1 {
			var parts []string
			for ino, at := range got {
				parts = append(parts, fmt.Sprintf("inode %d at %v", ino, at))
			}
			slices.Sort(parts)
			diffs = append(diffs, Difference{PID: b.all[0].pid, What: fmt.Sprintf("shared memory %d", shm), Want: "one object", Got: strings.Join(parts, "; ")})
		}
	}
	return diffs
}
