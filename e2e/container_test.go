package e2e

// Containers (issue 14): the init of a PID namespace of its own, made by
// `unshare --pid --fork --uts --ipc`, is dumped with every process of it
// and comes back in new PID, UTS and IPC namespaces: the same PIDs inside,
// host name, semaphores, messages and shared memory.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// containerArgs are the unshare command line of the container workload
// named host, with extra unshare flags and workload arguments.
func containerArgs(t *testing.T, host string, extra, progArgs []string) (string, []string) {
	t.Helper()
	unshare := requireUnshare(t)
	args := append([]string{"--pid", "--fork", "--uts", "--ipc"}, extra...)
	return unshare, append(append(args, testutil.Build(t, "container"), host), progArgs...)
}

// container is the container workload: unshare, the container's init
// and its child, by their PIDs here.
type container struct {
	*testutil.Proc // unshare
	init, child    int
}

// startContainer starts the container workload named host (with extra
// unshare flags and workload arguments), and waits for its first ticks.
func startContainer(t *testing.T, host string, extra, progArgs []string) *container {
	t.Helper()
	unshare, args := containerArgs(t, host, extra, progArgs)
	return adoptContainer(t, testutil.Start(t, unshare, args...))
}

// adoptContainer is startContainer for the unshare of the container
// workload p runs, started by the caller.
func adoptContainer(t *testing.T, p *testutil.Proc) *container {
	t.Helper()
	c := &container{Proc: p}
	c.WaitLine(t, short, 0, "ready pid=1 child=2")
	c.WaitTick(t, short, 3)
	c.init = onlyChild(t, c.PID)
	kids := childrenOf(t, c.init)
	if len(kids) != 1 {
		t.Fatalf("the container's init %d has children %v", c.init, kids)
	}
	c.child = kids[0]
	// Runs before unshare's own cleanup: the init, if it is still
	// unshare's child, is killed (and the container with it), for
	// unshare to reap.
	t.Cleanup(func() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.init))
		if err != nil {
			return
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == fmt.Sprint(c.PID) {
			unix.Kill(c.init, unix.SIGKILL)
			c.Reap(t)
		}
	})
	return c
}

// checkContainerInside checks the container whose init is pid here, as
// its processes see it: PIDs, groups and sessions inside, host name,
// semaphore values and messages (in its report, and its ticks all ok
// from line from on).
func checkContainerInside(t *testing.T, log string, init, child int, host string, from int) {
	t.Helper()
	if got, want := innerIDs(t, init), (nsIDs{pid: 1, pgid: 1, sid: 1}); got.pid != want.pid || got.pgid != want.pgid || got.sid != want.sid {
		t.Errorf("the init inside: %+v, want %+v", got, want)
	}
	if got, want := innerIDs(t, child), (nsIDs{pid: 2, ppid: 1, pgid: 2, sid: 1}); got != want {
		t.Errorf("the child inside: %+v, want %+v", got, want)
	}
	for _, l := range testutil.LogLines(t, log)[from:] {
		if strings.Contains(l, " bad ") || strings.HasPrefix(l, "FAIL") {
			t.Fatalf("the container's own check: %q", l)
		}
	}
}

// containerReport asks the container's init (init here) for its report,
// then for its messages (it takes them and exits), and checks both.
func containerReport(t *testing.T, log string, init int, host string) {
	t.Helper()
	signal := func(sig unix.Signal) {
		if err := unix.Kill(init, sig); err != nil {
			t.Fatalf("signal %v to %d: %v", sig, init, err)
		}
	}
	n := len(testutil.LogLines(t, log))
	signal(unix.SIGUSR1)
	report := logLineFrom(t, log, n, "report ")
	if want := fmt.Sprintf("report host=%s pid=1 child=2 pgid=1 sid=1 sems=", host); !strings.HasPrefix(report, want) ||
		!strings.HasSuffix(report, ",5,7 msgs=3") {
		t.Errorf("report %q, want %q...,5,7 msgs=3", report, want)
	}
	signal(unix.SIGUSR2)
	if got := logLineFrom(t, log, n, "msgs "); got != "msgs 1:alpha 2:beta 3:gamma" {
		t.Errorf("messages %q", got)
	}
}

// logLineFrom waits for a line of log (from line from on) that begins
// with prefix.
func logLineFrom(t *testing.T, log string, from int, prefix string) string {
	t.Helper()
	var line string
	testutil.WaitFor(t, short, "a line "+prefix+" in "+log, func() bool {
		lines := testutil.LogLines(t, log)
		if from > len(lines) {
			return false
		}
		for _, l := range lines[from:] {
			if strings.HasPrefix(l, prefix) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// TestContainerDumpRestore: the container's init is dumped (its tree with
// it, though the dump was asked for the process alone) and restored in
// new namespaces: its PIDs inside are 1 and 2 again, its outer ones the
// same, its host name, semaphores and messages are back, the host's own
// are untouched, and its own checks keep passing.
func TestContainerDumpRestore(t *testing.T) {
	testutil.RequireRoot(t)
	myHost, _ := os.Hostname()
	c := startContainer(t, "box-dump", nil, []string{"shm"})
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("dump the container's init %d: %v", c.init, err)
	}
	if rep.Processes != 2 {
		t.Errorf("the dump took %d processes, want the container's 2", rep.Processes)
	}
	c.Reap(t) // unshare, whose child the init was
	last := len(testutil.LogLines(t, c.Log))
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := restoreOK(t, dir, c.Log)
	if ns := img.Namespaces; ns == nil || ns.PID == nil || ns.UTS == nil || ns.IPC == nil ||
		len(ns.IPC.Sems) != 1 || len(ns.IPC.Msgs) != 1 || len(ns.IPC.Msgs[0].Messages) != 3 || len(img.Shm) != 1 {
		t.Fatalf("the image's namespaces: %+v, segments %+v", img.Namespaces, img.Shm)
	}
	r.WaitTick(t, short, lastLogTick(t, c.Log)+5)
	checkContainerInside(t, c.Log, c.init, c.child, "box-dump", last)
	if h, _ := os.Hostname(); h != myHost {
		t.Errorf("the host name here is now %q, was %q", h, myHost)
	}
	if id, err := unix.SysvShmGet(0x5a5a, 0, 0); err == nil {
		t.Errorf("the container's segment (key 0x5a5a) is in the host's IPC namespace: %d", id)
	}
	containerReport(t, c.Log, c.init, "box-dump")
	r.WaitExit(t, short)
}

// TestContainerRefusals: a process inside a container that is not its
// init is refused, saying to dump the init; a container with a bind of a
// host path on its own proc is refused naming it; a process that entered
// the container's PID namespace from outside is refused by its PID. Each
// runs on.
func TestContainerRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("member", func(t *testing.T) {
		c := startContainer(t, "box-member", nil, nil)
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: c.child, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ne *source.NamespaceError
		if !errors.As(err, &ne) || ne.PID != c.child || !slices.Equal(ne.Kinds, []string{"pid"}) {
			t.Fatalf("dump of the container's child: %v, want a NamespaceError of pid", err)
		}
		t.Logf("refused: %v", err)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("mqueue", func(t *testing.T) {
		// A POSIX message queue nobody holds open, made in the
		// container's IPC namespace through a detached mqueue mount:
		// not carried, so refused (it would be lost silently).
		c := startContainer(t, "box-mqueue", nil, nil)
		err := proc.InNamespace(c.init, unix.CLONE_NEWIPC, func() error {
			fs, err := unix.Fsopen("mqueue", unix.FSOPEN_CLOEXEC)
			if err != nil {
				return err
			}
			defer unix.Close(fs)
			if err := unix.FsconfigCreate(fs); err != nil {
				return err
			}
			mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(mnt)
			q, err := unix.Openat(mnt, "left-behind", unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return err
			}
			return unix.Close(q)
		})
		if err != nil {
			testutil.Unavailable(t, "a POSIX message queue in the container's IPC namespace (fsmount mqueue): %v", err)
		}
		_, err = source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ne *source.NamespaceError
		if !errors.As(err, &ne) || !slices.Equal(ne.Kinds, []string{"ipc"}) || !strings.Contains(ne.Reason, "/left-behind") {
			t.Fatalf("dump of a container with a POSIX message queue: %v, want a NamespaceError of ipc naming /left-behind", err)
		}
		t.Logf("refused: %v", err)
		checkRunningUntraced(t, c.init)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("mnt", func(t *testing.T) {
		// A bind of a host path on the container's own proc, which the
		// restore mounts from inside the container after the rest of the
		// table (a tmpfs or a bind of the container's own is made there
		// too; a host path is not reachable from inside).
		c := startContainer(t, "box-mnt", []string{"--mount-proc"}, nil)
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/proc/driver", c.init)); err != nil {
			testutil.Unavailable(t, "this kernel's proc has no directory driver to mount on: %v", err)
		}
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
		}
		if out, err := exec.Command(nsenter, "--target", fmt.Sprint(c.init), "--mount", "--", "mount", "--bind", t.TempDir(), "/proc/driver").CombinedOutput(); err != nil {
			t.Fatalf("bind a host directory on the container's proc: %v: %s", err, out)
		}
		_, err = source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ue *source.UnsupportedMountError
		if !errors.As(err, &ue) || ue.Point != "/proc/driver" {
			t.Fatalf("dump of a container with a mount on its proc: %v, want an UnsupportedMountError of /proc/driver", err)
		}
		t.Logf("refused: %v", err)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("nested", func(t *testing.T) {
		// unshare's child (PID 1 of a first namespace) is a second
		// unshare, whose child is the workload: init of a namespace two
		// levels below migrate's.
		unshare, args := containerArgs(t, "box-nested", nil, nil)
		outer := testutil.Start(t, unshare, append([]string{"--pid", "--fork", "--", unshare}, args...)...)
		outer.WaitLine(t, short, 0, "ready pid=1 child=2")
		inner := childrenOf(t, outer.PID)
		if len(inner) != 1 {
			t.Fatalf("unshare %d has children %v", outer.PID, inner)
		}
		box := childrenOf(t, inner[0])
		if len(box) != 1 {
			t.Fatalf("the inner unshare %d has children %v", inner[0], box)
		}
		// Killed first, the container's init takes its namespace with it.
		t.Cleanup(func() { unix.Kill(inner[0], unix.SIGKILL); outer.Reap(t) })
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: box[0], Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ne *source.NamespaceError
		if !errors.As(err, &ne) || ne.PID != box[0] || !slices.Contains(ne.Kinds, "pid") {
			t.Fatalf("dump of the init of a nested PID namespace: %v, want a NamespaceError of pid", err)
		}
		t.Logf("refused: %v", err)
		// The first namespace's init: its child has a PID namespace of
		// its own.
		_, err = source.Dump(context.Background(), source.DumpOptions{PID: inner[0], Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		if !errors.As(err, &ne) || ne.PID != box[0] || !slices.Contains(ne.Kinds, "pid") {
			t.Fatalf("dump of a container holding a nested one: %v, want a NamespaceError of pid for %d", err, box[0])
		}
		t.Logf("refused: %v", err)
		outer.WaitTick(t, short, outer.LastTick(t)+3)
	})
	t.Run("stray", func(t *testing.T) {
		c := startContainer(t, "box-stray", nil, nil)
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
		}
		// nsenter forks into the PID namespace: its child is the stray.
		s := testutil.Start(t, nsenter, "--target", fmt.Sprint(c.init), "--pid", "--", "sleep", "600")
		var stray int
		testutil.WaitFor(t, short, "nsenter's child", func() bool {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.PID, s.PID))
			kids := strings.Fields(string(b))
			if len(kids) == 1 {
				fmt.Sscan(kids[0], &stray)
			}
			return stray != 0
		})
		// Before nsenter's own cleanup: nsenter reaps it and exits.
		t.Cleanup(func() {
			unix.Kill(stray, unix.SIGKILL)
			s.Reap(t)
		})
		_, err = source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ne *source.NamespaceError
		if !errors.As(err, &ne) || ne.PID != stray {
			t.Fatalf("dump of a container with process %d entered from outside: %v, want a NamespaceError naming it", stray, err)
		}
		t.Logf("refused: %v", err)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
}

// TestContainerLive: the container moves live from node A to node B and
// back; inside, it finds the same PIDs, host name, semaphores and
// messages, and its checks pass throughout.
func TestContainerLive(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	liveContainer(t, c, "box-live", nil, nil, nil)
}

// liveContainer starts the container workload named host (with extra
// unshare flags) on node A, runs started with its init (as this host
// sees it), moves it live to node B and back, and checks it after each
// hop, and with after (given its init here).
func liveContainer(t *testing.T, c *cluster.Cluster, host string, extra []string, started, after func(init int)) {
	t.Helper()
	unshare, args := containerArgs(t, host, extra, nil)
	liveContainerCmd(t, c, host, "", append([]string{unshare}, args...), started, after)
}

// liveContainerCmd is liveContainer for the container workload named
// host started on node A by the command cmd (unshare's, whose child is
// the init), its lines in log ("": its output).
func liveContainerCmd(t *testing.T, c *cluster.Cluster, host, log string, cmd []string, started, after func(init int)) {
	t.Helper()
	p, err := c.A.Start(cluster.StartOptions{}, cmd[0], cmd[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if log != "" {
		p.Log = log
		testutil.WaitFor(t, short, "the workload's log "+log, func() bool {
			_, err := os.Stat(log)
			return err == nil
		})
	}
	logLineFrom(t, p.Log, 0, "ready pid=1 child=2")
	waitLogTick(t, p.Log, 3)
	init := onlyChild(t, p.PID)
	if started != nil {
		started(init)
	}
	// The init as node A sees it.
	nodePID := nodePIDOf(t, init)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, hop := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := hop[0], hop[1]
		last := len(testutil.LogLines(t, p.Log))
		res, err := c.Migrate(ctx, from, to, nodePID)
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		if res.Outcome != "resumed" {
			t.Fatalf("report: %+v", res)
		}
		t.Logf("%s -> %s: %d rounds, downtime %.1f ms, total %.1f ms", from, to, len(res.Rounds), res.DowntimeMS, res.TotalMS)
		procs, err := to.Find("container")
		if err != nil {
			t.Fatal(err)
		}
		var init, child int
		for _, pi := range procs {
			switch id := innerIDs(t, pi.PID).pid; id {
			case 1:
				init = pi.PID
			case 2:
				child = pi.PID
			}
		}
		if init == 0 || child == 0 {
			t.Fatalf("on %s after the migration: %+v", to, procs)
		}
		waitLogTick(t, p.Log, lastLogTick(t, p.Log)+5)
		checkContainerInside(t, p.Log, init, child, host, last)
		if after != nil {
			after(init)
		}
		if to == c.A {
			containerReport(t, p.Log, init, host)
		}
	}
}

// TestDumpRefusesMqueue: an fd of a POSIX message queue is refused, named
// (reopening its name would not give the queue back); the process runs on.
func TestDumpRefusesMqueue(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "mqueue"))
	p.WaitTick(t, short, 2)
	_, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.PID != p.PID || ue.FD != 3 {
		t.Fatalf("dump of a process holding a message queue: %v, want its fd 3 refused", err)
	}
	t.Logf("refused: %v", err)
	p.WaitTick(t, short, p.LastTick(t)+3)
}

// TestContainerOuterPIDsTaken: a container restored where its PIDs (as
// the host sees them) are taken, here by the original left running, gets
// other PIDs outside and the same ones inside, and says so in the report.
func TestContainerOuterPIDsTaken(t *testing.T) {
	testutil.RequireRoot(t)
	c := startContainer(t, "box-copy", nil, []string{"shm"})
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: dir, LeaveRunning: true, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the container's init %d: %v", c.init, err)
	}
	last := len(testutil.LogLines(t, c.Log))
	rep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t), Check: true})
	if err != nil {
		t.Fatalf("restore a copy of the container beside it: %v", err)
	}
	r := testutil.Adopt(t, rep.PID, c.Log)
	if rep.PID == c.init || len(rep.Warnings) == 0 {
		t.Errorf("restored as %d (the original is %d), warnings %q", rep.PID, c.init, rep.Warnings)
	}
	for _, w := range rep.Warnings {
		t.Logf("restore warning: %s", w)
	}
	kids := childrenOf(t, rep.PID)
	if len(kids) != 1 || kids[0] == c.child {
		t.Fatalf("the copy's children: %v (the original's child is %d)", kids, c.child)
	}
	r.WaitTick(t, short, lastLogTick(t, c.Log)+5)
	checkContainerInside(t, c.Log, rep.PID, kids[0], "box-copy", last)
	checkContainerInside(t, c.Log, c.init, c.child, "box-copy", last)
	containerReport(t, c.Log, rep.PID, "box-copy")
	r.WaitExit(t, short)
}

// requireUnshare returns util-linux's unshare, or skips naming it.
func requireUnshare(t *testing.T) string {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
	}
	return unshare
}

// nodePIDOf returns the PID in its node of process pid (here) of a
// container started in a node.
func nodePIDOf(t *testing.T, pid int) int {
	t.Helper()
	levels := strings.Fields(testutil.StatusField(t, pid, "NSpid"))
	if len(levels) < 3 {
		t.Fatalf("the PIDs of %d are %v: not in a container in a node", pid, levels)
	}
	n, err := strconv.Atoi(levels[len(levels)-2])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
