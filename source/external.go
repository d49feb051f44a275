package source

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// external says whether the fd whose /proc link is target is one the
// restore supplies (DumpOptions.External).
func (o *DumpOptions) external(target string) bool {
	return len(o.External) > 0 && slices.Contains(o.External, target)
}

// externalHint says how to move a process holding the outside object id.
func externalHint(id string) string {
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
