package e2e

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/target"
)

// TestBuilderRelayout builds a process from a layout that differs from the
// final one, as a live migration does while pre-copy runs: an area the
// final layout lacks (it must go), the heap missing (it must come), the big
// malloc'ed area split in two with another protection on one part (its
// pages must stay). Then the pages, the final image, and the process must
// run on with its memory intact.
func TestBuilderRelayout(t *testing.T) {
	testutil.RequireRoot(t)
	p := testutil.Start(t, testutil.Build(t, "counter"), "-m", "64", "-b", "8")
	ready, _ := p.WaitLine(t, long, 0, "ready")
	sum0 := field(t, ready, "sum")
	p.WaitTick(t, short, 3)
	dir, img := dumpKill(t, p, "")
	last := p.LastTick(t)

	// The first layout: heap gone, a stray area added in a hole, the
	// largest anonymous area split in two.
	first := *img
	first.Process.VMAs = nil
	var biggest int
	for i, v := range img.Process.VMAs {
		if v.Kind == core.VMAAnon && v.Len() > img.Process.VMAs[biggest].Len() {
			biggest = i
		}
	}
	for i, v := range img.Process.VMAs {
		switch {
		case v.Name == "[heap]":
			continue
		case i == biggest:
			a, b := v, v
			mid := v.Start + (v.Len()/2)&^0xfff
			a.End, b.Start = mid, mid
			b.Prot = unix.PROT_READ
			// The stored pages shared between the halves: each holds no
			// more than it has room for (the builder checks).
			a.Pages = min(v.Pages, a.Len()/4096)
			b.Pages = min(v.Pages-a.Pages, b.Len()/4096)
			first.Process.VMAs = append(first.Process.VMAs, a, b)
			continue
		}
		first.Process.VMAs = append(first.Process.VMAs, v)
	}
	stray := core.VMA{Start: 0x300000000000, End: 0x300000100000, Kind: core.VMAAnon, Flags: unix.MAP_PRIVATE, Prot: unix.PROT_READ | unix.PROT_WRITE, Pages: 1}
	first.Process.VMAs = append(first.Process.VMAs, stray)
	sortVMAs(first.Process.VMAs)

	ctx := context.Background()
	b, err := target.NewBuilder(ctx, dir, &first, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard()
	if err := b.Relayout(img.Process.PID, img.Process.VMAs); err != nil {
		t.Fatal(err)
	}
	if err := b.FillFromImage(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, img); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Resume(); err != nil {
		t.Fatal(err)
	}
	r := testutil.Adopt(t, img.Process.PID, p.Log)
	checkRunningUntraced(t, r.PID)
	checkLayout(t, img, r.PID)
	r.WaitTick(t, short, last+3)
	n := len(r.Lines(t))
	r.Signal(t, unix.SIGUSR1)
	sum, _ := r.WaitLine(t, long, n, "sum ")
	if got := strings.TrimPrefix(sum, "sum "); got != sum0 {
		t.Errorf("heap checksum after the relayout %s, before the dump %s", got, sum0)
	}
	brk, _ := r.WaitLine(t, short, n, "brk ")
	if !strings.HasSuffix(brk, " ok") {
		t.Errorf("the brk heap after the relayout: %s", brk)
	}
}

func sortVMAs(vs []core.VMA) {
	for i := 1; i < len(vs); i++ {
		for j := i; j > 0 && vs[j].Start < vs[j-1].Start; j-- {
			vs[j], vs[j-1] = vs[j-1], vs[j]
		}
	}
}
