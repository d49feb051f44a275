package source

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
)

// external says whether the fd whose /proc link is target is one the
// restore supplies (DumpOptions.External).
func (o *DumpOptions) external(target string) bool {
	return len(o.External) > 0 && slices.Contains(o.External, target)
}

// externalHint says how to move a process holding the outside object id.
func externalHint(id string) string {
	if strings.HasPrefix(id, "socket:") {
		// A socket cannot be opened by path: only an fd of the restore
		// can stand in for it.
		return fmt.Sprintf("migrate dump --external '%[1]s', then migrate restore --inherit-fd '%[1]s=fd:N'", id)
	}
	return fmt.Sprintf("migrate dump --external '%[1]s', then migrate restore --inherit-fd '%[1]s=fd:N' or '%[1]s=PATH'; "+
		"migrate --to HOST --inherit-fd '%[1]s=PATH' (a path on the target)", id)
}

// externalFD records fd (the agent's duplicate is dup), whose link is id,
// as external: the restore gives the process the file it is told to in
// its place. What the object holds is not carried, so a read end with
// bytes buffered, or a lock held through it, is refused.
func (d *dumper) externalFD(fd *core.FD, dup int, id string, locks []string) error {
	if !core.ValidExternal(id) {
		return &UnsupportedFDError{PID: d.pid, FD: fd.FD, Kind: id, Reason: "only a pipe or a socket can be external"}
	}
	if len(locks) > 0 {
		return &UnsupportedFDError{PID: d.pid, FD: fd.FD, Kind: id, Reason: "it is external, and holds a file lock"}
	}
	fd.Kind = core.FDExternal
	fd.External = id
	if d.probe || fd.Flags&unix.O_ACCMODE == unix.O_WRONLY {
		return nil
	}
	if n, err := unix.IoctlGetInt(dup, unix.TIOCINQ); err == nil && n > 0 { // FIONREAD
		return &UnsupportedFDError{PID: d.pid, FD: fd.FD, Kind: id,
			Reason: fmt.Sprintf("it is external, and %d bytes wait in it to be read: they would not be carried (dump again once they are read)", n)}
	}
	return nil
}

// InheritError says that an object given to be replaced on the target
// (MigrateOptions.Inherit) cannot be: a bad name or path, or an object no
// process of the tree holds.
type InheritError struct {
	ID     string
	Reason string
}

func (e *InheritError) Error() string { return fmt.Sprintf("--inherit-fd %s: %s", e.ID, e.Reason) }

// inheritIDs checks the objects of MigrateOptions.Inherit, each held by a
// process of pids, and returns their IDs (DumpOptions.External).
func inheritIDs(inherit map[string]string, pids []int) ([]string, error) {
	if len(inherit) == 0 {
		return nil, nil
	}
	held := map[string]bool{}
	for _, pid := range pids {
		links, err := proc.ReadFDs(pid)
		if err != nil {
			continue // a zombie, or gone: the freeze sees
		}
		for _, l := range links {
			held[l.Target] = true
		}
	}
	var ids []string
	for id, path := range inherit {
		switch {
		case !core.ValidExternal(id):
			return nil, &InheritError{ID: id, Reason: "not an object an image names (pipe:[N] or socket:[N], as /proc/PID/fd shows them)"}
		case strings.HasPrefix(id, "socket:"):
			return nil, &InheritError{ID: id, Reason: "a socket cannot be opened by path on the target (migrate dump --external and restore --inherit-fd ID=fd:N can stand another in for it)"}
		case strings.HasPrefix(path, "fd:"):
			return nil, &InheritError{ID: id, Reason: "fd:N names an fd of this host; the target opens a PATH of its own (give fd:N to migrate restore)"}
		case !filepath.IsAbs(path) || len(path) > 4095 || strings.IndexByte(path, 0) >= 0:
			return nil, &InheritError{ID: id, Reason: fmt.Sprintf("%q is not an absolute path", path)}
		case !held[id]:
			return nil, &InheritError{ID: id, Reason: "no process of the migration holds it"}
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}
