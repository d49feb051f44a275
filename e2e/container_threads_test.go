package e2e

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// TestContainerThreadedInit: a container whose init (PID 1 of its PID
// namespace) has several threads, as a Go or Java server as a container's
// first process has, is dumped (the original killed at the end) and
// restored. The kill of such an init once hung: the init's last thread to
// exit waits in the kernel for every other task of the namespace to be
// reaped, its traced sibling threads among them, while migrate waited for
// that last thread first.
func TestContainerThreadedInit(t *testing.T) {
	testutil.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	p := testutil.Start(t, unshare, "--pid", "--fork", testutil.Build(t, "threads"))
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	init := onlyChild(t, p.PID)
	if n := testutil.StatusField(t, init, "Threads"); n != "4" {
		t.Fatalf("the container's init %d has %s threads, want 4", init, n)
	}
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: init, Dir: dir, Logger: testLogger(t)})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dump: %v", err)
		}
	case <-time.After(long):
		t.Fatalf("the dump of a threaded container init did not end in %v (its kill hangs?)", long)
	}
	last := p.LastTick(t)
	p.Reap(t) // unshare ends with its child
	r := restoreOK(t, dir, p.Log)
	r.WaitTick(t, short, last+3)
}
