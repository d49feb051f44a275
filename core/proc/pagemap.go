package proc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// PagemapEntry is one 64-bit entry of /proc/PID/pagemap, describing one
// virtual page (Documentation/admin-guide/mm/pagemap.rst).
type PagemapEntry uint64

// Bits of a PagemapEntry.
const (
	PagemapPFNMask     = 1<<55 - 1 // bits 0-54: PFN if present, swap type and offset if swapped
	PagemapSoftDirty   = 1 << 55
	PagemapExclusive   = 1 << 56 // page mapped only here (mapcount 1)
	PagemapUffdWP      = 1 << 57 // write-protected by userfaultfd
	PagemapGuardRegion = 1 << 58 // MADV_GUARD_INSTALL guard page (6.14+)
	PagemapFileShared  = 1 << 61 // file page or shared anonymous page
	PagemapSwapped     = 1 << 62
	PagemapPresent     = 1 << 63
)

// Present reports whether the page is in RAM (bit 63).
func (e PagemapEntry) Present() bool { return e&PagemapPresent != 0 }

// Swapped reports whether the page is in swap (bit 62).
func (e PagemapEntry) Swapped() bool { return e&PagemapSwapped != 0 }

// FileOrShared reports whether the page is a file page or shared anonymous
// memory (bit 61).
func (e PagemapEntry) FileOrShared() bool { return e&PagemapFileShared != 0 }

// Exclusive reports whether the page is mapped only by this process (bit 56).
func (e PagemapEntry) Exclusive() bool { return e&PagemapExclusive != 0 }

// SoftDirty reports the soft-dirty bit (55). It is never set on a kernel
// without CONFIG_MEM_SOFT_DIRTY.
func (e PagemapEntry) SoftDirty() bool { return e&PagemapSoftDirty != 0 }

// UffdWP reports whether the page is write-protected by userfaultfd (bit 57).
func (e PagemapEntry) UffdWP() bool { return e&PagemapUffdWP != 0 }

// PFN returns the page frame number (bits 0-54). It is meaningful only for
// a present page and reads 0 without CAP_SYS_ADMIN.
func (e PagemapEntry) PFN() uint64 { return uint64(e) & PagemapPFNMask }

// swapTypeMarker is the swap type of a pte marker (SWP_PTE_MARKER, the last
// of the 32 swap types): a non-present entry that holds no page, left by a
// zap of a userfaultfd write-protected file page. Pagemap shows it as
// swapped, with the type in the low 5 bits of the frame (when frames are
// shown at all, which needs CAP_SYS_ADMIN).
const swapTypeMarker = 31

// PTEMarker reports whether a swapped entry is a pte marker, not a page in
// swap (uffd-wp marks untouched pages with markers).
func (e PagemapEntry) PTEMarker() bool { return e.PFN()&31 == swapTypeMarker }

// Pagemap is an open /proc/PID/pagemap.
type Pagemap struct {
	f    *os.File
	pid  int
	path string
}

// OpenPagemap opens /proc/PID/pagemap for reading.
func OpenPagemap(pid int) (*Pagemap, error) {
	path := pidPath(pid, "pagemap")
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &Pagemap{f: f, pid: pid, path: path}, nil
}

var pageSize = uint64(os.Getpagesize())

// Read returns the entries for the pages of [start, end), which must be page
// aligned, reusing out if its capacity allows. The kernel fills the whole
// range in one pread, so large batches cost one system call.
//
// A process that has exited since OpenPagemap makes Read fail with an
// error matching unix.ESRCH.
func (p *Pagemap) Read(start, end uint64, out []PagemapEntry) ([]PagemapEntry, error) {
	if start%pageSize != 0 || end%pageSize != 0 || end < start {
		return out[:0], fmt.Errorf("proc: pagemap read %#x-%#x: %w", start, end, errBadRange)
	}
	n := (end - start) / pageSize
	if n > 1<<40 {
		return out[:0], fmt.Errorf("proc: pagemap read %#x-%#x: %w", start, end, errBadRange)
	}
	if uint64(cap(out)) < n {
		out = make([]PagemapEntry, n)
	}
	out = out[:n]
	if n == 0 {
		return out, nil
	}
	buf := raw.SliceBytes(out) // native-endian uint64s, as PagemapEntry is: pread fills them in place
	off := int64(start / pageSize * 8)
	for done := 0; done < len(buf); {
		m, err := raw.IgnoringEINTR2(func() (int, error) { return unix.Pread(int(p.f.Fd()), buf[done:], off+int64(done)) })
		switch {
		case err != nil:
			return out[:done/8], &fs.PathError{Op: "pread", Path: p.path, Err: err}
		case m == 0:
			return out[:done/8], &fs.PathError{Op: "pread", Path: p.path, Err: p.eofReason()}
		}
		done += m
	}
	return out, nil
}

var errBadRange = errors.New("range not page aligned or too large")

// eofReason explains a read of pagemap that returned nothing: the kernel
// does that when the process's memory is gone, and past the top of the user
// address space.
func (p *Pagemap) eofReason() error {
	st, err := ReadStat(p.pid)
	if isGone(err) {
		return syscall.ESRCH
	}
	if err == nil && (st.State == 'Z' || st.State == 'X' || st.State == 'x') {
		return syscall.ESRCH
	}
	return io.ErrUnexpectedEOF
}

// Fd returns the file descriptor, for ioctls such as PAGEMAP_SCAN. It stays
// owned by p.
func (p *Pagemap) Fd() int { return int(p.f.Fd()) }

// Close closes the file.
func (p *Pagemap) Close() error { return p.f.Close() }
