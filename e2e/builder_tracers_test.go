package e2e

import (
	"context"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// TestBuilderTreeTracers: the processes of a tree are built by one
// tracer thread per CPU (a process answers only the thread that traces
// it, and the work on different tracers' processes goes on at the same
// time): a tree of four processes on a machine of two CPUs or more is
// traced by as many threads as CPUs (at most four), from its creation to
// its resume, and runs on as it was.
func TestBuilderTreeTracers(t *testing.T) {
	testutil.RequireRoot(t)
	cpus := requireCPUs(t, 2)
	p, kids := startForker(t, 3)
	p.WaitTick(t, short, 2)
	img, dir := dumpTreeOf(t, p, kids)
	last := p.LastTick(t)
	if len(img.Tree) != len(kids) {
		t.Fatalf("%d processes in the image's tree, want %d", len(img.Tree), len(kids))
	}
	if n, want := buildTraced(t, dir, img, kids), min(cpus, 1+len(kids)); n != want {
		t.Errorf("the tree of %d processes was traced by %d threads, want %d (one per CPU)", 1+len(kids), n, want)
	}
	r := testutil.Adopt(t, img.Process.PID, p.Log)
	r.WaitTick(t, short, last+3)
}

// requireCPUs returns how many CPUs the test process may run on, and
// skips the test (testutil.Unavailable) if fewer than n.
func requireCPUs(t *testing.T, n int) int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	if set.Count() < n {
		testutil.Unavailable(t, "%d CPUs for the test process (%d allowed)", n, set.Count())
	}
	return set.Count()
}

// dumpTreeOf dumps p with its tree (its children kids), lets the
// originals end and returns the image and its directory.
func dumpTreeOf(t *testing.T, p *testutil.Proc, kids []int) (*core.Image, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	p.Reap(t)
	for _, k := range kids {
		testutil.ReapOrphan(t, k)
	}
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	return img, dir
}

// buildTraced restores img (in dir), whose root's children are kids, with
// a target.Builder, stage by stage, checked, and resumed; it checks that
// every process runs untraced after, and returns how many tracer threads
// traced the tree as it was built.
func buildTraced(t *testing.T, dir string, img *core.Image, kids []int) int {
	t.Helper()
	ctx := context.Background()
	b, err := target.NewBuilder(ctx, dir, img, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard()
	tracers := map[string]bool{}
	pids := append([]int{img.Process.PID}, kids...)
	for _, pid := range pids {
		tr := testutil.StatusField(t, pid, "TracerPid")
		if tr == "0" {
			t.Fatalf("process %d built but not traced", pid)
		}
		tracers[tr] = true
	}
	if err := b.FillFromImage(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, img); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Resume(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		checkRunningUntraced(t, pid)
	}
	return len(tracers)
}
