package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// sysvProc is the sysv workload and its segments.
type sysvProc struct {
	*testutil.Proc
	child   int
	a, b, c int
	key     int
}

// startSysV starts the sysv workload with a key of this test run, and
// removes its segments at the end whatever happens.
func startSysV(t *testing.T) *sysvProc {
	t.Helper()
	key := 0x4d000000 | (os.Getpid()&0xfff)<<12 | int(time.Now().UnixNano()>>10)&0xfff
	w := &sysvProc{key: key}
	t.Cleanup(func() {
		for _, id := range []int{w.a, w.b, w.c} {
			if id > 0 {
				unix.SysvShmCtl(id, unix.IPC_RMID, nil)
			}
		}
	})
	// Registered before the parent's own cleanup, so run after it: the
	// child (the original's, or the restored one) is then an orphan.
	t.Cleanup(func() {
		if w.child > 0 {
			testutil.ReapOrphan(t, w.child)
		}
	})
	w.Proc = testutil.Start(t, testutil.Build(t, "sysv"), fmt.Sprint(key))
	line, _ := w.WaitLine(t, short, 0, "ready")
	var pid int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d a=%d b=%d c=%d", &pid, &w.child, &w.a, &w.b, &w.c); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	w.WaitTick(t, short, 3)
	return w
}

// sysvipc returns the lines of /proc/sysvipc/shm for ids: key, id, perms,
// size, nattch, uid, gid.
func sysvipc(t *testing.T, ids ...int) map[int]string {
	t.Helper()
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		t.Fatal(err)
	}
	return sysvipcOf(b, ids...)
}

// sysvipcOf is sysvipc of b, the contents of a /proc/sysvipc/shm.
func sysvipcOf(b []byte, ids ...int) map[int]string {
	out := map[int]string{}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 9 {
			continue
		}
		var id int
		fmt.Sscan(f[1], &id)
		for _, want := range ids {
			if id == want {
				out[id] = strings.Join([]string{f[0], f[1], f[2], f[3], f[6], f[7], f[8]}, " ")
			}
		}
	}
	return out
}

func (w *sysvProc) sums(t *testing.T) string {
	t.Helper()
	n := len(w.Lines(t))
	w.Signal(t, unix.SIGUSR1)
	l, _ := w.WaitLine(t, short, n, "sums ")
	return l
}

// TestSysVShm: System V shared memory segments a parent and its child
// attach (one with a key, split by mprotect; one attached read-only; one
// marked removed) come back after dump and restore with their IDs, keys,
// sizes, modes and contents, attached where they were, still shared:
// the child's echo reaches the parent.
func TestSysVShm(t *testing.T) {
	testutil.RequireRoot(t)
	w := startSysV(t)
	before := sysvipc(t, w.a, w.b, w.c)
	if len(before) != 3 {
		t.Fatalf("segments of the workload: %v", before)
	}
	sums := w.sums(t)
	dir, img := dumpTreeKill(t, w.Proc, w.child)
	if len(img.Shm) != 3 {
		t.Fatalf("image holds %d segments, want 3: %+v", len(img.Shm), img.Shm)
	}
	last := w.LastTick(t)
	r := restoreOK(t, dir, w.Log)
	if after := sysvipc(t, w.a, w.b, w.c); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("segments after restore\n%v\nbefore\n%v", after, before)
	}
	r.WaitTick(t, short, last+10)
	for _, l := range r.Lines(t) {
		if strings.HasSuffix(l, " stale") {
			t.Fatalf("after restore the child's echo does not reach the parent: %q", l)
		}
	}
	rw := &sysvProc{Proc: r}
	if got := rw.sums(t); got != sums {
		t.Errorf("contents after restore %q, before %q", got, sums)
	}
}

// TestSysVShmAttachedOutside: a segment that a process outside the dump
// attaches too is refused before anything is frozen (precheckMappings),
// naming it; the process runs on.
func TestSysVShmAttachedOutside(t *testing.T) {
	testutil.RequireRoot(t)
	w := startSysV(t)
	b, err := unix.SysvShmAttach(w.a, 0, unix.SHM_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.SysvShmDetach(b)
	var log strings.Builder
	_, err = source.Dump(context.Background(), source.DumpOptions{PID: w.PID, Dir: t.TempDir(), Tree: true,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	var me *source.UnsupportedMappingError
	if !errors.As(err, &me) || !strings.Contains(me.Name, fmt.Sprint(w.a)) {
		t.Fatalf("dump: %v (%T), want an UnsupportedMappingError naming segment %d", err, err, w.a)
	}
	if strings.Contains(log.String(), "msg=frozen") {
		t.Errorf("refused after the freeze, not before:\n%s", log.String())
	}
	testutil.RequireRunning(t, w.PID)
	w.WaitTick(t, short, w.LastTick(t)+2)
}

// TestSysVShmKeyTaken: a restore whose segment's key another segment took
// since the dump fails with a *target.ShmError naming it; nothing is left
// (no process, no segment of the restore's).
func TestSysVShmKeyTaken(t *testing.T) {
	testutil.RequireRoot(t)
	w := startSysV(t)
	dir, _ := dumpTreeKill(t, w.Proc, w.child)
	// The dumped segment goes, another takes its key.
	unix.SysvShmCtl(w.a, unix.IPC_RMID, nil)
	other, err := unix.SysvShmGet(w.key, 4096, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.SysvShmCtl(other, unix.IPC_RMID, nil)
	before := sysvipc(t, w.b)
	_, err = target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var se *target.ShmError
	if !errors.As(err, &se) || se.ID != w.a || !strings.Contains(se.Error(), fmt.Sprint(other)) {
		t.Fatalf("restore: %v (%T), want a *target.ShmError for segment %d naming %d", err, err, w.a, other)
	}
	testutil.WaitFor(t, short, "the half-built process to be gone", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", w.PID))
		return err != nil
	})
	if after := sysvipc(t, w.b); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("segment b after the failed restore %v, before %v", after, before)
	}
}
