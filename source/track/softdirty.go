package track

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// softDirtyTracker tracks writes with the soft-dirty bit (pagemap bit 55),
// cleared for the whole process by writing "4" to /proc/PID/clear_refs.
// Needs CONFIG_MEM_SOFT_DIRTY.
//
// Reading the bits and clearing them are two steps, and a write between
// them would be lost, so Dirty stops the process around them: it seizes
// and interrupts every thread with its own tracer, reads pagemap for the
// tracked areas, clears, and detaches. Held reports how long that took.
// When the caller already holds the process frozen (the final round),
// Dirty uses that stop and holds nothing itself.
//
// The kernel helps with layout changes: a new or grown VMA carries
// VM_SOFTDIRTY, which makes pagemap report all its pages soft-dirty, and
// mremap marks the pages it moves soft-dirty. A page dropped with
// MADV_DONTNEED loses its bit with its page table entry; such pages are
// found by comparing which pages hold data with the previous round.
type softDirtyTracker struct {
	pid    int
	tracer *ptrace.Tracer // ours, for the stop in Dirty; nil until needed
	pm     *proc.Pagemap
	zero   *zeroPFNs
	areas  []area
	data   []PageRange // pages that held data at the last look
	held   time.Duration
	ents   []proc.PagemapEntry
	state  trackerState
	// frozen: the caller holds the process stopped (Frozen).
	frozen bool
}

func (s *softDirtyTracker) callerFrozen() { s.frozen = true }

func newSoftDirtyTracker(pid int) *softDirtyTracker {
	return &softDirtyTracker{pid: pid}
}

func (s *softDirtyTracker) Name() string { return SoftDirty }

// Held is how long the last Dirty kept the process stopped.
func (s *softDirtyTracker) Held() time.Duration { return s.held }

// Start clears the soft-dirty bits of the whole process.
//
// Preconditions: p is seized and all its threads are stopped.
func (s *softDirtyTracker) Start(p *ptrace.Proc, vmas []core.VMA) (err error) {
	if s.state != trackerNew {
		return ErrState
	}
	if p.PID != s.pid {
		return fmt.Errorf("soft-dirty tracker for process %d started on process %d", s.pid, p.PID)
	}
	s.state = trackerStarted
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.pm, err = proc.OpenPagemap(s.pid); err != nil {
		return fmt.Errorf("soft-dirty tracker: %w", err)
	}
	s.zero = readZeroPFNs()
	if err := s.clearRefs(); err != nil {
		return err
	}
	s.areas = planLayout(nil, vmas).areas
	s.data, err = s.readData(s.areas)
	return err
}

// clearRefs clears the soft-dirty bits and write-protects every page
// again.
func (s *softDirtyTracker) clearRefs() error {
	path := fmt.Sprintf("/proc/%d/clear_refs", s.pid)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("soft-dirty tracker: %w", err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("4")); err != nil {
		return fmt.Errorf("soft-dirty tracker: write 4 to %s: %w", path, err)
	}
	return nil
}

// Dirty stops the process, reads and clears the soft-dirty bits, and lets
// it run on.
func (s *softDirtyTracker) Dirty(vmas []core.VMA) (_ []PageRange, err error) {
	if s.state != trackerStarted {
		return nil, ErrState
	}
	pl := planLayout(s.areas, vmas)
	// Only writable areas can get new soft-dirty bits (an area made
	// writable since is fresh), so only they are read while the process
	// is stopped. Which pages hold data is read for the rest afterwards:
	// that needs no stop, as a page that loses its data later is seen
	// then.
	var writable, others []area
	for _, a := range clipAreas(pl.areas, pl.kept) {
		if a.attrs.prot&unix.PROT_WRITE != 0 {
			writable = append(writable, a)
		} else {
			others = append(others, a)
		}
	}
	// Of the rest, only pages that held data can lose it: look at those
	// (small gaps filled) and at the fresh parts.
	others = clipAreas(others, intersect(coalesce(s.data, scanGap), pl.kept))
	others = append(others, clipAreas(pl.areas, pl.fresh)...)

	var out, data []PageRange
	t0 := time.Now()
	resume, borrowed, err := s.stop()
	if err != nil {
		return nil, err
	}
	rerr := func() error {
		for _, a := range writable {
			err := s.walk(a, func(addr uint64, e proc.PagemapEntry, has bool) {
				if e.SoftDirty() {
					out = appendRange(out, addr, addr+trackPage)
				}
				if has {
					data = appendRange(data, addr, addr+trackPage)
				}
			})
			if err != nil {
				return err
			}
		}
		return s.clearRefs()
	}()
	if err := errors.Join(rerr, resume()); err != nil {
		return nil, err
	}
	s.held = time.Since(t0)
	if borrowed {
		s.held = 0
	}
	more, err := s.readData(others)
	if err != nil {
		return nil, err
	}
	data = normalize(append(data, more...))
	// Pages that held data at the last look and do not now.
	out = append(out, intersect(subtract(s.data, data), pl.kept)...)
	out = append(out, pl.fresh...)
	s.areas, s.data = pl.areas, data
	return normalize(out), nil
}

// stop stops every thread of the process, unless the caller already holds
// it stopped (borrowed), and returns how to let it run on.
func (s *softDirtyTracker) stop() (resume func() error, borrowed bool, err error) {
	return pauseProcess(s.pid, &s.tracer, "soft-dirty tracker", s.frozen)
}

// pauseProcess stops every thread of pid with the tracer *tr (made on
// first use), unless the caller already holds it stopped (borrowed: it
// said so, callerFrozen, or every thread is in a stop of this process's),
// and returns how to let it run on. A thread interrupted in a system call
// resumes it as the kernel would (a sleep with the time it has left).
func pauseProcess(pid int, tr **ptrace.Tracer, who string, callerFrozen bool) (resume func() error, borrowed bool, err error) {
	if callerFrozen {
		return func() error { return nil }, true, nil
	}
	if frozen, err := frozenByUs(pid, who); err != nil {
		return nil, false, err
	} else if frozen {
		return func() error { return nil }, true, nil
	}
	if *tr == nil {
		*tr = ptrace.NewTracer()
	}
	p, err := (*tr).Seize(pid)
	if err != nil {
		return nil, false, fmt.Errorf("%s: stop process %d: %w", who, pid, err)
	}
	// Seize prepares interrupted system calls to be run anew from the
	// start (right for a restore, where the kernel's restart block is
	// lost). Here the process only pauses: give every thread its real
	// registers back, so the kernel restarts the call itself, a sleep
	// with the time it has left.
	for _, th := range p.Threads {
		if th.Restart == "" {
			continue
		}
		var regs unix.PtraceRegs
		if err := (*tr).Do(func() error { return unix.PtraceGetRegs(th.TID, &regs) }); err != nil {
			p.Detach()
			return nil, false, fmt.Errorf("%s: registers of thread %d: %w", who, th.TID, err)
		}
		p.SetRegs(th, &regs)
	}
	return p.Detach, false, nil
}

// frozenByUs reports whether this process traces pid and holds every one
// of its threads stopped (the caller's freeze), and fails if it traces the
// process without holding it stopped. who names the tracker in errors.
func frozenByUs(pid int, who string) (bool, error) {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return false, fmt.Errorf("%s: %w", who, err)
	}
	// TracerPid is the tracing thread, one of ours if we trace it.
	if st.TracerPID == 0 {
		return false, nil
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", st.TracerPID)); err != nil {
		return false, nil
	}
	tids, err := proc.ReadTIDs(pid)
	if err != nil {
		return false, fmt.Errorf("%s: %w", who, err)
	}
	for _, tid := range tids {
		state, err := proc.ThreadState(pid, tid)
		if err != nil {
			continue // exited meanwhile
		}
		if state != 't' {
			return false, fmt.Errorf("%s: process %d is traced by this process but thread %d runs (state %c); stop it or detach it before Dirty", who, pid, tid, state)
		}
	}
	return true, nil
}

// pagemapChunk bounds one pagemap read, in pages.
const pagemapChunk = 1 << 18

// walk calls f for every page of a with its pagemap entry and whether it
// holds data.
func (s *softDirtyTracker) walk(a area, f func(addr uint64, e proc.PagemapEntry, data bool)) error {
	for at := a.start; at < a.end; {
		end := min(a.end, at+pagemapChunk*trackPage)
		ents, err := s.pm.Read(at, end, s.ents)
		if err != nil {
			return fmt.Errorf("soft-dirty tracker: %w", err)
		}
		s.ents = ents
		for i, e := range ents {
			f(at+uint64(i)*trackPage, e, pageData(a.attrs.kind, e, s.zero))
		}
		at = end
	}
	return nil
}

// readData returns the pages of areas that hold data.
func (s *softDirtyTracker) readData(areas []area) ([]PageRange, error) {
	var out []PageRange
	for _, a := range areas {
		err := s.walk(a, func(addr uint64, _ proc.PagemapEntry, data bool) {
			if data {
				out = appendRange(out, addr, addr+trackPage)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Close drops the tracker's tracer and files. The soft-dirty bits are left
// as they are: they change nothing for the process.
func (s *softDirtyTracker) Close() error {
	s.state = trackerClosed
	if s.tracer != nil {
		s.tracer.Close()
		s.tracer = nil
	}
	if s.pm != nil {
		s.pm.Close()
		s.pm = nil
	}
	s.areas, s.data = nil, nil
	return nil
}
