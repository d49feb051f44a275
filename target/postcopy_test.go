package target

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
)

func postCopyLayout() []core.VMA {
	rw := unix.PROT_READ | unix.PROT_WRITE
	return []core.VMA{
		{Start: 0x10000, End: 0x20000, Prot: rw, Kind: core.VMAAnon},
		{Start: 0x20000, End: 0x30000, Prot: rw, Kind: core.VMASharedAnon},
		{Start: 0x30000, End: 0x40000, Prot: unix.PROT_READ, Kind: core.VMAAnon},
		{Start: 0x40000, End: 0x80000, Prot: rw, Kind: core.VMAAnon},
	}
}

func TestCheckMissing(t *testing.T) {
	vmas := postCopyLayout()
	areas, err := checkMissing(&handoff.PostCopyState{Missing: []handoff.PageSpan{{Start: 0x11000, End: 0x13000}, {Start: 0x15000, End: 0x16000}, {Start: 0x40000, End: 0x80000}}}, vmas)
	if err != nil || len(areas) != 2 || areas[0].Start != 0x10000 || areas[1].Start != 0x40000 {
		t.Fatalf("areas %+v, %v", areas, err)
	}
	for name, spans := range map[string][]handoff.PageSpan{
		"shared":      {{Start: 0x20000, End: 0x21000}},
		"read-only":   {{Start: 0x30000, End: 0x31000}},
		"across":      {{Start: 0x1f000, End: 0x21000}},
		"outside":     {{Start: 0x90000, End: 0x91000}},
		"unaligned":   {{Start: 0x11001, End: 0x12000}},
		"empty":       {{Start: 0x11000, End: 0x11000}},
		"overlapping": {{Start: 0x11000, End: 0x13000}, {Start: 0x12000, End: 0x14000}},
	} {
		if _, err := checkMissing(&handoff.PostCopyState{Missing: spans}, vmas); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzCheckMissing(f *testing.F) {
	f.Add(uint64(0x11000), uint64(0x13000), uint64(0x40000), uint64(0x41000))
	f.Fuzz(func(t *testing.T, a, b, c, d uint64) {
		vmas := postCopyLayout()
		areas, err := checkMissing(&handoff.PostCopyState{Missing: []handoff.PageSpan{{Start: a, End: b}, {Start: c, End: d}}}, vmas)
		if err != nil {
			return
		}
		for _, s := range [][2]uint64{{a, b}, {c, d}} {
			ok := false
			for _, v := range areas {
				if s[0] >= v.Start && s[1] <= v.End && v.Kind == core.VMAAnon && v.Prot&unix.PROT_WRITE != 0 {
					ok = true
				}
			}
			if !ok {
				t.Fatalf("span %#x-%#x accepted outside a private writable area (%+v)", s[0], s[1], areas)
			}
		}
	})
}
