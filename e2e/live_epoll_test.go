package e2e

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// TestLiveEpollSignalfd: a process that waits for a signal as PostgreSQL
// waits on its latch (the signal blocked, a signalfd for it in an epoll
// set, epoll_wait without a timeout) moves live, and a signal sent to it
// on the target wakes it. epoll waits on the signal queue of the task
// that added the signalfd to the set: added by migrate's agent, the set
// would wait on the agent's signals and never wake for the process's.
func TestLiveEpollSignalfd(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, testutil.Build(t, "epollsig"))
	p.WaitLine(t, short, 0, "ready")
	want := fmt.Sprintf("woke signo=%d", unix.SIGUSR1)
	n := len(p.Lines(t))
	if err := unix.Kill(p.PID, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if l, _ := p.WaitLine(t, short, n, "woke"); l != want {
		t.Fatalf("%q before the migration, want %q", l, want)
	}
	r, _ := migrateLive(t, p, s, source.MigrateOptions{})
	for range 2 {
		n := len(r.Lines(t))
		if err := unix.Kill(r.PID, unix.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		if l, _ := r.WaitLine(t, short, n, "woke"); l != want {
			t.Errorf("%q after the migration, want %q", l, want)
		}
	}
	stopMigrated(t, r)
}
