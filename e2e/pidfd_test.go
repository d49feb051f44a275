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
	var child int
	t.Cleanup(func() {
		if child > 0 {
			testutil.ReapOrphan(t, child)
		}
	})
	p := testutil.Start(t, testutil.Build(t, "pidfd"))
	line, _ := p.WaitLine(t, short, 0, "ready")
	var pid, cfd, sfd int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d cfd=%d sfd=%d", &pid, &child, &cfd, &sfd); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 3)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reap(t)
	testutil.ReapOrphan(t, child)
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
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
	child = 0
}

// TestDumpRefusesPidfdOutside: a pidfd of a process outside the dump is
// refused, naming the fd, and the process runs on.
func TestDumpRefusesPidfdOutside(t *testing.T) {
	testutil.RequireRoot(t)
	var child int
	t.Cleanup(func() {
		if child > 0 {
			testutil.ReapOrphan(t, child)
		}
	})
	p := testutil.Start(t, testutil.Build(t, "pidfd"))
	line, _ := p.WaitLine(t, short, 0, "ready")
	var pid, cfd, sfd int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d cfd=%d sfd=%d", &pid, &child, &cfd, &sfd); err != nil {
		t.Fatal(err)
	}
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
