package source

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

func TestPostCopyDecide(t *testing.T) {
	var none *postCopy
	if v := none.decide(Verdict{}, 1); v.Stop {
		t.Error("no post-copy: the verdict changed")
	}
	pc := &postCopy{mode: ModePostCopy}
	if v := pc.decide(Verdict{}, 1); !v.Stop || v.Reason != "post-copy" || !pc.active {
		t.Errorf("postcopy after round 0: %+v, active %v", v, pc.active)
	}
	pc = &postCopy{mode: ModeAuto}
	if v := pc.decide(Verdict{Stop: true, Reason: "converged"}, 3); v.Reason != "converged" || pc.active {
		t.Errorf("auto, converged: %+v, active %v", v, pc.active)
	}
	if v := pc.decide(Verdict{}, 3); v.Stop || pc.active {
		t.Errorf("auto, going on: %+v, active %v", v, pc.active)
	}
	if v := pc.decide(Verdict{Stop: true, Reason: "stalled"}, 3); !v.Stop || v.Reason != "stalled, post-copy" || !pc.active {
		t.Errorf("auto, stalled: %+v, active %v", v, pc.active)
	}
	for _, s := range []string{"", "precopy", "postcopy", "auto"} {
		if _, err := ParseMode(s); err != nil {
			t.Errorf("ParseMode(%q): %v", s, err)
		}
	}
	if _, err := ParseMode("post-copy"); err == nil {
		t.Error("ParseMode of a bad name")
	}
}

func TestPostCopySplit(t *testing.T) {
	rw := unix.PROT_READ | unix.PROT_WRITE
	vmas := []core.VMA{
		{Start: 0x10000, End: 0x20000, Prot: rw, Kind: core.VMAAnon},
		{Start: 0x20000, End: 0x30000, Prot: rw, Kind: core.VMASharedAnon},
		{Start: 0x30000, End: 0x40000, Prot: rw, Kind: core.VMAAnon, Lock: core.LockAll},
		{Start: 0x40000, End: 0x400000, Prot: rw, Kind: core.VMAAnon},
		{Start: 0x7ff000000, End: 0x7ff010000, Prot: rw, Kind: core.VMAAnon, Name: "[stack]"},
	}
	ranges := []PageRange{{Start: 0x11000, End: 0x12000}, {Start: 0x1f000, End: 0x25000}, {Start: 0x30000, End: 0x31000}, {Start: 0x7ff001000, End: 0x7ff002000}}
	// Many scattered pages in the big area: merged to fit.
	for a := uint64(0x40000); a < 0x400000; a += 4 * pageSize {
		ranges = append(ranges, PageRange{Start: a, End: a + pageSize})
	}
	pc := &postCopy{}
	send := pc.split(vmas, ranges)
	want := []PageRange{{Start: 0x20000, End: 0x25000}, {Start: 0x30000, End: 0x31000}, {Start: 0x7ff001000, End: 0x7ff002000}}
	if len(send) != len(want) {
		t.Fatalf("sent %v, want %v", send, want)
	}
	for i := range want {
		if send[i] != want[i] {
			t.Fatalf("sent %v, want %v", send, want)
		}
	}
	if len(pc.missing) > maxMissingSpans || len(pc.missing) < 2 {
		t.Fatalf("%d missing runs", len(pc.missing))
	}
	if pc.missing[0] != (PageRange{Start: 0x11000, End: 0x12000}) && pc.missing[0].End != 0x20000 {
		t.Errorf("first missing run %v", pc.missing[0])
	}
	for i, r := range pc.missing {
		if i > 0 && r.Start < pc.missing[i-1].End {
			t.Fatalf("missing runs overlap: %v", pc.missing)
		}
		if r.Start < 0x40000 && r.End > 0x20000 {
			t.Errorf("a missing run %v across areas", r)
		}
	}
	if err := pc.checkMissing(vmas); err != nil {
		t.Error(err)
	}
	if err := pc.checkMissing(vmas[1:]); err == nil {
		t.Error("missing pages outside the layout accepted")
	}
}
