package source

import (
	"context"
	"errors"
	"log/slog"
	"os"
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
