package target

import (
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
)

// Relayout: while pre-copy runs, the process being built must follow the
// source's memory layout, round after round, without losing the pages
// already written into areas that did not change. An area keeps its
// mapping when its backing is the same (same kind, same file at the same
// offset); only its protection may differ, and protections are set at the
// end. Boundaries alone do not matter: a split or a merge keeps the pages.

// addrRange is [start, end).
type addrRange struct{ start, end uint64 }

// sameBacking says whether one page at addr is backed alike in a and b.
func sameBacking(a, b *core.VMA, addr uint64) bool {
	if a.Kind != b.Kind || a.Flags&(unix.MAP_SHARED|unix.MAP_PRIVATE) != b.Flags&(unix.MAP_SHARED|unix.MAP_PRIVATE) {
		return false
	}
	if a.Kind == core.VMASysV {
		return a.Shm == b.Shm && a.Offset+(addr-a.Start) == b.Offset+(addr-b.Start)
	}
	if a.File == nil || b.File == nil {
		return a.File == nil && b.File == nil
	}
	return a.File.Dev == b.File.Dev && a.File.Ino == b.File.Ino && a.File.Path == b.File.Path &&
		a.Offset+(addr-a.Start) == b.Offset+(addr-b.Start)
}

// layoutDiff says how to turn the areas have into want (both sorted, not
// overlapping, special areas left out by the caller): the ranges to unmap,
// and the parts of want to map anew (File offsets adjusted).
func layoutDiff(have, want []core.VMA) (unmap []addrRange, mapNew []core.VMA) {
	// Every boundary of either layout cuts the address space into pieces
	// that lie wholly inside or outside each area.
	var cuts []uint64
	for _, v := range have {
		cuts = append(cuts, v.Start, v.End)
	}
	for _, v := range want {
		cuts = append(cuts, v.Start, v.End)
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i] < cuts[j] })
	find := func(vs []core.VMA, addr uint64) *core.VMA {
		i := sort.Search(len(vs), func(i int) bool { return vs[i].End > addr })
		if i < len(vs) && vs[i].Start <= addr {
			return &vs[i]
		}
		return nil
	}
	for i := 0; i+1 < len(cuts); i++ {
		s, e := cuts[i], cuts[i+1]
		if s == e {
			continue
		}
		h, w := find(have, s), find(want, s)
		switch {
		case h == nil && w == nil:
		case h != nil && w != nil && sameBacking(h, w, s):
		default:
			if h != nil {
				if n := len(unmap); n > 0 && unmap[n-1].end == s {
					unmap[n-1].end = e
				} else {
					unmap = append(unmap, addrRange{s, e})
				}
			}
			if w != nil {
				piece := *w
				piece.Start, piece.End = s, e
				if piece.File != nil || piece.Kind == core.VMASysV {
					piece.Offset = w.Offset + (s - w.Start)
				}
				if n := len(mapNew); n > 0 && mapNew[n-1].End == s && sameBacking(&mapNew[n-1], &piece, s) && mapNew[n-1].Prot == piece.Prot {
					mapNew[n-1].End = e
				} else {
					mapNew = append(mapNew, piece)
				}
			}
		}
	}
	return unmap, mapNew
}

// opened returns the parts of want kept from have (same backing) that were
// PROT_NONE in have and are not in want: a reservation the process made
// usable (glibc growing a thread arena, Go growing its heap), page by page
// with mprotect. A PROT_NONE area is mapped so (mapAreas), and a kept area
// is not mapped again, so these must be made writable for their pages to
// be written, and for the final protections (protect) to hold.
func opened(have, want []core.VMA) []addrRange {
	var out []addrRange
	for _, w := range want {
		if w.Prot == unix.PROT_NONE || !holdsPages(w.Kind) {
			continue
		}
		i := sort.Search(len(have), func(i int) bool { return have[i].End > w.Start })
		for ; i < len(have) && have[i].Start < w.End; i++ {
			h := &have[i]
			s, e := max(h.Start, w.Start), min(h.End, w.End)
			if h.Prot != unix.PROT_NONE || !sameBacking(h, &w, s) {
				continue
			}
			if n := len(out); n > 0 && out[n-1].end == s {
				out[n-1].end = e
			} else {
				out = append(out, addrRange{s, e})
			}
		}
	}
	return out
}

// sameLayout says whether want lists the areas of have as they are, each
// with its range, backing (sameBacking) and protection: then layoutDiff
// finds nothing to unmap or map and opened nothing to open (the areas of
// a live migration's final image that are those of the last layout, but
// for their page counts: a tree's processes mostly, which relayout skips
// so, without cutting hundreds of areas into pieces).
func sameLayout(have, want []core.VMA) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		h, w := &have[i], &want[i]
		if h.Start != w.Start || h.End != w.End || h.Prot != w.Prot || !sameBacking(h, w, h.Start) {
			return false
		}
	}
	return true
}

// ordinary returns the areas of vmas that migrate maps itself (not the
// kernel's [vdso] and [vvar]).
func ordinary(vmas []core.VMA) []core.VMA {
	n := 0
	for i := range vmas {
		if k := vmas[i].Kind; k == core.VMAVDSO || k == core.VMAVVar {
			n++
		}
	}
	out := make([]core.VMA, 0, len(vmas)-n)
	for i := range vmas {
		if k := vmas[i].Kind; k != core.VMAVDSO && k != core.VMAVVar {
			out = append(out, vmas[i])
		}
	}
	return out
}

// relayout changes the process's memory from the layout built so far to
// want: areas gone or backed otherwise are unmapped, new ones mapped.
// Pages of unchanged areas stay.
//
// Preconditions: the process was laid out (layout), and is stopped.
func (r *restorer) relayout(want []core.VMA) error {
	want = ordinary(want)
	for i := range want {
		v := &want[i]
		if v.Start < r.vdsoHere.end && r.vdsoHere.start < v.End {
			return &VDSOMismatchError{Reason: fmt.Sprintf("the process mapped %#x-%#x, where this kernel's vdso was put (%#x-%#x) as its old one's proxy was built",
				v.Start, v.End, r.vdsoHere.start, r.vdsoHere.end)}
		}
	}
	if sameLayout(r.mapped, want) {
		r.mapped = want
		return nil
	}
	unmap, mapNew := layoutDiff(r.mapped, want)
	for _, o := range opened(r.mapped, want) {
		if _, err := r.sys("mprotect", unix.SYS_MPROTECT, o.start, o.end-o.start, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return fmt.Errorf("open %#x-%#x for writing: %w", o.start, o.end, err)
		}
	}
	for _, u := range unmap {
		if _, err := r.sys("munmap", unix.SYS_MUNMAP, u.start, u.end-u.start); err != nil {
			return fmt.Errorf("unmap %#x-%#x: %w", u.start, u.end, err)
		}
		r.writtenMu.Lock()
		r.written.RemoveRange(u.start, u.end)
		r.writtenMu.Unlock()
	}
	if err := r.mapAreas(mapNew); err != nil {
		return err
	}
	r.mapped = want
	return nil
}
