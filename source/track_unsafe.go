package source

import (
	"encoding/binary"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/kernel"
)

// Every use of unsafe by the dirty trackers is in this file.

// trackIoctl is ioctl(fd, req, arg) with arg a pointer to a uapi struct,
// retried on EINTR.
func trackIoctl[T any](fd int, req uint, arg *T) (int, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(arg)))
		runtime.KeepAlive(arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return int(r), e
		}
		return int(r), nil
	}
}

// pagemapScan runs PAGEMAP_SCAN on the pagemap fd with arg, filling vec.
// It returns the regions filled and where the walk ended.
func pagemapScan(fd int, arg kernel.PmScanArg, vec []kernel.PageRegion) ([]kernel.PageRegion, uint64, error) {
	arg.Size = uint64(unsafe.Sizeof(arg))
	if len(vec) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
		arg.VecLen = uint64(len(vec))
	}
	n, err := trackIoctl(fd, kernel.PAGEMAP_SCAN, &arg)
	runtime.KeepAlive(vec)
	if err != nil {
		return nil, arg.WalkEnd, err
	}
	return vec[:n], arg.WalkEnd, nil
}

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
		if e&kernel.PM_PRESENT == 0 {
			return 0
		}
		return e & kernel.PM_PFN_MASK
	}
	// A page first read, not written, maps the zero page. One page alone
	// can never be a huge page.
	if one, err := unix.Mmap(-1, 0, trackPage, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err == nil {
		zeroSink += one[0]
		small = entry(uint64(uintptr(unsafe.Pointer(&one[0]))))
		unix.Munmap(one)
	}

	const hugeSize = 2 << 20
	mem, err := unix.Mmap(-1, 0, 2*hugeSize, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return small, 0
	}
	defer unix.Munmap(mem)
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
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
