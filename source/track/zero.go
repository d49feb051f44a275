package track

import (
	"encoding/binary"
	"os"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// zeroSink keeps the probe's reads from being optimised away.
var zeroSink byte

// zeroProbe returns the frame of the shared zero page and the first frame
// of the huge zero page (0 when not seen), by reading fresh anonymous
// memory of this process and looking it up in /proc/self/pagemap.
func zeroProbe() (small, huge uint64) {
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, 0
	}
	defer pm.Close()
	entry := func(addr uint64) uint64 {
		var b [8]byte
		if _, err := pm.ReadAt(b[:], int64(addr/trackPage*8)); err != nil {
			return 0
		}
		e := binary.LittleEndian.Uint64(b[:])
		if e&raw.PM_PRESENT == 0 {
			return 0
		}
		return e & raw.PM_PFN_MASK
	}
	// A page first read, not written, maps the zero page. One page alone
	// can never be a huge page.
	if one, err := unix.Mmap(-1, 0, trackPage, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err == nil {
		zeroSink += one[0]
		small = entry(raw.AddrOf(one))
		unix.Munmap(one)
	}

	const hugeSize = 2 << 20
	mem, err := unix.Mmap(-1, 0, 2*hugeSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return small, 0
	}
	defer unix.Munmap(mem)
	base := raw.AddrOf(mem)
	aligned := (base + hugeSize - 1) &^ (hugeSize - 1)
	off := aligned - base
	region := mem[off : off+hugeSize]
	if unix.Madvise(region, unix.MADV_HUGEPAGE) == nil {
		zeroSink += region[0]
		h0, h1 := entry(aligned), entry(aligned+trackPage)
		if h0 != 0 && h0 != small && h1 == h0+1 && h0%512 == 0 {
			huge = h0
		}
	}
	return small, huge
}
