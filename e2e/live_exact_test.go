package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLiveExactState: a live migration carries what a dump does of the
// memory locks (mlockall(MCL_CURRENT|MCL_FUTURE): every area locked, VmLck
// equal, an area mapped afterwards locked too) and of the signal
// dispositions (a process that ends on SIGTERM still does).
func TestLiveExactState(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	trigger := filepath.Join(t.TempDir(), "map")
	p := testutil.Start(t, testutil.Build(t, "mlock"), "all", trigger)
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 3)
	before, lck := memoryLocks(t, p.PID)
	// What the original ignores: what its ancestors did (make ignores
	// glibc's signals 32 and 33, and a Go test binary passes one of them
	// on), nothing of its own.
	ign := testutil.StatusField(t, p.PID, "SigIgn")
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	p.WaitExit(t, short)
	r := migrated(findInNamespace(t, p.PID), p.Log)
	_, lck2 := memoryLocks(t, r.PID)
	if lck2 != lck {
		t.Errorf("VmLck: %d before, %d after the migration", lck, lck2)
	}
	// (By address: the target may merge two adjacent areas that the
	// original kept apart, a relro and the read-only data after it.)
	for k, v := range before {
		var a uint64
		if _, err := fmt.Sscanf(k, "%x", &a); err != nil {
			t.Fatal(err)
		}
		if got := lockFlags(flagsAt(t, r.PID, a)); got != v {
			t.Errorf("area %s: locks %q before, %q after the migration", k, v, got)
		}
	}
	n := len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	line, _ := r.WaitLine(t, short, n, "new")
	var a uint64
	if _, err := fmt.Sscanf(field(t, line, "addr"), "%x", &a); err != nil {
		t.Fatal(err)
	}
	if got := lockFlags(flagsAt(t, r.PID, a)); got != "lo" {
		t.Errorf("area mapped after the migration: locks %q, want \"lo\" (MCL_FUTURE)", got)
	}
	if got := testutil.StatusField(t, r.PID, "SigIgn"); got != ign {
		t.Errorf("the migrated process ignores signals %s; the original ignored %s", got, ign)
	}
	// (Not a child of the test: its wait status is the service's.)
	r.Signal(t, unix.SIGTERM)
	testutil.WaitFor(t, short, "the migrated process to end on SIGTERM", func() bool {
		st, err := testutil.State(r.PID)
		return err != nil || st == 'Z'
	})
}
