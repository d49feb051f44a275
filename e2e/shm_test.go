package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestSharedAnonTree: a parent and its child that share anonymous memory
// made before the fork still share one object after dump and restore: the
// child's answers reach the parent (an area each would restore without an
// error, and the two would never hear from each other again).
func TestSharedAnonTree(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "shmtree"))
	line, _ := p.WaitLine(t, short, 0, "ready")
	var pid, child int
	if _, err := fmt.Sscanf(line, "ready pid=%d child=%d", &pid, &child); err != nil {
		t.Fatal(err)
	}
	p.WaitTick(t, short, 5)
	dir, img := dumpTreeKill(t, p, child)
	t.Cleanup(func() { testutil.ReapOrphan(t, child) })
	shared := 0
	for _, v := range append(img.Process.VMAs, img.Tree[0].VMAs...) {
		if v.Kind == core.VMASharedAnon && v.Shm != 0 {
			shared++
		}
	}
	if len(img.Tree) != 1 || shared != 2 {
		t.Fatalf("image: %d processes in the tree, %d shared anonymous areas with their object, want 1 and 2", len(img.Tree), shared)
	}
	last := p.LastTick(t)
	r := restoreOK(t, dir, p.Log)
	r.WaitTick(t, short, last+20)
	for _, l := range r.Lines(t) {
		if strings.HasSuffix(l, " stale") {
			t.Fatalf("after restore the child's answers do not reach the parent: %q", l)
		}
	}
}
