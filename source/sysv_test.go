package source

import (
	"testing"

	"golang.org/x/sys/unix"

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
