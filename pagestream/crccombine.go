package pagestream

import "sync"

// CRC32C of a stream of which the CRC of a part is known already: the
// CRC register is linear, so running it over n zero bytes is a 32x32
// matrix over GF(2), and for any chain value c and data b,
// crcUpdate(c, b) = zeros(len(b)) * c XOR crc32c(b). The writer checksums
// a frame of pages stored as they are with the content CRC it computed
// anyway instead of reading the pages a second time.

// gf2Matrix is a linear map of 32-bit CRC registers: column i is the image
// of bit i.
type gf2Matrix [32]uint32

func (m *gf2Matrix) times(v uint32) uint32 {
	var s uint32
	for i := 0; v != 0; i, v = i+1, v>>1 {
		if v&1 != 0 {
			s ^= m[i]
		}
	}
	return s
}

func (m *gf2Matrix) square() gf2Matrix {
	var sq gf2Matrix
	for i := range sq {
		sq[i] = m.times(m[i])
	}
	return sq
}

// pageZeros[k] runs the register over 2^k pages of zero bytes.
var pageZeros = sync.OnceValue(func() [9]gf2Matrix {
	// One zero bit: shift right, and fold the polynomial (reflected) in
	// when a one falls out.
	var m gf2Matrix
	m[0] = castagnoliPoly
	for i := 1; i < 32; i++ {
		m[i] = 1 << (i - 1)
	}
	for bits := 1; bits < 8*PageSize; bits *= 2 {
		m = m.square()
	}
	var out [9]gf2Matrix
	for k := range out {
		out[k] = m
		m = m.square()
	}
	return out
})

// castagnoliPoly is the Castagnoli polynomial, reflected.
const castagnoliPoly = 0x82f63b78

// crcCombine returns crcUpdate(c, b) from c, crc32c(b) and len(b), a
// multiple of PageSize of at most MaxFramePages pages.
func crcCombine(c, crcB uint32, lenB int) uint32 {
	m := pageZeros()
	for k, pages := 0, lenB/PageSize; pages != 0; k, pages = k+1, pages>>1 {
		if pages&1 != 0 {
			c = m[k].times(c)
		}
	}
	return c ^ crcB
}
