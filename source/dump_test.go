package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
)

// TestMain makes the test process a child subreaper and checks that the
// tests leave no child process behind.
func TestMain(m *testing.M) { testutil.Main(m) }

const short = 10 * time.Second

// fixtureLogger sends the dumper's log to the test log, shown on failure.
func fixtureLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// requireBadTarget dumps pid and wants a *BadTargetError for it, with
// nothing written to the image directory.
func requireBadTarget(t *testing.T, pid int) {
	t.Helper()
	dir := t.TempDir()
	rep, err := Dump(context.Background(), DumpOptions{PID: pid, Dir: dir})
	var bt *BadTargetError
	if !errors.As(err, &bt) {
		t.Fatalf("dump of %d: report %+v, error %v (%T), want a *BadTargetError", pid, rep, err, err)
	}
	if bt.PID != pid {
		t.Errorf("BadTargetError names pid %d, want %d", bt.PID, pid)
	}
	if ents := dirEntries(t, dir); len(ents) != 0 {
		t.Errorf("refused dump left %v in the image directory", ents)
	}
	t.Logf("refused as expected: %v", err)
}

// TestDumpBadTargets: a PID that does not exist, a kernel thread, a
// zombie, the dumping process itself, its parent, and init are refused
// with a *BadTargetError before anything is touched.
func TestDumpBadTargets(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("no such process", func(t *testing.T) { requireBadTarget(t, testutil.FreePID(t)) })
	t.Run("invalid pid", func(t *testing.T) {
		requireBadTarget(t, 0)
		requireBadTarget(t, -5)
	})
	t.Run("kernel thread", func(t *testing.T) {
		pid := testutil.KernelThread()
		if pid == 0 {
			t.Skip("no kernel thread visible in this PID namespace")
		}
		requireBadTarget(t, pid)
	})
	t.Run("zombie", func(t *testing.T) {
		bin, err := exec.LookPath("true")
		if err != nil {
			testutil.Unavailable(t, "true: %v", err)
		}
		p := testutil.Start(t, bin) // not reaped until the cleanup
		testutil.WaitFor(t, short, "the child to become a zombie", func() bool {
			st, err := testutil.State(p.PID)
			return err == nil && st == 'Z'
		})
		requireBadTarget(t, p.PID)
		if st, _ := testutil.State(p.PID); st != 'Z' {
			t.Errorf("zombie %d is now in state %c", p.PID, st)
		}
	})
	t.Run("itself", func(t *testing.T) { requireBadTarget(t, os.Getpid()) })
	t.Run("its parent", func(t *testing.T) { requireBadTarget(t, os.Getppid()) })
	t.Run("init", func(t *testing.T) { requireBadTarget(t, 1) })
}

// TestDumpTracedProcess: a process that a debugger (here its own parent)
// traces is refused with a clear error, and left traced and running.
func TestDumpTracedProcess(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "traced"))
	line, _ := p.WaitLine(t, short, 0, "traced")
	var child int
	if _, err := fmt.Sscanf(line, "traced pid=%d", &child); err != nil {
		t.Fatal(err)
	}
	// The traced child dies with its parent (PR_SET_PDEATHSIG) and is then
	// reparented to the test process: reap it after the parent.
	t.Cleanup(func() {
		p.Stop(t)
		testutil.ReapOrphan(t, child)
	})
	tracer := testutil.StatusField(t, child, "TracerPid")
	if tracer != strconv.Itoa(p.PID) {
		t.Fatalf("child %d traced by %s, want its parent %d", child, tracer, p.PID)
	}
	requireBadTarget(t, child)
	testutil.RequireRunning(t, child)
	if got := testutil.StatusField(t, child, "TracerPid"); got != tracer {
		t.Errorf("after the refused dump the child is traced by %s, was %s", got, tracer)
	}
	p.Kill(t)
}

// TestDumpStoppedProcess: a process stopped by SIGSTOP (job control) is
// either dumped and left stopped, or refused with a *BadTargetError; in no
// case does the dump resume it or hang, and the process is left untraced.
func TestDumpStoppedProcess(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"))
	p.WaitTick(t, short, 3)
	p.Signal(t, unix.SIGSTOP)
	testutil.WaitFor(t, short, "the process to stop", func() bool {
		st, _ := testutil.State(p.PID)
		return st == 'T'
	})
	stopped := p.LastTick(t)

	// A guard against a hang, not a speed limit: a dump of a small process
	// takes a fraction of a second.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Dump(ctx, DumpOptions{PID: p.PID, Dir: t.TempDir(), LeaveRunning: true, Logger: fixtureLogger(t)})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(40 * time.Second):
		st, _ := testutil.State(p.PID)
		t.Errorf("dump of a stopped process hangs (ignoring its context); the process is in state %c, traced by %s, and logged ticks %d..%d since it was stopped",
			st, testutil.StatusField(t, p.PID, "TracerPid"), stopped, p.LastTick(t))
		p.Kill(t) // unblocks the dump
		<-done
		return
	}
	var bt *BadTargetError
	if err != nil && !errors.As(err, &bt) {
		t.Errorf("dump error %v (%T), want success or a *BadTargetError", err, err)
	}
	t.Logf("dump: %v", err)
	if st, _ := testutil.State(p.PID); st != 'T' {
		t.Errorf("the stopped process is in state %c after the dump, want T (still stopped)", st)
	}
	if tr := testutil.StatusField(t, p.PID, "TracerPid"); tr != "0" {
		t.Errorf("the process is traced by %s after the dump", tr)
	}
	if got := p.LastTick(t); got != stopped {
		t.Errorf("the stopped process ran during the dump: ticks %d..%d", stopped, got)
	}
	p.Signal(t, unix.SIGCONT)
	p.WaitTick(t, short, stopped+3)
}

// TestDumpOtherNamespaces: a process in namespaces of its own (a
// container's) is refused naming them, before anything touches it: a
// restore would put it in migrate's namespaces.
func TestDumpOtherNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux): %v", err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		testutil.Unavailable(t, "sleep: %v", err)
	}
	// unshare execs sleep in new UTS and IPC namespaces: the PID is sleep's.
	p := testutil.Start(t, unshare, "--uts", "--ipc", sleep, "1000")
	testutil.WaitFor(t, short, "sleep to run in its namespaces", func() bool {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
		return exe == sleep
	})
	_, err = Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir()})
	var ne *NamespaceError
	if !errors.As(err, &ne) || ne.PID != p.PID || strings.Join(ne.Kinds, ",") != "ipc,uts" {
		t.Fatalf("dump of a process in its own UTS and IPC namespaces: %v (%T), want a NamespaceError of ipc, uts", err, err)
	}
	differ, err := otherNamespaces(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(differ, ",") != "ipc,uts" {
		t.Errorf("namespaces found different: %v, want ipc, uts", differ)
	}
	testutil.RequireRunning(t, p.PID)
}

// The dump of a process in another network namespace is refused (a
// restore would put it in migrate's network namespace), naming the
// namespace, and leaves it running with every queue whole.
func TestDumpOtherNetns(t *testing.T) {
	testutil.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("no unshare(1) to start a process in a new network namespace: %v", err)
	}
	p := testutil.Start(t, unshare, "--net", testutil.Build(t, "sock_pair"), t.TempDir())
	p.WaitLine(t, short, 0, "ready")
	_, err = Dump(context.Background(), DumpOptions{PID: p.PID, Dir: t.TempDir(), LeaveRunning: true, Logger: slog.New(slog.DiscardHandler)})
	var ne *NamespaceError
	if !errors.As(err, &ne) || strings.Join(ne.Kinds, ",") != "net" {
		t.Fatalf("dump of a process in another network namespace: %v (%T), want a NamespaceError of net", err, err)
	}
	testutil.RequireRunning(t, p.PID)
	n := len(p.Lines(t))
	p.Signal(t, unix.SIGUSR1)
	want := "check pair=ok half=ok seqpacket=ok dgram=ok gone=ok named=ok listener=ok"
	if got, _ := p.WaitLine(t, short, n, "check"); got != want {
		t.Errorf("after the refused dump the process sees\n%s\nwant\n%s", got, want)
	}
}
