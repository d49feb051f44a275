package target

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/raw"
)

// A container (an image whose root was the init of a PID namespace of
// its own, with Image.Namespaces) is restored into namespaces made anew:
// the root is cloned out of the husk with CLONE_NEWPID (and CLONE_NEWUTS,
// CLONE_NEWIPC when it had those of its own), set_tid giving it PID 1
// inside and its old PID outside; every other process is forked inside
// with its two PIDs. System calls injected into the processes name
// processes by their PIDs inside (inner); migrate, outside, by the
// outer ones, which are the image's.

// container says whether the image is of a container.
func (ss *session) container() bool {
	return ss.img != nil && ss.img.Namespaces != nil && ss.img.Namespaces.PID != nil
}

// inner returns the PID or TID inside the container of outer, the
// image's, as the restored processes name it; outer itself outside a
// container.
func (ss *session) inner(outer int) int {
	if !ss.container() {
		return outer
	}
	if in, ok := ss.img.Namespaces.PID.Inner(outer); ok {
		return in
	}
	return 0
}

// namespaceFlags are the clone flags that make the container's
// namespaces, for the root.
func (ss *session) namespaceFlags() uint64 {
	if !ss.container() {
		return 0
	}
	ns := ss.img.Namespaces
	flags := uint64(unix.CLONE_NEWPID)
	if ns.UTS != nil {
		flags |= unix.CLONE_NEWUTS
	}
	if ns.IPC != nil {
		flags |= unix.CLONE_NEWIPC
	}
	if ns.Net != nil {
		flags |= unix.CLONE_NEWNET
	}
	if ns.User != nil {
		// The user namespace first, then the others, owned by it: the
		// mount namespace the husk built is copied into one (userns.go).
		flags |= unix.CLONE_NEWUSER
		if ss.img.Mounts != nil {
			flags |= unix.CLONE_NEWNS
		}
	}
	return flags
}

// setUTS gives the root's new UTS namespace its host and domain name.
//
// Preconditions: the root is still a copy of the husk (its data page at
// huskData).
func (r *restorer) setUTS() error {
	u := r.img.Namespaces.UTS
	if u == nil {
		return nil
	}
	for _, n := range []struct {
		call string
		nr   uintptr
		name string
	}{{"sethostname", unix.SYS_SETHOSTNAME, u.Hostname}, {"setdomainname", unix.SYS_SETDOMAINNAME, u.Domainname}} {
		if _, err := ptrace.WriteMemForce(r.pid, huskData+512, []byte(n.name)); err != nil {
			return err
		}
		if _, err := r.sys(n.call, n.nr, huskData+512, uint64(len(n.name))); err != nil {
			return fmt.Errorf("UTS namespace: %s(%q): %w", n.call, n.name, err)
		}
	}
	return nil
}

// enterCgroupNS puts the root, just cloned, into the cgroups that were
// the roots of the container's cgroup namespace and makes it unshare one
// there, which its children inherit: in it every process sees its
// cgroups under the paths the original saw. The stage "join cgroups"
// then moves each process to its own cgroups, at or below them.
//
// Preconditions: the root is still a copy of the husk, seized, and has
// no child; the roots' cgroups exist (prepareCgroups ran).
func (r *restorer) enterCgroupNS() error {
	cg := r.img.Namespaces.Cgroup
	if cg == nil {
		return nil
	}
	if err := joinCgroups(r.pid, 0, cg.Roots); err != nil {
		return fmt.Errorf("cgroup namespace: its root: %w", err)
	}
	if _, err := r.sys("unshare", unix.SYS_UNSHARE, unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("cgroup namespace: unshare: %w", err)
	}
	return nil
}

// huskAgentPidfd opens in the husk, before it clones the container's
// root, a pidfd for migrate, and returns its fd number: the processes of
// the container inherit it, and could not open it from inside.
func (r *restorer) huskAgentPidfd() (int, error) {
	fd, err := r.hp.Syscall(r.hp.Leader(), "pidfd_open", unix.SYS_PIDFD_OPEN, uint64(os.Getpid()), 0)
	if err != nil {
		return 0, fmt.Errorf("husk: %w", err)
	}
	if r.userNS() == nil {
		return int(fd), nil
	}
	// In a user namespace of its own, the processes could not use it
	// (pidfd_getfd needs ptrace access to migrate): the husk takes the
	// child's end of a socket instead, over which they receive files.
	defer r.hp.Syscall(r.hp.Leader(), "close", unix.SYS_CLOSE, fd)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("the agent's socket: %w", err)
	}
	send, recv := os.NewFile(uintptr(sp[0]), "agent-sock"), os.NewFile(uintptr(sp[1]), "agent-sock")
	defer recv.Close()
	r.agentSock = r.keep(send)
	child, err := r.hp.Syscall(r.hp.Leader(), "pidfd_getfd", unix.SYS_PIDFD_GETFD, fd, uint64(recv.Fd()), 0)
	if err != nil {
		return 0, fmt.Errorf("husk: the agent's socket: %w", err)
	}
	return int(child), nil
}

// inIPC runs fn in the IPC namespace the restored processes live in: the
// container's new one (entered through its root), or migrate's.
func (ss *session) inIPC(fn func() error) error {
	if !ss.container() || ss.img.Namespaces.IPC == nil {
		return fn()
	}
	return proc.InNamespace(ss.img.Process.PID, unix.CLONE_NEWIPC, fn)
}

// ownIPC says whether the System V objects of the image live in an IPC
// namespace of their own (made by this restore: nothing to clean up
// after a failure but the processes, nothing of the host's to find).
func (ss *session) ownIPC() bool {
	return ss.container() && ss.img.Namespaces.IPC != nil
}

// prepareIPC sets the sysctls of the container's new IPC namespace and
// makes its shared memory segments, before the processes attach them.
func (ss *session) prepareIPC(img *core.Image) error {
	return ss.inIPC(func() error {
		if err := asNSRoot(ss.userNS(), func() error { return setIPCSysctls(img.Namespaces.IPC) }); err != nil {
			return err
		}
		return ss.prepareSysV(img)
	})
}

// setIPCSysctls sets the sysctls of the IPC namespace the calling thread
// is in as ipc has them.
func setIPCSysctls(ipc *core.IPCNamespace) error {
	for _, name := range core.IPCSysctls {
		v, ok := ipc.Sysctls[name]
		if !ok {
			continue
		}
		if err := os.WriteFile("/proc/sys/kernel/"+name, []byte(v), 0); err != nil {
			return fmt.Errorf("IPC namespace: set %s to %q: %w", name, v, err)
		}
	}
	return nil
}

// restoreIPCObjects makes the semaphore sets and message queues of the
// container's IPC namespace, with their IDs, keys, owners, modes, values
// and messages. It runs with the final image (a live migration's state),
// while the processes are stopped.
func (ss *session) restoreIPCObjects(img *core.Image) error {
	if img.Namespaces == nil || img.Namespaces.IPC == nil {
		return nil
	}
	ipc := img.Namespaces.IPC
	return ss.inIPC(func() error {
		// Again: a live migration's first layout had none.
		if err := asNSRoot(ss.userNS(), func() error { return setIPCSysctls(ipc) }); err != nil {
			return err
		}
		for i := range ipc.Sems {
			if err := makeSemSet(&ipc.Sems[i]); err != nil {
				return err
			}
		}
		for i := range ipc.Msgs {
			if err := makeMsgQueue(&ipc.Msgs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// IPCError says a System V semaphore set or message queue of the image
// could not be made again as it was.
type IPCError struct {
	What string // "semaphore set" or "message queue"
	ID   int
	Key  int32
	Err  error
}

func (e *IPCError) Error() string {
	return fmt.Sprintf("System V %s %d (key %#x): %v", e.What, e.ID, uint32(e.Key), e.Err)
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *IPCError) AbortCode() string { return "sysv-ipc" }

func (e *IPCError) Unwrap() error { return e.Err }

// nextID makes the next object of kind ("sem", "msg") of this IPC
// namespace get id.
func nextID(kind string, id int) error {
	return os.WriteFile("/proc/sys/kernel/"+kind+"_next_id", []byte(strconv.Itoa(id)), 0)
}

func makeSemSet(s *core.SemSet) error {
	fail := func(err error) error { return &IPCError{What: "semaphore set", ID: s.ID, Key: s.Key, Err: err} }
	if err := nextID("sem", s.ID); err != nil {
		return fail(err)
	}
	id, err := raw.SemGet(s.Key, len(s.Values), unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return fail(fmt.Errorf("semget: %w", err))
	}
	if id != s.ID {
		raw.SemRemove(id)
		return fail(fmt.Errorf("the kernel gave it ID %d", id))
	}
	if err := raw.SemSetAll(id, s.Values); err != nil {
		return fail(fmt.Errorf("semctl(SETALL): %w", err))
	}
	var ds raw.SemidDS
	if err := raw.SemStat(id, &ds); err != nil {
		return fail(fmt.Errorf("semctl(IPC_STAT): %w", err))
	}
	ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode = s.UID, s.GID, s.Mode
	if err := raw.SemSet(id, &ds); err != nil {
		return fail(fmt.Errorf("semctl(IPC_SET): %w", err))
	}
	return nil
}

func makeMsgQueue(q *core.MsgQueue) error {
	fail := func(err error) error { return &IPCError{What: "message queue", ID: q.ID, Key: q.Key, Err: err} }
	if err := nextID("msg", q.ID); err != nil {
		return fail(err)
	}
	id, err := raw.MsgGet(q.Key, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		return fail(fmt.Errorf("msgget: %w", err))
	}
	if id != q.ID {
		raw.MsgRemove(id)
		return fail(fmt.Errorf("the kernel gave it ID %d", id))
	}
	// Its size first (the messages may need it), then the messages,
	// then its owner and mode.
	var ds raw.MsqidDS
	if err := raw.MsgStat(id, &ds); err != nil {
		return fail(fmt.Errorf("msgctl(IPC_STAT): %w", err))
	}
	ds.Qbytes = q.QBytes
	if err := raw.MsgSet(id, &ds); err != nil {
		return fail(fmt.Errorf("msgctl(IPC_SET) of its size %d: %w", q.QBytes, err))
	}
	for i, m := range q.Messages {
		buf := make([]byte, 8+len(m.Text))
		binary.LittleEndian.PutUint64(buf, uint64(m.Type))
		copy(buf[8:], m.Text)
		if err := raw.MsgSend(id, buf); err != nil {
			return fail(fmt.Errorf("msgsnd of message %d: %w", i, err))
		}
	}
	if err := raw.MsgStat(id, &ds); err != nil {
		return fail(fmt.Errorf("msgctl(IPC_STAT): %w", err))
	}
	ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode = q.UID, q.GID, q.Mode
	if err := raw.MsgSet(id, &ds); err != nil {
		return fail(fmt.Errorf("msgctl(IPC_SET): %w", err))
	}
	return nil
}

// checkNamespaces compares the container's namespaces, as the restored
// root sees them, with the image: the host name, each process's and
// thread's PID inside, the System V objects.
func (b *Builder) checkNamespaces() []Difference {
	img := b.ss.img
	if img.Namespaces == nil {
		return nil
	}
	ns := img.Namespaces
	root := img.Process.PID
	var diffs []Difference
	diff := func(pid int, what string, want, got any) {
		if fmt.Sprint(want) != fmt.Sprint(got) {
			diffs = append(diffs, Difference{PID: pid, What: what, Want: fmt.Sprint(want), Got: fmt.Sprint(got)})
		}
	}
	if ns.PID != nil {
		for _, id := range ns.PID.IDs {
			pid := id.Outer
			st, err := proc.ReadTaskStatus(pid, id.Outer)
			if err != nil {
				// A thread: its process is the one that lists it.
				for _, p := range img.Processes() {
					for _, t := range p.Process.Threads {
						if t.TID == id.Outer {
							pid = p.Process.PID
						}
					}
				}
				if st, err = proc.ReadTaskStatus(pid, id.Outer); err != nil {
					diff(pid, "PID inside the container", id.Inner, err)
					continue
				}
			}
			if len(st.NSpid) < 2 {
				diff(pid, fmt.Sprintf("task %d: PID inside the container", id.Outer), id.Inner, fmt.Sprint(st.NSpid))
				continue
			}
			diff(pid, fmt.Sprintf("task %d: PID inside the container", id.Outer), id.Inner, st.NSpid[len(st.NSpid)-1])
		}
	}
	if ns.Net != nil {
		diffs = append(diffs, b.checkNet()...)
	}
	if ns.User != nil {
		diffs = append(diffs, checkUserNS(b.all, ns.User)...)
	}
	if u := ns.UTS; u != nil {
		err := proc.InNamespace(root, unix.CLONE_NEWUTS, func() error {
			var un unix.Utsname
			if err := unix.Uname(&un); err != nil {
				return err
			}
			diff(root, "host name", u.Hostname, unix.ByteSliceToString(un.Nodename[:]))
			diff(root, "domain name", u.Domainname, unix.ByteSliceToString(un.Domainname[:]))
			return nil
		})
		if err != nil {
			diff(root, "UTS namespace", "readable", err)
		}
	}
	if cg := ns.Cgroup; cg != nil {
		diffs = append(diffs, checkCgroupNS(b.all, cg)...)
	}
	if ipc := ns.IPC; ipc != nil {
		err := b.ss.inIPC(func() error {
			for _, s := range ipc.Sems {
				var ds raw.SemidDS
				if err := raw.SemStat(s.ID, &ds); err != nil {
					diff(root, fmt.Sprintf("semaphore set %d", s.ID), "present", err)
					continue
				}
				vals := make([]uint16, ds.Nsems)
				if err := raw.SemGetAll(s.ID, vals); err != nil {
					return err
				}
				diff(root, fmt.Sprintf("semaphore set %d", s.ID), fmt.Sprintf("key %#x mode %#o owner %d:%d values %v", uint32(s.Key), s.Mode, s.UID, s.GID, s.Values),
					fmt.Sprintf("key %#x mode %#o owner %d:%d values %v", uint32(ds.Perm.Key), ds.Perm.Mode&0o777, ds.Perm.Uid, ds.Perm.Gid, vals))
			}
			for _, q := range ipc.Msgs {
				var ds raw.MsqidDS
				if err := raw.MsgStat(q.ID, &ds); err != nil {
					diff(root, fmt.Sprintf("message queue %d", q.ID), "present", err)
					continue
				}
				var bytes uint64
				for _, m := range q.Messages {
					bytes += uint64(len(m.Text))
				}
				diff(root, fmt.Sprintf("message queue %d", q.ID), fmt.Sprintf("key %#x mode %#o owner %d:%d size %d, %d messages of %d bytes", uint32(q.Key), q.Mode, q.UID, q.GID, q.QBytes, len(q.Messages), bytes),
					fmt.Sprintf("key %#x mode %#o owner %d:%d size %d, %d messages of %d bytes", uint32(ds.Perm.Key), ds.Perm.Mode&0o777, ds.Perm.Uid, ds.Perm.Gid, ds.Qbytes, ds.Qnum, ds.Cbytes))
				// Each message, copied (MSG_COPY leaves it there).
				buf := make([]byte, 8+ds.Cbytes)
				for i, m := range q.Messages {
					if uint64(i) >= ds.Qnum {
						break
					}
					n, err := raw.MsgCopy(q.ID, i, buf)
					if err != nil {
						diff(root, fmt.Sprintf("message queue %d message %d", q.ID, i), "readable", err)
						break
					}
					diff(root, fmt.Sprintf("message queue %d message %d", q.ID, i), fmt.Sprintf("type %d %q", m.Type, m.Text),
						fmt.Sprintf("type %d %q", int64(binary.LittleEndian.Uint64(buf)), buf[8:8+n]))
				}
			}
			for name, want := range ipc.Sysctls {
				got, err := proc.ReadFile("/proc/sys/kernel/" + name)
				if err != nil {
					return err
				}
				diff(root, "IPC sysctl "+name, want, string(trimSpace(got)))
			}
			return nil
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			diff(root, "IPC namespace", "readable", err)
		}
	}
	return diffs
}

// checkOwnNamespace checks that the restored processes (all, the root
// first; zombies aside) share one namespace of kind (as /proc/PID/ns
// names it, what for the differences), not the restorer's. ok is false
// if the root's cannot be read.
func checkOwnNamespace(all []*restorer, kind, what string) (diffs []Difference, ok bool) {
	root := all[0].pid
	what += " namespace"
	rootNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", root, kind))
	if err != nil {
		return []Difference{{PID: root, What: what, Want: "readable", Got: err.Error()}}, false
	}
	if mine, err := os.Readlink("/proc/self/ns/" + kind); err == nil && mine == rootNS {
		diffs = append(diffs, Difference{PID: root, What: what, Want: "one of its own", Got: "the restorer's"})
	}
	for _, r := range all[1:] {
		if r.proc.Zombie != nil {
			continue
		}
		if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", r.pid, kind)); its != rootNS {
			diffs = append(diffs, Difference{PID: r.pid, What: what, Want: rootNS, Got: its})
		}
	}
	return diffs, true
}

// checkCgroupNS checks that the restored processes (all, the root first)
// share a cgroup namespace other than the restorer's, rooted where the
// image's was.
func checkCgroupNS(all []*restorer, cg *core.CgroupNamespace) []Difference {
	root := all[0].pid
	diffs, ok := checkOwnNamespace(all, "cgroup", "cgroup")
	if !ok {
		return diffs
	}
	roots, err := proc.CgroupNSRoots(root)
	if err != nil {
		return append(diffs, Difference{PID: root, What: "cgroup namespace roots", Want: "readable", Got: err.Error()})
	}
	have := map[string]string{}
	for _, r := range roots {
		have[r.Controllers] = r.Path
	}
	for _, w := range cg.Roots {
		if have[w.Controllers] != w.Path {
			diffs = append(diffs, Difference{PID: root, What: fmt.Sprintf("cgroup namespace root (hierarchy %q)", w.Controllers), Want: w.Path, Got: have[w.Controllers]})
		}
	}
	return diffs
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// renumberContainer gives the processes and threads of a container's
// image other PIDs outside it when one of theirs is taken here (only
// those inside matter to the processes): free ones, past the PIDs the
// kernel hands out next. It returns what it did, for the report, or ""
// if the PIDs are free (or the image is not of a container).
func renumberContainer(img *core.Image) (string, error) {
	if img.Namespaces == nil || img.Namespaces.PID == nil {
		return "", nil
	}
	var outer []int
	taken := false
	for _, id := range img.Namespaces.PID.IDs {
		outer = append(outer, id.Outer)
		if pidFree(id.Outer) != nil {
			taken = true
		}
	}
	if !taken {
		return "", nil
	}
	own := map[int]bool{}
	for _, o := range outer {
		own[o] = true
	}
	free := newFreePIDs()
	m := map[int]int{}
	for _, o := range outer {
		n, err := free.take(func(n int) bool { return own[n] })
		if err != nil {
			return "", fmt.Errorf("no free PIDs for the container's %d processes and threads: %w", len(outer), err)
		}
		m[o] = n
	}
	img.RenumberOuter(m)
	var moves []handoff.Renumbered
	for _, o := range outer {
		moves = append(moves, handoff.Renumbered{PID: o, TargetPID: m[o]})
	}
	return describeMoves(moves), nil
}
