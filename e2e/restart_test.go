package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestLiveInterruptedPauseSignalled: a process waiting in pause(2), moved
// live, and sent the signal it handles on the target before it resumes
// (the target's pre-resume hook): its pause ends with EINTR after the
// handler, as it would have if the signal had come on the source. The
// target gives the kernel the call as the seize interrupted it
// (restart_code in the image); given the call rewound, pause ran again
// after the handler and waited for ever for a signal that had come.
func TestLiveInterruptedPauseSignalled(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{Hooks: []string{"pre-resume=kill -USR1 $MIGRATE_PID"}})
	// pause2: it lives on after the first pause, in a second one.
	p := testutil.Start(t, testutil.Build(t, "sleeper"), "pause2")
	p.WaitLine(t, short, 0, "sleeping")
	// In pause as it is moved: the signal is to end it on the target.
	waitPaused(t, p.PID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: s.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("outcome %q", rep.Outcome)
	}
	// The sleeper says how its pause ended.
	if got, _ := p.WaitLine(t, short, 0, "paused "); got != "paused rc=-1 errno=4 handled=1" {
		t.Errorf("on the target: %q, want pause ended by the handled signal (rc=-1 errno=4 handled=1)", got)
	}
}
