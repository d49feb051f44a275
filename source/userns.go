package source

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// A container's user namespace (a rootless container: a user namespace
// of its own, a child of migrate's, holding every process of the
// container and owning each namespace of its own) is carried: its maps
// and setgroups are in the image (core.UserNamespace). Anything else
// about user namespaces is refused by name before anything is frozen:
// UserNamespaceError says which case it is.

// UserNSProblem says why a process was refused for its user namespace.
type UserNSProblem string

const (
	// UserNSOwn: the process lives in a user namespace of its own, a
	// child of the initial one, outside a container (a process that is
	// not the init of a PID namespace of its own, nor of its tree).
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
	// UserNSUnsupported: the container in a user namespace of its own
	// has a namespace of its own (Kind) that migrate does not make
	// inside one.
	UserNSUnsupported UserNSProblem = "unsupported"
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
	if e.Problem == UserNSOwner {
		s = fmt.Sprintf("cannot dump process %d: its %s namespace is owned by another user namespace", e.PID, e.Kind)
	}
	return s + ": " + e.Reason
}

// userNSMaps describes the uid and gid maps and setgroups of process
// pid's user namespace, for a refusal.
func userNSMaps(pid int) string {
	read := func(name string) string {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
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
	mine, err := proc.NamespaceOf("/proc/self/ns/user")
	if err != nil {
		return err
	}
	path := fmt.Sprintf("/proc/%d/ns/user", pid)
	its, err := proc.NamespaceOf(path)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if its == mine {
		return checkOwners(pid, mine)
	}
	parent, err := proc.NamespaceIoctl(path, unix.NS_GET_PARENT)
	if err != nil {
		return fmt.Errorf("process %d: parent of its user namespace: %w", pid, err)
	}
	if parent != mine {
		return &UserNamespaceError{PID: pid, Problem: UserNSNested, Reason: fmt.Sprintf(
			"its user namespace %v is nested below another one (%v), not a child of migrate's: not carried", its, parent)}
	}
	if pid != root {
		rootNS, err := proc.NamespaceOf(fmt.Sprintf("/proc/%d/ns/user", root))
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
	// (Once, for the root: the others share its user namespace.)
	for _, other := range processesIn("user", link) {
		if pid != root {
			break
		}
		if other != root && other != launcher && !descendantOf(other, root) && !exited(other) {
			return &UserNamespaceError{PID: pid, Problem: UserNSShared, Other: other, Reason: fmt.Sprintf(
				"process %d, outside the dump, lives in its user namespace %v too (%s)", other, its, userNSMaps(pid))}
		}
	}
	rs, err := proc.ReadStatus(root)
	if err != nil {
		return fmt.Errorf("process %d: %w", root, err)
	}
	if container, err := containerInit(root, rs); err != nil || !container {
		if err != nil {
			return err
		}
		return &UserNamespaceError{PID: pid, Problem: UserNSOwn, Reason: fmt.Sprintf(
			"it lives in a user namespace of its own %v (%s) but is not in a container (the init of a PID namespace of its own, and its tree): migrate carries a container's user namespace only", its, userNSMaps(pid))}
	}
	for _, kind := range []string{"time"} {
		mine, err1 := nsLink("self", kind)
		theirs, err2 := nsLink(strconv.Itoa(pid), kind)
		if err1 == nil && err2 == nil && mine != "" && mine != theirs {
			return &UserNamespaceError{PID: pid, Problem: UserNSUnsupported, Kind: kind, Reason: fmt.Sprintf(
				"the container lives in a user namespace of its own %v and has a %s namespace of its own: migrate does not make one inside a user namespace", its, kind)}
		}
	}
	return checkOwners(pid, its)
}

// checkOwners refuses process pid, which lives in user namespace userNS,
// if a namespace of its own (one that differs from migrate's) is owned
// by another user namespace: the restore makes each in userNS.
func checkOwners(pid int, userNS proc.NamespaceID) error {
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
		owner, err := proc.NamespaceIoctl(fmt.Sprintf("/proc/%d/ns/%s", pid, k.name), unix.NS_GET_USERNS)
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

// readUserNS reads the maps and setgroups of the user namespace of
// process pid.
func readUserNS(pid int) (*core.UserNamespace, error) {
	u := &core.UserNamespace{}
	for _, m := range []struct {
		name string
		to   *[]core.IDMap
	}{{"uid_map", &u.UIDMap}, {"gid_map", &u.GIDMap}} {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, m.name))
		if err != nil {
			return nil, fmt.Errorf("process %d: user namespace: %w", pid, err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if line == "" {
				continue
			}
			var l core.IDMap
			if _, err := fmt.Sscan(line, &l.Inside, &l.Outside, &l.Count); err != nil {
				return nil, fmt.Errorf("process %d: user namespace: %s line %q: %w", pid, m.name, line, err)
			}
			*m.to = append(*m.to, l)
		}
	}
	b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/setgroups", pid))
	if err != nil {
		return nil, fmt.Errorf("process %d: user namespace: %w", pid, err)
	}
	u.SetGroups = strings.TrimSpace(string(b))
	if len(u.UIDMap) == 0 || len(u.GIDMap) == 0 {
		return nil, &UserNamespaceError{PID: pid, Problem: UserNSUnsupported, Kind: "user", Reason: fmt.Sprintf(
			"its user namespace has no map yet (%s): its IDs are all the overflow one", userNSMaps(pid))}
	}
	return u, nil
}
