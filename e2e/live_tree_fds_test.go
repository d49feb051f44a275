package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// hasPidfd says whether process pid holds a pidfd.
func hasPidfd(t *testing.T, pid int) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(dir + "/" + e.Name()); l == "anon_inode:[pidfd]" {
			return true
		}
	}
	return false
}

// TestLiveTreeGoExec (issue 13): a Go program that started a child with
// os/exec (Go 1.23+ keeps the child's pidfd, and signals and waits for it
// through it) moves live with its child as a tree; there it still signals
// its child and waits for it, through the pidfd: the child ends by the
// signal, and the program's Wait reports it.
func TestLiveTreeGoExec(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p := testutil.Start(t, buildGoTestdata(t, "goexec"))
	ready, _ := p.WaitLine(t, long, 0, "ready")
	child, err := strconv.Atoi(field(t, ready, "child"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.ReapOrphan(t, child) })
	p.WaitTick(t, short, 3)
	if !hasPidfd(t, p.PID) {
		testutil.Unavailable(t, "the Go runtime holds no pidfd of the child it started (Go 1.23+ on a kernel with pidfds)")
	}
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true})
	if rep.Processes != 2 {
		t.Errorf("report: %d processes, want 2", rep.Processes)
	}
	testutil.ReapOrphan(t, child) // the original child, killed with the tree
	if !hasPidfd(t, r.PID) {
		t.Fatal("the migrated program holds no pidfd")
	}
	inner := findInNamespace(t, child)
	checkRunningUntraced(t, inner)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	waited, _ := r.WaitLine(t, short, n, "waited")
	if want := fmt.Sprintf("waited child=%d status=signal: terminated err=<nil>", child); waited != want {
		t.Errorf("after the migration %q, want %q", waited, want)
	}
	testutil.WaitFor(t, short, "the migrated child to be gone", func() bool {
		_, err := testutil.State(inner)
		return err != nil
	})
	stopMigrated(t, r)
}

// TestLiveTreeSharedFDs (issue 13): a parent and a child sharing an
// eventfd, a signalfd and an epoll set that watches the eventfd move live
// as a tree; there each fd is still one description of the two (the
// migrated processes show the same fds), the parent's eventfd writes
// wake the child through the shared epoll set with the values written,
// and the shared signalfd gives each process its own signals.
func TestLiveTreeSharedFDs(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, child := startParentChild(t, "fdtree")
	exerciseFDTree(t, p, &testutil.Proc{PID: child, Log: p.Log}, 1)
	before := fdLinks(t, p.PID)
	r, rep := migrateLive(t, p, s, source.MigrateOptions{Tree: true})
	if rep.Processes != 2 {
		t.Errorf("report: %d processes, want 2", rep.Processes)
	}
	testutil.ReapOrphan(t, child)
	inner := findInNamespace(t, child)
	checkRunningUntraced(t, inner)
	if got, kid := fdLinks(t, r.PID), fdLinks(t, inner); got != before || kid != before {
		t.Errorf("fds of the migrated parent %s and child %s, want those of the original %s", got, kid, before)
	}
	exerciseFDTree(t, r, migrated(inner, p.Log), 2)
	stopMigrated(t, r)
}

// TestTreeSharedFDs: the tree of TestLiveTreeSharedFDs dumped and
// restored: the same.
func TestTreeSharedFDs(t *testing.T) {
	testutil.RequireRoot(t)
	p, child := startParentChild(t, "fdtree")
	exerciseFDTree(t, p, &testutil.Proc{PID: child, Log: p.Log}, 1)
	before := fdLinks(t, p.PID)
	dir, _ := dumpTreeKill(t, p, child)
	r := restoreOK(t, dir, p.Log)
	if got, kid := fdLinks(t, r.PID), fdLinks(t, child); got != before || kid != before {
		t.Errorf("fds of the restored parent %s and child %s, want those of the original %s", got, kid, before)
	}
	exerciseFDTree(t, r, migrated(child, p.Log), 2)
}

// exerciseFDTree has fdtree's parent write generation gen to the eventfd
// and waits for the child to read it through the epoll set, then sends
// each a SIGUSR2 and waits for it to read it from the signalfd.
func exerciseFDTree(t *testing.T, parent, kid *testutil.Proc, gen int) {
	t.Helper()
	n := len(parent.Lines(t))
	parent.Signal(t, unix.SIGUSR1)
	if l, _ := parent.WaitLine(t, short, n, "child eventfd="); l != fmt.Sprintf("child eventfd=%d", gen) {
		t.Errorf("%q, want the child to read generation %d through the shared epoll set", l, gen)
	}
	for _, who := range []struct {
		name string
		p    *testutil.Proc
	}{{"parent", parent}, {"child", kid}} {
		n := len(parent.Lines(t))
		who.p.Signal(t, unix.SIGUSR2)
		if l, _ := parent.WaitLine(t, short, n, who.name+" signalfd"); l != fmt.Sprintf("%s signalfd signo=%d", who.name, unix.SIGUSR2) {
			t.Errorf("%q, want the %s to read its SIGUSR2 from the shared signalfd", l, who.name)
		}
	}
}

// fdLinks lists the fds of pid 3 and up with what they point at (anonymous
// inodes only, whose names do not change with a restore).
func fdLinks(t *testing.T, pid int) string {
	t.Helper()
	var out []string
	for fd := 3; fd < 16; fd++ {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
		if err == nil && strings.HasPrefix(l, "anon_inode:") {
			out = append(out, fmt.Sprintf("%d=%s", fd, l))
		}
	}
	return strings.Join(out, " ")
}
