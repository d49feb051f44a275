package e2e

import (
	"testing"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// TestLiveInterruptedPauseSignalled: a process waiting in pause(2), moved
// live, and sent the signal it handles on the target before it resumes
// (the target's pre-resume hook): its pause ends with EINTR after the
// handler, as it would have if the signal had come on the source. The
// target gives the kernel the call as the seize interrupted it
// (restart_code in the image); given the call rewound, pause ran again
// after the handler and waited for ever for a signal that had come.
//
// The line is the restored process's (migrateLive finds it in the
// service's PID namespace): the original, killed at the commit, is a
// zombie of this test by then, and a wait on it failed the test whenever
// the restored process had not written the line yet (29 of 300 runs
// under scripts/stress.sh).
func TestLiveInterruptedPauseSignalled(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{Hooks: []string{"pre-resume=kill -USR1 $MIGRATE_PID"}})
	// pause2: it lives on after the first pause, in a second one.
	p := testutil.Start(t, testutil.Build(t, "sleeper"), "pause2")
	p.WaitLine(t, short, 0, "sleeping")
	// In pause as it is moved: the signal is to end it on the target.
	waitPaused(t, p.PID)
	r, _ := migrateLive(t, p, s, source.MigrateOptions{})
	// The sleeper says how its pause ended.
	if got, _ := r.WaitLine(t, short, 0, "paused "); got != "paused rc=-1 errno=4 handled=1" {
		t.Errorf("on the target: %q, want pause ended by the handled signal (rc=-1 errno=4 handled=1)", got)
	}
}
