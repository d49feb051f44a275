// Package track finds which pages a running process wrote since the last
// look, for pre-copy. One interface, Tracker, three backends (DESIGN.md,
// "Dirty tracking"):
//
//   - uffd-wp (uffd.go): userfaultfd in async write-protect mode, read and
//     re-protected atomically with PAGEMAP_SCAN. Linux 6.7+.
//   - soft-dirty (softdirty.go): clear_refs 4 and pagemap bit 55. Needs
//     CONFIG_MEM_SOFT_DIRTY; stops the process briefly each round.
//   - hash (hash.go): a 64-bit hash per page, compared each round. Any
//     kernel; costs a read of every present page per round.
//
// The layout bookkeeping shared by all three lives here: each Dirty call
// gets the current layout, keeps tracking the parts of it that were
// tracked before with the same attributes, and reports the rest whole.
//
// The package knows the process through core/ptrace, core/proc and the
// image model's VMAs; it knows nothing of images, page streams or the
// network. source uses it through New and the Tracker interfaces.
package track

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// trackPage is the page size dirty tracking works in (x86-64 base pages).
const trackPage = 4096

// PageRange is a run of pages [Start, End), page aligned.
type PageRange struct{ Start, End uint64 }

// Pages is the number of pages in r.
func (r PageRange) Pages() uint64 { return (r.End - r.Start) / trackPage }

func (r PageRange) String() string { return fmt.Sprintf("%#x-%#x", r.Start, r.End) }

// Tracker records which pages a process writes.
//
// A reported page is one whose contents may differ from what they were when
// it was last reported (or, for the first Dirty, at Start). That includes
// pages that no longer hold data of their own: an anonymous page dropped
// with MADV_DONTNEED, or one that maps the shared zero page now, reads as
// zeros, and a private file page dropped that way reads as the file again.
// The caller must send such a page as what it reads now (zeros), not skip it
// because pagemap says it is not present.
//
// A Tracker is not safe for concurrent use (ContentTracker.Sent excepted).
type Tracker interface {
	// Name is "soft-dirty", "uffd-wp" or "hash".
	Name() string
	// Start begins tracking. p is seized and all its threads are stopped
	// (backends may inject system calls through p); vmas is the current
	// layout. After Start returns, the caller may Detach p: tracking goes
	// on while the process runs un-traced.
	Start(p *ptrace.Proc, vmas []core.VMA) error
	// Dirty returns the pages written since Start or the previous Dirty,
	// sorted and merged, and re-arms tracking: a write racing with the call
	// is reported now or by the next call, never lost. vmas is the current
	// layout: areas new, moved, grown or re-protected since the last call
	// are reported whole and tracked from now on; unmapped ones are
	// dropped. Only areas whose pages go into an image count (core.VMAAnon,
	// core.VMASharedAnon, core.VMAFile, and core.VMASysV, whose pages a
	// live migration sends); vdso, vvar and shared file
	// mappings are skipped.
	//
	// Dirty may be called while the caller keeps the process frozen (the
	// final round); backends that must stop the process then use the
	// caller's stop instead of their own.
	Dirty(vmas []core.VMA) ([]PageRange, error)
	// Held is how long the last Dirty stopped the process (0 for backends
	// that never stop it).
	Held() time.Duration
	// Close tears tracking down; the process is left with no userfaultfd
	// registration, no extra fd, nothing changed. Safe on every exit path
	// and when called twice.
	Close() error
}

// StartRunning starts t on p, stopped, as Start does, then lets it run
// (detach) and, for a tracker that can, does the rest of its start with
// the process running: uffd-wp's write protection of every area costs
// ~30 ms a GiB, which the process no longer waits for. Start's contract
// holds once StartRunning returns: a page written after that is reported
// by the next Dirty, and the caller reads every page of its first round
// after it.
func StartRunning(t Tracker, p *ptrace.Proc, vmas []core.VMA, detach func() error) error {
	split, ok := t.(interface {
		startStopped(*ptrace.Proc, []core.VMA) error
		armLater() error
	})
	if !ok {
		err := t.Start(p, vmas)
		if derr := detach(); err == nil {
			err = derr
		}
		return err
	}
	err := split.startStopped(p, vmas)
	if derr := detach(); err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	return split.armLater()
}

// Longest is the longest single stop of the process during t's last
// Dirty: a tracker that stops it in several steps (uffd-wp, for a big
// process) says so; for the others it is the whole of Held.
func Longest(t Tracker) time.Duration {
	if l, ok := t.(interface{ Longest() time.Duration }); ok {
		return l.Longest()
	}
	return t.Held()
}

// Frozen tells t that the caller holds the process stopped (every thread
// seized and kept from running its own code) from now on, until Close: a
// later Dirty or FinalDirty uses that stop without looking at the
// threads. Their state would say otherwise while the caller injects a
// system call (the thread runs the call; see source's frozenState, whose
// final round scans while the injected calls go on), and a tracker that
// finds a thread of a process this process traces running fails.
//
// Preconditions: called before the Dirty or FinalDirty it applies to,
// not at the same time.
func Frozen(t Tracker) {
	if f, ok := t.(interface{ callerFrozen() }); ok {
		f.callerFrozen()
	}
}

// BeforeWalks has f run before each walk of the page tables of t's later
// FinalDirty (each at most a few MiB of address space; uffd-wp only, a
// no-op for the others), outside the kernel's mmap lock: a caller whose
// other work needs that lock for writing (an injected mmap) makes the
// walks wait there, rather than wait for them itself (see source's
// frozenState).
//
// Preconditions: called before that FinalDirty, not at the same time.
func BeforeWalks(t Tracker, f func()) {
	if b, ok := t.(interface{ setBeforeWalk(func()) }); ok {
		b.setBeforeWalk(f)
	}
}

// FinalTracker is a Tracker that finds the last dirty set (the final
// round's, after which no Dirty follows) for less than Dirty costs: it
// re-arms nothing. FinalDirty reports what Dirty would; the tracker is
// only good for Close after it.
type FinalTracker interface {
	Tracker
	FinalDirty(vmas []core.VMA) ([]PageRange, error)
}

// ContentTracker is a Tracker that judges pages by their contents (the
// hash backend). The pre-copy loop should call Sent with every page it
// sends: the tracker then compares each page with the copy the target has.
// Without it, the tracker compares with what Dirty itself read, and a page
// written between Dirty and the caller's read and later written back to
// exactly what Dirty read (a lock word taken and released, say) is not
// reported again, though the target holds the in-between contents.
type ContentTracker interface {
	Tracker
	// Sent records that the pages at addr, len(data)/4096 of them, were
	// sent with these contents. addr and len(data) are page aligned.
	Sent(addr uint64, data []byte)
}

// Names of the trackers.
const (
	Auto      = "auto"
	UffdWP    = "uffd-wp"
	SoftDirty = "soft-dirty"
	Hash      = "hash"
)

// Names lists the names New accepts, "auto" first, then the
// backends from best to last resort.
func Names() []string {
	return []string{Auto, UffdWP, SoftDirty, Hash}
}

// UnknownError is a tracker name New does not know.
type UnknownError struct{ Name string }

func (e *UnknownError) Error() string {
	return fmt.Sprintf("unknown dirty tracker %q (want one of %s)", e.Name, strings.Join(Names(), ", "))
}

// probeTimeout bounds the kernel probe New runs.
const probeTimeout = 15 * time.Second

// New returns the named backend for process pid. "auto" picks the
// best that works on this kernel: uffd-wp, then soft-dirty, then hash. Each
// backend's mechanism is exercised for real first (core/kernel's probes, in
// a helper child), so a missing one fails here with an error that matches
// kernel.ErrNotSupported and says what is missing.
func New(name string, pid int) (Tracker, error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		return nil, fmt.Errorf("dirty tracker for process %d: %w", pid, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	switch name {
	case Auto:
		for _, n := range []string{UffdWP, SoftDirty} {
			if t, err := newTracker(ctx, n, pid); err == nil {
				return t, nil
			}
			// Not supported, or the probe could not run: either way the
			// next backend is the safe choice.
		}
		return newHashTracker(pid), nil
	case UffdWP, SoftDirty, Hash:
		return newTracker(ctx, name, pid)
	}
	return nil, &UnknownError{Name: name}
}

func newTracker(ctx context.Context, name string, pid int) (Tracker, error) {
	switch name {
	case UffdWP:
		if _, err := kernel.ProbeUffdWP(ctx); err != nil {
			return nil, err
		}
		return newUffdTracker(pid), nil
	case SoftDirty:
		if _, err := kernel.ProbeSoftDirty(ctx); err != nil {
			return nil, err
		}
		return newSoftDirtyTracker(pid), nil
	case Hash:
		return newHashTracker(pid), nil
	}
	return nil, &UnknownError{Name: name}
}

// ErrState is returned by Start called twice, or Dirty before Start
// or after Close.
var ErrState = errors.New("dirty tracker used out of order")

// alive fails with an error matching unix.ESRCH if process pid has exited
// (gone, or a zombie).
func alive(pid int) error {
	st, err := proc.ReadStat(pid)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("process %d: %w", pid, unix.ESRCH)
		}
		return err
	}
	if st.State == 'Z' || st.State == 'X' || st.State == 'x' {
		return fmt.Errorf("process %d has exited: %w", pid, unix.ESRCH)
	}
	return nil
}

// trackable reports whether the pages of v go into an image, so that
// writes to them matter.
func trackable(v *core.VMA) bool {
	switch v.Kind {
	case core.VMAAnon, core.VMASharedAnon, core.VMAFile, core.VMASysV: // VMAFile is private
		return true
	}
	return false
}

// shmem says whether areas of kind map a shmem object (shared anonymous
// memory, a System V segment): a page there is data even where it is the
// zero page's frame, and its writes show in the page tables of the
// process that made them.
func shmem(kind string) bool {
	return kind == core.VMASharedAnon || kind == core.VMASysV
}

// areaAttrs are what must not change for a page to stay tracked: a page
// whose area changed protection, kind, file, or file offset (moved) is
// reported whole.
type areaAttrs struct {
	prot, flags int
	kind        string
	dev, ino    uint64
	path        string
}

// area is a part of the layout that is tracked.
type area struct {
	start, end uint64
	pgoff      int64 // offset/4096 - start/4096: the same for all pages of one mapping
	attrs      areaAttrs
}

func areaOf(v *core.VMA) area {
	a := area{
		start: v.Start, end: v.End,
		pgoff: int64(v.Offset/trackPage) - int64(v.Start/trackPage),
		// Of the flags, the sharing only: the others (MAP_NORESERVE,
		// MAP_GROWSDOWN) come from smaps, which the final round's layout
		// is read without (readVMAsQuick): counted, they made every such
		// area look new at the freeze and sent it whole in the frozen
		// window (redis's heap: 150 ms).
		attrs: areaAttrs{prot: v.Prot, flags: v.Flags & (unix.MAP_SHARED | unix.MAP_PRIVATE), kind: v.Kind},
	}
	if v.File != nil {
		a.attrs.dev, a.attrs.ino, a.attrs.path = v.File.Dev, v.File.Ino, v.File.Path
	}
	return a
}

// layoutPlan sorts the trackable part of a new layout into the pages that
// were tracked before with the same attributes (kept) and the rest (fresh),
// which is reported whole.
type layoutPlan struct {
	areas []area      // the new tracked layout, sorted
	kept  []PageRange // sorted, merged
	fresh []PageRange // sorted, merged
}

// planLayout compares vmas with the areas tracked so far (sorted, not
// overlapping).
func planLayout(old []area, vmas []core.VMA) layoutPlan {
	var pl layoutPlan
	for i := range vmas {
		v := &vmas[i]
		if !trackable(v) || v.End <= v.Start || v.Start%trackPage != 0 || v.End%trackPage != 0 {
			continue
		}
		pl.areas = append(pl.areas, areaOf(v))
	}
	slices.SortFunc(pl.areas, func(a, b area) int { return cmpU64(a.start, b.start) })
	for _, a := range pl.areas {
		at := a.start
		// Old areas overlapping a, in order.
		j, _ := slices.BinarySearchFunc(old, a.start, func(o area, s uint64) int {
			if o.end <= s {
				return -1
			}
			return 1
		})
		for ; j < len(old) && old[j].start < a.end; j++ {
			o := old[j]
			if o.attrs != a.attrs || o.pgoff != a.pgoff {
				continue
			}
			s, e := max(o.start, a.start), min(o.end, a.end)
			if s > at {
				pl.fresh = appendRange(pl.fresh, at, s)
			}
			pl.kept = appendRange(pl.kept, s, e)
			at = e
		}
		if at < a.end {
			pl.fresh = appendRange(pl.fresh, at, a.end)
		}
	}
	return pl
}

// areaAt returns the area of the plan holding addr.
func (pl *layoutPlan) areaAt(addr uint64) *area {
	i, ok := slices.BinarySearchFunc(pl.areas, addr, func(a area, x uint64) int {
		switch {
		case a.end <= x:
			return -1
		case a.start > x:
			return 1
		}
		return 0
	})
	if !ok {
		return nil
	}
	return &pl.areas[i]
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// appendRange appends [s, e) to rs, merging it with the last range when
// they touch. Callers append in ascending order.
func appendRange(rs []PageRange, s, e uint64) []PageRange {
	if s >= e {
		return rs
	}
	if n := len(rs); n > 0 && rs[n-1].End >= s {
		rs[n-1].End = max(rs[n-1].End, e)
		return rs
	}
	return append(rs, PageRange{s, e})
}

// normalize sorts rs and merges overlapping and touching ranges.
func normalize(rs []PageRange) []PageRange {
	slices.SortFunc(rs, func(a, b PageRange) int { return cmpU64(a.Start, b.Start) })
	out := rs[:0]
	for _, r := range rs {
		out = appendRange(out, r.Start, r.End)
	}
	return out
}

// subtract returns the parts of a (sorted, merged) not in b (sorted,
// merged).
func subtract(a, b []PageRange) []PageRange {
	var out []PageRange
	j := 0
	for _, r := range a {
		at := r.Start
		for j < len(b) && b[j].End <= at {
			j++
		}
		for k := j; k < len(b) && b[k].Start < r.End; k++ {
			if b[k].Start > at {
				out = append(out, PageRange{at, b[k].Start})
			}
			at = max(at, b[k].End)
		}
		if at < r.End {
			out = append(out, PageRange{at, r.End})
		}
	}
	return out
}

// intersect returns the parts of a (sorted, merged) that are in b (sorted,
// merged).
func intersect(a, b []PageRange) []PageRange {
	var out []PageRange
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		s, e := max(a[i].Start, b[j].Start), min(a[i].End, b[j].End)
		if s < e {
			out = append(out, PageRange{s, e})
		}
		if a[i].End < b[j].End {
			i++
		} else {
			j++
		}
	}
	return out
}

// pageData says whether a page, as pagemap shows it, holds data of its
// own, which a tracker must report when it goes away: an anonymous or
// shared page present or in swap, a private file page copied on write.
// The shared zero page is no data. zero tells the zero page's frames.
func pageData(kind string, e proc.PagemapEntry, zero *zeroPFNs) bool {
	switch {
	case e.Swapped():
		return !e.PTEMarker()
	case !e.Present():
		return false
	case kind == core.VMAFile && e.FileOrShared():
		return false // the file's page, not a copy
	case !shmem(kind) && zero.is(e.PFN()):
		return false
	}
	return true
}

// zeroPFNs are the page frames of the shared zero page and of the huge zero
// page, as this process sees them in pagemap (PFNs read as 0 without
// CAP_SYS_ADMIN; then nothing is taken for the zero page).
type zeroPFNs struct {
	small    uint64 // 0 if unknown
	huge     uint64 // first frame of the huge zero page, 0 if unknown
	hugeSize uint64 // in pages
}

func (z *zeroPFNs) is(pfn uint64) bool {
	if z == nil || pfn == 0 {
		return false
	}
	return pfn == z.small || (z.huge != 0 && pfn >= z.huge && pfn < z.huge+z.hugeSize)
}

// readZeroPFNs finds the zero pages' frames by reading, from this process,
// fresh anonymous memory that was only read, never written.
func readZeroPFNs() *zeroPFNs {
	z := &zeroPFNs{}
	small, huge := zeroProbe()
	z.small = small
	if huge != 0 {
		z.huge, z.hugeSize = huge, 512
	}
	return z
}
