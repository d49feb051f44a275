package source

import (
	"bytes"
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
//
// Preconditions: every process of all is frozen, its layout read.
func (ss *session) readSysV(all []*dumper) error {
	type area struct {
		d *dumper
		v *core.VMA
	}
	byID := map[int][]area{}
	var ids []int
	for _, d := range all {
		for i := range d.proc.VMAs {
			v := &d.proc.VMAs[i]
			if v.Kind != core.VMASysV {
				continue
			}
			id := int(v.Shm)
			if byID[id] == nil {
				ids = append(ids, id)
			}
			byID[id] = append(byID[id], area{d, v})
		}
	}
	slices.Sort(ids)
	ss.shm = nil
	for _, id := range ids {
		areas := byID[id]
		first := areas[0]
		refuse := func(reason string) error {
			return &UnsupportedMappingError{PID: first.d.pid, Start: first.v.Start, End: first.v.End,
				Name: fmt.Sprintf("System V segment %d", id), Reason: reason}
		}
		var ds unix.SysvShmDesc
		var reason string
		if err := ss.inIPC(func() error { ds, reason = statSegment(id, len(areas)); return nil }); err != nil {
			return err
		}
		if reason != "" {
			return refuse(reason)
		}
		// Each attachment whole: its areas, in order, from offset 0 to
		// the segment's end.
		size := (ds.Segsz + 4095) &^ 4095
		var at, want uint64
		for i, a := range areas {
			if i == 0 || a.v.Start != at || a.d != areas[i-1].d {
				if i > 0 && want != size {
					return refuse("an attachment partly unmapped")
				}
				want = 0
			}
			if a.v.Offset != want {
				return refuse("an attachment partly unmapped")
			}
			want += a.v.Len()
			at = a.v.End
		}
		if want != size {
			return refuse("an attachment partly unmapped")
		}
		ss.shm = append(ss.shm, core.ShmSegment{
			ID: id, Key: ds.Perm.Key, Size: ds.Segsz, Mode: uint32(ds.Perm.Mode) & 0o777,
			UID: ds.Perm.Uid, GID: ds.Perm.Gid, CPID: ds.Cpid, Ctime: ds.Ctime,
			Removed: ds.Perm.Mode&shmDest != 0, Locked: ds.Perm.Mode&shmLocked != 0,
		})
	}
	return nil
}

// writeSysV stores each segment's contents as a blob, read through an
// attachment of migrate's own, read-only, for the time of the copy.
func (ss *session) writeSysV() error {
	for i := range ss.shm {
		s := &ss.shm[i]
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
