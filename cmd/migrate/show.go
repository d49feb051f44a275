package main

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

var showCmd = &command{
	name:    "show",
	usage:   "--dir DIR [FLAGS]",
	summary: "print an image for a person",
	desc: `
Read the metadata of the image in DIR (image.json) and print it for a
person: the process (ids, command, files, credentials), its memory areas,
threads, signal handlers that are not the default, file descriptors, the
resource limits that differ from the kernel's defaults, and the page data.
The metadata is validated as restore would; page data is not read.

With --json the metadata is printed as indented JSON.`,
	examples: `  migrate show --dir /var/tmp/img
  migrate show --dir /var/tmp/img --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["process"]["comm"])'`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var (
			dir    string
			asJSON bool
		)
		fs.StringVarP(&dir, "dir", "d", "", "read the image from `DIR` (required)")
		boolFlag(fs, &asJSON, "json", "", "print the metadata as indented JSON")
		return func(_ context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected arguments: %q", args)
			}
			if dir == "" {
				return usagef("--dir is required")
			}
			img, err := core.ReadImage(dir)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, img)
			}
			showImage(e.stdout, dir, img)
			return nil
		}
	},
}

func showImage(w io.Writer, dir string, img *core.Image) {
	fmt.Fprintf(w, "image %s: %s version %d, dumped %s on %s (kernel %s, %s)\n",
		dir, img.Kind, img.Version, img.Created.UTC().Format(time.DateTime+" MST"), img.Host, img.Kernel, img.Arch)
	if c := img.Clocks; c != nil {
		fmt.Fprintf(w, "clocks: monotonic %.3fs, boottime %.3fs at %s (boot %s); time namespace offsets %v\n",
			float64(c.Monotonic)/1e9, float64(c.Boottime)/1e9, time.Unix(0, c.Realtime).UTC().Format(time.DateTime+".000 MST"), c.BootID, c.Offsets)
	}
	if f := img.CPU; f != nil {
		fmt.Fprintf(w, "CPU: XSAVE features %s (XCR0 %#x); the threads held %s\n", core.XSAVENames(f.XCR0), f.XCR0, core.XSAVENames(f.InUse))
	}
	if len(img.Tree) > 0 {
		section(w, "process tree")
		tw := table(w)
		fmt.Fprintf(tw, "  PID	PPID	PGID	SID	COMM	STATE\n")
		fmt.Fprintf(tw, "  %d	%d	%d	%d	%s	root\n", img.Process.PID, img.Process.PPID, img.Process.PGID, img.Process.SID, img.Process.Comm)
		for _, p := range img.Tree {
			state := fmt.Sprintf("%d threads, %d fds", len(p.Threads), len(p.FDs))
			if p.Zombie != nil {
				state = fmt.Sprintf("zombie, wait status %#x", p.Zombie.ExitCode)
			}
			fmt.Fprintf(tw, "  %d	%d	%d	%d	%s	%s\n", p.PID, p.PPID, p.PGID, p.SID, p.Comm, state)
		}
		tw.Flush()
	}
	showNamespaces(w, img.Namespaces)
	showProcess(w, &img.Process, &img.Pages)
	for i := range img.Tree {
		if p := &img.Tree[i]; p.Zombie == nil {
			fmt.Fprintf(w, "\n== process %d (%s), child of %d ==\n", p.PID, p.Comm, p.PPID)
			showProcess(w, p, p.Pages)
		}
	}
}

// showNamespaces lists the namespaces of a container's image: the PIDs
// inside, the names, the System V objects.
func showNamespaces(w io.Writer, ns *core.Namespaces) {
	if ns == nil {
		return
	}
	section(w, "namespaces (a container: made anew by the restore)")
	tw := table(w)
	if ns.PID != nil {
		var ids []string
		for _, id := range ns.PID.IDs {
			ids = append(ids, fmt.Sprintf("%d=%d", id.Outer, id.Inner))
		}
		fmt.Fprintf(tw, "  pid	PIDs here=inside: %s\n", strings.Join(ids, " "))
	}
	if u := ns.UTS; u != nil {
		fmt.Fprintf(tw, "  uts	host name %q, domain name %q\n", u.Hostname, u.Domainname)
	}
	if ipc := ns.IPC; ipc != nil {
		fmt.Fprintf(tw, "  ipc	%d semaphore sets, %d message queues\n", len(ipc.Sems), len(ipc.Msgs))
		for _, s := range ipc.Sems {
			fmt.Fprintf(tw, "  	semaphores %d (key %#x, mode %04o, owner %d:%d): %v\n", s.ID, uint32(s.Key), s.Mode, s.UID, s.GID, s.Values)
		}
		for _, q := range ipc.Msgs {
			n := 0
			for _, m := range q.Messages {
				n += len(m.Text)
			}
			fmt.Fprintf(tw, "  	queue %d (key %#x, mode %04o, owner %d:%d): %d messages, %d bytes\n", q.ID, uint32(q.Key), q.Mode, q.UID, q.GID, len(q.Messages), n)
		}
	}
	if n := ns.Net; n != nil {
		fmt.Fprintf(tw, "  net	%d interfaces, %d routes\n", len(n.Links), len(n.Routes))
		for _, l := range n.Links {
			state := "down"
			if l.Up {
				state = "up"
			}
			var addrs []string
			for _, a := range l.Addrs {
				addrs = append(addrs, a.Prefix)
			}
			line := fmt.Sprintf("%s %s, mtu %d, %s", l.Name, l.Kind, l.MTU, state)
			if l.MAC != "" {
				line += ", " + l.MAC
			}
			if l.Peer != "" {
				line += ", other end " + l.Peer
			}
			if len(addrs) > 0 {
				line += ": " + strings.Join(addrs, " ")
			}
			fmt.Fprintf(tw, "  	%s\n", line)
		}
		for _, r := range n.Routes {
			fmt.Fprintf(tw, "  	route %s\n", r)
		}
	}
	tw.Flush()
}

func showProcess(w io.Writer, p *core.Process, pages *core.PagesInfo) {
	section(w, "process")
	tw := table(w)
	fmt.Fprintf(tw, "  pid\t%d (ppid %d, pgid %d, sid %d)\n", p.PID, p.PPID, p.PGID, p.SID)
	fmt.Fprintf(tw, "  comm\t%s\n", p.Comm)
	fmt.Fprintf(tw, "  exe\t%s\n", fileRef(&p.Exe))
	if len(p.Cmdline) > 0 {
		fmt.Fprintf(tw, "  cmdline\t%s\n", strings.Join(p.Cmdline, " "))
	}
	fmt.Fprintf(tw, "  cwd\t%s\n", p.Cwd)
	fmt.Fprintf(tw, "  root\t%s\n", p.Root)
	fmt.Fprintf(tw, "  umask\t%04o\n", p.Umask)
	c := &p.Creds
	fmt.Fprintf(tw, "  uid\t%d real, %d effective, %d saved, %d fs\n", c.UID[0], c.UID[1], c.UID[2], c.FSUID)
	fmt.Fprintf(tw, "  gid\t%d real, %d effective, %d saved, %d fs\n", c.GID[0], c.GID[1], c.GID[2], c.FSGID)
	if len(c.Groups) > 0 {
		fmt.Fprintf(tw, "  groups\t%s\n", joinUints(c.Groups))
	}
	fmt.Fprintf(tw, "  caps\teffective %#x, permitted %#x, inheritable %#x, bounding %#x, ambient %#x\n",
		c.CapEff, c.CapPrm, c.CapInh, c.CapBnd, c.CapAmb)
	if p.Personality != 0 {
		fmt.Fprintf(tw, "  personality\t%#x\n", p.Personality)
	}
	if a := p.Attrs; a != nil {
		fmt.Fprintf(tw, "  oom_score_adj\t%d\n", a.OOMScoreAdj)
		thp := "enabled"
		switch a.THPDisable {
		case core.THPDisableAll:
			thp = "disabled (PR_SET_THP_DISABLE)"
		case core.THPDisableExceptAdvised:
			thp = "disabled except where advised (PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED)"
		}
		fmt.Fprintf(tw, "  THP\t%s\n", thp)
		if a.ChildSubreaper {
			fmt.Fprintf(tw, "  child subreaper\tyes\n")
		}
		if a.Membarrier != 0 {
			fmt.Fprintf(tw, "  membarrier\tregistered %s\n", membarrierRegs(a.Membarrier))
		}
		if a.MDWE != 0 {
			mdwe := "refuse exec gain"
			if a.MDWE&2 != 0 {
				mdwe += ", not inherited"
			}
			fmt.Fprintf(tw, "  memory-deny-write-execute\t%s\n", mdwe)
		}
		if a.MemoryMerge {
			fmt.Fprintf(tw, "  KSM\tmerges every area (PR_SET_MEMORY_MERGE)\n")
		}
	}
	tw.Flush()

	showMemory(w, p)
	showThreads(w, p)
	showSeccomp(w, p)
	showSignals(w, p)
	showFDs(w, p)
	showLimits(w, p)

	section(w, "pages")
	tw = table(w)
	fmt.Fprintf(tw, "  file\t%s, %s\n", pages.File, humanBytes(uint64(max(pages.Size, 0))))
	fmt.Fprintf(tw, "  pages\t%d (%s), %d round(s)\n", pages.Pages, humanBytes(pages.Pages*4096), max(pages.Rounds, 1))
	fmt.Fprintf(tw, "  codec\t%s\n", pages.Codec)
	tw.Flush()
}

func section(w io.Writer, title string) { fmt.Fprintf(w, "\n%s\n", title) }

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0) }

func fileRef(f *core.FileRef) string {
	if f == nil {
		return ""
	}
	s := f.Path
	var notes []string
	if f.Deleted {
		notes = append(notes, "deleted")
	}
	if f.Blob != "" {
		notes = append(notes, "contents in "+f.Blob)
	}
	if f.Size > 0 {
		notes = append(notes, humanBytes(uint64(f.Size)))
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, ", ") + ")"
	}
	return s
}

func showMemory(w io.Writer, p *core.Process) {
	var pages uint64
	for _, v := range p.VMAs {
		pages += v.Pages
	}
	section(w, fmt.Sprintf("memory: %s, %s stored", plural(len(p.VMAs), "area"), plural(int(pages), "page")))
	tw := table(w)
	fmt.Fprintln(tw, "  START\tEND\tPROT\tKIND\tSIZE\tPAGES\tNAME")
	for _, v := range p.VMAs {
		name := v.Name
		if v.File != nil {
			name = fileRef(v.File)
			if v.Offset != 0 {
				name += fmt.Sprintf(" @%#x", v.Offset)
			}
		}
		if len(v.Madvise) > 0 {
			name += " [" + madviseNames(v.Madvise) + "]"
		}
		fmt.Fprintf(tw, "  %012x\t%012x\t%s\t%s\t%s\t%d\t%s\n",
			v.Start, v.End, protString(v.Prot, v.Flags), v.Kind, humanBytes(v.Len()), v.Pages, name)
	}
	tw.Flush()
	m := &p.MM
	fmt.Fprintf(w, "  code %#x-%#x, data %#x-%#x, brk %#x-%#x, stack %#x\n",
		m.StartCode, m.EndCode, m.StartData, m.EndData, m.StartBrk, m.Brk, m.StartStack)
	fmt.Fprintf(w, "  args %#x-%#x, env %#x-%#x, auxv %d words\n",
		m.ArgStart, m.ArgEnd, m.EnvStart, m.EnvEnd, len(m.Auxv))
}

func protString(prot, flags int) string {
	b := []byte("---p")
	if prot&unix.PROT_READ != 0 {
		b[0] = 'r'
	}
	if prot&unix.PROT_WRITE != 0 {
		b[1] = 'w'
	}
	if prot&unix.PROT_EXEC != 0 {
		b[2] = 'x'
	}
	if flags&unix.MAP_SHARED != 0 {
		b[3] = 's'
	}
	return string(b)
}

func madviseNames(advice []int) string {
	names := map[int]string{
		unix.MADV_DONTFORK:   "dontfork",
		unix.MADV_DONTDUMP:   "dontdump",
		unix.MADV_HUGEPAGE:   "hugepage",
		unix.MADV_NOHUGEPAGE: "nohugepage",
		unix.MADV_WIPEONFORK: "wipeonfork",
		unix.MADV_MERGEABLE:  "mergeable",
	}
	var out []string
	for _, a := range advice {
		if n, ok := names[a]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("madvise %d", a))
		}
	}
	return strings.Join(out, ",")
}

func showThreads(w io.Writer, p *core.Process) {
	section(w, fmt.Sprintf("threads: %d", len(p.Threads)))
	tw := table(w)
	fmt.Fprintln(tw, "  TID\tCOMM\tRIP\tRSP\tSIGMASK\tPENDING\tRESTART")
	for _, t := range p.Threads {
		restart := t.Restart
		if restart == "" {
			restart = "-"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%#x\t%#x\t%s\t%s\t%s\n",
			t.TID, t.Comm, t.Regs.RIP, t.Regs.RSP, sigset(t.SigMask), siginfos(t.Pending), restart)
	}
	tw.Flush()
	section(w, "scheduling")
	tw = table(w)
	fmt.Fprintln(tw, "  TID\tPOLICY\tPRIO\tNICE\tSLICE\tCPUS\tTIMER SLACK\tPDEATHSIG\tIOPRIO")
	for _, t := range p.Threads {
		s := t.Sched
		if s == nil {
			fmt.Fprintf(tw, "  %d\t(not collected)\n", t.TID)
			continue
		}
		policy := schedPolicy(s.Policy)
		if s.ResetOnFork {
			policy += "|RESET_ON_FORK"
		}
		pdeath := "-"
		if s.PdeathSignal != 0 {
			pdeath = signalName(s.PdeathSignal)
		}
		slice := "default"
		if s.SliceNS != 0 {
			slice = fmt.Sprintf("%d ns", s.SliceNS)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%d\t%d\t%s\t%s\t%d ns\t%s\t%s\n", t.TID, policy, s.Priority, s.Nice, slice, core.CPUList(s.Affinity), s.TimerSlackNS, pdeath, ioprio(s.IOPrio))
	}
	tw.Flush()
	if t := p.Threads[0]; t.Rseq.Addr != 0 {
		fmt.Fprintf(w, "  rseq: registered (%d bytes, signature %#x) by %d of %d threads\n", t.Rseq.Len, t.Rseq.Sig, countRseq(p), len(p.Threads))
	}
	for _, t := range p.Threads {
		if t.AltStack.SP != 0 || t.AltStack.Size != 0 {
			fmt.Fprintf(w, "  thread %d: sigaltstack %#x, %s, flags %#x\n", t.TID, t.AltStack.SP, humanBytes(t.AltStack.Size), t.AltStack.Flags)
		}
	}
}

// showSeccomp prints each thread's seccomp mode and filters (numbered as
// in the image: threads that share a filter show the same number) and
// no_new_privs, if any thread has either.
func showSeccomp(w io.Writer, p *core.Process) {
	var rows []string
	shown := false
	for _, t := range p.Threads {
		nnp := p.Creds.NoNewPrivs
		if t.Creds != nil {
			nnp = t.Creds.NoNewPrivs
		}
		shown = shown || nnp || t.Seccomp != nil
		var s []string
		switch {
		case t.Seccomp == nil:
			s = append(s, "none")
		case t.Seccomp.Mode == core.SeccompModeStrict:
			s = append(s, "strict")
		default:
			var fs []string
			for _, i := range core.SeccompChain(p.SeccompFilters, t.Seccomp.Filter) {
				f := fmt.Sprintf("#%d (%d instructions", i, len(p.SeccompFilters[i].Prog)/8)
				if p.SeccompFilters[i].Log {
					f += ", logged"
				}
				fs = append(fs, f+")")
			}
			s = append(s, fmt.Sprintf("filters %s", strings.Join(fs, ", ")))
		}
		if nnp {
			s = append(s, "no_new_privs")
		}
		rows = append(rows, fmt.Sprintf("  %d\t%s\n", t.TID, strings.Join(s, "; ")))
	}
	if !shown {
		return
	}
	section(w, "seccomp (filters oldest first)")
	tw := table(w)
	for _, r := range rows {
		fmt.Fprint(tw, r)
	}
	tw.Flush()
}

func showSignals(w io.Writer, p *core.Process) {
	var rows []string
	for i, a := range p.Sigactions {
		if a.Handler == 0 { // SIG_DFL
			continue
		}
		handler := fmt.Sprintf("%#x", a.Handler)
		if a.Handler == 1 {
			handler = "SIG_IGN"
		}
		rows = append(rows, fmt.Sprintf("  %s\t%s\t%s\t%s\n", signalName(i+1), handler, saFlags(a.Flags), sigset(a.Mask)))
	}
	section(w, fmt.Sprintf("signal handlers: %d not SIG_DFL", len(rows)))
	if len(rows) > 0 {
		tw := table(w)
		fmt.Fprintln(tw, "  SIGNAL\tHANDLER\tFLAGS\tMASK")
		for _, r := range rows {
			fmt.Fprint(tw, r)
		}
		tw.Flush()
	}
	if len(p.SharedPending) > 0 {
		fmt.Fprintf(w, "  pending for the process: %s\n", siginfos(p.SharedPending))
	}
}

func showFDs(w io.Writer, p *core.Process) {
	section(w, "files: "+plural(len(p.FDs), "fd"))
	if len(p.FDs) == 0 {
		return
	}
	tw := table(w)
	fmt.Fprintln(tw, "  FD\tKIND\tFLAGS\tCLOEXEC\tPOS\tPATH")
	for _, f := range p.FDs {
		cloexec := "no"
		if f.Cloexec {
			cloexec = "yes"
		}
		pos := fmt.Sprint(f.Pos)
		if f.Kind == core.FDPipe || f.Kind == core.FDFIFO || f.Kind == core.FDEventfd {
			pos = "-"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", f.FD, f.Kind, openFlags(f.Flags), cloexec, pos, fdWhat(&f))
	}
	tw.Flush()
}

func fdWhat(f *core.FD) string {
	var parts []string
	if f.File != nil {
		parts = append(parts, fileRef(f.File))
	}
	switch f.Kind {
	case core.FDPipe:
		parts = append(parts, fmt.Sprintf("pipe:[%d]", f.Pipe))
	case core.FDEventfd:
		s := fmt.Sprintf("count %d", f.Count)
		if f.Semaphore {
			s += ", semaphore"
		}
		parts = append(parts, s)
	case core.FDMemfd:
		parts = append(parts, fmt.Sprintf("memfd:%s, seals %#x", f.MemfdName, f.Seals))
	case core.FDExternal:
		parts = append(parts, f.External+" outside the dump (restore --inherit-fd)")
	}
	if s := f.Socket; s != nil && s.Netlink != nil {
		parts = append(parts, fmt.Sprintf("%s port %d groups %v", core.NetlinkProtocols[s.Protocol], s.Netlink.PortID, s.Netlink.Groups))
	}
	if f.Data != "" {
		parts = append(parts, "buffered data in "+f.Data)
	}
	if len(f.Packets) > 0 {
		parts = append(parts, plural(len(f.Packets), "packet")+" queued")
	}
	if f.PipeSize > 0 {
		parts = append(parts, "pipe size "+humanBytes(uint64(f.PipeSize)))
	}
	if f.File != nil && len(f.File.Extents) > 0 {
		var n int64
		for _, e := range f.File.Extents {
			n += e.Len
		}
		parts = append(parts, fmt.Sprintf("sparse: %s of data in %s", humanBytes(uint64(n)), plural(len(f.File.Extents), "extent")))
	}
	if o := f.Owner; o != nil {
		what := map[int]string{0: "thread", 1: "process", 2: "process group"}[o.Type]
		parts = append(parts, fmt.Sprintf("signal-driven I/O to %s %d", what, o.PID))
	}
	if f.Signal != 0 {
		name := unix.SignalName(unix.Signal(f.Signal))
		if name == "" {
			name = fmt.Sprint(f.Signal)
		}
		parts = append(parts, "F_SETSIG "+name)
	}
	return strings.Join(parts, ", ")
}

func openFlags(fl int) string {
	var names []string
	switch fl & unix.O_ACCMODE {
	case unix.O_RDONLY:
		names = append(names, "O_RDONLY")
	case unix.O_WRONLY:
		names = append(names, "O_WRONLY")
	case unix.O_RDWR:
		names = append(names, "O_RDWR")
	}
	rest := fl &^ unix.O_ACCMODE
	for _, f := range []struct {
		bit  int
		name string
	}{
		{unix.O_SYNC, "O_SYNC"}, // before O_DSYNC, which it includes
		{unix.O_DSYNC, "O_DSYNC"},
		{unix.O_APPEND, "O_APPEND"},
		{unix.O_NONBLOCK, "O_NONBLOCK"},
		{unix.O_ASYNC, "O_ASYNC"},
		{unix.O_DIRECT, "O_DIRECT"},
		{unix.O_LARGEFILE, "O_LARGEFILE"},
		{unix.O_DIRECTORY, "O_DIRECTORY"},
		{unix.O_NOFOLLOW, "O_NOFOLLOW"},
		{unix.O_NOATIME, "O_NOATIME"},
		{unix.O_PATH, "O_PATH"},
	} {
		if f.bit != 0 && rest&f.bit == f.bit { // O_LARGEFILE is 0 on amd64
			names = append(names, f.name)
			rest &^= f.bit
		}
	}
	if rest != 0 {
		names = append(names, fmt.Sprintf("%#o", rest))
	}
	return strings.Join(names, "|")
}

// Kernel defaults of the resource limits (INIT_RLIMITS, Linux 5.16+), for
// the limits that do not depend on the machine.
var defaultRlimits = map[int][2]uint64{
	unix.RLIMIT_CPU:     {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_FSIZE:   {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_DATA:    {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_STACK:   {8 << 20, unix.RLIM_INFINITY},
	unix.RLIMIT_CORE:    {0, unix.RLIM_INFINITY},
	unix.RLIMIT_RSS:     {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_NOFILE:  {1024, 4096},
	unix.RLIMIT_MEMLOCK: {8 << 20, 8 << 20},
	unix.RLIMIT_AS:      {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_LOCKS:   {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
	unix.RLIMIT_MSGQUEUE: {
		819200, 819200,
	},
	unix.RLIMIT_NICE:   {0, 0},
	unix.RLIMIT_RTPRIO: {0, 0},
	unix.RLIMIT_RTTIME: {unix.RLIM_INFINITY, unix.RLIM_INFINITY},
}

var rlimitNames = map[int]string{
	unix.RLIMIT_CPU: "CPU", unix.RLIMIT_FSIZE: "FSIZE", unix.RLIMIT_DATA: "DATA",
	unix.RLIMIT_STACK: "STACK", unix.RLIMIT_CORE: "CORE", unix.RLIMIT_RSS: "RSS",
	unix.RLIMIT_NPROC: "NPROC", unix.RLIMIT_NOFILE: "NOFILE", unix.RLIMIT_MEMLOCK: "MEMLOCK",
	unix.RLIMIT_AS: "AS", unix.RLIMIT_LOCKS: "LOCKS", unix.RLIMIT_SIGPENDING: "SIGPENDING",
	unix.RLIMIT_MSGQUEUE: "MSGQUEUE", unix.RLIMIT_NICE: "NICE", unix.RLIMIT_RTPRIO: "RTPRIO",
	unix.RLIMIT_RTTIME: "RTTIME",
}

// showLimits prints the rlimits that differ from the kernel's defaults.
// NPROC and SIGPENDING have machine-dependent defaults; they are compared
// with this process's own.
func showLimits(w io.Writer, p *core.Process) {
	var rows []string
	for _, r := range p.Rlimits {
		def, ok := defaultRlimits[r.Resource]
		if !ok {
			var own unix.Rlimit
			if unix.Getrlimit(r.Resource, &own) != nil {
				continue
			}
			def = [2]uint64{own.Cur, own.Max}
		}
		if r.Cur == def[0] && r.Max == def[1] {
			continue
		}
		name := rlimitNames[r.Resource]
		if name == "" {
			name = fmt.Sprint(r.Resource)
		}
		rows = append(rows, fmt.Sprintf("  RLIMIT_%s\t%s\t%s\t(default %s / %s)\n",
			name, rlimString(r.Cur), rlimString(r.Max), rlimString(def[0]), rlimString(def[1])))
	}
	section(w, fmt.Sprintf("resource limits not at the kernel's default: %d", len(rows)))
	if len(rows) > 0 {
		tw := table(w)
		fmt.Fprintln(tw, "  LIMIT\tSOFT\tHARD\t")
		for _, r := range rows {
			fmt.Fprint(tw, r)
		}
		tw.Flush()
	}
	for _, it := range p.Itimers {
		if it.RemainingUS == 0 && it.IntervalUS == 0 {
			continue
		}
		names := []string{"ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"}
		name := fmt.Sprint(it.Which)
		if it.Which >= 0 && it.Which < len(names) {
			name = names[it.Which]
		}
		fmt.Fprintf(w, "  %s: %s left, interval %s\n", name,
			time.Duration(it.RemainingUS)*time.Microsecond, time.Duration(it.IntervalUS)*time.Microsecond)
	}
}

func rlimString(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

var signalNames = [...]string{
	1: "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
	"SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
	"SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
	"SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
}

func signalName(n int) string {
	if n > 0 && n < len(signalNames) {
		return signalNames[n]
	}
	if n >= 32 && n <= 64 {
		return fmt.Sprintf("SIGRTMIN+%d", n-32)
	}
	return fmt.Sprintf("signal %d", n)
}

// sigset prints a signal mask (bit n-1 is signal n): names when few.
func sigset(m uint64) string {
	switch n := bits.OnesCount64(m); {
	case n == 0:
		return "-"
	case n > 4:
		return fmt.Sprintf("%#x (%d signals)", m, n)
	}
	var names []string
	for i := range 64 {
		if m&(1<<i) != 0 {
			names = append(names, signalName(i+1))
		}
	}
	return strings.Join(names, ",")
}

func siginfos(sis []core.Siginfo) string {
	if len(sis) == 0 {
		return "-"
	}
	names := make([]string, len(sis))
	for i, s := range sis {
		names[i] = signalName(s.Signo)
	}
	return strings.Join(names, ",")
}

func saFlags(f uint64) string {
	var names []string
	for _, s := range []struct {
		bit  uint64
		name string
	}{
		{0x1, "NOCLDSTOP"}, {0x2, "NOCLDWAIT"}, {0x4, "SIGINFO"}, {0x04000000, "RESTORER"},
		{0x08000000, "ONSTACK"}, {0x10000000, "RESTART"}, {0x40000000, "NODEFER"}, {0x80000000, "RESETHAND"},
	} {
		if f&s.bit != 0 {
			names = append(names, s.name)
			f &^= s.bit
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", f))
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, "|")
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

func schedPolicy(p int) string {
	switch p {
	case core.SchedOther:
		return "OTHER"
	case core.SchedFIFO:
		return "FIFO"
	case core.SchedRR:
		return "RR"
	case core.SchedBatch:
		return "BATCH"
	case core.SchedIdle:
		return "IDLE"
	}
	return fmt.Sprintf("policy-%d", p)
}

func countRseq(p *core.Process) int {
	n := 0
	for _, t := range p.Threads {
		if t.Rseq.Addr != 0 {
			n++
		}
	}
	return n
}

// membarrierRegs names the registrations of MEMBARRIER_CMD_GET_REGISTRATIONS.
func membarrierRegs(m int) string {
	var names []string
	for _, r := range []struct {
		bit  int
		name string
	}{{1 << 2, "GLOBAL_EXPEDITED"}, {1 << 4, "PRIVATE_EXPEDITED"}, {1 << 6, "PRIVATE_EXPEDITED_SYNC_CORE"}, {1 << 8, "PRIVATE_EXPEDITED_RSEQ"}} {
		if m&r.bit != 0 {
			names = append(names, r.name)
		}
	}
	return strings.Join(names, ", ")
}

// ioprio names an I/O priority as ionice does: class/level.
func ioprio(v int) string {
	if v == 0 {
		return "-"
	}
	class := [...]string{"none", "rt", "be", "idle"}[v>>13&3]
	if class == "idle" {
		return class
	}
	return fmt.Sprintf("%s/%d", class, v&7)
}
