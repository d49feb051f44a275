package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// startAudited starts a sleeper and gives it an audit login uid (and so a
// session of its own), as a login does; it skips where the kernel has no
// audit login uids.
func startAudited(t *testing.T) *testutil.Proc {
	t.Helper()
	// Only a process itself may write its login uid: a shell does, then
	// becomes the sleeper.
	p := testutil.Start(t, "/bin/sh", "-c", `echo 4321 > /proc/self/loginuid || echo "no loginuid"; exec "$0" pause`, testutil.Build(t, "sleeper"))
	line, _ := p.WaitLine(t, short, 0, "")
	if line == "no loginuid" {
		testutil.Unavailable(t, "cannot set an audit login uid here (CONFIG_AUDIT, CAP_AUDIT_CONTROL)")
	}
	p.WaitLine(t, short, 0, "sleeping")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/loginuid", p.PID)); err != nil || string(b) != "4321" {
		t.Fatalf("login uid %q (%v), want 4321", b, err)
	}
	return p
}

// TestRestoreRefusesOtherAuditSession: a process with another audit login
// uid and session than the restorer's, which the restored process would
// get instead (a session id cannot be chosen), is refused by the restore
// with a *target.AuditError before anything is created.
func TestRestoreRefusesOtherAuditSession(t *testing.T) {
	testutil.RequireRoot(t)
	p := startAudited(t)
	dir, img := dumpKill(t, p, "")
	if img.Process.Audit == nil || img.Process.Audit.LoginUID != 4321 {
		t.Fatalf("image audit identity %+v, want login uid 4321", img.Process.Audit)
	}
	kids := testutil.Children()
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var ae *target.AuditError
	if !errors.As(err, &ae) || ae.PID != p.PID || ae.Want.LoginUID != 4321 {
		t.Fatalf("restore: %v (%T), want a *target.AuditError for login uid 4321", err, err)
	}
	requireNothingLeft(t, p.PID, kids)
}

// TestLiveRefusesOtherAuditSession: the same refused by the target at the
// first layout, before pre-copy; the original runs on.
func TestLiveRefusesOtherAuditSession(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	p := startAudited(t)
	_, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err == nil {
		t.Fatal("migrate succeeded")
	}
	t.Logf("migrate: %v", err)
	testutil.RequireRunning(t, p.PID)
}
