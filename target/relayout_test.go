package target

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

func TestLayoutDiff(t *testing.T) {
	const P = 0x1000
	anon := func(s, e uint64) core.VMA {
		return core.VMA{Start: s * P, End: e * P, Kind: core.VMAAnon, Flags: unix.MAP_PRIVATE, Prot: unix.PROT_READ | unix.PROT_WRITE}
	}
	lib := &core.FileRef{Path: "/lib/x.so", Dev: 1, Ino: 2}
	file := func(s, e, off uint64) core.VMA {
		return core.VMA{Start: s * P, End: e * P, Kind: core.VMAFile, Flags: unix.MAP_PRIVATE, File: lib, Offset: off * P, Prot: unix.PROT_READ}
	}
	r := func(s, e uint64) addrRange { return addrRange{s * P, e * P} }
	cases := []struct {
		name       string
		have, want []core.VMA
		unmap      []addrRange
		mapNew     []core.VMA
	}{
		{"same", []core.VMA{anon(1, 4), file(8, 10, 0)}, []core.VMA{anon(1, 4), file(8, 10, 0)}, nil, nil},
		{"gone", []core.VMA{anon(1, 4), anon(6, 8)}, []core.VMA{anon(1, 4)}, []addrRange{r(6, 8)}, nil},
		{"new", []core.VMA{anon(1, 4)}, []core.VMA{anon(1, 4), file(8, 10, 3)}, nil, []core.VMA{file(8, 10, 3)}},
		{"split and re-protected", []core.VMA{anon(1, 8)},
			[]core.VMA{anon(1, 3), func() core.VMA { v := anon(3, 8); v.Prot = unix.PROT_READ; return v }()}, nil, nil},
		{"grown", []core.VMA{anon(1, 4)}, []core.VMA{anon(1, 6)}, nil, []core.VMA{anon(4, 6)}},
		{"moved", []core.VMA{anon(0, 4)}, []core.VMA{anon(2, 6)}, []addrRange{r(0, 2)}, []core.VMA{anon(4, 6)}},
		{"file now at another offset", []core.VMA{file(8, 10, 0)}, []core.VMA{file(8, 10, 1)}, []addrRange{r(8, 10)}, []core.VMA{file(8, 10, 1)}},
		{"anon replaced by file, in part", []core.VMA{anon(1, 6)}, []core.VMA{anon(1, 3), file(3, 6, 7)},
			[]addrRange{r(3, 6)}, []core.VMA{file(3, 6, 7)}},
		{"file grown keeps offsets", []core.VMA{file(8, 10, 2)}, []core.VMA{file(8, 12, 2)}, nil, []core.VMA{file(10, 12, 4)}},
	}
	for _, c := range cases {
		unmap, mapNew := layoutDiff(c.have, c.want)
		if !reflect.DeepEqual(unmap, c.unmap) {
			t.Errorf("%s: unmap %v, want %v", c.name, unmap, c.unmap)
		}
		if !reflect.DeepEqual(mapNew, c.mapNew) {
			t.Errorf("%s: map %+v, want %+v", c.name, mapNew, c.mapNew)
		}
	}
}

func TestOpened(t *testing.T) {
	anon := func(start, end uint64, prot int) core.VMA {
		return core.VMA{Start: start, End: end, Prot: prot, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon}
	}
	rw := unix.PROT_READ | unix.PROT_WRITE
	have := []core.VMA{anon(0x1000, 0x9000, unix.PROT_NONE), anon(0x10000, 0x12000, rw)}
	// The first 3 pages of the reservation made read-write; a part of the
	// writable area made PROT_NONE (nothing to open); a new area.
	want := []core.VMA{anon(0x1000, 0x4000, rw), anon(0x4000, 0x9000, unix.PROT_NONE),
		anon(0x10000, 0x11000, unix.PROT_NONE), anon(0x11000, 0x12000, rw), anon(0x20000, 0x21000, rw)}
	got := opened(have, want)
	if len(got) != 1 || got[0] != (addrRange{0x1000, 0x4000}) {
		t.Errorf("opened %v, want [{0x1000 0x4000}]", got)
	}
}

// TestSameLayout: a layout said to be the same is one in which layoutDiff
// and opened find nothing to do (relayout skips them for it), and one
// that differs in range, backing or protection is not.
func TestSameLayout(t *testing.T) {
	rw := unix.PROT_READ | unix.PROT_WRITE
	lib := &core.FileRef{Path: "/lib/x.so", Dev: 1, Ino: 2}
	have := []core.VMA{
		{Start: 0x1000, End: 0x9000, Prot: unix.PROT_NONE, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon},
		{Start: 0x10000, End: 0x12000, Prot: rw, Flags: unix.MAP_PRIVATE, Kind: core.VMAAnon, Pages: 1},
		{Start: 0x20000, End: 0x24000, Prot: unix.PROT_READ, Flags: unix.MAP_PRIVATE, Kind: core.VMAFile, File: lib, Offset: 0x3000},
		{Start: 0x30000, End: 0x31000, Prot: rw, Flags: unix.MAP_SHARED, Kind: core.VMASysV, Shm: 7},
	}
	change := func(f func(v []core.VMA)) []core.VMA {
		v := append([]core.VMA(nil), have...)
		f(v)
		return v
	}
	otherLib := *lib
	otherLib.Ino = 3
	same := []struct {
		name string
		want []core.VMA
	}{
		{"as it is", change(func([]core.VMA) {})},
		{"other page counts", change(func(v []core.VMA) { v[1].Pages, v[2].Pages = 2, 1 })},
	}
	for _, c := range same {
		if !sameLayout(have, c.want) {
			t.Errorf("%s: not the same layout", c.name)
		}
		unmap, mapNew := layoutDiff(have, c.want)
		if len(unmap) != 0 || len(mapNew) != 0 || len(opened(have, c.want)) != 0 {
			t.Errorf("%s: the same layout, yet layoutDiff %v %v, opened %v", c.name, unmap, mapNew, opened(have, c.want))
		}
	}
	for _, c := range []struct {
		name string
		want []core.VMA
	}{
		{"an area less", have[:3]},
		{"an area grown", change(func(v []core.VMA) { v[1].End = 0x13000 })},
		{"a reservation opened", change(func(v []core.VMA) { v[0].Prot = rw })},
		{"another file", change(func(v []core.VMA) { v[2].File = &otherLib })},
		{"another offset", change(func(v []core.VMA) { v[2].Offset = 0 })},
		{"shared", change(func(v []core.VMA) { v[1].Flags = unix.MAP_SHARED })},
		{"another segment", change(func(v []core.VMA) { v[3].Shm = 8 })},
		{"another kind", change(func(v []core.VMA) { v[1].Kind = core.VMASharedAnon })},
	} {
		if sameLayout(have, c.want) {
			t.Errorf("%s: said to be the same layout", c.name)
		}
	}
}
