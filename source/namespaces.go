package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// NamespaceError refuses a process that lives in namespaces migrate does
// not carry: Kinds names them, as /proc/PID/ns does ("mnt", "net", ...).
type NamespaceError struct {
	PID    int
	Kinds  []string
	Reason string
}

func (e *NamespaceError) Error() string {
	s := fmt.Sprintf("cannot dump process %d", e.PID)
	if len(e.Kinds) > 0 {
		s += fmt.Sprintf(": it lives in %s namespaces other than migrate's", strings.Join(e.Kinds, ", "))
	}
	return s + ": " + e.Reason
}

// nsKind is a kind of namespace, as /proc/PID/ns names it. A carried kind
// is one the dump of a container (the init of a PID namespace of its own,
// with its tree) takes with it: the restore makes the namespace anew.
// Every other kind must be migrate's own.
type nsKind struct {
	name    string
	carried bool
}

var namespaceKinds = []nsKind{
	{"cgroup", true}, {"ipc", true}, {"mnt", false}, {"net", true},
	{"pid", true}, {"time", false}, {"user", true}, {"uts", true},
}

// nsLink is the namespace of kind of process pid ("self" for migrate), or
// "" on a kernel without that kind.
func nsLink(pid, kind string) (string, error) {
	l, err := os.Readlink("/proc/" + pid + "/ns/" + kind)
	if errors.Is(err, fs.ErrNotExist) && pid == "self" {
		return "", nil
	}
	return l, err
}

// otherNamespaces returns the kinds of namespace in which process pid
// differs from migrate itself.
func otherNamespaces(pid int) ([]string, error) {
	var differ []string
	for _, k := range namespaceKinds {
		mine, err := nsLink("self", k.name)
		if err != nil {
			return nil, err
		}
		if mine == "" {
			continue // a kernel without this kind of namespace
		}
		its, err := nsLink(strconv.Itoa(pid), k.name)
		if err != nil {
			return nil, fmt.Errorf("process %d: namespace %s: %w", pid, k.name, err)
		}
		if its != mine {
			differ = append(differ, k.name)
		}
	}
	return differ, nil
}

// containerInit says whether process pid is the init of a PID namespace
// that is a child of migrate's (a container whose processes the dump
// takes with it); it refuses a process of a child PID namespace that is
// not its init, and one of a namespace nested deeper.
func containerInit(pid int, status *proc.Status) (bool, error) {
	mine, err := nsLink("self", "pid")
	if err != nil {
		return false, err
	}
	its, err := nsLink(strconv.Itoa(pid), "pid")
	if err != nil {
		return false, fmt.Errorf("process %d: namespace pid: %w", pid, err)
	}
	if its == mine {
		return false, nil
	}
	switch {
	case len(status.NSpid) > 2:
		return false, &NamespaceError{PID: pid, Kinds: []string{"pid"}, Reason: fmt.Sprintf(
			"its PID namespace is nested %d levels below migrate's (PIDs %v): migrate moves a container of one level only", len(status.NSpid)-1, status.NSpid)}
	case len(status.NSpid) == 2 && status.NSpid[1] == 1:
		return true, nil
	case len(status.NSpid) == 2:
		reason := fmt.Sprintf("it is process %d inside a container (a PID namespace of its own): dump the container's init instead", status.NSpid[1])
		if init := findInit(its); init > 0 {
			reason += fmt.Sprintf(" (PID %d here)", init)
		}
		return false, &NamespaceError{PID: pid, Kinds: []string{"pid"}, Reason: reason}
	}
	return false, &NamespaceError{PID: pid, Kinds: []string{"pid"}, Reason: "its PID namespace is not below migrate's (is /proc migrate's own?)"}
}

// findInit returns the process that is PID 1 of PID namespace ns (as
// /proc/PID/ns/pid names it), or 0.
func findInit(ns string) int {
	for _, pid := range processesIn("pid", ns) {
		if st, err := proc.ReadStatus(pid); err == nil && len(st.NSpid) > 0 && st.NSpid[len(st.NSpid)-1] == 1 {
			return pid
		}
	}
	return 0
}

// processesIn lists the processes of namespace ns of kind, but for
// migrate's own Landlock probes (a container's PID namespace has one
// while its processes are tested).
func processesIn(kind, ns string) []int {
	probeStarting.RLock() // no probe half started: each is known or not there
	defer probeStarting.RUnlock()
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || isLandlockProbe(pid) {
			continue
		}
		if l, err := nsLink(e.Name(), kind); err == nil && l == ns {
			out = append(out, pid)
		}
	}
	return out
}

// checkNamespaces refuses process pid, a member of the dump whose root is
// root, if it lives in namespaces the restore would not give back: a
// kind that is not carried and differs from migrate's, or, in the dump of
// a container, a carried kind that differs from the root's (a namespace
// of its own inside the container).
func checkNamespaces(pid, root int, status *proc.Status) error {
	// Its user namespace first: a rootless container's processes differ
	// from migrate in every namespace, and that is the one to name.
	if err := checkUserNamespace(pid, root); err != nil {
		return err
	}
	var container bool
	if pid == root {
		var err error
		if container, err = containerInit(pid, status); err != nil {
			return err
		}
	} else {
		rs, err := proc.ReadStatus(root)
		if err != nil {
			return fmt.Errorf("process %d: %w", root, err)
		}
		if container, err = containerInit(root, rs); err != nil {
			return err
		}
	}
	differ, err := otherNamespaces(pid)
	if err != nil {
		return err
	}
	// A time namespace of its own is carried, in a container or not: its
	// offsets are in the image's clocks (clocks.go).
	differ = slices.DeleteFunc(differ, func(kind string) bool { return kind == "time" })
	if err := checkTimeNamespace(pid); err != nil {
		return err
	}
	// A mount namespace of its own is carried too (mounts.go), in a
	// container or not: a container's proc and mqueue mounts of its own
	// namespaces are mounted from inside them.
	differ = slices.DeleteFunc(differ, func(kind string) bool { return kind == "mnt" })
	var refused []string
	for _, kind := range differ {
		i := slices.IndexFunc(namespaceKinds, func(k nsKind) bool { return k.name == kind })
		if !container || !namespaceKinds[i].carried {
			refused = append(refused, kind)
		}
	}
	if container && pid != root {
		for _, k := range namespaceKinds {
			if !k.carried {
				continue
			}
			mine, err1 := nsLink(strconv.Itoa(pid), k.name)
			rootNS, err2 := nsLink(strconv.Itoa(root), k.name)
			if err1 == nil && err2 == nil && mine != rootNS {
				return &NamespaceError{PID: pid, Kinds: []string{k.name}, Reason: fmt.Sprintf(
					"it has a %s namespace of its own inside the container of %d: migrate carries the container's only", k.name, root)}
			}
		}
	}
	if len(refused) > 0 {
		reason := "its restore would put it in migrate's own; run migrate inside them (nsenter)"
		if container {
			reason = "migrate carries a container's PID, UTS, IPC, network, cgroup, mount and time namespaces, not these"
		} else if slices.Contains(differ, "pid") || slices.Contains(differ, "uts") || slices.Contains(differ, "ipc") || slices.Contains(differ, "cgroup") {
			reason += ", or dump the init of the container's PID namespace"
		}
		return &NamespaceError{PID: pid, Kinds: refused, Reason: reason}
	}
	return nil
}

// noteContainer notes, when the root of the dump is the init of a PID
// namespace of its own, that the dump carries the container: its whole
// tree (opts.Tree is set), and its IPC namespace if it has one.
func (ss *session) noteContainer(opts *DumpOptions) error {
	status, err := proc.ReadStatus(opts.PID)
	if err != nil {
		return fmt.Errorf("process %d: %w", opts.PID, err)
	}
	if ss.container, err = containerInit(opts.PID, status); err != nil || !ss.container {
		return err
	}
	opts.Tree, ss.opts.Tree = true, true
	differ, err := otherNamespaces(opts.PID)
	if err != nil {
		return err
	}
	if slices.Contains(differ, "ipc") {
		ss.ipcNS = opts.PID
	}
	if slices.Contains(differ, "net") {
		ss.ownNet = true
		// What it has that migrate does not carry is refused now.
		if _, err := readNet(opts.PID); err != nil {
			return err
		}
	}
	if slices.Contains(differ, "cgroup") {
		if _, err := readCgroupNS(opts.PID); err != nil {
			return err
		}
	}
	// Every process of the container is the root's descendant.
	pids, _, err := walkTree(opts.PID)
	if err != nil {
		return err
	}
	tree := map[int]bool{}
	for _, p := range pids {
		tree[p] = true
	}
	return checkStrays(opts.PID, tree)
}

// checkStrays refuses a process that shares a namespace of container
// init root (its PID namespace, or the UTS or IPC one it has of its own)
// but is not in tree (the root's descendants): one that entered it
// (setns) from outside would be left out, or see another namespace. The
// root's parent, outside the PID namespace, may share its UTS and IPC
// ones: it is the container's launcher (`unshare --pid --fork --ipc`
// unshares them for itself before it forks the init), left out.
func checkStrays(root int, tree map[int]bool) error {
	launcher := -1
	if st, err := proc.ReadStat(root); err == nil {
		launcher = st.PPID
	}
	for _, k := range namespaceKinds {
		if !k.carried {
			continue
		}
		ns, err := nsLink(strconv.Itoa(root), k.name)
		if err != nil {
			return fmt.Errorf("process %d: namespace %s: %w", root, k.name, err)
		}
		if mine, _ := nsLink("self", k.name); mine == ns {
			continue
		}
		for _, pid := range processesIn(k.name, ns) {
			// (One that forked into the tree since it was read, or
			// exited, is none: the next round takes it in; frozen, the
			// tree has every descendant.)
			if !tree[pid] && (pid != launcher || k.name == "pid") && !descendantOf(pid, root) && !exited(pid) {
				// Its name and parent, for the operator to tell what it is.
				who := ""
				if st, err := proc.ReadStat(pid); err == nil {
					who = fmt.Sprintf(" (%s, parent %d)", st.Comm, st.PPID)
				}
				return &NamespaceError{PID: pid, Kinds: []string{k.name}, Reason: fmt.Sprintf(
					"it%s is in the %s namespace of container %d but not a descendant of its init (it entered it with setns?): the dump of the container would leave it out", who, k.name, root)}
			}
		}
	}
	return nil
}

// readNamespaces describes the namespaces the container of img's root
// lives in: the IDs of its processes and threads inside its PID
// namespace, and, of its own UTS and IPC namespaces, the names and the
// System V objects. It refuses a process of the PID namespace outside
// the tree. Without final (the layout of a live migration's round, its
// processes running) it gives only the IDs of the processes and threads
// it knows of, and no System V object: what the target needs to create
// them.
//
// Preconditions: with final, the processes of img are frozen.
func (ss *session) readNamespaces(img *core.Image, final bool) (*core.Namespaces, error) {
	root := img.Process.PID
	ns := &core.Namespaces{PID: &core.PIDNamespace{}}
	tree := map[int]bool{}
	for _, p := range append([]core.Process{img.Process}, img.Tree...) {
		tree[p.PID] = true
		var tids []int
		for _, t := range p.Threads {
			tids = append(tids, t.TID)
		}
		if !slices.Contains(tids, p.PID) && (p.Zombie != nil || !final) {
			tids = append(tids, p.PID)
		}
		for _, tid := range tids {
			st, err := proc.ReadTaskStatus(p.PID, tid)
			if err != nil && !final && tid == p.PID {
				// A round's layout of a tree that runs: a process gone
				// since the round read the tree (it leaves at the next)
				// keeps the PID inside it had when it joined.
				if in, ok := ss.innerPIDs[tid]; ok {
					ns.PID.IDs = append(ns.PID.IDs, core.NSID{Outer: tid, Inner: in})
					continue
				}
			}
			if err != nil {
				return nil, fmt.Errorf("process %d thread %d: %w", p.PID, tid, err)
			}
			if len(st.NSpid) == 2 && tid == p.PID {
				ss.noteInner(tid, st)
			}
			if len(st.NSpid) != 2 {
				return nil, &NamespaceError{PID: p.PID, Kinds: []string{"pid"}, Reason: fmt.Sprintf("thread %d is not in the container's PID namespace (PIDs %v)", tid, st.NSpid)}
			}
			ns.PID.IDs = append(ns.PID.IDs, core.NSID{Outer: tid, Inner: st.NSpid[1]})
		}
	}
	if err := checkStrays(root, tree); err != nil {
		return nil, err
	}
	differ, err := otherNamespaces(root)
	if err != nil {
		return nil, err
	}
	if slices.Contains(differ, "user") {
		if ns.User, err = readUserNS(root); err != nil {
			return nil, err
		}
	}
	if slices.Contains(differ, "uts") {
		if ns.UTS, err = readUTS(root); err != nil {
			return nil, err
		}
	}
	if slices.Contains(differ, "net") {
		if ns.Net, err = readNet(root); err != nil {
			return nil, err
		}
	}
	if slices.Contains(differ, "cgroup") {
		if ns.Cgroup, err = readCgroupNS(root); err != nil {
			return nil, err
		}
	}
	if slices.Contains(differ, "ipc") {
		// POSIX message queues of the namespace are not carried: one no
		// process holds open would be lost without a word (one held open
		// is refused as an fd).
		names, err := proc.MqueueNames(root)
		if err != nil {
			return nil, fmt.Errorf("process %d: POSIX message queues of its IPC namespace: %w", root, err)
		}
		if len(names) > 0 {
			return nil, &NamespaceError{PID: root, Kinds: []string{"ipc"}, Reason: fmt.Sprintf(
				"its IPC namespace has POSIX message queues (%s), which migrate does not carry", strings.Join(names, ", "))}
		}
		ns.IPC = &core.IPCNamespace{}
		if !final {
			return ns, nil
		}
		if ns.IPC, err = readIPC(root); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// readUTS reads the host and domain name of the UTS namespace of pid.
func readUTS(pid int) (*core.UTSNamespace, error) {
	u := &core.UTSNamespace{}
	err := proc.InNamespace(pid, nsUTS, func() error {
		h, err := proc.ReadFile("/proc/sys/kernel/hostname")
		if err != nil {
			return err
		}
		d, err := proc.ReadFile("/proc/sys/kernel/domainname")
		if err != nil {
			return err
		}
		u.Hostname, u.Domainname = string(trimNL(h)), string(trimNL(d))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("UTS namespace of %d: %w", pid, err)
	}
	return u, nil
}

// noteInner remembers the PID inside its container of process pid, as
// its status st says (see readNamespaces).
func (ss *session) noteInner(pid int, st *proc.Status) {
	if len(st.NSpid) != 2 {
		return
	}
	if ss.innerPIDs == nil {
		ss.innerPIDs = map[int]int{}
	}
	ss.innerPIDs[pid] = st.NSpid[1]
}

// readCgroupNS reads the roots of the cgroup namespace of container init
// pid, refusing one whose cgroup is outside them (the roots cannot be
// told then).
func readCgroupNS(pid int) (*core.CgroupNamespace, error) {
	roots, err := proc.CgroupNSRoots(pid)
	var oe *proc.OutsideCgroupNSError
	if errors.As(err, &oe) {
		return nil, &NamespaceError{PID: pid, Kinds: []string{"cgroup"}, Reason: oe.Error() + ": the root of the namespace to make again is not known"}
	}
	if err != nil {
		return nil, fmt.Errorf("process %d: cgroup namespace: %w", pid, err)
	}
	ns := &core.CgroupNamespace{}
	for _, r := range roots {
		ns.Roots = append(ns.Roots, core.Cgroup{Controllers: r.Controllers, Path: r.Path})
	}
	return ns, nil
}
