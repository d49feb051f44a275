package source

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
)

// User namespaces are not carried: a process in one of its own is
// refused, and so is a process whose namespaces of its own (a
// container's) are owned by another user namespace than migrate's, since
// the restore would make them owned by migrate's. UserNamespaceError
// says which case it is.
//
// What stands in the way of carrying one (a rootless container): the
// restore gives a container's processes and threads their PIDs outside
// it too (clone3 with set_tid at both levels), and a process inside a
// user namespace of its own cannot choose its children's PIDs in the
// initial PID namespace (that takes CAP_CHECKPOINT_RESTORE or
// CAP_SYS_ADMIN in the initial user namespace); nor can a process that
// has threads join one (setns refuses a multithreaded caller).

// UserNSProblem says why a process was refused for its user namespace.
type UserNSProblem string

const (
	// UserNSOwn: the process lives in a user namespace of its own, a
	// child of the initial one (a rootless container); not carried.
	UserNSOwn UserNSProblem = "own"
	// UserNSNested: its user namespace is not a child of migrate's.
	UserNSNested UserNSProblem = "nested"
	// UserNSMixed: processes of the tree live in different user
	// namespaces.
	UserNSMixed UserNSProblem = "mixed"
	// UserNSShared: a process outside the dump (Other) lives in the
	// process's user namespace.
	UserNSShared UserNSProblem = "shared"
	// UserNSOwner: a namespace of the process's own (Kind) is owned by
	// another user namespace than the process's.
	UserNSOwner UserNSProblem = "owner"
)

// UserNamespaceError refuses process PID for its user namespace, or for
// the user namespace that owns one of its namespaces (Kind, as
// /proc/PID/ns names it).
type UserNamespaceError struct {
	PID     int
	Problem UserNSProblem
	Kind    string // UserNSOwner: the namespace owned elsewhere
	Other   int    // UserNSShared, UserNSMixed: the other process
	Reason  string
}

func (e *UserNamespaceError) Error() string {
	s := fmt.Sprintf("cannot dump process %d: user namespace (%s)", e.PID, e.Problem)
	if e.Kind != "" {
		s = fmt.Sprintf("cannot dump process %d: its %s namespace is owned by another user namespace", e.PID, e.Kind)
	}
	return s + ": " + e.Reason
}

// nsID identifies a namespace by the device and inode of its file.
type nsID struct{ dev, ino uint64 }

func (n nsID) String() string { return fmt.Sprintf("[%d]", n.ino) }

func statNS(fd int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsID{}, os.NewSyscallError("fstat", err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// nsIoctl opens namespace file path and returns the identity of the
// namespace ioctl req (NS_GET_USERNS, NS_GET_PARENT) gives of it.
func nsIoctl(path string, req uint) (nsID, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nsID{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	got, err := unix.IoctlRetInt(fd, req)
	if err != nil {
		return nsID{}, &os.PathError{Op: "ioctl", Path: path, Err: err}
	}
	defer unix.Close(got)
	return statNS(got)
}

// nsOf is the identity of the namespace of file path.
func nsOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// userNSMaps describes the uid and gid maps and setgroups of process
// pid's user namespace, for a refusal.
func userNSMaps(pid int) string {
	read := func(name string) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			return "unreadable"
		}
		return strings.Join(strings.Fields(string(b)), " ")
	}
	return fmt.Sprintf("uid_map %q, gid_map %q, setgroups %s", read("uid_map"), read("gid_map"), read("setgroups"))
}

// checkUserNamespace refuses process pid, a member of the dump whose root
// is root, for its user namespace: one that is not migrate's (nested,
// different from the root's, shared with a process outside the dump, or
// a child of migrate's alone), or, in migrate's, a namespace of its own
// that another user namespace owns.
func checkUserNamespace(pid, root int) error {
	mine, err := nsOf("/proc/self/ns/user")
	if err != nil {
		return err
	}
	path := fmt.Sprintf("/proc/%d/ns/user", pid)
	its, err := nsOf(path)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if its == mine {
		return checkOwners(pid, mine)
	}
	parent, err := nsIoctl(path, unix.NS_GET_PARENT)
	if err != nil {
		return fmt.Errorf("process %d: parent of its user namespace: %w", pid, err)
	}
	if parent != mine {
		return &UserNamespaceError{PID: pid, Problem: UserNSNested, Reason: fmt.Sprintf(
			"its user namespace %v is nested below another one (%v), not a child of migrate's: not carried", its, parent)}
	}
	if pid != root {
		rootNS, err := nsOf(fmt.Sprintf("/proc/%d/ns/user", root))
		if err != nil {
			return fmt.Errorf("process %d: %w", root, err)
		}
		if rootNS != its {
			return &UserNamespaceError{PID: pid, Problem: UserNSMixed, Other: root, Reason: fmt.Sprintf(
				"it lives in user namespace %v, the root of the dump %d in %v: migrate does not carry user namespaces, let alone several in one tree", its, root, rootNS)}
		}
	}
	// Another process in it, outside the dump; the root's parent, its
	// launcher (`unshare --user --fork`), is left out as for the other
	// namespaces (checkStrays).
	launcher := -1
	if st, err := proc.ReadStat(root); err == nil {
		launcher = st.PPID
	}
	link, err := os.Readlink(path)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	for _, other := range processesIn("user", link) {
		if other != root && other != launcher && !descendantOf(other, root) && !exited(other) {
			return &UserNamespaceError{PID: pid, Problem: UserNSShared, Other: other, Reason: fmt.Sprintf(
				"process %d, outside the dump, lives in its user namespace %v too (%s)", other, its, userNSMaps(pid))}
		}
	}
	return &UserNamespaceError{PID: pid, Problem: UserNSOwn, Reason: fmt.Sprintf(
		"it lives in a user namespace of its own %v (%s): migrate does not carry user namespaces (rootless containers): the restore could not give its processes their PIDs outside from inside one", its, userNSMaps(pid))}
}

// checkOwners refuses process pid, which lives in user namespace userNS,
// if a namespace of its own (one that differs from migrate's) is owned
// by another user namespace: the restore makes each in userNS.
func checkOwners(pid int, userNS nsID) error {
	for _, k := range namespaceKinds {
		if k.name == "user" {
			continue
		}
		mine, err := nsLink("self", k.name)
		if err != nil {
			return err
		}
		if mine == "" {
			continue
		}
		its, err := nsLink(strconv.Itoa(pid), k.name)
		if err != nil {
			return fmt.Errorf("process %d: namespace %s: %w", pid, k.name, err)
		}
		if its == mine {
			continue
		}
		owner, err := nsIoctl(fmt.Sprintf("/proc/%d/ns/%s", pid, k.name), unix.NS_GET_USERNS)
		if err != nil {
			return fmt.Errorf("process %d: owner of its %s namespace: %w", pid, k.name, err)
		}
		if owner != userNS {
			return &UserNamespaceError{PID: pid, Problem: UserNSOwner, Kind: k.name, Reason: fmt.Sprintf(
				"%s is owned by user namespace %v, not by the process's %v (it entered it with setns?): the restore would make it owned by the process's", its, owner, userNS)}
		}
	}
	return nil
}
