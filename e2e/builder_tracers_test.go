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
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	if set.Count() < 2 {
		testutil.Unavailable(t, "a second CPU for the test process (%d allowed)", set.Count())
	}
	p, kids := startForker(t, 3)
	p.WaitTick(t, short, 2)
	dir := t.TempDir()
	if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Tree: true, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	p.Reap(t)
	for _, k := range kids {
		testutil.ReapOrphan(t, k)
	}
	last := p.LastTick(t)
	img, err := core.ReadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Tree) != len(kids) {
		t.Fatalf("%d processes in the image's tree, want %d", len(img.Tree), len(kids))
	}
	ctx := context.Background()
	b, err := target.NewBuilder(ctx, dir, img, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard()
	tracers := map[string]bool{}
	for _, pid := range append([]int{img.Process.PID}, kids...) {
		tr := testutil.StatusField(t, pid, "TracerPid")
		if tr == "0" {
			t.Fatalf("process %d built but not traced", pid)
		}
		tracers[tr] = true
	}
	if want := min(set.Count(), 1+len(kids)); len(tracers) != want {
		t.Errorf("the tree of %d processes is traced by %d threads, want %d (one per CPU)", 1+len(kids), len(tracers), want)
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
	r := testutil.Adopt(t, img.Process.PID, p.Log)
	for _, pid := range append([]int{r.PID}, kids...) {
		checkRunningUntraced(t, pid)
	}
	r.WaitTick(t, short, last+3)
}
