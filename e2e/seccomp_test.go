package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// seccompWant is what each thread of the seccomp workload finds of its
// own filters (see testdata/seccomp.c), as attrsState returns it.
var seccompWant = []string{
	"P threads=3",
	"T0 getppid=E1234 getsid=E1 getpgid=ok nnp=1 seccomp=2",
	"T1 getppid=E1234 getsid=ok getpgid=E2345 nnp=1 seccomp=2",
	"T2 getppid=E1234 getsid=ok getpgid=ok nnp=1 seccomp=2",
}

// startSeccomp starts the seccomp workload with its filters installed.
func startSeccomp(t *testing.T) *testutil.Proc {
	t.Helper()
	p := testutil.Start(t, testutil.Build(t, "seccomp"))
	p.WaitLine(t, long, 0, "state end")
	if got := attrsState(t, p.Lines(t), 0); !slices.Equal(got, seccompWant) {
		t.Fatalf("the workload set\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(seccompWant, "\n"))
	}
	return p
}

// seccompView is what /proc shows of the seccomp state of pid's threads:
// mode, filter count and no_new_privs, by TID as the thread's own PID
// namespace sees it.
func seccompView(t *testing.T, pid int) []string {
	t.Helper()
	tids, err := proc.ReadTIDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tid := range tids {
		st, err := proc.ReadTaskStatus(pid, tid)
		if err != nil || len(st.NSpid) == 0 {
			t.Fatalf("thread %d: status %+v: %v", tid, st, err)
		}
		out = append(out, fmt.Sprintf("tid=%d Seccomp=%d Seccomp_filters=%d NoNewPrivs=%v",
			st.NSpid[len(st.NSpid)-1], st.Seccomp, st.SeccompFilters, st.NoNewPrivs))
	}
	slices.Sort(out)
	return out
}

// TestSeccompDumpRestore: seccomp filters come back on every thread after
// a dump and restore: one every thread shares (installed with TSYNC),
// one stacked on it in the main thread with SECCOMP_FILTER_FLAG_LOG,
// another in a second thread, none more in the third; and no_new_privs.
// Each thread finds its filters still act, /proc shows the same modes
// and counts, and a dump of the restored process reads the same filters.
// Before, a process under seccomp was refused.
func TestSeccompDumpRestore(t *testing.T) {
	testutil.RequireRoot(t)
	p := startSeccomp(t)
	before := seccompView(t, p.PID)
	dir, img := dumpKill(t, p, "")
	fs := img.Process.SeccompFilters
	var chains []string
	for _, th := range img.Process.Threads {
		if th.Seccomp == nil {
			t.Fatalf("image: thread %d without seccomp", th.TID)
		}
		chains = append(chains, fmt.Sprint(core.SeccompChain(fs, th.Seccomp.Filter)))
	}
	if len(fs) != 3 || !slices.Equal(chains, []string{"[0 1]", "[0 2]", "[0]"}) || fs[0].Log || !fs[1].Log || fs[2].Log {
		t.Errorf("image: %d filters, chains %v, want 3 filters, chains [0 1] [0 2] [0] (the first shared, the second logged)", len(fs), chains)
	}
	r := restoreOK(t, dir, p.Log)
	if got := reportAgain(t, p.Log, r.PID); !slices.Equal(got, seccompWant) {
		t.Errorf("after restore the threads find\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(seccompWant, "\n"))
	}
	if got := seccompView(t, r.PID); !slices.Equal(got, before) {
		t.Errorf("after restore /proc shows\n%s\nbefore\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	dir2 := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: r.PID, Dir: dir2, LeaveRunning: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the restored process: %v", err)
	}
	img2, err := core.ReadImage(dir2)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := fmt.Sprintf("%+v", img2.Process.SeccompFilters), fmt.Sprintf("%+v", fs); a != b {
		t.Errorf("the restored process's filters\n%s\nthe original's\n%s", a, b)
	}
	for i, th := range img.Process.Threads {
		if got := img2.Process.Threads[i].Seccomp; *got != *th.Seccomp {
			t.Errorf("thread %d: restored seccomp %+v, dumped %+v", th.TID, *got, *th.Seccomp)
		}
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
}

// TestSeccompStrict: a thread in strict mode (read, write, exit and
// sigreturn only) comes back in strict mode and still serves: each byte
// written into its pipe is echoed, before and after.
func TestSeccompStrict(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "seccomp"), "strict")
	line, _ := p.WaitLine(t, long, 0, "ready")
	w := field(t, line, "pipe")
	poke := func(pid int) {
		t.Helper()
		n := strings.Count(strings.Join(testutil.LogLines(t, p.Log), "\n"), "strict ok")
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%s", pid, w), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write([]byte{1})
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, long, "the strict thread's echo", func() bool {
			return strings.Count(strings.Join(testutil.LogLines(t, p.Log), "\n"), "strict ok") > n
		})
	}
	poke(p.PID)
	before := seccompView(t, p.PID)
	if !strings.Contains(strings.Join(before, "\n"), "Seccomp=1 ") {
		t.Fatalf("no thread in strict mode: %v", before)
	}
	dir, img := dumpKill(t, p, "")
	if s := img.Process.Threads[1].Seccomp; s == nil || s.Mode != core.SeccompModeStrict || img.Process.Threads[0].Seccomp != nil {
		t.Errorf("image: seccomp %+v, %+v, want none and strict", img.Process.Threads[0].Seccomp, s)
	}
	r := restoreOK(t, dir, p.Log)
	if got := seccompView(t, r.PID); !slices.Equal(got, before) {
		t.Errorf("after restore /proc shows\n%s\nbefore\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	poke(r.PID)
	r.WaitTick(t, short, r.LastTick(t)+3)
}

// TestSeccompKill: filters that kill the process at a system call the
// dump and the restore inject (rt_sigaction, umask), installed without
// no_new_privs with CAP_SYS_ADMIN, which the process dropped since: the
// process survives both, for the filters are suspended while migrate
// works on it, and comes back with them (installed before its
// credentials, while it still has CAP_SYS_ADMIN), still without
// no_new_privs and CAP_SYS_ADMIN; its next umask kills it.
func TestSeccompKill(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "seccomp"), "kill")
	p.WaitLine(t, long, 0, "ready")
	before := seccompView(t, p.PID)
	if !strings.Contains(before[0], "Seccomp_filters=2 NoNewPrivs=false") {
		t.Fatalf("the workload's filters: %v", before)
	}
	dir, _ := dumpKill(t, p, "")
	r := restoreOK(t, dir, p.Log)
	if got := seccompView(t, r.PID); !slices.Equal(got, before) {
		t.Errorf("after restore /proc shows\n%s\nbefore\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	if st, err := proc.ReadStatus(r.PID); err != nil || st.CapEff&(1<<unix.CAP_SYS_ADMIN) != 0 || st.CapPrm&(1<<unix.CAP_SYS_ADMIN) != 0 {
		t.Errorf("the restored process has CAP_SYS_ADMIN back (%v)", err)
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
	r.Signal(t, unix.SIGUSR1)
	if ws := r.WaitExit(t, long); !ws.Signaled() || ws.Signal() != unix.SIGSYS {
		t.Errorf("the restored process ended with %v at its umask, want killed by SIGSYS (its filter)", ws)
	}
}

// TestDumpRefusesSeccompNotif: a filter that hands system calls to a
// user-space listener (SECCOMP_RET_USER_NOTIF), which a restore cannot
// bring back, is refused with a *source.SeccompError before the process
// is frozen, by a dump and by a live migration; the process runs on.
func TestDumpRefusesSeccompNotif(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "seccomp"), "notif")
	p.WaitLine(t, long, 0, "ready")
	check := func(what string, err error) {
		t.Helper()
		var se *source.SeccompError
		if !errors.As(err, &se) || se.PID != p.PID || se.TID != p.PID || se.Filter != 0 || !errors.Is(err, core.ErrSeccompUserNotif) {
			t.Fatalf("%s: %v (%T), want a *source.SeccompError for filter 0 of thread %d wrapping core.ErrSeccompUserNotif", what, err, err, p.PID)
		}
		t.Logf("%s: %v", what, err)
	}
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
	check("dump", err)
	testutil.RequireRunning(t, p.PID)
	p.WaitTick(t, short, p.LastTick(t)+3)
	addr := startServe(t)
	_, err = source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	check("migrate", err)
	testutil.RequireRunning(t, p.PID)
	p.WaitTick(t, short, p.LastTick(t)+3)
}

// TestLiveSeccomp: the same filters and no_new_privs survive a live
// migration into another PID namespace.
func TestLiveSeccomp(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := startSeccomp(t)
	before := seccompView(t, p.PID)
	r, _ := migrateLive(t, p, s, source.MigrateOptions{})
	if got := reportAgain(t, p.Log, r.PID); !slices.Equal(got, seccompWant) {
		t.Errorf("after migration the threads find\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(seccompWant, "\n"))
	}
	if got := seccompView(t, r.PID); !slices.Equal(got, before) {
		t.Errorf("after migration /proc shows\n%s\nbefore\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
}
