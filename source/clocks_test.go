package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"

	"github.com/procmig/migrate/internal/testutil"
)

// A process that made a time namespace its children would enter (and
// stays out of it) is refused before anything is frozen: a restore puts
// a process and its children to come in one namespace. It runs on.
func TestDumpPendingTimeNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
	}
	p := testutil.Start(t, testutil.Build(t, "clocks"), "unshare")
	p.WaitLine(t, short, 0, "ready")
	_, err := Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	var bt *BadTargetError
	if !errors.As(err, &bt) || bt.PID != p.PID {
		t.Fatalf("dump of a process with a time namespace for its children: %v (%T), want a BadTargetError", err, err)
	}
	testutil.RequireRunning(t, p.PID)
	n := len(p.Lines(t))
	p.WaitLine(t, short, n, "tick ")
}

// A tree whose processes live in different time namespaces (a child
// started in one of its own) is refused before anything is frozen,
// naming the child: a restore makes one namespace for a tree. The tree
// runs on.
func TestDumpTreeTimeNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/time"); err != nil {
		testutil.Unavailable(t, "time namespaces (CONFIG_TIME_NS): %v", err)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux): %v", err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		testutil.Unavailable(t, "sleep: %v", err)
	}
	// sh starts the child, then execs the workload: the root's PID is sh's.
	p := testutil.Start(t, "/bin/sh", "-c", unshare+" --time --monotonic 5 "+sleep+" 1000 </dev/null & exec "+testutil.Build(t, "clocks"))
	p.WaitLine(t, short, 0, "ready")
	var child int
	testutil.WaitFor(t, short, "the child in its time namespace", func() bool {
		kids, _ := childrenOf(p.PID)
		if len(kids) != 1 {
			return false
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", kids[0]))
		child = kids[0]
		return exe == sleep
	})
	t.Cleanup(func() {
		p.Kill(t)
		testutil.ReapOrphan(t, child)
	})
	_, err = Dump(context.Background(), DumpOptions{PID: p.PID, Tree: true, Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	var bt *BadTargetError
	if !errors.As(err, &bt) || bt.PID != child {
		t.Fatalf("dump of a tree across time namespaces: %v (%T), want a BadTargetError for process %d", err, err, child)
	}
	t.Logf("refused: %v", err)
	testutil.RequireRunning(t, p.PID)
	testutil.RequireRunning(t, child)
	n := len(p.Lines(t))
	p.WaitLine(t, short, n, "tick ")
}
