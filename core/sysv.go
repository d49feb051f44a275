package core

import "fmt"

// ShmSegment is a System V shared memory segment (shmget) as the dump
// found it: its identity, owner and mode, its contents (a blob), and
// whether it was marked removed (IPC_RMID: it goes once the last process
// detaches). The creator's ids are not kept: the restore creates it.
type ShmSegment struct {
	ID   int    `json:"id"`   // shmid: the restore gives it back
	Key  int32  `json:"key"`  // 0 (IPC_PRIVATE) or the key it was made with
	Size uint64 `json:"size"` // bytes, as shmget was given
	Mode uint32 `json:"mode"` // permission bits
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	// CPID and Ctime tell the segment a restore on the dumping host finds
	// still there (nobody attached since) from another one with its ID.
	CPID    int32 `json:"cpid"`
	Ctime   int64 `json:"ctime"`
	Removed bool  `json:"removed,omitempty"`
	Locked  bool  `json:"locked,omitempty"` // SHM_LOCK
	// Data names the blob holding its contents (Size bytes); empty with
	// Paged.
	Data string `json:"data"`
	// Paged: its contents come in the page streams of the processes that
	// attach it, as a live migration pre-copies them, not in a blob.
	Paged bool `json:"paged,omitempty"`
}

// MaxShmSize bounds a segment of an image (the kernel's default shmmax
// is larger, but no image is that big).
const MaxShmSize = 1 << 40

// validateShm checks the segments and that every System V area names one.
func validateShm(img *Image) error {
	if len(img.Shm) > maxList {
		return fmt.Errorf("%d System V segments", len(img.Shm))
	}
	ids := map[int]bool{}
	keys := map[int32]bool{}
	for _, s := range img.Shm {
		if s.ID < 0 || s.ID > 1<<30 || ids[s.ID] {
			return fmt.Errorf("System V segment id %d out of range or listed twice", s.ID)
		}
		ids[s.ID] = true
		if s.Key != 0 {
			if keys[s.Key] {
				return fmt.Errorf("System V key %#x listed twice", s.Key)
			}
			keys[s.Key] = true
		}
		if s.Size == 0 || s.Size > MaxShmSize {
			return fmt.Errorf("System V segment %d: size %d", s.ID, s.Size)
		}
		if s.Mode&^0o777 != 0 {
			return fmt.Errorf("System V segment %d: mode %#o", s.ID, s.Mode)
		}
		if s.Paged {
			if s.Data != "" {
				return fmt.Errorf("System V segment %d: paged, and contents %q too", s.ID, s.Data)
			}
		} else if b, ok := img.Blobs[s.Data]; !ok || uint64(b.Size) != s.Size {
			return fmt.Errorf("System V segment %d: contents %q missing or not %d bytes", s.ID, s.Data, s.Size)
		}
	}
	for _, p := range append([]Process{img.Process}, img.Tree...) {
		for _, v := range p.VMAs {
			if v.Kind == VMASysV && !ids[int(v.Shm)] {
				return fmt.Errorf("process %d: area %#x-%#x attaches System V segment %d, which the image does not hold", p.PID, v.Start, v.End, v.Shm)
			}
		}
	}
	return nil
}
