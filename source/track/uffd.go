package track

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// uffdTracker tracks writes with a userfaultfd of the tracee in async
// write-protect mode (Linux 6.7+), driven from this process:
//
//   - Start injects userfaultfd(O_CLOEXEC|O_NONBLOCK) into the tracee, takes
//     the new fd with pidfd_getfd, and injects close() of the tracee's copy,
//     so the tracee ends up with no extra fd. Ioctls on our copy act on the
//     tracee's mm.
//   - UFFDIO_API enables UFFD_FEATURE_WP_ASYNC (and WP_UNPOPULATED, which
//     the kernel turns on with it): a write to a protected page is resolved
//     by the kernel itself, which just drops the protection. Nobody reads
//     the userfaultfd.
//   - Each trackable area is registered in MODE_WP and its present pages
//     are write-protected with a PAGEMAP_SCAN that matches every written
//     page. (UFFDIO_WRITEPROTECT would also install markers in every empty
//     page table slot, allocating page tables for the whole range, which
//     costs a lot for large reservations and buys nothing here: a page
//     that was never there and is written shows as written anyway.)
//   - Dirty runs PAGEMAP_SCAN with PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC
//     and category PAGE_IS_WRITTEN over each tracked part: the kernel
//     reports and re-protects the written pages under the page table lock,
//     so a racing write is either reported now or leaves the page written
//     for the next scan. A VMA that lost its registration (mapped anew,
//     moved by mremap) makes the scan fail with EPERM: it is then reported
//     whole and registered again.
//   - Pages that stopped holding data (MADV_DONTNEED, MADV_FREE reclaimed,
//     now the zero page) are not "written" for the kernel; a second scan
//     without write-protection reads which pages hold data, and pages that
//     did at the last look and do not now are reported too.
//   - Close closes our copy of the userfaultfd, which unregisters every
//     area and drops every protection.
type uffdTracker struct {
	pid int
	// userModeOnly forces UFFD_USER_MODE_ONLY on the injected
	// userfaultfd, as used when the plain call is refused (tests).
	userModeOnly bool

	uffd  int // our copy of the tracee's userfaultfd, -1 when closed
	pm    *proc.Pagemap
	areas []area      // tracked parts of the layout, sorted
	data  []PageRange // pages that held data at the last look
	vec   []raw.PageRegion
	ents  []proc.PagemapEntry // swappedData's buffer
	state trackerState
	// tracer pauses the process during each scan; held is how long the
	// last Dirty kept it paused.
	tracer  *ptrace.Tracer
	held    time.Duration
	longest time.Duration
	// pendingArm: Start leaves the arming to armLater (StartRunning),
	// with armVMAs.
	pendingArm bool
	armVMAs    []core.VMA
	// frozen: the caller holds the process stopped (Frozen).
	frozen bool
	// beforeWalk, if set, runs before each walk of a final scan
	// (BeforeWalks).
	beforeWalk func()
}

func (u *uffdTracker) callerFrozen()          { u.frozen = true }
func (u *uffdTracker) setBeforeWalk(f func()) { u.beforeWalk = f }

// armLater does what startStopped left: see arm1st.
func (u *uffdTracker) armLater() error {
	if u.state != trackerStarted {
		return ErrState
	}
	vmas := u.armVMAs
	u.armVMAs, u.pendingArm = nil, false
	return u.arm1st(vmas)
}

// trackerState is where a tracker is in its life.
type trackerState int

const (
	trackerNew trackerState = iota
	trackerStarted
	trackerFinal // FinalDirty ran: only Close is left
	trackerClosed
)

func newUffdTracker(pid int) *uffdTracker {
	return &uffdTracker{pid: pid, uffd: -1}
}

func (u *uffdTracker) Name() string { return UffdWP }

// Held is how long the last Dirty (or FinalDirty) stopped the process, in
// all; Longest the longest single stop.
func (u *uffdTracker) Held() time.Duration { return u.held }

// Longest is the longest single stop of the last Dirty.
func (u *uffdTracker) Longest() time.Duration { return u.longest }

// Start sets up the userfaultfd and protects every trackable area.
//
// Preconditions: p is seized and all its threads are stopped.
func (u *uffdTracker) Start(p *ptrace.Proc, vmas []core.VMA) (err error) {
	if u.state != trackerNew {
		return ErrState
	}
	if p.PID != u.pid {
		return fmt.Errorf("uffd-wp tracker for process %d started on process %d", u.pid, p.PID)
	}
	u.state = trackerStarted
	defer func() {
		if err != nil {
			u.Close()
		}
	}()
	if u.uffd, err = u.takeUffd(p); err != nil {
		return err
	}
	want := uint64(raw.UFFD_FEATURE_WP_ASYNC | raw.UFFD_FEATURE_WP_UNPOPULATED)
	if uffdSupported()&raw.UFFD_FEATURE_WP_HUGETLBFS_SHMEM != 0 {
		want |= raw.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	}
	if _, err := raw.UffdAPI(u.uffd, want); err != nil {
		return &kernel.UnsupportedFeatureError{Name: kernel.FeatureUffdWP,
			Reason: fmt.Sprintf("UFFDIO_API with features %#x: %v", want, err), Err: err}
	}
	if u.pm, err = proc.OpenPagemap(u.pid); err != nil {
		return fmt.Errorf("uffd-wp tracker: %w", err)
	}
	return u.arm1st(vmas)
}

// startStopped is what of Start needs the process stopped (StartRunning):
// its userfaultfd, made by an injected call.
func (u *uffdTracker) startStopped(p *ptrace.Proc, vmas []core.VMA) error {
	u.pendingArm = true
	return u.Start(p, vmas)
}

// arm1st registers and write-protects every trackable area of vmas and
// reads which pages hold data: the rest of Start, done after the process
// runs again when StartRunning started it (pendingArm). That is as
// exact: a page written before its protection is read afterwards (a
// first round reads every page), one written after is reported.
func (u *uffdTracker) arm1st(vmas []core.VMA) (err error) {
	if u.pendingArm {
		u.armVMAs = vmas
		return nil
	}
	defer func() {
		if err != nil {
			u.Close()
		}
	}()
	pl := planLayout(nil, vmas)
	armed, err := u.arm(pl.areas, pl.fresh)
	if err != nil {
		return err
	}
	u.areas = clipAreas(pl.areas, armed)
	if u.data, err = u.scanData(u.areas); err != nil {
		return err
	}
	return nil
}

// takeUffd creates a userfaultfd inside the tracee and moves it here.
func (u *uffdTracker) takeUffd(p *ptrace.Proc) (fd int, err error) {
	if p.Gadget() == 0 {
		if err := p.FindGadget(); err != nil {
			return -1, fmt.Errorf("uffd-wp tracker: %w", err)
		}
	}
	th := p.Leader()
	flags := uint64(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if u.userModeOnly {
		flags |= raw.UFFD_USER_MODE_ONLY
	}
	r, err := p.Syscall(th, "userfaultfd", unix.SYS_USERFAULTFD, flags)
	if errors.Is(err, unix.EPERM) && !u.userModeOnly {
		// vm.unprivileged_userfaultfd=0 and a tracee without
		// CAP_SYS_PTRACE. Kernel-mode faults only matter for a
		// userfaultfd that someone reads; async write-protect faults
		// are resolved by the kernel either way, so user-mode-only
		// misses nothing here.
		flags |= raw.UFFD_USER_MODE_ONLY
		r, err = p.Syscall(th, "userfaultfd", unix.SYS_USERFAULTFD, flags)
	}
	if err != nil {
		return -1, &kernel.UnsupportedFeatureError{Name: kernel.FeatureUffdWP,
			Reason: fmt.Sprintf("userfaultfd injected into process %d: %v", u.pid, err), Err: err}
	}
	remote := r
	// The tracee's copy is closed on every path.
	defer func() {
		if _, cerr := p.Syscall(th, "close", unix.SYS_CLOSE, remote); cerr != nil && err == nil {
			unix.Close(fd)
			fd, err = -1, fmt.Errorf("uffd-wp tracker: close the userfaultfd left in process %d: %w", u.pid, cerr)
		}
	}()
	pidfd, err := unix.PidfdOpen(u.pid, 0)
	if err != nil {
		return -1, &kernel.UnsupportedFeatureError{Name: kernel.FeatureUffdWP,
			Reason: fmt.Sprintf("pidfd_open(%d): %v", u.pid, err), Err: err}
	}
	defer unix.Close(pidfd)
	fd, err = unix.PidfdGetfd(pidfd, int(remote), 0) // O_CLOEXEC is implied
	if err != nil {
		return -1, &kernel.UnsupportedFeatureError{Name: kernel.FeatureUffdWP,
			Reason: fmt.Sprintf("pidfd_getfd of fd %d of process %d: %v", remote, u.pid, err), Err: err}
	}
	return fd, nil
}

// uffdSupported asks the kernel which userfaultfd features it has, with a
// throwaway userfaultfd of this process (0 if that fails).
func uffdSupported() uint64 {
	f, _ := raw.UffdFeatures()
	return f
}

// Dirty scans the tracked parts, re-protecting what was written, and arms
// the rest of the layout.
func (u *uffdTracker) Dirty(vmas []core.VMA) (_ []PageRange, err error) {
	if u.state != trackerStarted {
		return nil, ErrState
	}
	// The scans of written pages run with the process paused: on 6.18,
	// scans racing with the process's writes were seen to lose writes
	// (pages written while the scan ran, reported by no scan: e2e
	// TestTrackerRace). They go in steps of scanStep bytes, and a pause
	// that has lasted holdBudget ends before the next step, so that a
	// round stops a big process several times briefly rather than once
	// for the whole scan (a 1 GiB scan took up to 32 ms on a loaded
	// machine). That is as exact: a page's write before the step that
	// covers it is reported now, one after it is left for the next round.
	// The rest (arming new areas, reading which pages hold data) changes
	// no protection of a page that may have been written unseen, and runs
	// with the process running.
	h := u.holder()
	defer h.done(&err)
	pl := planLayout(u.areas, vmas)
	var out, written, writtenData []PageRange
	var lost []PageRange // kept parts whose registration is gone
	for _, piece := range piecesOf(pl.areas, pl.kept) {
		if piece.a.attrs.prot&unix.PROT_WRITE == 0 {
			// Nothing writes here (an area made writable is fresh).
			continue
		}
		for at := piece.r.Start; at < piece.r.End; {
			step := PageRange{Start: at, End: min(piece.r.End, at+scanStep)}
			at = step.End
			if err := h.hold(); err != nil {
				return nil, err
			}
			ws, wd, err := u.scanWritten(step, piece.a.attrs.kind, true)
			switch {
			case errors.Is(err, unix.EPERM):
				// The area lost its registration: whole, from this step
				// on (the steps before were scanned, and re-protected).
				lost = append(lost, PageRange{Start: step.Start, End: piece.r.End})
				at = piece.r.End
				continue
			case err != nil:
				return nil, err
			}
			written = append(written, ws...)
			writtenData = append(writtenData, wd...)
		}
	}
	if err := h.release(); err != nil {
		return nil, err
	}
	written = normalize(written)
	out = append(out, written...)
	fresh := normalize(append(lost, pl.fresh...))
	kept := subtract(pl.kept, fresh)
	armed, err := u.arm(pl.areas, fresh)
	if err != nil {
		return nil, err
	}
	out = append(out, fresh...)
	areas := clipAreas(pl.areas, normalize(append(kept, armed...)))

	// Which pages hold data now. Only pages that held data at the last
	// look can have lost it, so only they are looked at again (with small
	// gaps filled, to keep the number of scans down; large empty
	// reservations are skipped); elsewhere in the kept parts, a page holds
	// data now only if it was written. Armed parts get a first look.
	before := intersect(u.data, kept)
	still, err := u.scanData(clipAreas(pl.areas, intersect(coalesce(before, scanGap), kept)))
	if err != nil {
		return nil, err
	}
	base, err := u.scanData(clipAreas(pl.areas, armed))
	if err != nil {
		return nil, err
	}
	// Pages that held data at the last look and do not now: they read
	// as zeros (or as their file) now.
	out = append(out, subtract(before, still)...)
	// A process that is gone makes scans find nothing and registrations
	// fail, which would look like a layout reported whole.
	if err := alive(u.pid); err != nil {
		return nil, fmt.Errorf("uffd-wp tracker: %w", err)
	}
	u.areas = areas
	u.data = normalize(append(append(still, base...), intersect(normalize(writtenData), kept)...))
	return normalize(out), nil
}

// Steps and budget of the paused scans of a Dirty (see Dirty).
// (Variables for the tests, which make every step a pause of its own.)
var (
	scanStep   uint64 = 32 << 20
	holdBudget        = 2 * time.Millisecond
)

// scanHolder pauses the process for the steps of a Dirty's scans: hold
// before each step pauses it unless it is paused already and has been for
// less than holdBudget (then it lets it run first); release lets it run;
// done releases it and records the pauses (Held, Longest).
type scanHolder struct {
	u        *uffdTracker
	resume   func(*error)
	borrowed bool // the caller's freeze holds it: one hold covers all
	since    time.Time
	total    time.Duration
	longest  time.Duration
}

func (u *uffdTracker) holder() *scanHolder { return &scanHolder{u: u} }

func (h *scanHolder) hold() error {
	if h.resume != nil && (h.borrowed || time.Since(h.since) < holdBudget) {
		return nil
	}
	if err := h.release(); err != nil {
		return err
	}
	res, borrowed, err := pauseProcess(h.u.pid, &h.u.tracer, "uffd-wp tracker", h.u.frozen)
	if err != nil {
		return err
	}
	h.borrowed, h.since = borrowed, time.Now()
	h.resume = func(err *error) {
		rerr := res()
		if !borrowed {
			d := time.Since(h.since)
			h.total += d
			h.longest = max(h.longest, d)
		}
		if *err == nil {
			*err = rerr
		}
	}
	return nil
}

func (h *scanHolder) release() (err error) {
	if h.resume != nil {
		h.resume(&err)
		h.resume = nil
	}
	return err
}

func (h *scanHolder) done(err *error) {
	rerr := h.release()
	if *err == nil {
		*err = rerr
	}
	h.u.held, h.u.longest = h.total, h.longest
}

// pause stops the process for a scan (or borrows the caller's freeze);
// the returned func resumes it, notes how long it was held (0 when
// borrowed: the caller's freeze, not ours) and sets *err if that failed
// and nothing else did.
func (u *uffdTracker) pause() (resume func(*error), err error) {
	t0 := time.Now()
	res, borrowed, err := pauseProcess(u.pid, &u.tracer, "uffd-wp tracker", u.frozen)
	if err != nil {
		return nil, err
	}
	return func(err *error) {
		rerr := res()
		u.held = time.Since(t0)
		if borrowed {
			u.held = 0
		}
		u.longest = u.held
		if *err == nil {
			*err = rerr
		}
	}, nil
}

// FinalDirty is Dirty for the last time: one walk of the page tables per
// run of nearby areas finds both the pages written and those that still
// hold data, where Dirty walks each area twice (once to re-protect what was
// written, once for the data); new areas are reported whole without being
// armed. With 1 GiB of memory that is a few milliseconds less of the
// downtime.
func (u *uffdTracker) FinalDirty(vmas []core.VMA) (_ []PageRange, err error) {
	if u.state != trackerStarted {
		return nil, ErrState
	}
	resume, err := u.pause()
	if err != nil {
		return nil, err
	}
	defer resume(&err)
	u.state = trackerFinal
	pl := planLayout(u.areas, vmas)
	before := intersect(u.data, pl.kept)
	var looks []piece
	for _, p := range piecesOf(pl.areas, pl.kept) {
		rs := []PageRange{p.r}
		if p.a.attrs.prot&unix.PROT_WRITE == 0 {
			// Nothing writes here: only pages that held data can have
			// lost it.
			rs = intersect(coalesce(intersect(before, rs), scanGap), rs)
		}
		for _, r := range rs {
			looks = append(looks, piece{r, p.a})
		}
	}
	// One walk for each run of pieces less than scanGap apart: a
	// PostgreSQL backend's layout is ~150 areas, mostly of libraries,
	// and a walk each was ~900 PAGEMAP_SCAN calls for the tree.
	var out, still []PageRange
	for i := 0; i < len(looks); {
		j := i + 1
		for j < len(looks) && looks[j].r.Start-looks[j-1].r.End < scanGap {
			j++
		}
		ws, data, err := u.scanFinal(looks[i:j])
		if err != nil {
			return nil, err
		}
		out = append(out, ws...)
		still = append(still, data...)
		i = j
	}
	out = append(out, pl.fresh...)
	out = append(out, subtract(before, normalize(still))...)
	if err := alive(u.pid); err != nil {
		return nil, fmt.Errorf("uffd-wp tracker: %w", err)
	}
	return normalize(out), nil
}

// scanFinal walks the pieces (sorted, apart) once, from the first's start
// to the last's end, changing nothing, and returns their written pages
// (those of writable areas) and the pages that hold data; what it meets
// between the pieces is not looked at. A part whose registration is gone
// shows every page written (the kernel reports a page written unless it
// is write-protected), which sends it whole, as Dirty does.
//
// The pages PAGEMAP_SCAN shows swapped, pte markers or really in swap,
// are told apart by one read of pagemap for each walk of scanChunk.
func (u *uffdTracker) scanFinal(pieces []piece) (written, data []PageRange, err error) {
	if u.vec == nil {
		u.vec = make([]raw.PageRegion, scanVec)
	}
	ret := uint64(raw.PAGE_IS_WRITTEN | raw.PAGE_IS_PFNZERO | raw.PAGE_IS_PRESENT | raw.PAGE_IS_SWAPPED | raw.PAGE_IS_FILE)
	start, end := pieces[0].r.Start, pieces[len(pieces)-1].r.End
	k := 0 // the first piece that may overlap what comes next
	var swapped []PageRange
	for at := start; at < end; {
		stop := min(end, at+scanChunk)
		if u.beforeWalk != nil {
			u.beforeWalk()
		}
		regs, next, err := raw.PagemapScan(u.pm.Fd(), raw.PmScanArg{
			Start:             at,
			End:               stop,
			CategoryAnyofMask: raw.PAGE_IS_WRITTEN | raw.PAGE_IS_PRESENT | raw.PAGE_IS_SWAPPED,
			ReturnMask:        ret,
		}, u.vec)
		if err != nil {
			return nil, nil, fmt.Errorf("uffd-wp tracker: PAGEMAP_SCAN %#x-%#x of process %d: %w", at, stop, u.pid, err)
		}
		swapped = swapped[:0]
		for _, g := range regs {
			for k < len(pieces) && pieces[k].r.End <= g.Start {
				k++
			}
			for _, p := range pieces[k:] {
				if p.r.Start >= g.End {
					break
				}
				s, e := max(g.Start, p.r.Start), min(g.End, p.r.End)
				kind := p.a.attrs.kind
				if p.a.attrs.prot&unix.PROT_WRITE != 0 && g.Categories&raw.PAGE_IS_WRITTEN != 0 && (g.Categories&raw.PAGE_IS_PFNZERO == 0 || shmem(kind)) {
					written = appendRange(written, s, e)
				}
				switch {
				case g.Categories&(raw.PAGE_IS_SWAPPED|raw.PAGE_IS_PRESENT) == raw.PAGE_IS_SWAPPED:
					swapped = append(swapped, PageRange{s, e})
				case regionData(kind, g.Categories):
					data = appendRange(data, s, e)
				}
			}
		}
		if data, err = u.swappedData(data, swapped); err != nil {
			return nil, nil, err
		}
		if next <= at {
			break
		}
		at = next
	}
	return written, data, nil
}

// scanGap is the widest gap between ranges of pages with data that one
// PAGEMAP_SCAN looks across rather than splitting the scan.
const scanGap = 2 << 20

// coalesce merges ranges of rs (sorted, merged) less than gap bytes
// apart.
func coalesce(rs []PageRange, gap uint64) []PageRange {
	var out []PageRange
	for _, r := range rs {
		if n := len(out); n > 0 && r.Start-out[n-1].End < gap {
			out[n-1].End = r.End
			continue
		}
		out = append(out, r)
	}
	return out
}

// piece is a part of one area.
type piece struct {
	r PageRange
	a *area
}

// piecesOf cuts rs (sorted, merged) at area boundaries.
func piecesOf(areas []area, rs []PageRange) []piece {
	var out []piece
	for i := range areas {
		a := &areas[i]
		for _, r := range intersect([]PageRange{{a.start, a.end}}, rs) {
			out = append(out, piece{r, a})
		}
	}
	return out
}

// clipAreas returns the parts of areas inside rs (sorted, merged).
func clipAreas(areas []area, rs []PageRange) []area {
	var out []area
	for _, p := range piecesOf(areas, rs) {
		a := *p.a
		a.start, a.end = p.r.Start, p.r.End
		out = append(out, a)
	}
	return out
}

// arm registers and write-protects the fresh ranges, area by area, and
// returns the ranges it armed. A range the kernel refuses (another
// userfaultfd has it, or the layout changed under us) is left unarmed: it
// is fresh again at the next call and reported whole again.
func (u *uffdTracker) arm(areas []area, fresh []PageRange) ([]PageRange, error) {
	var armed []PageRange
	for _, p := range piecesOf(areas, fresh) {
		if _, err := raw.UffdRegister(u.uffd, p.r.Start, p.r.End-p.r.Start, raw.UFFDIO_REGISTER_MODE_WP); err != nil {
			if isRefusal(err) {
				continue
			}
			return nil, fmt.Errorf("uffd-wp tracker: UFFDIO_REGISTER %v of process %d: %w", p.r, u.pid, err)
		}
		if _, _, err := u.scanWritten(p.r, p.a.attrs.kind, false); err != nil {
			if isRefusal(err) {
				continue
			}
			return nil, err
		}
		armed = append(armed, p.r)
	}
	return armed, nil
}

// isRefusal tells the errors of a range that cannot be tracked now
// (layout changed meanwhile, another userfaultfd owns it, no VM_MAYWRITE)
// from those that end tracking.
func isRefusal(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EBUSY) ||
		errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOENT)
}

// scanChunk bounds the address space one PAGEMAP_SCAN of the final scan
// walks: the kernel holds the process's mmap lock for reading across a
// walk that fills less than its buffer, and (with a kernel that does not
// preempt) the CPU too. A final scan runs beside the injected calls
// (source's frozenState), whose mmap and brk wait for that lock and whose
// tracer threads for that CPU: 8 MiB walk in well under a millisecond.
const scanChunk = 8 << 20

// scanVec is the number of regions one PAGEMAP_SCAN returns at most.
const scanVec = 4096

// scanWritten reports the written pages of r, in an area of kind, and
// write-protects them, atomically per page; data are the written pages
// that hold data (see pageData). With keep false nothing is collected (the
// range is being armed and is reported whole anyway).
//
// A "written" page that maps the zero page reads as zeros, as it did at
// the last look or else scanData reports it as gone: it is left out.
// (The kernel drops the page table entry of an anonymous page on
// MADV_DONTNEED, protection and all, and a read then maps the zero page
// unprotected.)
func (u *uffdTracker) scanWritten(r PageRange, kind string, keep bool) (written, data []PageRange, err error) {
	if u.vec == nil {
		u.vec = make([]raw.PageRegion, scanVec)
	}
	ret := uint64(raw.PAGE_IS_WRITTEN | raw.PAGE_IS_PFNZERO | raw.PAGE_IS_PRESENT | raw.PAGE_IS_SWAPPED)
	if kind == core.VMAFile {
		ret |= raw.PAGE_IS_FILE
	}
	for at := r.Start; at < r.End; {
		regs, end, err := raw.PagemapScan(u.pm.Fd(), raw.PmScanArg{
			Flags:        raw.PM_SCAN_WP_MATCHING | raw.PM_SCAN_CHECK_WPASYNC,
			Start:        at,
			End:          r.End,
			CategoryMask: raw.PAGE_IS_WRITTEN,
			ReturnMask:   ret,
		}, u.vec)
		if err != nil {
			return nil, nil, fmt.Errorf("uffd-wp tracker: PAGEMAP_SCAN %#x-%#x of process %d: %w", at, r.End, u.pid, err)
		}
		if keep {
			for _, g := range regs {
				if g.Categories&raw.PAGE_IS_PFNZERO != 0 && !shmem(kind) {
					continue
				}
				written = appendRange(written, g.Start, g.End)
				if regionData(kind, g.Categories) {
					data = appendRange(data, g.Start, g.End)
				}
			}
		}
		if end <= at {
			return nil, nil, fmt.Errorf("uffd-wp tracker: PAGEMAP_SCAN %#x-%#x of process %d made no progress", at, r.End, u.pid)
		}
		at = end
	}
	return written, data, nil
}

// scanData returns the pages of areas that hold data (see pageData), from
// PAGEMAP_SCAN's categories, without touching any protection.
func (u *uffdTracker) scanData(areas []area) ([]PageRange, error) {
	if u.vec == nil {
		u.vec = make([]raw.PageRegion, scanVec)
	}
	var out []PageRange
	for _, a := range areas {
		for at := a.start; at < a.end; {
			ret := uint64(raw.PAGE_IS_PRESENT | raw.PAGE_IS_SWAPPED | raw.PAGE_IS_PFNZERO)
			if a.attrs.kind == core.VMAFile {
				// Costs a page lookup per entry: only where it matters.
				ret |= raw.PAGE_IS_FILE
			}
			regs, end, err := raw.PagemapScan(u.pm.Fd(), raw.PmScanArg{
				Start:             at,
				End:               a.end,
				CategoryAnyofMask: raw.PAGE_IS_PRESENT | raw.PAGE_IS_SWAPPED,
				ReturnMask:        ret,
			}, u.vec)
			if err != nil {
				return nil, fmt.Errorf("uffd-wp tracker: PAGEMAP_SCAN %#x-%#x of process %d: %w", at, a.end, u.pid, err)
			}
			for _, g := range regs {
				if out, err = u.appendData(out, a.attrs.kind, g); err != nil {
					return nil, err
				}
			}
			if end <= at {
				break
			}
			at = end
		}
	}
	return out, nil
}

// appendData appends the pages of region g (of an area of kind) that hold
// data to out.
func (u *uffdTracker) appendData(out []PageRange, kind string, g raw.PageRegion) ([]PageRange, error) {
	switch {
	case g.Categories&(raw.PAGE_IS_SWAPPED|raw.PAGE_IS_PRESENT) == raw.PAGE_IS_SWAPPED:
		// Swapped out, or a pte marker: only pagemap tells.
		return u.swappedData(out, []PageRange{{g.Start, g.End}})
	case regionData(kind, g.Categories):
		return appendRange(out, g.Start, g.End), nil
	}
	return out, nil
}

// swappedData appends the pages of rs (sorted, apart), all shown as
// swapped by PAGEMAP_SCAN, that are really in swap rather than pte
// markers: pagemap tells, read once from the first's start to the last's
// end (rs lie within one walk of scanChunk: 16 KiB of entries at most).
func (u *uffdTracker) swappedData(out []PageRange, rs []PageRange) ([]PageRange, error) {
	if len(rs) == 0 {
		return out, nil
	}
	start := rs[0].Start
	var err error
	u.ents, err = u.pm.Read(start, rs[len(rs)-1].End, u.ents)
	if err != nil {
		return nil, fmt.Errorf("uffd-wp tracker: %w", err)
	}
	for _, r := range rs {
		for addr := r.Start; addr < r.End; addr += trackPage {
			if e := u.ents[(addr-start)/trackPage]; e.Swapped() && !e.PTEMarker() {
				out = appendRange(out, addr, addr+trackPage)
			}
		}
	}
	return out, nil
}

// regionData is pageData for PAGEMAP_SCAN categories.
func regionData(kind string, c uint64) bool {
	switch {
	case c&raw.PAGE_IS_SWAPPED != 0:
		return true
	case c&raw.PAGE_IS_PRESENT == 0:
		return false
	case kind == core.VMAFile && c&raw.PAGE_IS_FILE != 0:
		return false
	case !shmem(kind) && c&raw.PAGE_IS_PFNZERO != 0:
		return false
	}
	return true
}

// Close closes our copy of the userfaultfd: the kernel unregisters every
// area and drops the protections.
func (u *uffdTracker) Close() error {
	u.state = trackerClosed
	var errs []error
	if u.tracer != nil {
		u.tracer.Close()
		u.tracer = nil
	}
	if u.uffd >= 0 {
		if err := unix.Close(u.uffd); err != nil {
			errs = append(errs, fmt.Errorf("uffd-wp tracker: close userfaultfd: %w", err))
		}
		u.uffd = -1
	}
	if u.pm != nil {
		u.pm.Close()
		u.pm = nil
	}
	u.areas, u.data = nil, nil
	return errors.Join(errs...)
}
