package e2e

import (
	"context"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// The cgroup freezer (source/freezer.go) stops a container alone in its
// cgroup v2 at once before ptrace seizes its threads, and thaws it.

// containerInCgroup moves the container c (its init and child) into the
// cgroup v2 at dir: a tree alone in its cgroup.
func containerInCgroup(t *testing.T, dir string, init int) {
	t.Helper()
	testutil.JoinCgroup(t, dir, init)
	for _, k := range childrenOf(t, init) {
		testutil.JoinCgroup(t, dir, k)
	}
}

// TestContainerFreezerDump: a container alone in its cgroup v2 is dumped
// with the cgroup freezer (--freeze cgroup) and restored; the cgroup is
// thawed after the dump, and the restored container runs in it.
func TestContainerFreezerDump(t *testing.T) {
	testutil.RequireRoot(t)
	cg, path := testutil.FreezerCgroup(t, "box-freeze-dump")
	c := startContainer(t, "box-freeze-dump", nil, nil)
	containerInCgroup(t, cg, c.init)
	dir := t.TempDir()
	rep, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: dir, Freeze: source.FreezeCgroup, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("dump the container's init %d: %v", c.init, err)
	}
	if rep.Freezer != "cgroup" || rep.Processes != 2 {
		t.Errorf("the dump: freezer %q, %d processes; want cgroup, the container's 2", rep.Freezer, rep.Processes)
	}
	t.Logf("stopped by the %s freezer in %.3f ms", rep.Freezer, rep.FreezeMS)
	if testutil.CgroupFrozen(t, cg) {
		t.Errorf("the cgroup is frozen after the dump")
	}
	c.Reap(t)
	last := len(testutil.LogLines(t, c.Log))
	r := restoreOK(t, dir, c.Log)
	r.WaitTick(t, short, lastLogTick(t, c.Log)+5)
	checkContainerInside(t, c.Log, r.PID, childrenOf(t, r.PID)[0], "box-freeze-dump", last)
	if got := v2Cgroup(t, r.PID); got != path {
		t.Errorf("the restored init is in cgroup %q, want %q", got, path)
	}
	if testutil.CgroupFrozen(t, cg) {
		t.Errorf("the cgroup is frozen after the restore")
	}
	containerReport(t, c.Log, r.PID, "box-freeze-dump")
	r.WaitExit(t, short)
}

// TestContainerFreezerLive: a container alone in its cgroup v2 moves live
// from node A to B stopped by the cgroup freezer (--freeze cgroup), its
// cgroup not frozen after, and runs on B in its cgroup made anew under
// B's --cgroup-root (the nodes share this host's cgroups: restored at
// the same path, the copy B builds during the pre-copy would share the
// original's cgroup, and the freezer would not be used). With a target
// that refuses it after the freeze (its pre-resume hook fails), the
// original runs on, untraced, in a cgroup not frozen. With --freeze
// ptrace (the same move, for the time it takes), ptrace alone.
func TestContainerFreezerLive(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name   string
		freeze string
		refuse bool
	}{{"cgroup", "cgroup", false}, {"ptrace", "ptrace", false}, {"refused", "cgroup", true}} {
		t.Run(tc.name, func(t *testing.T) {
			refuse := tc.refuse
			host := "box-freeze-" + tc.name
			// The cgroups first: their cleanups wait for them to be
			// empty, which the cluster's (run before) makes them.
			cg, path := testutil.FreezerCgroup(t, host)
			rootDir, root := testutil.FreezerCgroup(t, host+"-b")
			t.Cleanup(func() { removeCgroupTree(t, rootDir) })
			o := cluster.Options{ServeArgs: []string{"--cgroup-root", root}}
			if refuse {
				o.ServeArgs = append(o.ServeArgs, "--hook", "pre-resume=echo refused by the test >&2; exit 1")
			}
			c := newCluster(t, o)
			if refuse && !c.Hooks {
				t.Skip("migrate takes no --hook: no target refuses after the freeze")
			}
			// ip netns exec mounts a sysfs of the node's own, without
			// the host's cgroup mounts: the nodes mount cgroup2 (the
			// mount goes with their mount namespaces).
			for _, n := range []*cluster.Node{c.A, c.B} {
				if out, err := n.Command("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup").CombinedOutput(); err != nil {
					t.Fatalf("mount cgroup2 on node %s: %v: %s", n.Name, err, out)
				}
			}
			unshare, args := containerArgs(t, host, nil, nil)
			p, err := c.A.Start(cluster.StartOptions{}, unshare, args...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			logLineFrom(t, p.Log, 0, "ready pid=1 child=2")
			waitLogTick(t, p.Log, 3)
			init := onlyChild(t, p.PID)
			containerInCgroup(t, cg, init)
			nodePID := nodePIDOf(t, init)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := c.Migrate(ctx, c.A, c.B, nodePID, "--freeze", tc.freeze)
			if refuse {
				msg := checkFailed(t, res, err)
				t.Logf("migrate: %s", msg)
				if res == nil || res.Freezer != "cgroup" {
					t.Errorf("the failed migration's report: %+v, want it stopped by the cgroup freezer", res)
				}
				checkRunningUntraced(t, init)
				if testutil.CgroupFrozen(t, cg) {
					t.Errorf("the cgroup is frozen after the rollback")
				}
				waitLogTick(t, p.Log, lastLogTick(t, p.Log)+5)
				return
			}
			if err != nil {
				t.Fatalf("migrate: %v\nstderr:\n%s", err, res.Stderr)
			}
			if res.Outcome != "resumed" || res.Freezer != tc.freeze {
				t.Fatalf("report: outcome %s, freezer %q; want resumed, %s", res.Outcome, res.Freezer, tc.freeze)
			}
			t.Logf("stopped by the %s freezer in %.3f ms, downtime %.1f ms", res.Freezer, res.FreezeMS, res.DowntimeMS)
			if testutil.CgroupFrozen(t, cg) {
				t.Errorf("the original's cgroup is frozen after the migration")
			}
			procs, err := c.B.Find("container")
			if err != nil {
				t.Fatal(err)
			}
			if len(procs) != 2 {
				t.Fatalf("on B after the migration: %+v", procs)
			}
			for _, pi := range procs {
				checkRunningUntraced(t, pi.PID)
				if got := v2Cgroup(t, pi.PID); got != root+path {
					t.Errorf("process %d in cgroup %q, want %q", pi.PID, got, root+path)
				}
			}
			waitLogTick(t, p.Log, lastLogTick(t, p.Log)+5)
		})
	}
}

// removeCgroupTree removes the cgroups below dir, deepest first, once
// their processes are gone.
func removeCgroupTree(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() && p != dir {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		removeCgroup(t, dirs[i])
	}
}

// TestFreezerOutsiderLive: a tree whose cgroup holds a process not of it
// moves live stopped by ptrace alone (--freeze auto), and the other
// process is never stopped.
func TestFreezerOutsiderLive(t *testing.T) {
	testutil.RequireRoot(t)
	cg, _ := testutil.FreezerCgroup(t, "outsider-live")
	addr := startServe(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "8")
	p.WaitLine(t, short, 0, "ready")
	other := testutil.Start(t, testutil.Build(t, "counter"))
	other.WaitLine(t, short, 0, "ready")
	testutil.JoinCgroup(t, cg, p.PID)
	testutil.JoinCgroup(t, cg, other.PID)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t), Tree: true,
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" || rep.Freezer != "ptrace" {
		t.Fatalf("report: outcome %s, freezer %q; want resumed, ptrace", rep.Outcome, rep.Freezer)
	}
	p.WaitExit(t, short)
	if testutil.CgroupFrozen(t, cg) {
		t.Errorf("the cgroup is frozen")
	}
	other.WaitTick(t, short, other.LastTick(t)+3)
	if got := v2Cgroup(t, findInNamespace(t, p.PID)); got != v2Cgroup(t, other.PID) {
		t.Errorf("the migrated counter is in cgroup %q, want the original's", got)
	}
}

// TestFreezerPostgres: PostgreSQL's tree (the postmaster and its
// auxiliary processes) alone in a cgroup v2 of its own is dumped (left
// running) stopped by the cgroup freezer, then by ptrace alone, several
// times each: both work, the cgroup is thawed after each, and the log
// gives the time each took to stop the tree.
func TestFreezerPostgres(t *testing.T) {
	testutil.RequireRoot(t)
	cg, _ := testutil.FreezerCgroup(t, "postgres")
	c := newPGCluster(t)
	p := c.start(t)
	t.Cleanup(func() {
		unix.Kill(p.PID, unix.SIGINT) // a fast shutdown: its children end first
		p.WaitExit(t, long)
	})
	// The postmaster and its children into the cgroup; what it forks
	// from now on is born there.
	testutil.JoinCgroup(t, cg, p.PID)
	for _, k := range childrenOf(t, p.PID) {
		// A child may end between the listing and its move (the
		// backend of a connection that just closed, the startup
		// process): nothing to move then.
		testutil.JoinCgroupIfAlive(t, cg, k)
	}
	c.must(t, "select 1")
	testutil.WaitFor(t, long, "the postmaster to have only its auxiliary processes", func() bool {
		for _, name := range pgChildren(t, p.PID) {
			if !strings.Contains(name, "launcher") && !strings.Contains(name, "writer") && !strings.Contains(name, "checkpointer") {
				return false
			}
		}
		return true
	})
	const rounds = 7
	for _, mode := range []source.FreezeMode{source.FreezeCgroup, source.FreezePtrace} {
		var took []float64
		for range rounds {
			rep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Tree: true, LeaveRunning: true, Freeze: mode, Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("dump with --freeze %s: %v", mode, err)
			}
			if rep.Freezer != string(mode) {
				t.Fatalf("dump with --freeze %s stopped by %q", mode, rep.Freezer)
			}
			if testutil.CgroupFrozen(t, cg) {
				t.Fatalf("the cgroup is frozen after the dump")
			}
			took = append(took, rep.FreezeMS)
		}
		slices.Sort(took)
		t.Logf("--freeze %s: %d processes stopped in %.3f ms (median of %d; %.3f to %.3f)", mode, len(pgChildren(t, p.PID))+1, took[rounds/2], rounds, took[0], took[rounds-1])
	}
	c.must(t, "select 1")
}
