package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// TestPidfdKept: pidfds of a child and of the process itself come back,
// each on the restored process with that PID (and non-blocking where it
// was): the process signals its child, sees it end and reaps it, through
// the pidfd.
func TestPidfdKept(t *testing.T) {
	testutil.RequireRoot(t)
	w := startPidfd(t)
	p, child, cfd, sfd := w.Proc, w.child, w.cfd, w.sfd
	p.WaitTick(t, short, 3)
	dir, img := dumpTreeKill(t, p, child)
	got := map[int]int{}
	for _, f := range img.Process.FDs {
		if f.Kind == core.FDPidfd {
			got[f.FD] = f.PidfdPID
		}
	}
	if got[cfd] != child || got[sfd] != p.PID {
		t.Fatalf("image pidfds %v, want fd %d -> %d and fd %d -> %d", got, cfd, child, sfd, p.PID)
	}
	r := restoreOK(t, dir, p.Log)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	reaped, _ := r.WaitLine(t, short, n, "reaped")
	if want := fmt.Sprintf("reaped pid=%d signal=%d self=ok", child, unix.SIGTERM); reaped != want {
		t.Errorf("after restore %q, want %q", reaped, want)
	}
	w.child = 0 // reaped by the restored parent, through its pidfd
}

// TestDumpRefusesPidfdOutside: a pidfd of a process outside the dump is
// refused, naming the fd, and the process runs on.
func TestDumpRefusesPidfdOutside(t *testing.T) {
	testutil.RequireRoot(t)
	w := startPidfd(t)
	p, child, cfd := w.Proc, w.child, w.cfd
	// Without --tree the child is outside the dump.
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.FD != cfd || !strings.Contains(ue.Reason, fmt.Sprint(child)) {
		t.Fatalf("dump: %v (%T), want an UnsupportedFDError for fd %d naming %d", err, err, cfd, child)
	}
	testutil.RequireRunning(t, p.PID)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", child)); err != nil {
		t.Fatalf("the child is gone: %v", err)
	}
	p.WaitTick(t, short, p.LastTick(t)+2)
}

// pidfdProc is the pidfd workload: its child and its two pidfds.
type pidfdProc struct {
	*testutil.Proc
	child, cfd, sfd int
}

// startPidfd starts the pidfd workload; its child, an orphan once the
// workload is gone, is reaped at the end.
func startPidfd(t *testing.T) *pidfdProc {
	t.Helper()
	w := &pidfdProc{}
	// Before the workload's own cleanup, so run after it.
	t.Cleanup(func() {
		if w.child > 0 {
			testutil.ReapOrphan(t, w.child)
		}
	})
	w.Proc = testutil.Start(t, testutil.Build(t, "pidfd"))
	line, _ := w.WaitLine(t, short, 0, "ready")
	var pid int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d cfd=%d sfd=%d", &pid, &w.child, &w.cfd, &w.sfd); err != nil {
		t.Fatal(err)
	}
	return w
}
