package target

// Post-copy on the target: the process resumes with pages missing
// (handoff.PostCopyState). A userfaultfd made in the process at its
// first layout (by injection, taken with pidfd_getfd, as the source's
// uffd-wp tracker does) registers the areas of the missing pages in
// missing mode once the process is restored; what it had of those pages
// from pre-copy is dropped first. After the resume a fault on a missing
// page asks the source for it (a request stream, answered ahead of the
// background), the background stream fills the rest, and when every page
// is in place the target says done and closes the userfaultfd. If the
// link or the source dies before, the process cannot go on: it is killed
// and the loss reported.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/transport"
)

// uffdFeatures are the userfaultfd features post-copy asks for: the
// process's madvise(DONTNEED), munmap and mremap of missing pages are
// told (they would otherwise be filled with stale contents, or lost), and
// a fork too (its child would see zeros where pages are missing: such a
// process is lost, see pcFill.event).
const uffdFeatures = raw.UFFD_FEATURE_EVENT_REMOVE | raw.UFFD_FEATURE_EVENT_UNMAP | raw.UFFD_FEATURE_EVENT_REMAP | raw.UFFD_FEATURE_EVENT_FORK

// PostCopyReady says this host can serve post-copy: it has userfaultfd
// with the features post-copy needs (handoff.PostCopyTarget).
func (t *liveTarget) PostCopyReady() bool {
	f, err := raw.UffdFeatures()
	return err == nil && f&uffdFeatures == uffdFeatures
}

// takeUffd makes a userfaultfd in the root process being built, takes it
// here and closes the process's copy: ioctls on it act on the process's
// memory. It is made while the process is still privileged (a kernel
// fault, a read(2) into a missing page, needs a userfaultfd made with
// CAP_SYS_PTRACE when vm.unprivileged_userfaultfd is 0).
func (b *Builder) takeUffd() (fd int, err error) {
	r := b.all[0]
	if r.p == nil {
		return -1, errors.New("post-copy: no process being built")
	}
	remote, err := r.sys("userfaultfd", unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("post-copy: userfaultfd injected into process %d: %w", r.pid, err)
	}
	defer func() {
		if _, cerr := r.sys("close", unix.SYS_CLOSE, remote); cerr != nil && err == nil {
			unix.Close(fd)
			fd, err = -1, fmt.Errorf("post-copy: close the userfaultfd left in process %d: %w", r.pid, cerr)
		}
	}()
	pidfd, err := unix.PidfdOpen(r.pid, 0)
	if err != nil {
		return -1, fmt.Errorf("post-copy: pidfd_open(%d): %w", r.pid, err)
	}
	defer unix.Close(pidfd)
	if fd, err = unix.PidfdGetfd(pidfd, int(remote), 0); err != nil {
		return -1, fmt.Errorf("post-copy: pidfd_getfd of fd %d of process %d: %w", remote, r.pid, err)
	}
	if _, err := raw.UffdAPI(fd, uffdFeatures); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("post-copy: UFFDIO_API with features %#x: %w", uint64(uffdFeatures), err)
	}
	return fd, nil
}

// checkMissing checks the missing pages of a state against the final
// layout of the process: sorted, page-aligned, each in one area whose
// pages can be missing (as the source's deferrable). It returns the
// areas to register.
func checkMissing(st *handoff.PostCopyState, vmas []core.VMA) ([]core.VMA, error) {
	if len(st.Missing) > handoff.MaxMissingSpans {
		return nil, fmt.Errorf("post-copy: %d runs of missing pages, at most %d", len(st.Missing), handoff.MaxMissingSpans)
	}
	var areas []core.VMA
	var end uint64
	for i, s := range st.Missing {
		if s.Start%pageSize != 0 || s.End%pageSize != 0 || s.End <= s.Start || (i > 0 && s.Start < end) {
			return nil, fmt.Errorf("post-copy: missing pages %#x-%#x: empty, unaligned or out of order", s.Start, s.End)
		}
		end = s.End
		j := sort.Search(len(vmas), func(j int) bool { return vmas[j].End > s.Start })
		if j == len(vmas) || vmas[j].Start > s.Start || s.End > vmas[j].End {
			return nil, fmt.Errorf("post-copy: missing pages %#x-%#x are not in one area of the process", s.Start, s.End)
		}
		v := vmas[j]
		if v.Kind != core.VMAAnon || v.Prot&unix.PROT_WRITE == 0 || v.Lock != "" || v.Flags&unix.MAP_GROWSDOWN != 0 {
			return nil, fmt.Errorf("post-copy: missing pages %#x-%#x in an area (%s %#x-%#x) that cannot miss pages", s.Start, s.End, v.Kind, v.Start, v.End)
		}
		if n := len(areas); n == 0 || areas[n-1].Start != v.Start {
			areas = append(areas, v)
		}
	}
	return areas, nil
}

// dropMissing drops what the process has of the missing pages (stale
// copies from pre-copy) and registers their areas with uffd in missing
// mode: a fault there waits for this side to fill the page.
//
// Preconditions: the process is restored and stopped; no injection
// follows.
func (b *Builder) dropMissing(uffd int, st *handoff.PostCopyState, areas []core.VMA) error {
	r := b.all[0]
	t0 := time.Now()
	for _, s := range st.Missing {
		if _, err := r.sys("madvise", unix.SYS_MADVISE, s.Start, s.End-s.Start, unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("post-copy: drop pages %#x-%#x of process %d: %w", s.Start, s.End, r.pid, err)
		}
	}
	b.ss.log.Debug("post-copy: pages dropped", "runs", len(st.Missing), "ms", time.Since(t0).Milliseconds())
	for _, v := range areas {
		if _, err := raw.UffdRegister(uffd, v.Start, v.End-v.Start, raw.UFFDIO_REGISTER_MODE_MISSING); err != nil {
			return fmt.Errorf("post-copy: register %#x-%#x of process %d for missing pages: %w", v.Start, v.End, r.pid, err)
		}
	}
	return nil
}

// preparePostCopy readies the restored process for post-copy: called by
// Restore once it is restored and checked.
func (t *liveTarget) preparePostCopy(st *handoff.PostCopyState, img *core.Image) error {
	if t.uffd < 0 {
		return errors.New("post-copy: the source did not announce it, no userfaultfd was made")
	}
	areas, err := checkMissing(st, img.Process.VMAs)
	if err != nil {
		return err
	}
	var runs []pagestream.Run
	for _, s := range st.Missing {
		runs = append(runs, pagestream.Run{Addr: s.Start, Pages: int((s.End - s.Start) / pageSize)})
	}
	set, err := pagestream.NewPageSet(runs)
	if err != nil {
		return err
	}
	if err := t.b.dropMissing(t.uffd, st, areas); err != nil {
		return err
	}
	pidfd, err := unix.PidfdOpen(t.here(), 0)
	if err != nil {
		return fmt.Errorf("post-copy: pidfd_open(%d): %w", t.here(), err)
	}
	t.pc = &pcFill{t: t, pid: t.here(), pidfd: pidfd, uffd: t.uffd, missing: set, asked: map[uint64]time.Time{}, done: make(chan struct{}), ended: make(chan struct{})}
	t.uffd = -1 // the fill's now
	t.lap("post-copy: drop and register missing pages")
	return nil
}

// closeUffd closes the userfaultfd if no fill took it.
func (t *liveTarget) closeUffd() {
	if t.uffd >= 0 {
		unix.Close(t.uffd)
		t.uffd = -1
	}
}

// pcFill fills the missing pages of a resumed process.
type pcFill struct {
	t     *liveTarget
	pid   int
	pidfd int
	uffd  int

	mu      sync.Mutex
	missing *pagestream.PageSet // not in place yet
	asked   map[uint64]time.Time
	// queue are the requests not answered yet, in order.
	queue   []pagestream.PostCopyMsg
	remaps  []remap
	req     net.Conn
	wmu     sync.Mutex // writes to req
	err     error
	started time.Time

	faults, latSum, latMax uint64 // µs
	onDemand, background   int
	done                   chan struct{} // closed when it ends, filled or failed
	ended                  chan struct{} // closed once finish is through
	finished               bool
	// exited: the process is gone (it exited, or someone killed it);
	// there is nothing more to fill.
	exited bool
	// kids are the process's children at the resume; forked: it forked
	// since (its new children are killed with it).
	kids   map[int]bool
	forked bool
}

// children lists the children of process pid (of all its threads).
func children(pid int) map[int]bool {
	out := map[int]bool{}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out[c] = true
			}
		}
	}
	return out
}

// killForked kills the children the process forked during post-copy:
// they would run with zeros in place of the pages still missing. A child
// shows in its parent's list once the fork completes, after its event
// was read: it is looked for a little while.
func (f *pcFill) killForked() {
	deadline := time.Now().Add(time.Second)
	killed := 0
	for killed == 0 && time.Now().Before(deadline) {
		for c := range children(f.pid) {
			if f.kids[c] {
				continue
			}
			if pfd, err := unix.PidfdOpen(c, 0); err == nil {
				unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0)
				unix.Close(pfd)
				f.t.log.Error("post-copy: killed a child the process forked while pages were missing", "pid", f.pid, "child", c)
				killed++
			}
		}
		if killed == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// remap is an mremap of the process: pages of [from, from+len) are now
// at to.
type remap struct{ from, to, len uint64 }

// here is where the page the source knows at addr is now.
func (f *pcFill) here(addr uint64) uint64 {
	for _, m := range f.remaps {
		if addr >= m.from && addr < m.from+m.len {
			addr = m.to + (addr - m.from)
		}
	}
	return addr
}

// origin is where the page at addr was at the freeze.
func (f *pcFill) origin(addr uint64) uint64 {
	for i := len(f.remaps) - 1; i >= 0; i-- {
		m := f.remaps[i]
		if addr >= m.to && addr < m.to+m.len {
			addr = m.from + (addr - m.to)
		}
	}
	return addr
}

// startPostCopy runs the fill of a resumed process; waitPostCopy waits
// for its end.
func (t *liveTarget) startPostCopy(ctx context.Context) {
	f := t.pc
	if f == nil {
		return
	}
	f.started = time.Now()
	f.kids = children(f.pid)
	t.log.Info("post-copy: the process runs; filling its missing pages", "pid", f.pid, "missing", f.missing.Total())
	go f.run(ctx)
}

// waitPostCopy waits until the post-copy of the session, if any, ended,
// and returns its error: the process was killed.
func (t *liveTarget) waitPostCopy() error {
	if t.pc == nil {
		return nil
	}
	<-t.pc.ended
	t.pc.mu.Lock()
	defer t.pc.mu.Unlock()
	return t.pc.err
}

// postCopyTimeout bounds the wait for the source's streams, and for an
// answer to a request.
const postCopyTimeout = 30 * time.Second

func (f *pcFill) run(ctx context.Context) {
	sess := f.t.sess
	var bg net.Conn
	actx, cancel := context.WithTimeout(ctx, postCopyTimeout)
	for f.req == nil || bg == nil {
		kind, c, err := sess.AcceptStream(actx)
		if err != nil {
			cancel()
			f.fail(fmt.Errorf("the source's post-copy streams: %w", err))
			f.finish(bg)
			return
		}
		switch {
		case kind == transport.KindPostCopy && f.req == nil:
			f.req = c
		case kind == transport.KindPages && bg == nil:
			bg = c
		default:
			c.Close()
			cancel()
			f.fail(fmt.Errorf("the source opened a %v stream during post-copy", kind))
			f.finish(bg)
			return
		}
	}
	cancel()
	if f.missing.Left() == 0 {
		f.complete()
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); f.faultLoop() }()
	go func() { defer wg.Done(); f.replies() }()
	go func() { defer wg.Done(); f.backgroundLoop(bg) }()
	// The session's end (the source died, the link broke) ends the
	// fill; so does a request left unanswered.
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-f.done:
				return
			case <-sess.Done():
				f.fail(fmt.Errorf("the link to the source is lost: %w", sess.Err()))
				return
			case <-t.C:
				f.mu.Lock()
				var late time.Duration
				for _, at := range f.asked {
					late = max(late, time.Since(at))
				}
				f.mu.Unlock()
				if late > postCopyTimeout {
					f.fail(fmt.Errorf("the source did not answer a page request within %v", postCopyTimeout))
					return
				}
			}
		}
	}()
	<-f.done
	f.req.Close()
	bg.Close()
	wg.Wait()
	f.finish(bg)
}

// finish ends the fill: the userfaultfd closed (its areas unregistered),
// the process killed first if it failed.
func (f *pcFill) finish(bg net.Conn) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	log := f.t.log
	if err != nil && f.exited {
		log.Info("post-copy ended: the process exited before every page came", "pid", f.pid, "err", err)
		err = nil
		f.mu.Lock()
		f.err = nil
		f.mu.Unlock()
	}
	if err != nil {
		// Children first: the parent's death could have them reparented
		// out of sight.
		if f.forked {
			f.killForked()
		}
		kerr := unix.PidfdSendSignal(f.pidfd, unix.SIGKILL, nil, 0)
		log.Error("post-copy failed: the process cannot run without the pages it lacks and is KILLED; the migration lost it",
			"pid", f.pid, "missing_left", f.missing.Left(), "of", f.missing.Total(), "err", err, "kill_err", kerr)
	} else if f.exited {
		log.Info("post-copy ended: the process exited", "pid", f.pid)
	} else {
		log.Info("post-copy done: every page is in place", "pid", f.pid, "pages", f.missing.Total(),
			"on_demand", f.onDemand, "background", f.background, "faults", f.faults, "ms", time.Since(f.started).Milliseconds())
	}
	if bg != nil {
		bg.Close()
	}
	unix.Close(f.uffd)
	unix.Close(f.pidfd)
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	f.t.event(SessionPostCopyDone, err)
	close(f.ended)
}

// fail ends the fill with err (the first one counts).
func (f *pcFill) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.finished {
		return
	}
	f.finished = true
	f.err = err
	close(f.done)
}

// complete ends the fill: every page is in place (or the process is
// gone). The source is told; what fails after (the source closing the
// streams) no longer counts.
//
// Preconditions: f.mu is not held.
func (f *pcFill) complete() {
	f.mu.Lock()
	if f.finished {
		f.mu.Unlock()
		return
	}
	f.finished = true
	m := pagestream.PostCopyMsg{Kind: pagestream.MsgDone, Faults: f.faults, LatencySumUS: f.latSum, LatencyMaxUS: f.latMax}
	f.mu.Unlock()
	f.wmu.Lock()
	_, err := f.req.Write(m.Encode(nil))
	f.wmu.Unlock()
	if err != nil {
		// Every page is here: the process is whole; the source learns
		// nothing more, and keeps its original frozen.
		f.t.log.Warn("post-copy: could not tell the source that every page is here", "err", err)
	}
	close(f.done)
}

// stopped says whether the fill ended.
func (f *pcFill) stopped() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// faultLoop reads the userfaultfd's events until the fill ends.
func (f *pcFill) faultLoop() {
	buf := make([]byte, 64*raw.UffdMsgSize)
	pfd := []unix.PollFd{{Fd: int32(f.uffd), Events: unix.POLLIN}}
	for !f.stopped() {
		n, err := unix.Poll(pfd, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			f.fail(fmt.Errorf("poll the userfaultfd: %w", err))
			return
		}
		if n <= 0 {
			continue
		}
		// Read and handle under the lock: a removal is applied before
		// any copy can follow it.
		f.mu.Lock()
		n, err = unix.Read(f.uffd, buf)
		var ferr error
		if err == nil {
			for off := 0; off+raw.UffdMsgSize <= n && ferr == nil; off += raw.UffdMsgSize {
				m, perr := raw.ParseUffdMsg(buf[off : off+raw.UffdMsgSize])
				if perr != nil {
					ferr = perr
					break
				}
				ferr = f.event(m)
			}
		}
		f.mu.Unlock()
		switch {
		case err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR):
			f.fail(fmt.Errorf("read the userfaultfd: %w", err))
			return
		case ferr != nil:
			f.fail(ferr)
			return
		}
	}
}

// requestAhead is how many missing pages after a faulting one a request
// asks for too (a process that walks its memory faults once per run).
const requestAhead = 16

// event handles one userfaultfd event.
//
// Preconditions: f.mu is held.
func (f *pcFill) event(m raw.UffdMsg) error {
	switch m.Event {
	case raw.UFFD_EVENT_PAGEFAULT:
		page := m.Address &^ (pageSize - 1)
		orig := f.origin(page)
		if f.missing.Has(orig) {
			if _, ok := f.asked[orig]; ok {
				return nil // asked already: the answer wakes it
			}
			r, _ := f.missing.NextIn(orig, requestAhead)
			pages := 0
			for p := 0; p < r.Pages; p++ {
				a := r.Addr + uint64(p)*pageSize
				if _, ok := f.asked[a]; ok {
					break
				}
				pages++
			}
			now := time.Now()
			for p := 0; p < pages; p++ {
				f.asked[r.Addr+uint64(p)*pageSize] = now
			}
			f.faults++
			msg := pagestream.PostCopyMsg{Kind: pagestream.MsgRequest, Addr: r.Addr, Pages: uint32(pages)}
			f.queue = append(f.queue, msg)
			f.wmu.Lock()
			_, err := f.req.Write(msg.Encode(nil))
			f.wmu.Unlock()
			if err != nil {
				return fmt.Errorf("ask the source for page %#x: %w", orig, err)
			}
			return nil
		}
		// Not missing: filled meanwhile (the copy woke it), or a page
		// the process never had, which reads as zeros.
		if err := raw.UffdZeropage(f.uffd, page, pageSize); err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("zero page at %#x: %w", page, err)
		}
		raw.UffdWake(f.uffd, page, pageSize)
	case raw.UFFD_EVENT_REMOVE, raw.UFFD_EVENT_UNMAP:
		// Gone from the process (zeros from now on, or unmapped): the
		// stale contents must never come in.
		for a := m.Start &^ (pageSize - 1); a < m.End; a += pageSize {
			if o := f.origin(a); f.missing.Has(o) {
				f.missing.Remove(o, 1)
			}
		}
		if f.missing.Left() == 0 {
			go f.complete()
		}
	case raw.UFFD_EVENT_REMAP:
		f.remaps = append(f.remaps, remap{from: m.From, to: m.To, len: m.Len})
	case raw.UFFD_EVENT_FORK:
		unix.Close(m.ForkFD)
		f.forked = true
		return errors.New("the process forked: its child would lack the pages still missing, and post-copy serves one process")
	}
	return nil
}

// place puts the pages of data (from the source's address addr) in the
// process, those still missing: a copy, or the zero page. It returns how
// many it placed.
//
// Preconditions: f.mu is held.
func (f *pcFill) place(addr uint64, pages int, data []byte, zero func(int) bool) (int, error) {
	placed := 0
	for p := 0; p < pages; {
		a := addr + uint64(p)*pageSize
		if !f.missing.Has(a) {
			p++
			continue
		}
		// A run of missing pages, all zero or all not, in one place.
		q := p + 1
		for q < pages && f.missing.Has(addr+uint64(q)*pageSize) && zero(q) == zero(p) &&
			f.here(addr+uint64(q)*pageSize) == f.here(a)+uint64(q-p)*pageSize {
			q++
		}
		dst := f.here(a)
		var err error
		for try := 0; ; try++ {
			if zero(p) {
				err = raw.UffdZeropage(f.uffd, dst, uint64(q-p)*pageSize)
			} else {
				var n int
				n, err = raw.UffdCopy(f.uffd, dst, data[p*pageSize:q*pageSize])
				if errors.Is(err, unix.EEXIST) && n < (q-p)*pageSize {
					// A page there already (the process wrote it after a
					// zero fill, say): it stays; the rest goes on.
					err = nil
					q = p + n/pageSize + 1
				}
			}
			if errors.Is(err, unix.EEXIST) {
				err = nil
			}
			if !errors.Is(err, unix.EAGAIN) || try > 1000 {
				break
			}
			// The layout is changing (an event not read yet): its
			// reader needs the lock.
			f.mu.Unlock()
			time.Sleep(100 * time.Microsecond)
			f.mu.Lock()
		}
		if errors.Is(err, unix.ESRCH) {
			// The process exited (or was killed): nothing left to fill.
			f.exited = true
			return placed, nil
		}
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EFAULT) {
				// No longer mapped there: nothing to fill.
				err = nil
			} else {
				return placed, fmt.Errorf("place pages at %#x: %w", dst, err)
			}
		}
		placed += f.missing.Remove(a, q-p)
		p = q
	}
	return placed, nil
}

// replies reads the source's answers to the requests and places them.
func (f *pcFill) replies() {
	hdr := make([]byte, pagestream.ReplyHeaderSize)
	data := make([]byte, pagestream.MaxRequestPages*pageSize)
	for {
		if _, err := io.ReadFull(f.req, hdr); err != nil {
			if !f.stopped() {
				f.fail(fmt.Errorf("the source's answers: %w", err))
			}
			return
		}
		h, err := pagestream.DecodeReplyHeader(hdr)
		if err != nil {
			f.fail(err)
			return
		}
		f.mu.Lock()
		var want pagestream.PostCopyMsg
		ok := len(f.queue) > 0
		if ok {
			want = f.queue[0]
			f.queue = f.queue[1:]
		}
		f.mu.Unlock()
		if !ok || want.Addr != h.Addr || want.Pages != h.Pages {
			f.fail(fmt.Errorf("the source answered %d pages at %#x, not what was asked", h.Pages, h.Addr))
			return
		}
		d := data[:h.DataLen()]
		if _, err := io.ReadFull(f.req, d); err != nil {
			f.fail(fmt.Errorf("the source's answers: %w", err))
			return
		}
		if err := pagestream.CheckReplyData(h, d); err != nil {
			f.fail(err)
			return
		}
		f.mu.Lock()
		n, err := f.place(h.Addr, int(h.Pages), d, func(int) bool { return h.Zero })
		f.onDemand += n
		if at, ok := f.asked[h.Addr]; ok {
			lat := uint64(time.Since(at).Microseconds())
			f.latSum += lat
			f.latMax = max(f.latMax, lat)
		}
		for p := uint32(0); p < h.Pages; p++ {
			delete(f.asked, h.Addr+uint64(p)*pageSize)
		}
		left := f.missing.Left()
		exited := f.exited
		f.mu.Unlock()
		if err != nil {
			f.fail(err)
			return
		}
		if left == 0 || exited {
			f.complete()
		}
	}
}

// applyAck is how many background pages the target takes in between two
// applied messages.
const applyAck = 256

// backgroundLoop places the pages of the source's background stream.
func (f *pcFill) backgroundLoop(c net.Conn) {
	rd, err := pagestream.NewReader(c, pagestream.ReaderOptions{})
	if err != nil {
		if !f.stopped() {
			f.fail(fmt.Errorf("the background stream: %w", err))
		}
		return
	}
	defer rd.Close()
	var taken, told uint64
	for {
		fr, err := rd.Next()
		if err != nil {
			if !f.stopped() && !errors.Is(err, io.EOF) {
				f.fail(fmt.Errorf("the background stream: %w", err))
			}
			return
		}
		if fr.Kind != pagestream.FramePages {
			continue
		}
		if taken += uint64(fr.Pages); taken-told >= applyAck {
			// The source keeps little in flight (see
			// source.backgroundAhead): it is told what came.
			told = taken
			m := pagestream.PostCopyMsg{Kind: pagestream.MsgApplied, Applied: taken}
			f.wmu.Lock()
			_, err := f.req.Write(m.Encode(nil))
			f.wmu.Unlock()
			if err != nil && !f.stopped() {
				f.fail(fmt.Errorf("tell the source what came: %w", err))
				return
			}
		}
		f.mu.Lock()
		for p := 0; p < fr.Pages; p++ {
			if !f.missing.Within(fr.Addr + uint64(p)*pageSize) {
				f.mu.Unlock()
				f.fail(fmt.Errorf("the background stream sent page %#x, which is not missing", fr.Addr+uint64(p)*pageSize))
				return
			}
		}
		n, err := f.place(fr.Addr, fr.Pages, fr.Data, fr.IsZero)
		f.background += n
		left := f.missing.Left()
		exited := f.exited
		f.mu.Unlock()
		if err != nil {
			f.fail(err)
			return
		}
		if left == 0 || exited {
			f.complete()
		}
	}
}
