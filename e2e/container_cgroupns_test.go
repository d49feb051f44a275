package e2e

// A container with a cgroup namespace of its own (unshare --cgroup, as
// runc makes one): restored, its processes see their cgroups under the
// same paths, in a namespace rooted where the original's was.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// cgroupView reads /proc/PID/cgroup as process pid sees it, from inside
// its cgroup namespace.
func cgroupView(t *testing.T, pid int) string {
	t.Helper()
	var b []byte
	err := proc.InNamespace(pid, unix.CLONE_NEWCGROUP, func() error {
		var err error
		b, err = os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		return err
	})
	if err != nil {
		t.Fatalf("the cgroups process %d sees: %v", pid, err)
	}
	return string(b)
}

// startInCgroups starts the container workload named host in a cgroup
// namespace of its own, made where the cgroups procs (their cgroup.procs
// files) are.
func startInCgroups(t *testing.T, host string, procs []string) *container {
	t.Helper()
	unshare, args := containerArgs(t, host, []string{"--cgroup"}, nil)
	sh := append([]string{"-c", `while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; exec "$@"`, "sh"}, procs...)
	sh = append(append(sh, "--", unshare), args...)
	return adoptContainer(t, testutil.Start(t, "/bin/sh", sh...))
}

// dumpInit dumps the container whose init is pid (its whole tree), reaps
// the launcher or init p (the test's child), and returns the image.
func dumpInit(t *testing.T, pid int, p *testutil.Proc) (string, *core.Image) {
	t.Helper()
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: pid, Dir: dir, Logger: testLogger(t)}); err != nil {
		t.Fatalf("dump the container's init %d: %v", pid, err)
	}
	p.Reap(t)
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, img
}

// TestContainerCgroupNamespace: a container in a cgroup namespace rooted
// at its v2 cgroup (and its v1 pids cgroup, where mounted), its child
// one cgroup below, is dumped and restored: a cgroup namespace of its
// own again, with the same roots, and each process sees the same
// /proc/self/cgroup; with --cgroup-root too, its v2 cgroups made anew
// under another.
func TestContainerCgroupNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/cgroup"); err != nil {
		testutil.Unavailable(t, "this kernel has no cgroup namespaces: %v", err)
	}
	v2 := cgroupMount(t, "")
	for _, relocated := range []bool{false, true} {
		name := map[bool]string{false: "restore", true: "cgroup-root"}[relocated]
		t.Run(name, func(t *testing.T) {
			var root, rootDir string
			if relocated {
				rootDir, root = makeCgroup(t, v2, "cgns-root")
			}
			dir, cgPath := makeCgroup(t, v2, "cgns-"+name)
			sub, subPath := makeCgroup(t, dir, "child")
			procs := []string{filepath.Join(dir, "cgroup.procs")}
			wantRoots := []core.Cgroup{{Path: cgPath}}
			mounts, _ := proc.ReadCgroupMounts()
			for _, m := range mounts {
				if m.Controllers == "pids" && m.Root == "/" {
					d, p := makeCgroup(t, m.Dir, "cgns-pids-"+name)
					procs = append(procs, filepath.Join(d, "cgroup.procs"))
					wantRoots = append(wantRoots, core.Cgroup{Controllers: "pids", Path: p})
				}
			}
			c := startInCgroups(t, "box-cgns", procs)
			writeID(t, filepath.Join(sub, "cgroup.procs"), c.child)
			views := map[int]string{c.init: cgroupView(t, c.init), c.child: cgroupView(t, c.child)}
			dumpDir, img := dumpInit(t, c.init, c.Proc)
			if img.Namespaces == nil || img.Namespaces.Cgroup == nil {
				t.Fatalf("the image has no cgroup namespace: %+v", img.Namespaces)
			}
			for _, w := range wantRoots {
				if !slices.Contains(img.Namespaces.Cgroup.Roots, w) {
					t.Errorf("the image's cgroup namespace roots %+v lack %+v", img.Namespaces.Cgroup.Roots, w)
				}
			}
			last := len(testutil.LogLines(t, c.Log))
			var r *testutil.Proc
			if relocated {
				made := filepath.Join(rootDir, cgPath)
				t.Cleanup(func() { removeCgroup(t, made) })
				t.Cleanup(func() { removeCgroup(t, filepath.Join(rootDir, cgPath, subPath)) })
				r = restoreWith(t, dumpDir, c.Log, c.init, target.RestoreOptions{CgroupRoot: root})
				if got := v2Cgroup(t, c.child); got != root+cgPath+subPath {
					t.Errorf("the restored child is in cgroup %q, want %q", got, root+cgPath+subPath)
				}
			} else {
				r = restoreOK(t, dumpDir, c.Log)
			}
			r.WaitTick(t, short, lastLogTick(t, c.Log)+3)
			checkContainerInside(t, c.Log, c.init, c.child, "box-cgns", last)
			mine, _ := os.Readlink("/proc/self/ns/cgroup")
			for pid, want := range views {
				if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/cgroup", pid)); its == mine {
					t.Errorf("process %d is in migrate's cgroup namespace", pid)
				}
				if got := cgroupView(t, pid); got != want {
					t.Errorf("process %d sees its cgroups as\n%s\nwant\n%s", pid, got, want)
				}
			}
			containerReport(t, c.Log, c.init, "box-cgns")
			r.WaitExit(t, short)
		})
	}
}

// TestContainerCgroupNamespaceLive: the container, in a cgroup namespace
// of its own, moves live to node B and back; its processes see the same
// cgroups.
func TestContainerCgroupNamespaceLive(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	var view string
	liveContainer(t, c, "box-cgns-live", []string{"--cgroup"}, func(init int) {
		view = cgroupView(t, init)
	}, func(init int) {
		mine, _ := os.Readlink("/proc/self/ns/cgroup")
		if its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/cgroup", init)); its == mine {
			t.Errorf("the init %d is in migrate's cgroup namespace", init)
		}
		if got := cgroupView(t, init); got != view {
			t.Errorf("the init sees its cgroups as\n%s\nwant\n%s", got, view)
		}
	})
}

// TestCgroupNamespaceRefusals: a container whose init was moved out of
// its cgroup namespace's root (it sees its cgroup as /../...), and a
// process in a cgroup namespace of its own outside a container, are
// refused naming the cgroup namespace; each runs on.
func TestCgroupNamespaceRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/proc/self/ns/cgroup"); err != nil {
		testutil.Unavailable(t, "this kernel has no cgroup namespaces: %v", err)
	}
	v2 := cgroupMount(t, "")
	refused := func(t *testing.T, pid int, err error) {
		t.Helper()
		var ne *source.NamespaceError
		if !errors.As(err, &ne) || ne.PID != pid || !slices.Equal(ne.Kinds, []string{"cgroup"}) {
			t.Fatalf("dump: %v, want a NamespaceError of cgroup for %d", err, pid)
		}
		t.Logf("refused: %v", err)
	}
	t.Run("outside", func(t *testing.T) {
		other, _ := makeCgroup(t, v2, "cgns-other")
		dir, _ := makeCgroup(t, v2, "cgns-outside")
		c := startInCgroups(t, "box-cgns-out", []string{filepath.Join(dir, "cgroup.procs")})
		writeID(t, filepath.Join(other, "cgroup.procs"), c.init)
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: t.TempDir(), Logger: testLogger(t)})
		refused(t, c.init, err)
		checkRunningUntraced(t, c.init)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("no container", func(t *testing.T) {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
		}
		p := testutil.Start(t, unshare, "--cgroup", testutil.Build(t, "counter"))
		p.WaitLine(t, short, 0, "ready")
		_, err = source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: t.TempDir(), Logger: testLogger(t)})
		refused(t, p.PID, err)
		p.WaitTick(t, short, p.LastTick(t)+3)
	})
}
