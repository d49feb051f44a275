package e2e

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"migrate/e2e/fixture"
)

// threadSignals returns, per thread of pid, its signal fields of
// /proc/PID/task/TID/status: blocked, ignored, caught and pending.
func threadSignals(t *testing.T, pid int) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var fs []string
		for _, l := range strings.Split(string(b), "\n") {
			for _, f := range []string{"SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"} {
				if v, ok := strings.CutPrefix(l, f+":"); ok {
					fs = append(fs, f+"="+strings.TrimSpace(v))
				}
			}
		}
		out[e.Name()] = strings.Join(fs, " ")
	}
	return out
}

// TestEndsOnSIGTERM: a restored process ends on SIGTERM as the original
// would have: killed by it, or by its handler's exit code, whatever its
// dispositions, the masks of its threads and the system call it sleeps in.
// The restore runs while the restoring process ignores SIGTERM, as a
// service started by a supervisor that ignores it (or under nohup, for
// SIGHUP) does: an ignored disposition survives exec, so the husk starts with it,
// and the restored process must not keep it.
func TestEndsOnSIGTERM(t *testing.T) {
	fixture.RequireRoot(t)
	bin := fixture.Build(t, "sigterm")
	for _, tc := range []struct {
		mode   string
		signal syscall.Signal // the signal that ends it, or 0
		exit   int            // else its exit code
		twice  bool           // SIGTERM once, wait for "first", then again
	}{
		{mode: "dfl", signal: unix.SIGTERM},
		{mode: "ign", signal: unix.SIGTERM},
		{mode: "handler", exit: 41},
		{mode: "resethand", signal: unix.SIGTERM, twice: true},
		{mode: "thread", signal: unix.SIGTERM},
		{mode: "mainblock", signal: unix.SIGTERM},
		{mode: "sigwait", exit: 42},
		{mode: "sigsuspend", exit: 43},
		{mode: "futex", signal: unix.SIGTERM},
		{mode: "pending", signal: unix.SIGTERM},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			trigger := filepath.Join(t.TempDir(), "unblock")
			p := fixture.Start(t, bin, tc.mode, trigger)
			p.WaitLine(t, short, 0, "ready")
			fixture.WaitFor(t, short, "the workload to sleep", func() bool {
				st, err := fixture.State(p.PID)
				return err == nil && st == 'S'
			})
			before := threadSignals(t, p.PID)
			if ign, _ := strconv.ParseUint(fixture.StatusField(t, p.PID, "SigIgn"), 16, 64); ign&(1<<(unix.SIGTERM-1)) != 0 {
				t.Fatalf("the original ignores SIGTERM (SigIgn %#x): does the test process?", ign)
			}
			dir, _ := dumpKill(t, p, "")

			r := func() *fixture.Proc {
				defer ignoreWhile(unix.SIGTERM)()
				return restoreOK(t, dir, p.Log)
			}()
			after := threadSignals(t, r.PID)
			if fmt.Sprint(before) != fmt.Sprint(after) {
				t.Errorf("signal state per thread:\n before the dump %v\n after restore   %v", before, after)
			}

			n := len(r.Lines(t))
			switch {
			case tc.mode == "pending":
				if err := os.WriteFile(trigger, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			case tc.twice:
				r.Signal(t, unix.SIGTERM)
				r.WaitLine(t, short, n, "first")
				fallthrough
			default:
				r.Signal(t, unix.SIGTERM)
			}
			ws := r.WaitExit(t, short)
			switch {
			case tc.signal != 0 && !(ws.Signaled() && ws.Signal() == tc.signal):
				t.Errorf("restored %s ended with wait status %#x, want killed by signal %d; log:\n%s", tc.mode, uint32(ws), tc.signal, strings.Join(r.Lines(t)[n:], "\n"))
			case tc.signal == 0 && !(ws.Exited() && ws.ExitStatus() == tc.exit):
				t.Errorf("restored %s ended with wait status %#x, want exit %d; log:\n%s", tc.mode, uint32(ws), tc.exit, strings.Join(r.Lines(t)[n:], "\n"))
			}
			if tc.mode == "sigwait" {
				if got, _ := r.WaitLine(t, short, n, "sigwait"); got != fmt.Sprintf("sigwait signo=15 code=0 pid=%d", os.Getpid()) {
					t.Errorf("sigwaitinfo after restore: %q", got)
				}
			}
		})
	}
}

// ignoreWhile makes the test process ignore sigs, as a service started
// under nohup does, until the function it returns is called. That function
// puts back the Go runtime's handlers (signal.Reset would leave SIG_IGN, and
// every process the tests start after would inherit it). Not for SIGHUP or
// SIGINT, which the runtime leaves ignored once they were.
func ignoreWhile(sigs ...os.Signal) func() {
	signal.Ignore(sigs...)
	return func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, sigs...)
		signal.Stop(c)
	}
}
