package source

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// shm_perm.mode bits of a segment (linux/shm.h).
const (
	shmDest   = 0o1000 // IPC_RMID done: destroyed at the last detach
	shmLocked = 0o2000 // SHM_LOCK
)

// readSysV describes the System V shared memory segments the processes
// attach (areas of kind VMASysV), once each, and refuses a segment that a
// process outside the dump attaches too (it would then see another
// segment than the restored processes), or an attachment partly unmapped.
// A live migration's segments are Paged: their pages went with the
// processes' own.
//
// Preconditions: every process of all is frozen, its layout read.
func (ss *session) readSysV(all []*dumper) error {
	procs := make([]attachments, len(all))
	for i, d := range all {
		procs[i] = attachments{d.pid, d.proc.VMAs}
	}
	shm, err := ss.describeSysV(procs)
	if err != nil {
		return err
	}
	for i := range shm {
		shm[i].Paged = ss.opts.live
	}
	ss.shm = shm
	return nil
}

// attachments is the layout of one process, for describeSysV.
type attachments struct {
	pid  int
	vmas []core.VMA
}

// describeSysV describes the System V segments that the areas of procs
// attach, once each, sorted by ID (see readSysV). The processes may run:
// a live migration lists its segments for the target before the freeze.
func (ss *session) describeSysV(procs []attachments) ([]core.ShmSegment, error) {
	type area struct {
		pid int
		v   *core.VMA
	}
	byID := map[int][]area{}
	var ids []int
	for _, p := range procs {
		for i := range p.vmas {
			v := &p.vmas[i]
			if v.Kind != core.VMASysV {
				continue
			}
			id := int(v.Shm)
			if byID[id] == nil {
				ids = append(ids, id)
			}
			byID[id] = append(byID[id], area{p.pid, v})
		}
	}
	slices.Sort(ids)
	var shm []core.ShmSegment
	for _, id := range ids {
		areas := byID[id]
		first := areas[0]
		refuse := func(reason string) error {
			return &UnsupportedMappingError{PID: first.pid, Start: first.v.Start, End: first.v.End,
				Name: fmt.Sprintf("System V segment %d", id), Reason: reason}
		}
		var ds unix.SysvShmDesc
		var reason string
		if err := ss.inIPC(func() error { ds, reason = statSegment(id, len(areas)); return nil }); err != nil {
			return nil, err
		}
		if reason != "" {
			return nil, refuse(reason)
		}
		// Each attachment whole: its areas, in order, from offset 0 to
		// the segment's end.
		size := (ds.Segsz + 4095) &^ 4095
		var at, want uint64
		for i, a := range areas {
			if i == 0 || a.v.Start != at || a.pid != areas[i-1].pid {
				if i > 0 && want != size {
					return nil, refuse("an attachment partly unmapped")
				}
				want = 0
			}
			if a.v.Offset != want {
				return nil, refuse("an attachment partly unmapped")
			}
			want += a.v.Len()
			at = a.v.End
		}
		if want != size {
			return nil, refuse("an attachment partly unmapped")
		}
		shm = append(shm, core.ShmSegment{
			ID: id, Key: ds.Perm.Key, Size: ds.Segsz, Mode: uint32(ds.Perm.Mode) & 0o777,
			UID: ds.Perm.Uid, GID: ds.Perm.Gid, CPID: ds.Cpid, Ctime: ds.Ctime,
			Removed: ds.Perm.Mode&shmDest != 0, Locked: ds.Perm.Mode&shmLocked != 0,
		})
	}
	return shm, nil
}

// shmIDs lists the IDs of segments shm.
func shmIDs(shm []core.ShmSegment) []int {
	ids := make([]int, len(shm))
	for i, s := range shm {
		ids[i] = s.ID
	}
	return ids
}

// SysVChangedError says that the processes of a live migration attached
// or detached a System V segment while pre-copy ran: the target made the
// segments of the first round. The processes run on here.
type SysVChangedError struct {
	Before, Now []int // segment IDs
}

func (e *SysVChangedError) Error() string {
	return fmt.Sprintf("the System V segments attached changed during pre-copy (%v, now %v): a tree moves live only if it keeps the segments it attaches", e.Before, e.Now)
}

// removeSysV marks the System V segments of a live migration removed
// (IPC_RMID) once the original processes are killed: the target has them
// now, and they go here with the last detach of the dying processes, as
// they would have gone with the processes' own IPC_RMID. (A segment that
// no process of the tree attached was not moved, and stays.)
func (ss *session) removeSysV() error {
	if len(ss.shm) == 0 || ss.ipcNS != 0 {
		return nil // (a container's go with its IPC namespace)
	}
	var errs []error
	err := ss.inIPC(func() error {
		for _, s := range ss.shm {
			if s.Removed {
				continue // goes with the last detach
			}
			if _, err := unix.SysvShmCtl(s.ID, unix.IPC_RMID, nil); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EIDRM) {
				errs = append(errs, fmt.Errorf("System V segment %d: IPC_RMID: %w", s.ID, err))
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

// writeSysV stores each segment's contents as a blob, read through an
// attachment of migrate's own, read-only, for the time of the copy.
func (ss *session) writeSysV() error {
	for i := range ss.shm {
		s := &ss.shm[i]
		if s.Paged {
			continue // its pages went in the page streams
		}
		var b []byte
		err := ss.inIPC(func() error {
			var err error
			b, err = unix.SysvShmAttach(s.ID, 0, unix.SHM_RDONLY)
			return err
		})
		if err != nil {
			return fmt.Errorf("System V segment %d: attach to read it: %w", s.ID, err)
		}
		name, err := ss.copyBlob("sysv", bytes.NewReader(b[:s.Size]))
		unix.SysvShmDetach(b)
		if err != nil {
			return fmt.Errorf("System V segment %d: %w", s.ID, err)
		}
		s.Data = name
	}
	return nil
}

// statSegment describes System V segment id, which the dump's processes
// attach in areas areas, or says why it cannot be dumped: the kernel
// counts an attachment per area (a split one counts twice), and every one
// of them must be the dump's.
func statSegment(id, areas int) (unix.SysvShmDesc, string) {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
		return ds, fmt.Sprintf("shmctl(IPC_STAT): %v", err)
	}
	if int(ds.Nattch) > areas {
		return ds, fmt.Sprintf("attached %d times, %d of them by processes outside the dump", ds.Nattch, int(ds.Nattch)-areas)
	}
	return ds, ""
}

// removeRecordedSysV marks removed (IPC_RMID) the segments of a record
// that are still the ones recorded (same key, creator and creation time):
// `migrate recover`'s part of removeSysV. A segment gone, or another one
// with its ID now, is left alone.
func removeRecordedSysV(shm []RecordedSegment) error {
	var errs []error
	for _, s := range shm {
		var ds unix.SysvShmDesc
		if _, err := unix.SysvShmCtl(s.ID, unix.IPC_STAT, &ds); err != nil {
			continue // gone
		}
		if ds.Cpid != s.CPID || ds.Ctime != s.Ctime || (ds.Perm.Key != s.Key && ds.Perm.Mode&shmDest == 0) {
			continue // another segment
		}
		if _, err := unix.SysvShmCtl(s.ID, unix.IPC_RMID, nil); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EIDRM) {
			errs = append(errs, fmt.Errorf("System V segment %d: IPC_RMID: %w", s.ID, err))
		}
	}
	return errors.Join(errs...)
}
