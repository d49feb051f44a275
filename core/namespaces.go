package core

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Namespaces are the namespaces of its own that the dump carries: the
// root was the init of a PID namespace (a container), and the tree is
// every process of it. The restore creates each one anew, for the tree
// alone. A namespace kind not listed here is the restorer's own.
type Namespaces struct {
	PID *PIDNamespace `json:"pid,omitempty"`
	UTS *UTSNamespace `json:"uts,omitempty"`
	IPC *IPCNamespace `json:"ipc,omitempty"`
	Net *NetNamespace `json:"net,omitempty"`
	// Cgroup is the container's cgroup namespace, if it had one of its
	// own.
	Cgroup *CgroupNamespace `json:"cgroup,omitempty"`
	// User is the container's user namespace, if it had one of its own:
	// the others of its own are owned by it.
	User *UserNamespace `json:"user,omitempty"`
}

// CgroupNamespace is a container's cgroup namespace: in each hierarchy,
// the cgroup that is its root (the "/" its processes see in
// /proc/self/cgroup), by its path from the hierarchy's root as Cgroup
// has it. The restore makes the namespace there, so that the processes
// see their cgroups under the same paths.
type CgroupNamespace struct {
	Roots []Cgroup `json:"roots"`
}

// PIDNamespace maps every process and thread of the image, known by its
// ID as the dumping migrate saw it (the image's PIDs and TIDs), to its ID
// inside the namespace, which the restore gives it back. The root is 1
// there.
type PIDNamespace struct {
	IDs []NSID `json:"ids"`
}

// NSID is one ID as migrate sees it (Outer) and inside the namespace.
type NSID struct {
	Outer int `json:"outer"`
	Inner int `json:"inner"`
}

// Inner returns the ID inside the namespace of outer, and whether the
// namespace holds it.
func (n *PIDNamespace) Inner(outer int) (int, bool) {
	for _, id := range n.IDs {
		if id.Outer == outer {
			return id.Inner, true
		}
	}
	return 0, false
}

// UTSNamespace is the host and domain name the container had.
type UTSNamespace struct {
	Hostname   string `json:"hostname"`
	Domainname string `json:"domainname"`
}

// IPCNamespace is the System V state of the container's IPC namespace:
// its limits (the sysctls of the namespace), its semaphore sets and
// message queues. Its shared memory segments are Image.Shm, made in the
// new namespace.
type IPCNamespace struct {
	// Sysctls are the namespace's own files of /proc/sys/kernel (msgmax,
	// sem, ...) by name, as read.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	Sems    []SemSet          `json:"sems,omitempty"`
	Msgs    []MsgQueue        `json:"msgs,omitempty"`
}

// IPCSysctls are the files of /proc/sys/kernel that belong to an IPC
// namespace and that the dump carries.
var IPCSysctls = []string{"msgmax", "msgmnb", "msgmni", "sem", "shmall", "shmmax", "shmmni"}

// SemSet is a System V semaphore set (semget): its identity, owner,
// mode and values.
type SemSet struct {
	ID     int      `json:"id"`
	Key    int32    `json:"key"`
	Mode   uint32   `json:"mode"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Values []uint16 `json:"values"`
}

// MsgQueue is a System V message queue (msgget) with its messages, oldest
// first.
type MsgQueue struct {
	ID       int       `json:"id"`
	Key      int32     `json:"key"`
	Mode     uint32    `json:"mode"`
	UID      uint32    `json:"uid"`
	GID      uint32    `json:"gid"`
	QBytes   uint64    `json:"qbytes"`
	Messages []Message `json:"messages,omitempty"`
}

// Message is one message of a queue.
type Message struct {
	Type int64  `json:"type"`
	Text []byte `json:"text"`
}

// Bounds of what an image's IPC namespace may hold.
const (
	MaxSems       = 32000 // semaphores a set (SEMMSL's maximum)
	MaxMsgBytes   = 1 << 24
	maxSysctlSize = 256
)

// validateNamespaces checks the namespaces of an image: the PID namespace
// names every process and thread once, the root as 1; names and System V
// objects are within the kernel's bounds.
func validateNamespaces(img *Image) error {
	ns := img.Namespaces
	if ns == nil {
		return nil
	}
	if (ns.UTS != nil || ns.IPC != nil || ns.Net != nil || ns.Cgroup != nil) && ns.PID == nil {
		return errors.New("namespaces: UTS, IPC, network or cgroup namespace without a PID namespace")
	}
	if u := ns.User; u != nil {
		if ns.PID == nil {
			return errUserNSNoPID
		}
		if err := validateUserNS(u); err != nil {
			return err
		}
	}
	if ns.Net != nil {
		if err := validateNet(ns.Net); err != nil {
			return err
		}
	}
	if c := ns.Cgroup; c != nil {
		if len(c.Roots) == 0 {
			return errors.New("cgroup namespace: no root")
		}
		if err := validateCgroups(c.Roots); err != nil {
			return fmt.Errorf("cgroup namespace: %w", err)
		}
	}
	if ns.PID != nil {
		// Every process and thread has its ID inside (a live migration's
		// layout lists the processes alone), and nothing else does.
		want := map[int]bool{}
		for _, p := range append([]Process{img.Process}, img.Tree...) {
			want[p.PID] = true
			for _, t := range p.Threads {
				want[t.TID] = true
			}
		}
		outer, inner := map[int]bool{}, map[int]bool{}
		for _, id := range ns.PID.IDs {
			if id.Inner <= 0 || id.Inner > 1<<22 || inner[id.Inner] || outer[id.Outer] || !want[id.Outer] {
				return fmt.Errorf("PID namespace: id %d (%d inside) out of range, listed twice, or not of the image", id.Outer, id.Inner)
			}
			outer[id.Outer], inner[id.Inner] = true, true
		}
		for pid := range want {
			if !outer[pid] {
				return fmt.Errorf("PID namespace: process or thread %d has no id inside", pid)
			}
		}
		if in, _ := ns.PID.Inner(img.Process.PID); in != 1 {
			return fmt.Errorf("PID namespace: the root is %d inside, not 1", in)
		}
	}
	if u := ns.UTS; u != nil {
		for _, s := range []string{u.Hostname, u.Domainname} {
			if len(s) > 64 || strings.ContainsRune(s, 0) {
				return fmt.Errorf("UTS namespace: name %q", s)
			}
		}
	}
	if ipc := ns.IPC; ipc != nil {
		return validateIPC(ipc)
	}
	return nil
}

func validateIPC(ipc *IPCNamespace) error {
	known := map[string]bool{}
	for _, n := range IPCSysctls {
		known[n] = true
	}
	for n, v := range ipc.Sysctls {
		if !known[n] || len(v) > maxSysctlSize || strings.ContainsAny(v, "\x00\n") {
			return fmt.Errorf("IPC namespace: sysctl %q = %q", n, v)
		}
	}
	if len(ipc.Sems) > maxList || len(ipc.Msgs) > maxList {
		return fmt.Errorf("IPC namespace: %d semaphore sets, %d queues", len(ipc.Sems), len(ipc.Msgs))
	}
	ids, keys := map[int]bool{}, map[int32]bool{}
	for _, s := range ipc.Sems {
		if s.ID < 0 || s.ID > 1<<30 || ids[s.ID] || (s.Key != 0 && keys[s.Key]) {
			return fmt.Errorf("semaphore set %d (key %#x) out of range or listed twice", s.ID, uint32(s.Key))
		}
		ids[s.ID], keys[s.Key] = true, s.Key != 0
		if len(s.Values) == 0 || len(s.Values) > MaxSems || s.Mode&^0o777 != 0 {
			return fmt.Errorf("semaphore set %d: %d semaphores, mode %#o", s.ID, len(s.Values), s.Mode)
		}
		for i, v := range s.Values {
			if v > 32767 { // SEMVMX
				return fmt.Errorf("semaphore set %d: semaphore %d is %d", s.ID, i, v)
			}
		}
	}
	ids, keys = map[int]bool{}, map[int32]bool{}
	for _, q := range ipc.Msgs {
		if q.ID < 0 || q.ID > 1<<30 || ids[q.ID] || (q.Key != 0 && keys[q.Key]) {
			return fmt.Errorf("message queue %d (key %#x) out of range or listed twice", q.ID, uint32(q.Key))
		}
		ids[q.ID], keys[q.Key] = true, q.Key != 0
		if q.Mode&^0o777 != 0 || q.QBytes > MaxMsgBytes {
			return fmt.Errorf("message queue %d: mode %#o, %d bytes", q.ID, q.Mode, q.QBytes)
		}
		var total uint64
		for _, m := range q.Messages {
			if m.Type <= 0 {
				return fmt.Errorf("message queue %d: a message of type %d", q.ID, m.Type)
			}
			total += uint64(len(m.Text))
		}
		if total > MaxMsgBytes || len(q.Messages) > maxList {
			return fmt.Errorf("message queue %d: %d messages, %d bytes", q.ID, len(q.Messages), total)
		}
	}
	return nil
}

// RenumberOuter gives the processes and threads of a container's image
// other IDs outside it, as m maps them (the IDs inside, which the
// processes know, stay): every field of the image that names one of them
// by its outer ID follows. IDs m does not hold (a parent or session
// outside the container) are left.
func (img *Image) RenumberOuter(m map[int]int) {
	id := func(p *int) {
		if n, ok := m[*p]; ok {
			*p = n
		}
	}
	procs := []*Process{&img.Process}
	for i := range img.Tree {
		procs = append(procs, &img.Tree[i])
	}
	for _, p := range procs {
		id(&p.PID)
		id(&p.PPID)
		id(&p.PGID)
		id(&p.SID)
		for i := range p.Threads {
			id(&p.Threads[i].TID)
		}
		for i := range p.FDs {
			f := &p.FDs[i]
			if f.Kind == FDPidfd {
				id(&f.PidfdPID)
			}
			if f.Owner != nil {
				id(&f.Owner.PID)
			}
			// A description shared with an earlier fd: "PID:FD" of it.
			if pid, fd, ok := strings.Cut(f.Key, ":"); ok {
				if n, err := strconv.Atoi(pid); err == nil {
					id(&n)
					f.Key = strconv.Itoa(n) + ":" + fd
				}
			}
		}
		for i := range p.PosixTimers {
			id(&p.PosixTimers[i].TID)
		}
	}
	if img.Namespaces != nil && img.Namespaces.PID != nil {
		for i := range img.Namespaces.PID.IDs {
			id(&img.Namespaces.PID.IDs[i].Outer)
		}
	}
}
