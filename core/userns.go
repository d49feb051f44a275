package core

import (
	"errors"
	"fmt"
)

// UserNamespace is the user namespace of a container's processes (a
// rootless container): a child of the initial one, in which every process
// of the image lives and which owns each namespace of its own that the
// image carries. The restore makes it anew with the same maps, first,
// and the container's other namespaces from inside it.
//
// The credentials of the image (Creds) are as seen from outside it (from
// migrate's namespace); the maps give them inside.
type UserNamespace struct {
	UIDMap []IDMap `json:"uid_map"`
	GIDMap []IDMap `json:"gid_map"`
	// SetGroups is the namespace's /proc/PID/setgroups: "allow" or
	// "deny".
	SetGroups string `json:"setgroups"`
}

// IDMap is one line of a uid_map or gid_map: Count IDs from Inside in
// the namespace are Outside onwards in its parent.
type IDMap struct {
	Inside  uint32 `json:"inside"`
	Outside uint32 `json:"outside"`
	Count   uint32 `json:"count"`
}

// maxIDMaps is the kernel's bound on the lines of a map
// (UID_GID_MAP_MAX_EXTENTS).
const maxIDMaps = 340

// Inside returns the ID inside the namespace of outside (as seen from
// its parent), and whether m maps it.
func Inside(m []IDMap, outside uint32) (uint32, bool) {
	for _, l := range m {
		if outside >= l.Outside && uint64(outside) < uint64(l.Outside)+uint64(l.Count) {
			return l.Inside + (outside - l.Outside), true
		}
	}
	return 0, false
}

// validateIDMap checks a map as the kernel would take it: 1 to 340
// lines, none empty or overflowing, no two overlapping inside or
// outside.
func validateIDMap(what string, m []IDMap) error {
	if len(m) == 0 || len(m) > maxIDMaps {
		return fmt.Errorf("user namespace: %s has %d lines", what, len(m))
	}
	for i, l := range m {
		if l.Count == 0 || uint64(l.Inside)+uint64(l.Count) > 1<<32-1 || uint64(l.Outside)+uint64(l.Count) > 1<<32-1 {
			return fmt.Errorf("user namespace: %s line %d (%d %d %d) is empty or overflows", what, i, l.Inside, l.Outside, l.Count)
		}
		for _, o := range m[:i] {
			if l.Inside < o.Inside+o.Count && o.Inside < l.Inside+l.Count || l.Outside < o.Outside+o.Count && o.Outside < l.Outside+l.Count {
				return fmt.Errorf("user namespace: %s lines overlap (%d %d %d and %d %d %d)", what, o.Inside, o.Outside, o.Count, l.Inside, l.Outside, l.Count)
			}
		}
	}
	return nil
}

// validateUserNS checks a user namespace of an image.
func validateUserNS(u *UserNamespace) error {
	if u.SetGroups != "allow" && u.SetGroups != "deny" {
		return fmt.Errorf("user namespace: setgroups %q", u.SetGroups)
	}
	if err := validateIDMap("uid_map", u.UIDMap); err != nil {
		return err
	}
	if err := validateIDMap("gid_map", u.GIDMap); err != nil {
		return err
	}
	return nil
}

var errUserNSNoPID = errors.New("namespaces: a user namespace without a PID namespace")
