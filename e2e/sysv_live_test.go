package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// sysvipcIn is sysvipc as seen in the IPC namespace of process pid.
func sysvipcIn(t *testing.T, pid int, ids ...int) map[int]string {
	t.Helper()
	if _, err := exec.LookPath("nsenter"); err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is needed to read another IPC namespace: %v", err)
	}
	b, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-i", "cat", "/proc/sysvipc/shm").Output()
	if err != nil {
		t.Fatalf("/proc/sysvipc/shm of the IPC namespace of %d: %v", pid, err)
	}
	return sysvipcOf(b, ids...)
}

// TestLiveSysVShm: the sysv workload (a parent and its child sharing
// System V segments: one with a key, split by mprotect; one attached
// read-only; one marked removed) moves live into another IPC namespace,
// with each tracker this kernel has: the segments are there with their
// IDs, keys, sizes, modes, owners and attachments, their contents the
// same, still shared (the child's echo reaches the parent); the source's
// are gone with the original tree.
func TestLiveSysVShm(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tracker := range []string{source.TrackerUffdWP, source.TrackerHash} {
		t.Run(tracker, func(t *testing.T) {
			trackerWorks(t, tracker)
			w := startSysV(t)
			before := sysvipc(t, w.a, w.b, w.c)
			if len(before) != 3 {
				t.Fatalf("segments of the workload: %v", before)
			}
			// Not read before the move: segment B's pages, written through
			// an attachment since gone, are in no process's page tables
			// (found through the segment's file).
			s := startServeWith(t, serveOptions{IPC: true})
			r, rep := migrateLive(t, w.Proc, s, source.MigrateOptions{Tree: true, Tracker: tracker})
			if rep.Tracker != tracker {
				t.Errorf("tracker %s, want %s", rep.Tracker, tracker)
			}
			testutil.ReapOrphan(t, w.child)
			w.child = findInNamespace(t, w.child)
			testutil.WaitFor(t, short, "the source's segments to be gone", func() bool {
				return len(sysvipc(t, w.a, w.b, w.c)) == 0
			})
			if after := sysvipcIn(t, r.PID, w.a, w.b, w.c); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("segments after the migration\n%v\nbefore\n%v", after, before)
			}
			r.WaitTick(t, short, r.LastTick(t)+10)
			for _, l := range r.Lines(t) {
				if strings.HasSuffix(l, " stale") {
					t.Fatalf("after the migration the child's echo does not reach the parent: %q", l)
				}
			}
			rw := &sysvProc{Proc: r}
			if got, want := strings.Fields(rw.sums(t)), sysvSums(); !slices.Equal(got[len(got)-3:], want) {
				t.Errorf("contents after the migration %q, want sums %q", got, want)
			}
			r.Signal(t, unix.SIGTERM)
		})
	}
}

// sysvSums are the sums the sysv workload says of what it wrote: A's
// read-only page, B, C (see sysv.c).
func sysvSums() []string {
	sum := func(n int, f func(i int) byte) string {
		h := uint32(2166136261)
		for i := range n {
			h = (h ^ uint32(f(i))) * 16777619
		}
		return fmt.Sprintf("%08x", h)
	}
	return []string{
		sum(4096, func(i int) byte { return byte(i * 7) }),
		sum(8192, func(i int) byte { return byte(i*3 + 1) }),
		sum(4096, func(i int) byte { return byte(i * 13) }),
	}
}

// TestLiveSysVShmKeyTaken: a live migration whose segment's key a segment
// of the target holds is refused at the first layout, before the freeze:
// the target's *target.ShmError comes to the source as its Abort with the
// code "sysv-shm" (migrate.RefusedShm); the tree runs on here with its
// segments, and the target made none.
func TestLiveSysVShmKeyTaken(t *testing.T) {
	testutil.RequireRoot(t)
	w := startSysV(t)
	before := sysvipc(t, w.a, w.b, w.c)
	s := startServeWith(t, serveOptions{IPC: true})
	other := shmgetIn(t, s.PID, w.key)
	o := source.MigrateOptions{PID: w.PID, To: s.Addr, Tree: true, Logger: testLogger(t)}
	o.Transport.Insecure = true
	m := startMigration(o)
	m.waitOrHang(t, s, time.Minute)
	var pe *handoff.PeerError
	if !errors.As(m.err, &pe) || !pe.Abort || pe.Code != "sysv-shm" {
		t.Fatalf("migrate: %v (%T), want the target's abort with code sysv-shm (key %#x taken by segment %d)", m.err, m.err, w.key, other)
	}
	if m.rep != nil && len(m.rep.Rounds) > 1 {
		t.Errorf("refused after %d rounds, want at the first layout", len(m.rep.Rounds))
	}
	testutil.RequireRunning(t, w.PID)
	w.WaitTick(t, short, w.LastTick(t)+2)
	if after := sysvipc(t, w.a, w.b, w.c); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("segments here after the refusal\n%v\nbefore\n%v", after, before)
	}
	there := sysvipcIn(t, s.PID, w.a, w.b, w.c)
	delete(there, other)
	if len(there) != 0 {
		t.Errorf("the target kept segments of the refused migration: %v", there)
	}
}

// shmgetIn makes a segment with key in the IPC namespace of process pid,
// and returns its ID; it goes with the namespace.
func shmgetIn(t *testing.T, pid, key int) int {
	t.Helper()
	type result struct {
		id  int
		err error
	}
	ch := make(chan result)
	// A thread of its own (never the main one), that enters the namespace
	// and ends with the goroutine.
	osthread.Go(func() {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/ipc", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWIPC); err != nil {
			ch <- result{err: err}
			return
		}
		id, err := unix.SysvShmGet(key, 4096, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
		ch <- result{id, err}
	})
	r := <-ch
	if r.err != nil {
		if errors.Is(r.err, unix.EPERM) {
			testutil.Unavailable(t, "setns into an IPC namespace: %v", r.err)
		}
		t.Fatalf("segment with key %#x in the IPC namespace of %d: %v", key, pid, r.err)
	}
	return r.id
}

// TestLiveSysVShmRollback: a live migration that fails once the target
// has built the tree, segments and all (the post-dump hook fails, after
// the target said ready), leaves no segment there: never two copies. The
// tree runs on here with its segments as they were.
func TestLiveSysVShmRollback(t *testing.T) {
	testutil.RequireRoot(t)
	w := startSysV(t)
	before := sysvipc(t, w.a, w.b, w.c)
	s := startServeWith(t, serveOptions{IPC: true})
	hooks, err := hook.Parse([]string{"post-dump=false"}, hook.Source)
	if err != nil {
		t.Fatal(err)
	}
	o := source.MigrateOptions{PID: w.PID, To: s.Addr, Tree: true, Logger: testLogger(t), Hooks: hooks}
	o.Transport.Insecure = true
	m := startMigration(o)
	m.waitOrHang(t, s, time.Minute)
	var he *hook.Error
	if !errors.As(m.err, &he) {
		t.Fatalf("migrate: %v (%T), want the post-dump hook's failure", m.err, m.err)
	}
	testutil.RequireRunning(t, w.PID)
	w.WaitTick(t, short, w.LastTick(t)+3)
	for _, l := range w.Lines(t) {
		if strings.HasSuffix(l, " stale") {
			t.Fatalf("after the rollback the child's echo does not reach the parent: %q", l)
		}
	}
	if after := sysvipc(t, w.a, w.b, w.c); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("segments here after the rollback\n%v\nbefore\n%v", after, before)
	}
	testutil.WaitFor(t, short, "the target's segments to be gone", func() bool {
		return len(sysvipcIn(t, s.PID, w.a, w.b, w.c)) == 0
	})
}
