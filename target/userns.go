package target

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/handoff"
)

// A container with a user namespace of its own (Namespaces.User, a
// rootless container) is restored into a new one: the husk clones the
// root with CLONE_NEWUSER among the other namespace flags, so that the
// kernel makes the user namespace first and the others owned by it (a
// mount namespace of its own too: the root gets a copy, owned by it, of
// the one the husk built). migrate, root outside, writes the maps
// (setgroups before gid_map, as the kernel requires) before the root
// runs anything. Every other process is forked inside, by its parent.
//
// A process inside a user namespace of its own cannot choose the PID
// outside of the children and threads it makes (clone3's set_tid at that
// level takes CAP_CHECKPOINT_RESTORE in the initial user namespace): it
// gives the PID inside alone, and migrate makes the kernel hand out the
// one outside next (ns_last_pid of its PID namespace) just before. A
// task of the host that is made in between (a thread of migrate's own)
// takes it: a restore then gives the process or thread that PID outside
// (moveOuter), a live migration fails (PIDRaceError) and the source
// resumes.

// userNS is the image's user namespace, nil without one.
func (ss *session) userNS() *core.UserNamespace {
	if !ss.container() {
		return nil
	}
	return ss.img.Namespaces.User
}

// writeUserNS writes the maps of the user namespace process pid was just
// cloned into: setgroups first (it cannot be written once gid_map is).
func writeUserNS(pid int, u *core.UserNamespace) error {
	format := func(m []core.IDMap) []byte {
		var b strings.Builder
		for _, l := range m {
			fmt.Fprintf(&b, "%d %d %d\n", l.Inside, l.Outside, l.Count)
		}
		return []byte(b.String())
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"setgroups", []byte(u.SetGroups)}, {"uid_map", format(u.UIDMap)}, {"gid_map", format(u.GIDMap)}} {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s", pid, f.name), f.data, 0); err != nil {
			return fmt.Errorf("user namespace: %s: %w", f.name, err)
		}
	}
	return nil
}

// inOwnUserNS says whether process pid lives in another user namespace
// than migrate's.
func inOwnUserNS(pid int) bool {
	mine, err1 := os.Readlink("/proc/self/ns/user")
	its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	return err1 == nil && err2 == nil && mine != its
}

// nextPIDMu serializes the restores that set ns_last_pid.
var nextPIDMu sync.Mutex

// withNextPID runs fn, which makes a task in migrate's PID namespace
// whose PID there it cannot choose, after making the kernel hand out pid
// next.
//
// The kernel's cursor is put back after, unless it moved past where it
// was: the host's next processes do not take the PIDs just freed below
// it.
func withNextPID(pid int, fn func() error) error {
	const lastPID = "/proc/sys/kernel/ns_last_pid"
	nextPIDMu.Lock()
	defer nextPIDMu.Unlock()
	read := func() int {
		b, _ := os.ReadFile(lastPID)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	was := read()
	if err := os.WriteFile(lastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
		return fmt.Errorf("ns_last_pid: %w", err)
	}
	err := fn()
	if was > pid && read() < was {
		os.WriteFile(lastPID, []byte(strconv.Itoa(was)), 0)
	}
	return err
}

// PIDRaceError says a process or thread made from inside a user
// namespace got another PID outside than its own: a process of the host
// forked as it was made.
type PIDRaceError struct {
	PID, Got int
}

func (e *PIDRaceError) Error() string {
	if e.Got == 0 {
		return fmt.Sprintf("task %d was made with another PID outside the container: another process of this host took its PID as it was made (ns_last_pid), try again", e.PID)
	}
	return fmt.Sprintf("task %d was made as %d outside the container: another process of this host took its PID as it was made (ns_last_pid), try again", e.PID, e.Got)
}

// taskIs says whether task tid of process pid (as migrate sees it) is
// inner in its innermost PID namespace.
func taskIs(pid, tid, inner int) bool {
	st, err := proc.ReadTaskStatus(pid, tid)
	return err == nil && len(st.NSpid) > 0 && st.NSpid[len(st.NSpid)-1] == inner
}

// strayChild finds the child of process parent that is inner in its
// innermost PID namespace but is not want outside, or returns 0.
func strayChild(parent, want, inner int) int {
	b, _ := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", parent, parent))
	for _, f := range strings.Fields(string(b)) {
		c, err := strconv.Atoi(f)
		if err != nil || c == want {
			continue
		}
		if taskIs(c, c, inner) {
			return c
		}
	}
	return 0
}

// strayThread finds the thread of the process that is inner in its
// innermost PID namespace but not one the restore knows, or returns 0.
func (r *restorer) strayThread(inner int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", r.pid))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || slices.ContainsFunc(r.p.Threads, func(th *ptrace.Thread) bool { return th.TID == tid }) {
			continue
		}
		if taskIs(r.pid, tid, inner) {
			return tid
		}
	}
	return 0
}

// moveOuter takes a process or thread of a rootless container that was
// made with the PID (or TID) here outside the container instead of old,
// the image's (another task of this host took old as it was made): in a
// restore the image follows (the PIDs inside, which its processes know,
// are the same), with a warning, as when a PID is taken before the
// restore (renumberContainer). A live migration, whose source names
// them by their PIDs, refuses it (PIDRaceError: the source resumes).
//
// here may be the PID outside of a task of the image not made yet (the
// kernel hands out the next free one): that one gets a free PID instead.
// all are the restorers whose PIDs follow (nil for a thread).
func (r *restorer) moveOuter(old, here int, all []*restorer) error {
	if old == here {
		return nil
	}
	if r.live && r.moved == nil {
		return &PIDRaceError{PID: old, Got: here}
	}
	m := map[int]int{old: here}
	if _, ok := r.img.Namespaces.PID.Inner(here); ok {
		fresh, err := newFreePIDs().take(func(n int) bool { _, ok := r.img.Namespaces.PID.Inner(n); return ok })
		if err != nil {
			return fmt.Errorf("task %d: %w", here, err)
		}
		m[here] = fresh
	}
	r.img.RenumberOuter(m)
	if r.pid == old {
		r.pid = here
	}
	for _, o := range all {
		if n, ok := m[o.pid]; ok && o != r {
			o.pid = n
		}
	}
	if r.moved != nil {
		r.moved(m)
	}
	var moves []handoff.Renumbered
	for from, to := range m {
		moves = append(moves, handoff.Renumbered{PID: from, TargetPID: to})
	}
	r.warn("%s", describeMoves(moves))
	return nil
}

// ensureFreeOuter moves task old of a rootless container, about to be
// made, to a free PID outside (moveOuter) if old is taken here now (by a
// task made since the restore began: a stray of an earlier fork, a
// thread of migrate's).
func (r *restorer) ensureFreeOuter(old int, all []*restorer) error {
	if r.live && r.moved == nil || pidFree(old) == nil {
		return nil
	}
	fresh, err := newFreePIDs().take(func(n int) bool { _, ok := r.img.Namespaces.PID.Inner(n); return ok })
	if err != nil {
		return fmt.Errorf("task %d: %w", old, err)
	}
	return r.moveOuter(old, fresh, all)
}

// checkUserNS compares the container's user namespace, as the restored
// processes (all, the root first) live in it, with the image's: one of
// their own, shared by all, with the same maps and setgroups, owning
// every namespace of theirs that is not the restorer's.
func checkUserNS(all []*restorer, u *core.UserNamespace) []Difference {
	root := all[0].pid
	diffs, ok := checkOwnNamespace(all, "user", "user")
	if !ok {
		return diffs
	}
	diff := func(what, want, got string) {
		if want != got {
			diffs = append(diffs, Difference{PID: root, What: what, Want: want, Got: got})
		}
	}
	for _, m := range []struct {
		name string
		want []core.IDMap
	}{{"uid_map", u.UIDMap}, {"gid_map", u.GIDMap}} {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/%s", root, m.name))
		if err != nil {
			diff("user namespace "+m.name, "readable", err.Error())
			continue
		}
		var want, got []string
		for _, l := range m.want {
			want = append(want, fmt.Sprintf("%d %d %d", l.Inside, l.Outside, l.Count))
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			got = append(got, strings.Join(strings.Fields(line), " "))
		}
		diff("user namespace "+m.name, strings.Join(want, ", "), strings.Join(got, ", "))
	}
	b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/setgroups", root))
	if err != nil {
		diff("user namespace setgroups", "readable", err.Error())
	} else {
		diff("user namespace setgroups", u.SetGroups, strings.TrimSpace(string(b)))
	}
	userNS, err := proc.NamespaceOf(fmt.Sprintf("/proc/%d/ns/user", root))
	if err != nil {
		return append(diffs, Difference{PID: root, What: "user namespace", Want: "readable", Got: err.Error()})
	}
	kinds := []string{"cgroup", "ipc", "mnt", "net", "pid", "time", "uts"}
	for _, r := range all {
		if r.proc.Zombie != nil {
			continue
		}
		for _, kind := range kinds {
			mine, err1 := os.Readlink("/proc/self/ns/" + kind)
			its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", r.pid, kind))
			if err1 != nil || err2 != nil || mine == its {
				continue
			}
			owner, err := proc.NamespaceIoctl(fmt.Sprintf("/proc/%d/ns/%s", r.pid, kind), unix.NS_GET_USERNS)
			got := fmt.Sprint(owner)
			if err != nil {
				got = err.Error()
			}
			if owner != userNS {
				diffs = append(diffs, Difference{PID: r.pid, What: kind + " namespace's owner", Want: "the container's user namespace " + userNS.String(), Got: got})
			}
		}
	}
	return diffs
}

// innerCreds are the IDs of c as the container's user namespace u has
// them: what setresuid and the others take from inside it.
func innerCreds(u *core.UserNamespace, c *core.Creds) (*core.Creds, error) {
	in := *c
	in.Groups = slices.Clone(c.Groups)
	mapID := func(m []core.IDMap, what string, id *uint32) error {
		v, ok := core.Inside(m, *id)
		if !ok {
			return fmt.Errorf("%s %d is not mapped in the container's user namespace", what, *id)
		}
		*id = v
		return nil
	}
	for i := range in.UID {
		if err := mapID(u.UIDMap, "uid", &in.UID[i]); err != nil {
			return nil, err
		}
	}
	for i := range in.GID {
		if err := mapID(u.GIDMap, "gid", &in.GID[i]); err != nil {
			return nil, err
		}
	}
	if err := mapID(u.UIDMap, "fsuid", &in.FSUID); err != nil {
		return nil, err
	}
	if err := mapID(u.GIDMap, "fsgid", &in.FSGID); err != nil {
		return nil, err
	}
	for i := range in.Groups {
		if err := mapID(u.GIDMap, "group", &in.Groups[i]); err != nil {
			return nil, err
		}
	}
	return &in, nil
}

// asNSRoot runs fn with the calling thread's effective uid that of the
// root of the container's user namespace u, as seen from outside (the
// IPC namespace's sysctls let their namespace's root write them, not
// migrate's root), and then gives it back.
//
// Preconditions: the calling thread is one of osthread's, which ends
// with its goroutine (proc.InNamespace runs fn on one): a uid not given
// back dies with it.
func asNSRoot(u *core.UserNamespace, fn func() error) error {
	if u == nil {
		return fn()
	}
	root, ok := core.Inside(invert(u.UIDMap), 0)
	if !ok {
		return fn() // the namespace's files are migrate's root's
	}
	// The raw call changes this thread's credentials alone.
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(root), ^uintptr(0)); e != 0 {
		return fmt.Errorf("effective uid %d, the user namespace's root: %w", root, e)
	}
	err := fn()
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		return fmt.Errorf("effective uid 0 again: %w", e)
	}
	return err
}

// invert turns a map inside out: Inside(invert(m), x) is the ID outside
// of x inside.
func invert(m []core.IDMap) []core.IDMap {
	out := make([]core.IDMap, len(m))
	for i, l := range m {
		out[i] = core.IDMap{Inside: l.Outside, Outside: l.Inside, Count: l.Count}
	}
	return out
}
