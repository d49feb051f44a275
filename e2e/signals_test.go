package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
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
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sigterm")
	for _, tc := range []struct {
		mode   string
		signal syscall.Signal // the signal that ends it, or 0
		exit   int            // else its exit code
		twice  bool           // SIGTERM once, wait for "first", then again
		group  bool           // in a process group of its own, SIGTERM sent to the group
	}{
		{mode: "dfl", signal: unix.SIGTERM, group: true},
		{mode: "thread", signal: unix.SIGTERM, group: true},
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
		name := tc.mode
		if tc.group {
			name += " to the group"
		}
		t.Run(name, func(t *testing.T) {
			trigger := filepath.Join(t.TempDir(), "unblock")
			p := testutil.StartWith(t, testutil.Options{Setpgid: tc.group}, bin, tc.mode, trigger)
			p.WaitLine(t, short, 0, "ready")
			testutil.WaitFor(t, short, "the workload to sleep", func() bool {
				st, err := testutil.State(p.PID)
				return err == nil && st == 'S'
			})
			before := threadSignals(t, p.PID)
			if ign, _ := strconv.ParseUint(testutil.StatusField(t, p.PID, "SigIgn"), 16, 64); ign&(1<<(unix.SIGTERM-1)) != 0 {
				t.Fatalf("the original ignores SIGTERM (SigIgn %#x): does the test process?", ign)
			}
			dir, _ := dumpKill(t, p, "")

			r := func() *testutil.Proc {
				defer ignoreWhile(unix.SIGTERM)()
				return restoreOK(t, dir, p.Log)
			}()
			// Compared once it sleeps again, as the original was: a thread
			// restored in sigsuspend shows its own mask until it is back
			// in the call, which puts the temporary one in place.
			testutil.WaitFor(t, short, "the restored workload to sleep", func() bool {
				st, err := testutil.State(r.PID)
				return err == nil && st == 'S'
			})
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
				r.Signal(t, unix.SIGTERM)
			case tc.group:
				pgid, _ := testutil.PGID(t, r.PID)
				if pgid != r.PID {
					t.Fatalf("restored process %d is in process group %d, was in its own", r.PID, pgid)
				}
				if err := unix.Kill(-pgid, unix.SIGTERM); err != nil {
					t.Fatalf("kill -TERM -%d: %v", pgid, err)
				}
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

// TestThreadSignals: per-thread signal state. Each thread keeps its own
// alternate stack (one with SS_AUTODISARM), its blocked mask and its own
// pending signals: a real-time signal queued twice to one thread with its
// values and SI_QUEUE, a SIGUSR2 raised on the other. Once unblocked, each
// is delivered to the thread it was queued to, with its siginfo, and SIGUSR1
// runs on the alternate stack of the thread that raised it.
func TestThreadSignals(t *testing.T) {
	testutil.RequireRoot(t)
	trigger := filepath.Join(t.TempDir(), "unblock")
	p := testutil.Start(t, testutil.Build(t, "sigthreads"), trigger)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	tid := field(t, ready, "tid")
	p.WaitTick(t, short, 2)
	before := threadSignals(t, p.PID)

	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if after := threadSignals(t, r.PID); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("signal state per thread:\n before the dump %v\n after restore   %v", before, after)
	}
	n := len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	main := strconv.Itoa(r.PID)
	testutil.WaitFor(t, short, "both threads to be done", func() bool {
		c := 0
		for _, l := range r.Lines(t)[n:] {
			if strings.HasPrefix(l, "done ") {
				c++
			}
		}
		return c == 2
	})
	var got []string
	for _, l := range r.Lines(t)[n:] {
		if !strings.HasPrefix(l, "tick ") {
			got = append(got, l)
		}
	}
	want := map[string][]string{
		tid: {
			"rt tid=" + tid + " value=7 code=-1",
			"rt tid=" + tid + " value=8 code=-1",
			"usr1 tid=" + tid + " stack=thread",
			"done tid=" + tid,
		},
		main: {
			"usr2 tid=" + main,
			"usr1 tid=" + main + " stack=main",
			"done tid=" + main,
		},
	}
	for id, lines := range want {
		var mine []string
		for _, l := range got {
			if strings.Contains(l, "tid="+id+" ") || strings.HasSuffix(l, "tid="+id) {
				mine = append(mine, l)
			}
		}
		if fmt.Sprint(mine) != fmt.Sprint(lines) {
			t.Errorf("thread %s after unblocking: %q, want %q", id, mine, lines)
		}
	}
}

// TestStoppedStaysStopped: a process stopped by SIGSTOP (a group stop, both
// threads) is restored stopped, not traced, and every thread runs on after
// SIGCONT.
func TestStoppedStaysStopped(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "sigthreads"), filepath.Join(t.TempDir(), "never"))
	p.WaitLine(t, short, 0, "ready")
	p.Signal(t, unix.SIGSTOP)
	stopped := func(pid int) func() bool {
		return func() bool {
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil || len(ents) != 2 {
				return false
			}
			for _, e := range ents {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
				if err != nil {
					return false
				}
				s := string(b)
				if i := strings.LastIndexByte(s, ')'); i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
					return false
				}
			}
			return true
		}
	}
	testutil.WaitFor(t, short, "both threads to stop", stopped(p.PID))
	dir, img := dumpKill(t, p, "")
	if !img.Process.Stopped {
		t.Errorf("the image does not say the process was stopped")
	}
	last := p.LastTick(t)

	rep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if rep.PID != p.PID || testutil.Parent(t, p.PID) != os.Getpid() {
		t.Fatalf("restored %d, parent %d", rep.PID, testutil.Parent(t, p.PID))
	}
	r := testutil.Adopt(t, p.PID, p.Log)
	testutil.WaitFor(t, short, "the restored threads to be stopped", stopped(r.PID))
	if tr := testutil.StatusField(t, r.PID, "TracerPid"); tr != "0" {
		t.Errorf("restored process is traced by %s", tr)
	}
	if got := r.LastTick(t); got != last {
		t.Errorf("a stopped process ticked after restore: %d, was %d", got, last)
	}
	r.Signal(t, unix.SIGCONT)
	r.WaitTick(t, short, last+3)
	checkRunningUntraced(t, r.PID)
}

// TestParentDeathSignal: a child that asked for SIGTERM when its parent
// dies (PR_SET_PDEATHSIG) still gets it after restore: the restored parent
// is killed, and the child ends on SIGTERM instead of running on orphaned.
func TestParentDeathSignal(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "pdeath"))
	line, _ := p.WaitLine(t, short, 0, "child")
	child, err := strconv.Atoi(field(t, line, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 2)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reap(t)
	testutil.ReapOrphan(t, child)
	t.Cleanup(func() { testutil.ReapOrphan(t, child) })

	r := restoreOK(t, dir, p.Log)
	if testutil.Parent(t, child) != r.PID {
		t.Fatalf("restored child %d has parent %d, want %d", child, testutil.Parent(t, child), r.PID)
	}
	r.Kill(t)
	var ws unix.WaitStatus
	testutil.WaitFor(t, short, "the orphaned child to end and come to the test process", func() bool {
		got, err := unix.Wait4(child, &ws, unix.WNOHANG, nil)
		return err == nil && got == child
	})
	if !ws.Signaled() || ws.Signal() != unix.SIGTERM {
		t.Errorf("the child ended with wait status %#x, want killed by SIGTERM (its parent-death signal)", uint32(ws))
	}
}

// TestZombieNoSpuriousSIGCHLD: a parent restored with its zombie child gets
// no SIGCHLD from the restore (it had had its one, when the child exited:
// the handler must not run again), and reaps the child with its status.
func TestZombieNoSpuriousSIGCHLD(t *testing.T) {
	testutil.RequireRoot(t)
	trigger := filepath.Join(t.TempDir(), "reap")
	p := testutil.Start(t, testutil.Build(t, "zombie"), trigger)
	ready, _ := p.WaitLine(t, short, 0, "ready")
	child, err := strconv.Atoi(field(t, ready, "child"))
	if err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 2)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reap(t)
	testutil.ReapOrphan(t, child)
	n := len(p.Lines(t))

	r := restoreOK(t, dir, p.Log)
	r.WaitTick(t, short, r.LastTick(t)+3)
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := r.WaitLine(t, short, n, "reaped")
	if want := fmt.Sprintf("reaped pid=%d exit=7", child); got != want {
		t.Errorf("after restore: %q, want %q", got, want)
	}
	for _, l := range r.Lines(t)[n:] {
		if strings.HasPrefix(l, "chld ") {
			t.Errorf("SIGCHLD handler ran after restore: %q", l)
		}
	}
}

// TestGroupGone: a process whose process group is gone by the time of the
// restore (its leader was not in the image and has exited) leads a group
// of its own, with a warning, instead of staying in the restoring
// service's group, where a signal to that group (the service being
// stopped) would reach it.
func TestGroupGone(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "sigterm")
	leader := testutil.StartWith(t, testutil.Options{Setpgid: true}, bin, "dfl")
	leader.WaitLine(t, short, 0, "ready")
	p := testutil.StartWith(t, testutil.Options{Setpgid: true, Pgid: leader.PID}, bin, "dfl")
	p.WaitLine(t, short, 0, "ready")
	if pgid, _ := testutil.PGID(t, p.PID); pgid != leader.PID {
		t.Fatalf("the workload is in group %d, want %d", pgid, leader.PID)
	}
	dir, _ := dumpKill(t, p, "")
	leader.Kill(t)

	r, rep := restoreWithReport(t, dir, p.Log)
	ours := unix.Getpgrp()
	pgid, _ := testutil.PGID(t, r.PID)
	if pgid == ours {
		t.Fatalf("the restored process is in the restoring process's group %d", ours)
	}
	if pgid != r.PID {
		t.Errorf("the restored process is in group %d, want its own (%d)", pgid, r.PID)
	}
	if len(rep.Warnings) == 0 {
		t.Errorf("no warning that the group was not joined")
	}
	r.Signal(t, unix.SIGTERM)
	if ws := r.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGTERM {
		t.Errorf("ended with %#x on SIGTERM", uint32(ws))
	}
}

// TestChildSubreaper: a process that made itself a child subreaper is one
// after restore: a grandchild orphaned after the restore comes to it, not
// to the restoring service's subreaper.
func TestChildSubreaper(t *testing.T) {
	testutil.RequireRoot(t)
	trigger := filepath.Join(t.TempDir(), "fork")
	p := testutil.Start(t, testutil.Build(t, "subreaper"), trigger)
	p.WaitLine(t, short, 0, "ready")
	p.WaitTick(t, short, 2)
	dir, img := dumpKill(t, p, "")
	if a := img.Process.Attrs; a == nil || !a.ChildSubreaper {
		t.Errorf("the image does not say the process is a child subreaper")
	}
	r := restoreOK(t, dir, p.Log)
	n := len(r.Lines(t))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := r.WaitLine(t, short, n, "orphan")
	if want := fmt.Sprintf("orphan ppid=%d", r.PID); got != want {
		t.Errorf("grandchild orphaned after restore: %q, want %q", got, want)
	}
	r.WaitLine(t, short, n, "reaped")
}

// TestDumpable: PR_SET_DUMPABLE comes back as it was: a process of another
// user stays dumpable (the restore's change of credentials would have made
// it not: its /proc files owned by root, no ptrace by its user, no core
// dump), and a root process that made itself non-dumpable stays so.
func TestDumpable(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Build(t, "dumpable")
	for _, tc := range []struct {
		name string
		cred *syscall.Credential
		d    string
	}{
		{"other user", &syscall.Credential{Uid: 65534, Gid: 65534}, "1"},
		{"root, not dumpable", nil, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cwd, err := os.MkdirTemp("", "migrate-cwd-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(cwd) })
			if err := os.Chmod(cwd, 0o777); err != nil {
				t.Fatal(err)
			}
			p := testutil.StartWith(t, testutil.Options{Dir: cwd, Credential: tc.cred}, bin, tc.d)
			p.WaitLine(t, short, 0, "ready")
			owner := func(pid int) uint32 {
				var st unix.Stat_t
				if err := unix.Stat(fmt.Sprintf("/proc/%d/environ", pid), &st); err != nil {
					t.Fatal(err)
				}
				return st.Uid
			}
			before := owner(p.PID)
			dir, _ := dumpKill(t, p, "")
			r := restoreOK(t, dir, p.Log)
			if after := owner(r.PID); after != before {
				t.Errorf("/proc/PID/environ owned by %d before the dump, %d after restore", before, after)
			}
			n := len(r.Lines(t))
			r.Signal(t, unix.SIGUSR1)
			if got, _ := r.WaitLine(t, short, n, "dumpable"); got != "dumpable="+tc.d {
				t.Errorf("after restore: %q, want dumpable=%s", got, tc.d)
			}
		})
	}
}
