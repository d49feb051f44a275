package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// startLocks runs the locks workload in mode kind on a fresh 1000-byte
// file and returns it, the file and the first fd it locks through.
func startLocks(t *testing.T, kind string) (*testutil.Proc, string, int) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "locked")
	if err := os.WriteFile(file, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testutil.Start(t, testutil.Build(t, "locks"), kind, file)
	line, _ := p.WaitLine(t, short, 0, "ready")
	var pid, fd int
	if _, err := fmt.Sscanf(line, "ready pid=%d fd=%d", &pid, &fd); err != nil {
		t.Fatal(err)
	}
	return p, file, fd
}

// fdLocks lists the locks fdinfo shows on fd of pid, without the lock
// number and the device: "POSIX ADVISORY WRITE 1234 10 19".
func fdLocks(t *testing.T, pid, fd int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "lock:"); ok {
			f := strings.Fields(v)
			if len(f) == 8 {
				out = append(out, strings.Join(append(f[1:5:5], f[6:]...), " "))
			}
		}
	}
	slices.Sort(out)
	return out
}

// conflicts tries, from a new open file description of file, each lock the
// workload's "all" mode must keep out, and one it must let in.
func conflicts(t *testing.T, file string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	try := func(typ int16, start, n int64) error {
		fl := unix.Flock_t{Type: typ, Start: start, Len: n}
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl)
		if err == nil {
			fl.Type = unix.F_UNLCK
			unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl)
		}
		return err
	}
	for _, c := range []struct {
		what  string
		typ   int16
		start int64
		ok    bool
	}{
		{"write lock on byte 15 (POSIX write lock 10-19)", unix.F_WRLCK, 15, false},
		{"write lock on byte 45 (POSIX read lock 40-49)", unix.F_WRLCK, 45, false},
		{"read lock on byte 45 (POSIX read lock 40-49)", unix.F_RDLCK, 45, true},
		{"read lock on byte 250 (OFD write lock 200-299)", unix.F_RDLCK, 250, false},
		{"write lock on byte 500 (nothing)", unix.F_WRLCK, 500, true},
	} {
		err := try(c.typ, c.start, 1)
		if c.ok && err != nil {
			t.Errorf("%s: %v, want it taken", c.what, err)
		}
		if !c.ok && !errors.Is(err, unix.EAGAIN) {
			t.Errorf("%s: %v, want EAGAIN (held by the workload)", c.what, err)
		}
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("flock LOCK_EX: %v, want EWOULDBLOCK (the workload holds LOCK_SH)", err)
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
	}
}

// TestFileLocksKept: POSIX record locks (a write and a read range), a
// flock lock and an OFD lock, each on its own open file description, come
// back after dump and restore: fdinfo shows the same locks, held by the
// same PID, and they keep out the same conflicting locks.
func TestFileLocksKept(t *testing.T) {
	testutil.RequireRoot(t)
	p, file, fd := startLocks(t, "all")
	p.WaitTick(t, short, 2)
	conflicts(t, file)
	before := map[int][]string{}
	for i := 0; i < 3; i++ {
		before[fd+i] = fdLocks(t, p.PID, fd+i)
	}
	if len(before[fd]) != 2 || len(before[fd+1]) != 1 || len(before[fd+2]) != 1 {
		t.Fatalf("workload's locks: %v", before)
	}
	dir, img := dumpKill(t, p, "")
	var n int
	for _, f := range img.Process.FDs {
		n += len(f.Locks)
	}
	if n != 4 {
		t.Errorf("image holds %d locks, want 4", n)
	}
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	for i := 0; i < 3; i++ {
		if got := fdLocks(t, r.PID, fd+i); !slices.Equal(got, before[fd+i]) {
			t.Errorf("fd %d: restored locks %q, before %q", fd+i, got, before[fd+i])
		}
	}
	conflicts(t, file)
	r.WaitTick(t, short, last+3)
}

// TestRestoreRefusesTakenLock: a lock someone else took since the dump
// fails the restore with a *target.LockError naming the lock and the
// holder; nothing of the process is left.
func TestRestoreRefusesTakenLock(t *testing.T) {
	testutil.RequireRoot(t)
	p, file, fd := startLocks(t, "posix")
	dir, img := dumpKill(t, p, "")
	// Another process takes the same lock.
	other := testutil.Start(t, testutil.Build(t, "locks"), "posix", file)
	other.WaitLine(t, short, 0, "ready")
	kids := testutil.Children()
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var le *target.LockError
	if !errors.As(err, &le) || le.FD != fd || le.Lock.Kind != core.LockPOSIX || !le.Lock.Write || le.Holder != other.PID || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("restore: %v (%T), want a *target.LockError for fd %d's POSIX write lock held by %d", err, err, fd, other.PID)
	}
	requireNothingLeft(t, img.Process.PID, kids)
}

// TestLiveRefusesFileLocks: a live migration of a process holding a lock
// is refused before anything is frozen (the original keeps its locks
// until it ends, so the target could not take them), and it runs on.
func TestLiveRefusesFileLocks(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	p, _, fd := startLocks(t, "flock")
	_, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.FD != fd {
		t.Fatalf("migrate: %v (%T), want an UnsupportedFDError for fd %d", err, err, fd)
	}
	testutil.RequireRunning(t, p.PID)
	p.WaitTick(t, short, p.LastTick(t)+2)
}
