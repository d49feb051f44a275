package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// manyFDs starts testdata/manyfds with n fds from 3 up (pipes, unix
// socketpairs, a file, /dev/null, eventfds) and one more at fd high.
func manyFDs(t *testing.T, n, high int) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "manyfds"), filepath.Join(t.TempDir(), "file"), fmt.Sprint(n), fmt.Sprint(high))
	p.WaitLine(t, long, 0, "ready")
	p.WaitTick(t, short, 2)
	return p
}

// checkManyFDs makes the manyfds process pid (as this namespace sees it)
// use each of its fds, and fails the test unless every one works.
func checkManyFDs(t *testing.T, pid int, log string) {
	t.Helper()
	n := len(testutil.LogLines(t, log))
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, long, "the check of every fd", func() bool {
		for _, l := range testutil.LogLines(t, log)[n:] {
			if strings.HasPrefix(l, "check bad") {
				t.Fatalf("after the move: %s", l)
			}
			if strings.HasPrefix(l, "check ok") {
				t.Logf("%s", l)
				return true
			}
		}
		return false
	})
}

// TestManyFDsRestore: a process with 200 fds, at numbers well past 64 (the
// first number the restorer once put its pidfd at) and past the agent's
// own, with gaps in their numbers, and one at fd 6000 (past a gap wider
// than the restorer fills), is dumped and restored: every fd is back at
// its number and works.
func TestManyFDsRestore(t *testing.T) {
	testutil.RequireRoot(t)
	p := manyFDs(t, 200, 6000)
	before := testutil.FDs(t, p.PID)
	dir, _ := dumpKill(t, p, "")
	q := restoreOK(t, dir, p.Log)
	defer q.Kill(t)
	checkFDsSame(t, before, q.PID, 1, 2) // its log: it ticks on
	checkManyFDs(t, q.PID, q.Log)
}

// TestLiveMigrationManyFDs: the same process moved live, into a service
// whose RLIMIT_NOFILE is 1024 soft, 20000 hard (Go raises its own soft
// limit, and gives its children the one it started with). A live
// migration builds the process from a first layout that lists no fds: the
// restorer's pidfd, put out of the way of fds it did not know of, was once
// overwritten by fd 64, and every later fd failed (EBADF); and the husk's
// 1024 fds could not hold fd 1500.
func TestLiveMigrationManyFDs(t *testing.T) {
	testutil.RequireRoot(t)
	srv := startServeWith(t, serveOptions{NoFile: [2]int{1024, 20000}})
	p := manyFDs(t, 200, 1500)
	before := testutil.FDs(t, p.PID)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: srv.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Logf("migrated %d with %d fds: downtime %.1f ms, target %.1f ms", rep.PID, len(before), rep.DowntimeMS, rep.TargetDowntimeMS)
	if ws := p.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the original ended with %v, want killed", ws)
	}
	inner := findInNamespace(t, p.PID)
	checkFDsSame(t, before, inner, 1, 2) // the log grows
	checkManyFDs(t, inner, p.Log)
}

// TestLiveMigrationFDLimit: a service whose hard RLIMIT_NOFILE (1024) is
// below an fd of the process (1500), and which cannot raise it (no
// CAP_SYS_RESOURCE), refuses the process with an error that names the
// limit; the original runs on with its fds.
func TestLiveMigrationFDLimit(t *testing.T) {
	testutil.RequireRoot(t)
	if canRaiseHardLimits() {
		t.Skip("this root has CAP_SYS_RESOURCE: the service raises its hard RLIMIT_NOFILE")
	}
	srv := startServeWith(t, serveOptions{NoFile: [2]int{1024, 1024}})
	p := manyFDs(t, 100, 1500)
	before := testutil.FDs(t, p.PID)
	_, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: srv.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err == nil {
		t.Fatal("migrated a process with fd 1500 into a service whose hard limit is 1024")
	}
	// The error crossed the wire as text: the target's typed error does
	// not survive it.
	t.Logf("migrate: %v", err)
	testutil.RequireRunning(t, p.PID)
	checkFDsSame(t, before, p.PID, 1, 2)
	checkManyFDs(t, p.PID, p.Log)
}

// canRaiseHardLimits says whether this process may raise a hard limit
// (CAP_SYS_RESOURCE).
func canRaiseHardLimits() bool {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		return false
	}
	if lim.Max == unix.RLIM_INFINITY {
		return true
	}
	up := unix.Rlimit{Cur: lim.Cur, Max: lim.Max + 1}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &up) != nil {
		return false
	}
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	return true
}
