package target

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/pagestream"
)

// ShmError says a System V shared memory segment of the image cannot be
// given back with its ID and key on this host: another segment holds one
// of them, or processes still attach it.
type ShmError struct {
	ID     int
	Key    int32
	Reason string
	Err    error
}

func (e *ShmError) Error() string {
	s := fmt.Sprintf("System V segment %d (key %#x): %s", e.ID, uint32(e.Key), e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ShmError) Unwrap() error { return e.Err }

// AbortCode names the refusal for the source of a live migration
// (handoff.AbortCoder): the root package's RefusedShm.
func (e *ShmError) AbortCode() string { return "sysv-shm" }

// shmctl and shmat values x/sys/unix lacks (linux/shm.h).
const (
	shmLock  = 11      // SHM_LOCK
	shmRemap = 0o40000 // SHM_REMAP: take the place of what is mapped there
)

// shmNextID is where the next shmget of this IPC namespace takes its ID.
const shmNextID = "/proc/sys/kernel/shm_next_id"

// prepareSysV gives back every System V segment of the image before the
// processes attach them (mapAreas): with its ID, key, size, owner, mode
// and contents. On the dumping host the segment may still be there (a
// segment outlives the processes that attach it): if it is the same one
// (key, size, creator and creation time) and nobody attaches it, it is
// taken as it is, its contents written from the image; another segment
// holding its ID or key fails the restore (ShmError).
//
// A live migration's segments (live; Paged) are all created here, empty:
// their pages come in the page streams (writeSysV). Any segment holding
// one's ID or key refuses the migration, even one like it: on the source's
// own host it would be the original's, which runs on until the commit.
func (ss *session) prepareSysV(img *core.Image) error {
	live := ss.sysvLive
	if live && ss.ownIPC() && len(img.Shm) > 0 {
		return &ShmError{ID: img.Shm[0].ID, Key: img.Shm[0].Key, Reason: "a container's System V shared memory does not move live yet (migrate dump and restore carry it)"}
	}
	for i := range img.Shm {
		s := &img.Shm[i]
		fail := func(reason string, err error) error {
			return &ShmError{ID: s.ID, Key: s.Key, Reason: reason, Err: err}
		}
		if s.Paged != live {
			return fail("its contents are not in the image", nil)
		}
		var ds unix.SysvShmDesc
		_, err := unix.SysvShmCtl(s.ID, unix.IPC_STAT, &ds)
		switch {
		case err == nil && live:
			return fail(fmt.Sprintf("its ID is taken by another segment (key %#x, %d bytes, %d attachments)", uint32(ds.Perm.Key), ds.Segsz, ds.Nattch), nil)
		case err == nil:
			if ds.Perm.Key != s.Key || ds.Segsz != s.Size || ds.Cpid != s.CPID || ds.Ctime != s.Ctime {
				return fail(fmt.Sprintf("its ID is taken by another segment (key %#x, %d bytes)", uint32(ds.Perm.Key), ds.Segsz), nil)
			}
			if ds.Nattch != 0 {
				return fail(fmt.Sprintf("processes attach it (%d times)", ds.Nattch), nil)
			}
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIDRM):
			if err := ss.createSegment(s); err != nil {
				return err
			}
		default:
			return fail("shmctl(IPC_STAT)", err)
		}
		if !s.Paged {
			if err := ss.fillSegment(img, s); err != nil {
				return fail("write its contents", err)
			}
		}
		if err := setSegment(s); err != nil {
			return err
		}
	}
	return nil
}

// setSegment gives segment s its owner, mode and lock.
func setSegment(s *core.ShmSegment) error {
	fail := func(reason string, err error) error {
		return &ShmError{ID: s.ID, Key: s.Key, Reason: reason, Err: err}
	}
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(s.ID, unix.IPC_STAT, &ds); err != nil {
		return fail("shmctl(IPC_STAT)", err)
	}
	ds.Perm.Uid, ds.Perm.Gid = s.UID, s.GID
	ds.Perm.Mode = s.Mode
	if _, err := unix.SysvShmCtl(s.ID, unix.IPC_SET, &ds); err != nil {
		return fail("shmctl(IPC_SET) of its owner and mode", err)
	}
	if s.Locked {
		if _, err := unix.SysvShmCtl(s.ID, shmLock, nil); err != nil {
			return fail("shmctl(SHM_LOCK)", err)
		}
	}
	return nil
}

// createSegment makes segment s with its ID (shm_next_id) and key.
func (ss *session) createSegment(s *core.ShmSegment) error {
	fail := func(reason string, err error) error {
		return &ShmError{ID: s.ID, Key: s.Key, Reason: reason, Err: err}
	}
	if s.Key != 0 {
		if id, err := unix.SysvShmGet(int(s.Key), 0, 0); err == nil {
			return fail(fmt.Sprintf("its key is taken by segment %d", id), nil)
		}
	}
	if err := os.WriteFile(shmNextID, []byte(strconv.Itoa(s.ID)), 0); err != nil {
		return fail("set "+shmNextID, err)
	}
	id, err := unix.SysvShmGet(int(s.Key), int(s.Size), unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		os.WriteFile(shmNextID, []byte("-1"), 0)
		return fail("shmget", err)
	}
	if id != s.ID {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
		return fail(fmt.Sprintf("the kernel gave it ID %d (another process made a segment at the same time?)", id), nil)
	}
	if !ss.ownIPC() {
		// (A container's goes with its IPC namespace.)
		ss.mu.Lock()
		ss.shmCreated = append(ss.shmCreated, id)
		ss.mu.Unlock()
	}
	return nil
}

// fillSegment writes the image's contents of s through an attachment of
// the restorer's own.
func (ss *session) fillSegment(img *core.Image, s *core.ShmSegment) error {
	b, err := unix.SysvShmAttach(s.ID, 0, 0)
	if err != nil {
		return err
	}
	defer unix.SysvShmDetach(b)
	f, err := openBlob(ss.dir, img, s.Data)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.ReadFull(f, b[:s.Size])
	return err
}

// removeSysV marks the segments that were marked removed (IPC_RMID) once
// the processes attach them: they go with the last detach, as before.
func (ss *session) removeSysV(img *core.Image) error {
	return ss.inIPC(func() error {
		for _, s := range img.Shm {
			if s.Removed {
				if _, err := unix.SysvShmCtl(s.ID, unix.IPC_RMID, nil); err != nil {
					return &ShmError{ID: s.ID, Key: s.Key, Reason: "shmctl(IPC_RMID)", Err: err}
				}
			}
		}
		return nil
	})
}

// discardSysV removes the segments a failed restore created.
func (ss *session) discardSysV() {
	for _, id := range ss.shmCreated {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	}
	ss.shmCreated = nil
}

// attachSysV attaches, for area v of kind VMASysV that begins an
// attachment (offset 0), its whole segment at v.Start (shmat), read-only
// unless the attachment may be made writable (VM_MAYWRITE): mapAreas then
// sets each area's protection.
func (r *restorer) attachSysV(v *core.VMA) error {
	flags := uint64(shmRemap)
	if !v.MayWrite && v.Prot&unix.PROT_WRITE == 0 {
		flags |= unix.SHM_RDONLY
	}
	got, err := r.sys("shmat", unix.SYS_SHMAT, v.Shm, v.Start, flags)
	if err != nil {
		return fmt.Errorf("area %#x-%#x: attach System V segment %d: %w", v.Start, v.End, v.Shm, err)
	}
	if got != v.Start {
		return fmt.Errorf("area %#x-%#x: System V segment %d attached at %#x", v.Start, v.End, v.Shm, got)
	}
	return nil
}

// writeSysV writes the pages of frame fr, which fall in area v of kind
// VMASysV, through the agent's own attachment of its segment (the process
// may attach it read-only). A page shared by the tree may come from any
// process that attaches it: every one is written, zero or not.
func (ss *session) writeSysV(v *core.VMA, fr *pagestream.Frame) error {
	ss.mu.Lock()
	b, ok := ss.shmAt[int(v.Shm)]
	if !ok && slices.Contains(ss.shmCreated, int(v.Shm)) {
		err := ss.inIPC(func() error {
			var err error
			b, err = unix.SysvShmAttach(int(v.Shm), 0, 0)
			return err
		})
		if err != nil {
			ss.mu.Unlock()
			return &ShmError{ID: int(v.Shm), Reason: "attach it to write its pages", Err: err}
		}
		if ss.shmAt == nil {
			ss.shmAt = map[int][]byte{}
		}
		ss.shmAt[int(v.Shm)] = b
		ok = true
	}
	ss.mu.Unlock()
	if !ok {
		return fmt.Errorf("pages at %#x of System V segment %d, which this migration did not create", fr.Addr, v.Shm)
	}
	off := v.Offset + (fr.Addr - v.Start)
	n := uint64(fr.Pages) * pageSize
	if off >= uint64(len(b)) {
		return fmt.Errorf("pages at %#x-%#x lie beyond System V segment %d (%d bytes)", fr.Addr, fr.Addr+n, v.Shm, len(b))
	}
	// The segment's size, not its last page's end, as a dump keeps.
	for i := range fr.Pages {
		at := off + uint64(i)*pageSize
		if at >= uint64(len(b)) {
			break
		}
		dst := b[at:min(at+pageSize, uint64(len(b)))]
		if p := fr.Page(i); p != nil {
			copy(dst, p)
		} else {
			clear(dst)
		}
	}
	return nil
}

// sameSysV checks that the final image of a live migration lists the
// segments this migration created, no more, no fewer, and gives each the
// owner, mode and lock it has now (changed since the first layout, say).
func (ss *session) sameSysV(img *core.Image) error {
	var ids []int
	for _, s := range img.Shm {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	made := slices.Sorted(slices.Values(ss.shmCreated))
	if !slices.Equal(ids, made) {
		return fmt.Errorf("the final image lists System V segments %v, the first layout %v", ids, made)
	}
	return ss.inIPC(func() error {
		for i := range img.Shm {
			if err := setSegment(&img.Shm[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// detachSysV lets go of the agent's attachments (writeSysV).
func (ss *session) detachSysV() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, b := range ss.shmAt {
		unix.SysvShmDetach(b)
		delete(ss.shmAt, id)
	}
}

// checkSysV checks that each System V segment of the image is here as it
// was: key, size, owner, mode, marked removed or not, locked or not.
func (b *Builder) checkSysV() []Difference {
	var diffs []Difference
	pid := b.all[0].pid
	for _, s := range b.ss.img.Shm {
		what := fmt.Sprintf("System V segment %d", s.ID)
		want := segmentString(s.Key, s.Size, s.UID, s.GID, s.Mode, s.Removed, s.Locked)
		var ds unix.SysvShmDesc
		if err := b.ss.inIPC(func() error {
			_, err := unix.SysvShmCtl(s.ID, unix.IPC_STAT, &ds)
			return err
		}); err != nil {
			diffs = append(diffs, Difference{PID: pid, What: what, Want: want, Got: err.Error()})
			continue
		}
		got := segmentString(ds.Perm.Key, ds.Segsz, ds.Perm.Uid, ds.Perm.Gid, uint32(ds.Perm.Mode)&0o777,
			ds.Perm.Mode&shmDest != 0, ds.Perm.Mode&shmLockedMode != 0)
		if got != want {
			diffs = append(diffs, Difference{PID: pid, What: what, Want: want, Got: got})
		}
	}
	return diffs
}

// shm_perm.mode bits of a segment (linux/shm.h).
const (
	shmDest       = 0o1000 // IPC_RMID done
	shmLockedMode = 0o2000 // SHM_LOCK
)

func segmentString(key int32, size uint64, uid, gid, mode uint32, removed, locked bool) string {
	return fmt.Sprintf("key %#x, %d bytes, owner %d:%d, mode %#o, removed %v, locked %v", uint32(key), size, uid, gid, mode, removed, locked)
}
