package core

import "math/bits"

// PageSet is a set of page addresses, kept as bitmaps of 1 GiB chunks, so
// a set of a few million pages costs a few hundred KiB.
type PageSet struct {
	chunks map[uint64]*[pagesPerChunk / 64]uint64
}

const (
	pageShift     = 12
	chunkShift    = 30
	pagesPerChunk = 1 << (chunkShift - pageShift)
)

func (s *PageSet) bit(addr uint64) (*[pagesPerChunk / 64]uint64, uint64, bool) {
	c := s.chunks[addr>>chunkShift]
	i := (addr >> pageShift) & (pagesPerChunk - 1)
	return c, i, c != nil
}

// Add puts the page at addr in the set.
func (s *PageSet) Add(addr uint64) {
	if s.chunks == nil {
		s.chunks = map[uint64]*[pagesPerChunk / 64]uint64{}
	}
	k := addr >> chunkShift
	c := s.chunks[k]
	if c == nil {
		c = new([pagesPerChunk / 64]uint64)
		s.chunks[k] = c
	}
	i := (addr >> pageShift) & (pagesPerChunk - 1)
	c[i/64] |= 1 << (i % 64)
}

// AddRange puts the pages of [start, end) in the set.
func (s *PageSet) AddRange(start, end uint64) {
	for a := start; a < end; a += 1 << pageShift {
		s.Add(a)
	}
}

// RemoveRange takes the pages of [start, end) out of the set.
func (s *PageSet) RemoveRange(start, end uint64) {
	for a := start; a < end; a += 1 << pageShift {
		if c, i, ok := s.bit(a); ok {
			c[i/64] &^= 1 << (i % 64)
		}
	}
}

// Has says whether the page at addr is in the set.
func (s *PageSet) Has(addr uint64) bool {
	c, i, ok := s.bit(addr)
	return ok && c[i/64]&(1<<(i%64)) != 0
}

// Count returns the number of pages of [start, end) in the set.
func (s *PageSet) Count(start, end uint64) uint64 {
	var n uint64
	for a := start; a < end; {
		c, i, ok := s.bit(a)
		next := (a>>chunkShift + 1) << chunkShift
		if !ok {
			a = next
			continue
		}
		stop := min(end, next)
		for ; a < stop; a += 1 << pageShift {
			if i%64 == 0 && a+64<<pageShift <= stop {
				n += uint64(bits.OnesCount64(c[i/64]))
				a += 63 << pageShift
				i += 64
				continue
			}
			if c[i/64]&(1<<(i%64)) != 0 {
				n++
			}
			i++
		}
	}
	return n
}
