package pagestream

import (
	"fmt"
	"math/bits"
	"sort"
)

// PageSet is a set of pages within fixed runs (post-copy's missing
// pages): which are still in it. Not safe for concurrent use.
type PageSet struct {
	runs []Run
	offs []int // index of each run's first page in bits
	bits []uint64
	left int
}

// NewPageSet makes the set of every page of runs, which must be sorted,
// not overlapping, of page-aligned addresses.
func NewPageSet(runs []Run) (*PageSet, error) {
	s := &PageSet{}
	var end uint64
	n := 0
	for i, r := range runs {
		if r.Pages <= 0 || r.Addr%PageSize != 0 || (i > 0 && r.Addr < end) || r.Addr+uint64(r.Pages)*PageSize < r.Addr {
			return nil, fmt.Errorf("pagestream: page set: run %d (%#x, %d pages) is empty, unaligned, out of order or overlapping", i, r.Addr, r.Pages)
		}
		end = r.Addr + uint64(r.Pages)*PageSize
		s.runs = append(s.runs, r)
		s.offs = append(s.offs, n)
		n += r.Pages
	}
	s.bits = make([]uint64, (n+63)/64)
	for i := 0; i < n; i++ {
		s.bits[i/64] |= 1 << (i % 64)
	}
	s.left = n
	return s, nil
}

// Runs are the runs the set was made of.
func (s *PageSet) Runs() []Run { return s.runs }

// Left is the number of pages still in the set.
func (s *PageSet) Left() int { return s.left }

// Total is the number of pages the set was made of.
func (s *PageSet) Total() int {
	if len(s.runs) == 0 {
		return 0
	}
	return s.offs[len(s.offs)-1] + s.runs[len(s.runs)-1].Pages
}

// index is the bit of the page at addr, or -1 if outside every run.
func (s *PageSet) index(addr uint64) int {
	i := sort.Search(len(s.runs), func(i int) bool {
		return s.runs[i].Addr+uint64(s.runs[i].Pages)*PageSize > addr
	})
	if i == len(s.runs) || addr < s.runs[i].Addr {
		return -1
	}
	return s.offs[i] + int((addr-s.runs[i].Addr)/PageSize)
}

// Has says whether the page at addr (rounded down) is in the set.
func (s *PageSet) Has(addr uint64) bool {
	i := s.index(addr &^ (PageSize - 1))
	return i >= 0 && s.bits[i/64]&(1<<(i%64)) != 0
}

// Within says whether the page at addr is in one of the runs (in the set
// or taken out of it).
func (s *PageSet) Within(addr uint64) bool { return s.index(addr&^(PageSize-1)) >= 0 }

// Remove takes the pages [addr, addr+pages*PageSize) out of the set and
// returns how many were in it.
func (s *PageSet) Remove(addr uint64, pages int) int {
	n := 0
	for p := 0; p < pages; p++ {
		i := s.index(addr + uint64(p)*PageSize)
		if i >= 0 && s.bits[i/64]&(1<<(i%64)) != 0 {
			s.bits[i/64] &^= 1 << (i % 64)
			n++
		}
	}
	s.left -= n
	return n
}

// RemoveRange takes every page of [start, end) out of the set and returns
// how many were in it.
func (s *PageSet) RemoveRange(start, end uint64) int {
	n := 0
	for k, r := range s.runs {
		rs, re := r.Addr, r.Addr+uint64(r.Pages)*PageSize
		lo, hi := max(rs, start&^(PageSize-1)), min(re, end)
		for a := lo; a < hi; a += PageSize {
			i := s.offs[k] + int((a-rs)/PageSize)
			if s.bits[i/64]&(1<<(i%64)) != 0 {
				s.bits[i/64] &^= 1 << (i % 64)
				n++
			}
		}
	}
	s.left -= n
	return n
}

// NextIn returns the first run of pages still in the set at or after
// addr, at most max pages long; ok false if none is left after addr.
func (s *PageSet) NextIn(addr uint64, maxPages int) (Run, bool) {
	k := sort.Search(len(s.runs), func(i int) bool {
		return s.runs[i].Addr+uint64(s.runs[i].Pages)*PageSize > addr
	})
	for ; k < len(s.runs); k++ {
		r := s.runs[k]
		first := 0
		if addr > r.Addr {
			first = int((addr - r.Addr) / PageSize)
		}
		i := s.offs[k] + first
		end := s.offs[k] + r.Pages
		// The first page still in the set.
		for i < end {
			w := s.bits[i/64] >> (i % 64)
			if w == 0 {
				i += 64 - i%64
				continue
			}
			i += bits.TrailingZeros64(w)
			break
		}
		if i >= end {
			continue
		}
		j := i
		for j < end && j-i < maxPages && s.bits[j/64]&(1<<(j%64)) != 0 {
			j++
		}
		return Run{Addr: r.Addr + uint64(i-s.offs[k])*PageSize, Pages: j - i}, true
	}
	return Run{}, false
}
