package source

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestRemoveRecordedSysV: `migrate recover`, once the target runs the
// tree, removes the segments its record names that are still those
// segments (same creator and creation time), and leaves one that is not.
func TestRemoveRecordedSysV(t *testing.T) {
	testutil.RequireRoot(t)
	mk := func() (int, RecordedSegment) {
		id, err := unix.SysvShmGet(unix.IPC_PRIVATE, 4096, unix.IPC_CREAT|0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
		var ds unix.SysvShmDesc
		if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
			t.Fatal(err)
		}
		return id, RecordedSegment{ID: id, Key: ds.Perm.Key, CPID: ds.Cpid, Ctime: ds.Ctime}
	}
	same, recSame := mk()
	other, recOther := mk()
	recOther.Ctime-- // another segment that took the ID since
	if err := removeRecordedSysV([]RecordedSegment{recSame, recOther, {ID: 1 << 29}}); err != nil {
		t.Fatal(err)
	}
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(same, unix.IPC_STAT, &ds); err == nil {
		t.Errorf("segment %d, the recorded one, is still there (mode %#o)", same, ds.Perm.Mode)
	}
	if _, err := unix.SysvShmCtl(other, unix.IPC_STAT, &ds); err != nil {
		t.Errorf("segment %d, not the recorded one, was removed: %v", other, err)
	}
}

// TestSysVChanged: a live migration lists the segments its processes
// attach at the first layout, for the target to create; a later layout
// with a segment attached (or detached) since gives up with a
// *SysVChangedError.
func TestSysVChanged(t *testing.T) {
	testutil.RequireRoot(t)
	attach := func() (int, []byte) {
		id, err := unix.SysvShmGet(unix.IPC_PRIVATE, 8192, unix.IPC_CREAT|0o600)
		if err != nil {
			t.Fatal(err)
		}
		b, err := unix.SysvShmAttach(id, 0, 0)
		unix.SysvShmCtl(id, unix.IPC_RMID, nil) // goes with the detach
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.SysvShmDetach(b) })
		return id, b
	}
	pid := os.Getpid()
	d := &dumper{session: &session{opts: DumpOptions{PID: pid, live: true}}, pid: pid}
	a := &liveSource{d: d, treeFollow: newTreeFollow(d, treeMember{})}
	layout := func() [][]core.VMA {
		vmas, err := readVMAs(pid)
		if err != nil {
			t.Fatal(err)
		}
		return [][]core.VMA{vmas}
	}
	first, _ := attach()
	shm, err := a.sysvOf(layout())
	if err != nil || len(shm) != 1 || shm[0].ID != first || !shm[0].Paged || !shm[0].Removed || shm[0].Size != 8192 {
		t.Fatalf("first layout: %+v, %v; want segment %d, paged and removed", shm, err, first)
	}
	if _, err := a.sysvOf(layout()); err != nil {
		t.Fatalf("the same segments again: %v", err)
	}
	attach()
	var ce *SysVChangedError
	if _, err := a.sysvOf(layout()); !errors.As(err, &ce) || !slices.Equal(ce.Before, []int{first}) || len(ce.Now) != 2 {
		t.Fatalf("a segment attached since: %v (%T), want a *SysVChangedError", err, err)
	}
}

// TestStartedAfter: this process started after the epoch's first second
// and not after a second to come (the check that tells a System V
// operation by a PID's former owner from one by the process).
func TestStartedAfter(t *testing.T) {
	if !startedAfter(os.Getpid(), 1) {
		t.Error("this process did not start after 1970")
	}
	if startedAfter(os.Getpid(), time.Now().Unix()+10) {
		t.Error("this process started after a second to come")
	}
	if startedAfter(-1, 1) {
		t.Error("no process, yet started after")
	}
}
