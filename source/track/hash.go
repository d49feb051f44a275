package track

import (
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/raw"
)

// hashTracker finds written pages by their contents: it keeps a 64-bit
// hash of every page that holds data, re-reads those pages each round and
// reports the ones whose hash changed, appeared or went away. It works on
// any kernel and never stops the process, at the price of reading all of
// its memory every round.
//
// Reads race with writes, and that is fine in one direction: a write after
// a page was read this round changes its contents, so the next round
// reports it. The other direction needs Sent (see ContentTracker).
//
// A page with no data of its own hashes as what it reads: zeros for
// anonymous and shared memory, and "the file" for a private file page that
// was never copied, so a page dropped by MADV_DONTNEED is reported exactly
// when its contents change.
type hashTracker struct {
	pid  int
	seed maphash.Seed

	mu       sync.Mutex // guards everything below: Sent may come from another goroutine
	pm       *proc.Pagemap
	mem      *os.File // /proc/PID/mem, for pages process_vm_readv may not read
	zero     *zeroPFNs
	areas    []area
	hashes   map[uint64]*hashChunk // by address >> hashChunkShift; 0 = no data
	zeroHash uint64                // hash of a page of zeros
	ents     []proc.PagemapEntry
	buf      []byte
	state    trackerState
}

const (
	hashChunkShift = 21 // 2 MiB of address space per chunk
	hashChunkPages = 1 << (hashChunkShift - 12)
	// fileHash stands for a private file page that is still the file's.
	fileHash = 1
	// hashBatch is the most bytes read with one process_vm_readv.
	hashBatch = 4 << 20
	// hashIovMax is the most remote iovecs in one process_vm_readv
	// (IOV_MAX).
	hashIovMax = 1024
)

type hashChunk [hashChunkPages]uint64

func newHashTracker(pid int) *hashTracker {
	h := &hashTracker{pid: pid, seed: maphash.MakeSeed()}
	h.zeroHash = h.sum(make([]byte, trackPage))
	return h
}

func (h *hashTracker) Name() string { return Hash }

// Held is always 0: the process is never stopped.
func (h *hashTracker) Held() time.Duration { return 0 }

// sum hashes one page. 0 and fileHash are reserved.
func (h *hashTracker) sum(page []byte) uint64 {
	v := maphash.Bytes(h.seed, page)
	if v <= fileHash {
		v += 2
	}
	return v
}

// Start hashes every page that holds data.
//
// Preconditions: p's threads are stopped (so that the first hashes are a
// consistent picture); nothing is injected.
func (h *hashTracker) Start(p *ptrace.Proc, vmas []core.VMA) (err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != trackerNew {
		return ErrState
	}
	if p != nil && p.PID != h.pid {
		return fmt.Errorf("hash tracker for process %d started on process %d", h.pid, p.PID)
	}
	h.state = trackerStarted
	defer func() {
		if err != nil {
			h.closeLocked()
		}
	}()
	if h.pm, err = proc.OpenPagemap(h.pid); err != nil {
		return fmt.Errorf("hash tracker: %w", err)
	}
	if h.mem, err = os.Open(fmt.Sprintf("/proc/%d/mem", h.pid)); err != nil {
		return fmt.Errorf("hash tracker: %w", err)
	}
	h.zero = readZeroPFNs()
	pl := planLayout(nil, vmas)
	h.hashes = map[uint64]*hashChunk{}
	for _, a := range pl.areas {
		if err := h.scan(a, h.hashes, nil); err != nil {
			return err
		}
	}
	h.areas = pl.areas
	return nil
}

// Dirty re-reads every page that holds data and compares.
func (h *hashTracker) Dirty(vmas []core.VMA) ([]PageRange, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != trackerStarted {
		return nil, ErrState
	}
	pl := planLayout(h.areas, vmas)
	next := map[uint64]*hashChunk{}
	var out []PageRange
	for _, p := range piecesOf(pl.areas, pl.kept) {
		a := *p.a
		a.start, a.end = p.r.Start, p.r.End
		if a.attrs.prot&unix.PROT_WRITE == 0 && !h.anyData(a.start, a.end) {
			// Not writable (an area made writable is fresh) and no data
			// to lose: large reservations cost nothing.
			continue
		}
		err := h.scan(a, next, func(addr, sum uint64) {
			if sum != h.get(h.hashes, addr, a.attrs.kind) {
				out = appendRange(out, addr, addr+trackPage)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	for _, p := range piecesOf(pl.areas, pl.fresh) {
		a := *p.a
		a.start, a.end = p.r.Start, p.r.End
		if err := h.scan(a, next, nil); err != nil {
			return nil, err
		}
	}
	out = append(out, pl.fresh...)
	h.areas, h.hashes = pl.areas, next
	return normalize(out), nil
}

// Sent records the contents the caller sent for the pages at addr.
func (h *hashTracker) Sent(addr uint64, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != trackerStarted || addr%trackPage != 0 {
		return
	}
	for off := 0; off+trackPage <= len(data); off += trackPage {
		h.set(h.hashes, addr+uint64(off), h.sum(data[off:off+trackPage]))
	}
}

// anyData reports whether a hash is recorded for a page in [start, end).
func (h *hashTracker) anyData(start, end uint64) bool {
	for c := start >> hashChunkShift; c <= (end-1)>>hashChunkShift; c++ {
		chunk := h.hashes[c]
		if chunk == nil {
			continue
		}
		for i, v := range chunk {
			addr := c<<hashChunkShift + uint64(i)*trackPage
			if v != 0 && addr >= start && addr < end {
				return true
			}
		}
	}
	return false
}

// get returns the hash recorded for the page at addr, or what a page with
// no data of its own reads as in an area of kind.
func (h *hashTracker) get(m map[uint64]*hashChunk, addr uint64, kind string) uint64 {
	if c := m[addr>>hashChunkShift]; c != nil {
		if v := c[(addr>>12)%hashChunkPages]; v != 0 {
			return v
		}
	}
	if kind == core.VMAFile {
		return fileHash
	}
	return h.zeroHash
}

func (h *hashTracker) set(m map[uint64]*hashChunk, addr, v uint64) {
	c := m[addr>>hashChunkShift]
	if c == nil {
		c = new(hashChunk)
		m[addr>>hashChunkShift] = c
	}
	c[(addr>>12)%hashChunkPages] = v
}

// scan hashes the pages of a that hold data into m, and calls f, if not
// nil, with the hash of every page of a: pages without data get what they
// read as (zeros, or the file).
func (h *hashTracker) scan(a area, m map[uint64]*hashChunk, f func(addr, sum uint64)) error {
	none := h.zeroHash
	if a.attrs.kind == core.VMAFile {
		none = fileHash
	}
	readable := a.attrs.prot&unix.PROT_READ != 0
	for at := a.start; at < a.end; {
		end := min(a.end, at+pagemapChunk*trackPage)
		ents, err := h.pm.Read(at, end, h.ents)
		if err != nil {
			return fmt.Errorf("hash tracker: %w", err)
		}
		h.ents = ents
		// Runs of pages with data, read and hashed in batches; pages
		// without data are settled at once.
		var runs []PageRange
		flush := func() error {
			if len(runs) == 0 {
				return nil
			}
			err := h.readRuns(runs, readable, func(addr uint64, page []byte) {
				sum := none
				if page != nil {
					sum = h.sum(page)
				} else {
					sum = 0 // unreadable now: unknown, differs from everything
				}
				if sum != 0 && sum != none {
					h.set(m, addr, sum)
				}
				if f != nil {
					f(addr, sum)
				}
			})
			runs = runs[:0]
			return err
		}
		var batched uint64
		for i, e := range ents {
			addr := at + uint64(i)*trackPage
			if !pageData(a.attrs.kind, e, h.zero) {
				if f != nil {
					f(addr, none)
				}
				continue
			}
			runs = appendRange(runs, addr, addr+trackPage)
			batched += trackPage
			if batched >= hashBatch || len(runs) >= hashIovMax {
				if err := flush(); err != nil {
					return err
				}
				batched = 0
			}
		}
		if err := flush(); err != nil {
			return err
		}
		at = end
	}
	return nil
}

// readRuns reads the pages of runs (at most hashBatch bytes, hashIovMax
// runs) and calls f for each page, with nil for a page that could not be
// read (unmapped meanwhile).
func (h *hashTracker) readRuns(runs []PageRange, readable bool, f func(addr uint64, page []byte)) error {
	var total int
	for _, r := range runs {
		total += int(r.End - r.Start)
	}
	if cap(h.buf) < total {
		h.buf = make([]byte, max(total, hashBatch))
	}
	buf := h.buf[:total]
	n := 0
	if readable {
		remote := make([]unix.RemoteIovec, len(runs))
		for i, r := range runs {
			remote[i] = unix.RemoteIovec{Base: uintptr(r.Start), Len: int(r.End - r.Start)}
		}
		var err error
		n, err = raw.ReadRemotev(h.pid, buf, remote)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("hash tracker: process %d: %w", h.pid, err)
			}
			n = 0
		}
		n -= n % trackPage
	}
	off := 0
	for _, r := range runs {
		for addr := r.Start; addr < r.End; addr += trackPage {
			page := buf[off : off+trackPage]
			if off >= n {
				// Not read in the batch: PROT_NONE, or gone. /proc/PID/mem
				// reads what the process itself may not.
				if _, err := h.mem.ReadAt(page, int64(addr)); err != nil {
					page = nil
				}
			}
			f(addr, page)
			off += trackPage
		}
	}
	return nil
}

// Close drops the hashes and files; nothing in the process changed.
func (h *hashTracker) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeLocked()
	return nil
}

func (h *hashTracker) closeLocked() {
	h.state = trackerClosed
	if h.pm != nil {
		h.pm.Close()
		h.pm = nil
	}
	if h.mem != nil {
		h.mem.Close()
		h.mem = nil
	}
	h.areas, h.hashes, h.buf = nil, nil, nil
}
