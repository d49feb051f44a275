package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// startFileState runs the filestate workload in mode with args and waits
// for its "ready" line, which it returns.
func startFileState(t *testing.T, mode string, args ...string) (*testutil.Proc, string) {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "filestate"), append([]string{mode}, args...)...)
	line, _ := p.WaitLine(t, short, 0, "ready")
	return p, line
}

// dumpRestoreCheck dumps p, restores it, asks it to describe its state
// (SIGUSR1) and returns the "check" line it prints.
func dumpRestoreCheck(t *testing.T, p *testutil.Proc) string {
	t.Helper()
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	got, _ := r.WaitLine(t, short, n, "check")
	return got
}

// TestPipePacketKept: a packet-mode pipe (pipe2 O_DIRECT) holding three
// packets comes back in packet mode with the same packets: a short read
// still drops the rest of its packet, and new writes are packets.
func TestPipePacketKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "packet")
	if got, want := dumpRestoreCheck(t, p), "check direct=0,1 packets=|alp|be|gamma-gamma new=2,1"; got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
}

// TestPipePacketEmptyKept: an empty packet-mode pipe stays in packet mode.
func TestPipePacketEmptyKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "packet-empty")
	if got, want := dumpRestoreCheck(t, p), "check direct=0,1 packets= new=2,1"; got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
}

// TestPipePacketMixedRefused: a pipe holding stream data followed by a
// packet (O_DIRECT set after a write), whose boundary an image cannot
// keep, is refused naming its read end, and the process runs on.
func TestPipePacketMixedRefused(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "packet-mixed")
	err := dumpRefused(t, p)
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != p.PID || ue.FD != 3 || !strings.HasPrefix(ue.Kind, "pipe:[") {
		t.Fatalf("dump: %v (%T), want an *source.UnsupportedFDError for fd 3, the pipe's read end", err, err)
	}
	n := len(p.Lines(t))
	p.Signal(t, unix.SIGUSR1)
	if got, _ := p.WaitLine(t, short, n, "check"); !strings.Contains(got, "packets=|abc|de") {
		t.Errorf("the process sees %q after the refused dump, want its data as it was (packets=|abc|de)", got)
	}
}

// allocated is the disk space, in bytes, the files under dir take.
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		n += st.Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeletedSparseKept: a deleted 1 GiB file with 7 bytes of data keeps
// its size, its data and its holes: the image holds the data, not 1 GiB
// of zeros, and so does the recreated file.
func TestDeletedSparseKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "sparse", t.TempDir())
	dir, _ := dumpKill(t, p, "")
	if n := allocated(t, dir); n > 16<<20 {
		t.Errorf("the image takes %d bytes on disk: the holes of the deleted file were filled", n)
	}
	r := restoreOK(t, dir, p.Log)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	got, _ := r.WaitLine(t, short, n, "check")
	mem, _ := r.WaitLine(t, short, n, "memfd")
	wantMem := "memfd size=1073741824 data=67108864-67112960 content=memfd allocated_kib="
	if !strings.HasPrefix(mem, wantMem) {
		t.Errorf("the restored process sees\n%s\nwant\n%s...", mem, wantMem)
	} else if kib, _ := strconv.Atoi(strings.TrimPrefix(mem, wantMem)); kib > 1024 {
		t.Errorf("the recreated memfd takes %d KiB, want its 4 KiB of data", kib)
	}
	want := "check size=1073741824 data=0-4096,268435456-268439552 head=head mid=mid allocated_kib="
	if !strings.HasPrefix(got, want) {
		t.Fatalf("the restored process sees\n%s\nwant\n%s...", got, want)
	}
	var kib int64
	fmt.Sscanf(strings.TrimPrefix(got, want), "%d", &kib)
	if kib > 1024 {
		t.Errorf("the recreated file takes %d KiB on disk, want its 8 KiB of data", kib)
	}
}

// TestDeletedWriteOnlyKept: a deleted file the process holds open only for
// writing is dumped (its contents read through a new description) and
// comes back write-only with its contents and offset.
func TestDeletedWriteOnlyKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "wronly", t.TempDir())
	if got, want := dumpRestoreCheck(t, p), "check wronly=1 pos=13 content=written-after"; got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
}

// TestFDOwnerKept: the owner (F_SETOWN_EX), the signal (F_SETSIG) and
// O_ASYNC of a pipe's read end come back, and a write into the pipe
// signals the process as before.
func TestFDOwnerKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "owner")
	want := fmt.Sprintf("check owner=%d:%d self=1 sig=%d async=1 sigio=1", 1 /* F_OWNER_PID */, p.PID, unix.SIGUSR2)
	if got := dumpRestoreCheck(t, p); got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
}

// TestDumpRefusesFDOwnerGroup: signal-driven I/O sent to a process group
// (F_SETOWN_EX F_OWNER_PGRP) that no process of the dump leads, which the
// restore could not point at the same processes, is refused before the
// freeze, naming the fd; the process runs on. (A group the dump's
// processes lead is kept: nginx's workers own their channel sockets so.)
func TestDumpRefusesFDOwnerGroup(t *testing.T) {
	testutil.RequireRoot(t)
	// In the process group of another process of the test's: its signals
	// must not reach the test.
	leader := testutil.StartWith(t, testutil.Options{Setpgid: true}, testutil.Build(t, "sleeper"), "pause")
	leader.WaitLine(t, short, 0, "sleeping")
	p := testutil.StartWith(t, testutil.Options{Setpgid: true, Pgid: leader.PID}, testutil.Build(t, "filestate"), "owner-pgrp")
	p.WaitLine(t, short, 0, "ready")
	err := dumpRefused(t, p)
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != p.PID || ue.FD != 3 {
		t.Fatalf("dump: %v (%T), want an *source.UnsupportedFDError for fd 3", err, err)
	}
}

// TestFileTimesKept: dump and restore leave the access, modification and
// change times of the files the process had open or mapped as they were,
// even where relatime would update the access time on any read (it is set
// before the modification time).
func TestFileTimesKept(t *testing.T) {
	testutil.RequireRoot(t)
	work := t.TempDir()
	var files []string
	for _, name := range []string{"rw", "mapped", "noatime"} {
		f := filepath.Join(work, name)
		if err := os.WriteFile(f, []byte(strings.Repeat(name, 8192/len(name)+1)[:8192]), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	p, _ := startFileState(t, "times", files...)
	stats := func() []unix.Stat_t {
		out := make([]unix.Stat_t, len(files))
		for i, f := range files {
			if err := unix.Stat(f, &out[i]); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	// An access time older than the modification time: any read or mmap
	// that touches it shows (relatime).
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range files {
		if err := os.Chtimes(f, old, old.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	before := stats()
	got := dumpRestoreCheck(t, p)
	if want := "check shared=r private=P,e noatime=1"; got != want {
		t.Errorf("the restored process sees\n%s\nwant\n%s", got, want)
	}
	after := stats()
	for i, f := range files {
		b, a := before[i], after[i]
		if a.Atim != b.Atim || a.Mtim != b.Mtim || a.Ctim != b.Ctim {
			t.Errorf("%s: atime/mtime/ctime %v/%v/%v before, %v/%v/%v after dump and restore", filepath.Base(f),
				time.Unix(b.Atim.Unix()), time.Unix(b.Mtim.Unix()), time.Unix(b.Ctim.Unix()),
				time.Unix(a.Atim.Unix()), time.Unix(a.Mtim.Unix()), time.Unix(a.Ctim.Unix()))
		}
	}
}

// dumpRefused dumps p (with its tree), expects the dump to fail, and
// checks that p runs on; it returns the error.
func dumpRefused(t *testing.T, p *testutil.Proc) error {
	t.Helper()
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
	if err == nil {
		t.Fatalf("dump of %d succeeded, want it refused", p.PID)
	}
	t.Logf("dump: %v", err)
	testutil.RequireRunning(t, p.PID)
	if tr := testutil.StatusField(t, p.PID, "TracerPid"); tr != "0" {
		t.Errorf("process %d is still traced by %s after the refused dump", p.PID, tr)
	}
	return err
}

// TestDumpRefusesSharedFDTable: a child made by clone(CLONE_FILES) without
// CLONE_THREAD shares its parent's fd table, which the restore would split
// in two: the dump refuses it, naming both, and both run on.
func TestDumpRefusesSharedFDTable(t *testing.T) {
	testutil.RequireRoot(t)
	p, line := startFileState(t, "sharedfd")
	var pid, kid int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d", &pid, &kid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(t); testutil.ReapOrphan(t, kid) })
	err := dumpRefused(t, p)
	var se *source.SharedFDTableError
	if !errors.As(err, &se) || se.PID != kid || se.With != p.PID {
		t.Fatalf("dump: %v (%T), want a *source.SharedFDTableError for %d sharing %d's fd table", err, err, kid, p.PID)
	}
	testutil.RequireRunning(t, kid)
}

// TestDumpRefusesUnsharedFDTable: a thread that unshared its fd table has
// fds of its own, which the restore would merge into the process's: the
// dump refuses it.
func TestDumpRefusesUnsharedFDTable(t *testing.T) {
	testutil.RequireRoot(t)
	p, _ := startFileState(t, "unsharedfd")
	err := dumpRefused(t, p)
	var se *source.SharedFDTableError
	if !errors.As(err, &se) || se.PID != p.PID || se.Thread == 0 {
		t.Fatalf("dump: %v (%T), want a *source.SharedFDTableError for a thread of %d", err, err, p.PID)
	}
}

// TestDumpRefusesPty: a process holding a pty master and its slave is
// refused, before it is frozen, with an error naming the master.
func TestDumpRefusesPty(t *testing.T) {
	testutil.RequireRoot(t)
	p, line := startFileState(t, "pty")
	var pid, m, s int
	var name string
	if _, err := fmt.Sscanf(line, "ready pid=%d master=%d slave=%d name=%s", &pid, &m, &s, &name); err != nil {
		t.Fatal(err)
	}
	err := dumpRefused(t, p)
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != p.PID || ue.FD != m || !strings.Contains(ue.Reason, "pty") {
		t.Fatalf("dump: %v (%T), want an *source.UnsupportedFDError for fd %d, the pty master", err, err, m)
	}
}

// TestDumpRefusesControllingTerminal: a process with a controlling
// terminal is refused with an error naming it.
func TestDumpRefusesControllingTerminal(t *testing.T) {
	testutil.RequireRoot(t)
	p, line := startFileState(t, "ctty")
	_, name, _ := strings.Cut(line, "name=")
	err := dumpRefused(t, p)
	var ce *source.ControllingTTYError
	if !errors.As(err, &ce) || ce.PID != p.PID || ce.TTY != name {
		t.Fatalf("dump: %v (%T), want a *source.ControllingTTYError naming %s", err, err, name)
	}
}
