package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// startLandlocked starts the sleeper sandboxed by Landlock (mode landlock:
// the process; landlockthread: a second thread alone), or skips naming
// what the kernel lacks.
func startLandlocked(t *testing.T, mode string) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "sleeper"), mode)
	var line string
	testutil.WaitFor(t, short, "the sleeper to start or give up", func() bool {
		for _, l := range p.Lines(t) {
			if strings.HasPrefix(l, "sleeping") || strings.HasPrefix(l, "skip") {
				line = l
				return true
			}
		}
		return false
	})
	if reason, ok := strings.CutPrefix(line, "skip "); ok {
		t.Skipf("no Landlock sandbox to test: %s", reason)
	}
	return p
}

// wantLandlockRefusal checks err refuses p (the thread that is sandboxed:
// the leader, or with thread another) and that p runs on untouched: not
// traced, and its pause ends by the SIGUSR1 it handles, as it would have
// without the attempt.
func wantLandlockRefusal(t *testing.T, p *testutil.Proc, err error, thread bool) {
	t.Helper()
	var le *source.LandlockError
	if !errors.As(err, &le) || le.PID != p.PID || (le.TID == p.PID) == thread {
		t.Fatalf("%v (%T), want a *source.LandlockError for process %d (a thread other than the leader: %v)", err, err, p.PID, thread)
	}
	t.Logf("refused: %v", err)
	checkRunningUntraced(t, p.PID)
	waitPaused(t, p.PID)
	p.Signal(t, unix.SIGUSR1)
	if ws := p.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("the refused process ended with %v, want exit 0 (its pause ended by the signal it handles)", ws)
	}
}

// TestLandlockRefused: a process sandboxed by Landlock, whole or in one
// thread, is refused by a dump (once frozen, before any change) and by a
// live migration (as its tracking starts, before a page is sent): its
// rules cannot be read, and a restore without them would give it more
// access than it has. It runs on as before. The same process unsandboxed,
// as root or as another user, is not refused.
func TestLandlockRefused(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	for _, tc := range []struct {
		mode   string
		thread bool
	}{{"landlock", false}, {"landlockthread", true}} {
		t.Run("dump "+tc.mode, func(t *testing.T) {
			p := startLandlocked(t, tc.mode)
			_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
			wantLandlockRefusal(t, p, err, tc.thread)
		})
		t.Run("live "+tc.mode, func(t *testing.T) {
			p := startLandlocked(t, tc.mode)
			rounds := 0
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: addr, Transport: transport.Config{Insecure: true},
				Logger: testLogger(t), Progress: func(source.RoundReport) { rounds++ }})
			if rounds != 0 || rep != nil && len(rep.Rounds) != 0 {
				t.Errorf("%d rounds (report %+v): the refusal must come before any page is sent", rounds, rep)
			}
			wantLandlockRefusal(t, p, err, tc.thread)
		})
	}
	t.Run("dump container", func(t *testing.T) {
		// The sleeper as the init of a container (its PID namespace, its
		// UTS and IPC): the probe is started in that PID namespace.
		p := testutil.Start(t, requireUnshare(t), "--pid", "--fork", "--uts", "--ipc", testutil.Build(t, "sleeper"), "landlock")
		testutil.WaitFor(t, short, "the sleeper to start or give up", func() bool {
			return len(p.Lines(t)) > 0
		})
		if reason, ok := strings.CutPrefix(p.Lines(t)[0], "skip "); ok {
			t.Skipf("no Landlock sandbox to test: %s", reason)
		}
		init := onlyChild(t, p.PID)
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: init, Dir: t.TempDir(), Logger: testLogger(t)})
		var le *source.LandlockError
		if !errors.As(err, &le) || le.PID != init {
			t.Fatalf("%v (%T), want a *source.LandlockError for process %d", err, err, init)
		}
		t.Logf("refused: %v", err)
		checkRunningUntraced(t, init)
		for _, pid := range childrenOf(t, init) {
			t.Errorf("a process %d left in the container", pid)
		}
		waitPaused(t, init)
		unix.Kill(init, unix.SIGUSR1)
		if ws := p.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("the refused container ended with %v, want exit 0", ws)
		}
	})
	for _, as := range []struct {
		name string
		cred *syscall.Credential
	}{{"root", nil}, {"nobody", &syscall.Credential{Uid: 65534, Gid: 65534}}} {
		t.Run("unsandboxed "+as.name, func(t *testing.T) {
			// A directory every user can enter (t.TempDir's parent is 0700).
			cwd, err := os.MkdirTemp("", "migrate-cwd-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(cwd) })
			if err := os.Chmod(cwd, 0o777); err != nil {
				t.Fatal(err)
			}
			p := testutil.StartWith(t, testutil.Options{Dir: cwd, Credential: as.cred}, testutil.Build(t, "sleeper"), "pause")
			p.WaitLine(t, short, 0, "sleeping")
			if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), LeaveRunning: true, Logger: testLogger(t)}); err != nil {
				t.Fatalf("dump: %v", err)
			}
			waitPaused(t, p.PID)
			p.Signal(t, unix.SIGUSR1)
			if ws := p.WaitExit(t, short); !ws.Exited() || ws.ExitStatus() != 0 {
				t.Errorf("the process ended with %v, want exit 0", ws)
			}
		})
	}
}

// TestLandlockJoinedAtFreeze: a process that joins a tree as it is frozen
// (forked after the last pre-copy round: it was never tracked, so never
// tested as tracking started) and sandboxes itself is refused at the
// freeze; the tree runs on untouched.
func TestLandlockJoinedAtFreeze(t *testing.T) {
	testutil.RequireRoot(t)
	addr := startServe(t)
	sleeper := testutil.Build(t, "sleeper")
	log := filepath.Join(t.TempDir(), "child.log")
	// The shell forks a sandboxed sleeper on SIGUSR1 (the pre-freeze
	// hook sends it, and waits until the sleeper is sandboxed); it sleeps
	// a second at a time meanwhile.
	p := testutil.Start(t, "/bin/sh", "-c", `trap '"$0" landlock >>"$1" 2>&1 &' USR1; echo ready >>"$1"; while :; do sleep 1; done`, sleeper, log)
	// The shell's children (its sleep, the sleeper) are reaped too: the
	// shell, stopped so that it forks no more, then killed, leaves them
	// to the test process.
	t.Cleanup(func() {
		unix.Kill(p.PID, unix.SIGSTOP)
		kids := childrenOf(t, p.PID)
		p.Kill(t)
		for _, k := range kids {
			testutil.ReapOrphan(t, k)
		}
	})
	testutil.WaitFor(t, short, "the shell to set its trap", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "ready")
	})
	hooks, err := hook.Parse([]string{fmt.Sprintf(
		`pre-freeze=kill -USR1 %d; i=0; until grep -q -e sleeping -e skip %s || [ $i -ge 500 ]; do sleep 0.01; i=$((i+1)); done`, p.PID, log)}, hook.Source)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = source.Migrate(ctx, source.MigrateOptions{PID: p.PID, To: addr, Tree: true, Transport: transport.Config{Insecure: true},
		Logger: testLogger(t), Hooks: hooks})
	b, _ := os.ReadFile(log)
	if reason, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "skip "); ok {
		t.Skipf("no Landlock sandbox to test: %s", reason)
	}
	child := 0
	for _, k := range childrenOf(t, p.PID) {
		if procComm(t, k) == "sleeper" {
			child = k
		}
	}
	if child == 0 {
		b, _ := os.ReadFile(log)
		t.Fatalf("no sleeper among the shell's children %v (migration: %v); its log: %q", childrenOf(t, p.PID), err, b)
	}
	var le *source.LandlockError
	if !errors.As(err, &le) || le.PID != child {
		t.Fatalf("%v (%T), want a *source.LandlockError for the sleeper %d", err, err, child)
	}
	t.Logf("refused: %v", err)
	checkRunningUntraced(t, p.PID)
	checkRunningUntraced(t, child)
	// The sleeper's pause ends by the signal it handles: it ran on untouched.
	waitPaused(t, child)
	unix.Kill(child, unix.SIGUSR1)
	testutil.WaitFor(t, short, "the sleeper's pause to end", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "paused rc=-1 errno=4 handled=1")
	})
}
