package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// cgroupMount returns where the hierarchy named by controllers ("" for
// cgroup v2) is mounted with its root, or skips naming what is missing.
func cgroupMount(t *testing.T, controllers string) string {
	t.Helper()
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.Controllers == controllers && m.Root == "/" {
			return m.Dir
		}
	}
	name := "cgroup2"
	if controllers != "" {
		name = "the cgroup v1 hierarchy " + controllers
	}
	testutil.Unavailable(t, "%s is not mounted (with its root) here", name)
	return ""
}

// makeCgroup creates a cgroup of the test below the hierarchy mounted at
// mount and removes it at the end, once the processes in it are gone
// (register it before starting them: cleanups run last-in first-out).
func makeCgroup(t *testing.T, mount, name string) (dir, path string) {
	t.Helper()
	path = fmt.Sprintf("/migrate-test-%d-%s", os.Getpid(), name)
	dir = filepath.Join(mount, path)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		testutil.WaitFor(t, short, "cgroup "+dir+" to be empty and removed", func() bool {
			err := os.Remove(dir)
			return err == nil || errors.Is(err, os.ErrNotExist)
		})
	})
	return dir, path
}

func writeID(t *testing.T, file string, id int) {
	t.Helper()
	if err := os.WriteFile(file, []byte(strconv.Itoa(id)), 0); err != nil {
		t.Fatalf("move %d: %v", id, err)
	}
}

// taskCgroups reads /proc/PID/task/*/cgroup: thread -> its cgroup lines.
func taskCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/cgroup", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// TestCgroupsKept: a process in cgroups of its own (v2, and v1 where
// mounted), with one thread in another v1 cgroup than the others, comes
// back in the same cgroups, thread by thread.
func TestCgroupsKept(t *testing.T) {
	testutil.RequireRoot(t)
	v2 := cgroupMount(t, "")
	d2, p2 := makeCgroup(t, v2, "v2")
	var d1, dt string
	mounts, _ := proc.ReadCgroupMounts()
	for _, m := range mounts {
		if m.Controllers == "pids" && m.Root == "/" {
			d1, _ = makeCgroup(t, m.Dir, "pids")
			dt, _ = makeCgroup(t, m.Dir, "pids-thread")
		}
	}
	p := testutil.Start(t, testutil.Build(t, "threads"))
	p.WaitLine(t, short, 0, "ready")
	writeID(t, filepath.Join(d2, "cgroup.procs"), p.PID)
	var thread int
	if d1 != "" {
		writeID(t, filepath.Join(d1, "cgroup.procs"), p.PID)
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.PID))
		for _, e := range ents {
			if tid, _ := strconv.Atoi(e.Name()); tid != p.PID && thread == 0 {
				thread = tid
			}
		}
		writeID(t, filepath.Join(dt, "tasks"), thread)
	} else {
		t.Log("no cgroup v1 pids hierarchy here: the per-thread part is not tested")
	}
	p.WaitTick(t, short, p.LastTick(t)+2)
	before := taskCgroups(t, p.PID)
	dir, img := dumpKill(t, p, "")
	found := false
	for _, c := range img.Process.Cgroups {
		found = found || (c.Controllers == "" && c.Path == p2)
	}
	if !found {
		t.Errorf("image cgroups %+v, want the v2 cgroup %s", img.Process.Cgroups, p2)
	}
	if thread != 0 {
		own := 0
		for _, th := range img.Process.Threads {
			if th.Cgroups != nil {
				own++
				if th.TID != thread {
					t.Errorf("image: thread %d has cgroups of its own %+v; only %d has", th.TID, th.Cgroups, thread)
				}
			}
		}
		if own != 1 {
			t.Errorf("image: %d threads with cgroups of their own, want 1", own)
		}
	}
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	if after := taskCgroups(t, r.PID); !mapsEqual(after, before) {
		t.Errorf("after restore the threads are in\n%v\nbefore in\n%v", after, before)
	}
	r.WaitTick(t, short, last+3)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRestoreRefusesMissingCgroup: an image whose cgroup this host does not
// have is refused with a *target.CgroupError naming it, and nothing of the
// process is left.
func TestRestoreRefusesMissingCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	v2 := cgroupMount(t, "")
	gone := filepath.Join(v2, fmt.Sprintf("migrate-test-%d-gone", os.Getpid()))
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(gone)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "4")
	p.WaitLine(t, short, 0, "ready")
	writeID(t, filepath.Join(gone, "cgroup.procs"), p.PID)
	dir, img := dumpKill(t, p, "")
	testutil.WaitFor(t, short, "the cgroup to be removed", func() bool { return os.Remove(gone) == nil })
	// Without its limits in the image (an older migrate's), the cgroup is
	// not made anew (TestCgroupRecreated): the restore is refused.
	img.CgroupLimits = nil
	if err := core.WriteImage(dir, img); err != nil {
		t.Fatal(err)
	}
	kids := testutil.Children()
	_, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir, Logger: testLogger(t)})
	var ce *target.CgroupError
	if !errors.As(err, &ce) || ce.Controllers != "" || !strings.HasSuffix(ce.Path, filepath.Base(gone)) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("restore: %v (%T), want a *target.CgroupError for the v2 cgroup %s, not found", err, err, gone)
	}
	requireNothingLeft(t, img.Process.PID, kids)
}

// TestLiveCgroups: a live migration puts the process in its cgroup on the
// target, from the first layout on (its pages are charged there).
func TestLiveCgroups(t *testing.T) {
	testutil.RequireRoot(t)
	v2 := cgroupMount(t, "")
	d2, p2 := makeCgroup(t, v2, "live")
	addr := startServe(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "8")
	p.WaitLine(t, short, 0, "ready")
	writeID(t, filepath.Join(d2, "cgroup.procs"), p.PID)
	rep, err := source.Migrate(context.Background(), source.MigrateOptions{
		PID: p.PID, To: addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.Outcome != "resumed" {
		t.Fatalf("report: %+v", rep)
	}
	p.WaitExit(t, short)
	inner := findInNamespace(t, p.PID)
	cgs, err := proc.ReadCgroups(inner, inner)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(cgs, func(c proc.Cgroup) bool { return c.Controllers == "" }); i < 0 || cgs[i].Path != p2 {
		t.Errorf("migrated process in cgroups %+v, want v2 %s", cgs, p2)
	}
}
