package source

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/transport"
)

// Mode is how a live migration ends (MigrateOptions.Mode).
type Mode string

// The modes of a live migration.
const (
	// ModePreCopy freezes the process for a final round once pre-copy
	// converges (or stalls): every page is on the target before it runs
	// there. The default.
	ModePreCopy Mode = "precopy"
	// ModePostCopy freezes the process after a first round that sends
	// all but its private anonymous memory, and resumes it on the target
	// with that memory missing: it comes in the background, or when the
	// process faults on it. If the link or the source dies before the last page, the
	// process is lost (PostCopyError).
	ModePostCopy Mode = "postcopy"
	// ModeAuto is ModePreCopy that switches to post-copy where pre-copy
	// would stop without converging (stalled, or out of rounds).
	ModeAuto Mode = "auto"
)

// ParseMode checks a mode's name ("" is ModePreCopy).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModePreCopy:
		return ModePreCopy, nil
	case ModePostCopy, ModeAuto:
		return Mode(s), nil
	}
	return "", fmt.Errorf("mode %q: want precopy, postcopy or auto", s)
}

// PostCopyReport says what the post-copy phase of a live migration did.
type PostCopyReport struct {
	// Reason is why pre-copy gave way to post-copy.
	Reason string `json:"reason"`
	// MissingPages were not on the target when the process resumed there.
	MissingPages uint64 `json:"missing_pages"`
	// OnDemandPages went because the process faulted on them (or on a
	// page near them), BackgroundPages in the background stream.
	OnDemandPages   uint64 `json:"on_demand_pages"`
	BackgroundPages uint64 `json:"background_pages"`
	BytesWire       uint64 `json:"bytes_wire"`
	// CompleteMS is the time from the resume on the target until it had
	// every page.
	CompleteMS float64 `json:"complete_ms"`
	// Faults are the faults the target served by asking for a page, and
	// their latency (fault to page in place) on average and at most.
	Faults           uint64  `json:"faults"`
	FaultLatencyMS   float64 `json:"fault_latency_avg_ms"`
	FaultLatencyMax  float64 `json:"fault_latency_max_ms"`
	FinishedOnTarget bool    `json:"finished"`
}

// postCopy is the post-copy of a live migration's process: which pages
// the target lacks when it resumes, and serving them after.
type postCopy struct {
	mode   Mode
	active bool   // pre-copy gave way: the final round defers pages
	reason string // why
	pid    int
	// missing are the deferred pages, sorted, merged: what the target
	// registers as missing.
	missing []PageRange
	rep     PostCopyReport
}

// maxMissingSpans caps the runs of missing pages: the target drops each
// run from the process it built with an injected madvise, in the
// downtime. Nearby runs of one area are merged (the pages between go
// again) until the runs fit.
const maxMissingSpans = 256

// decide turns the policy's verdict after pre-copy round round into
// post-copy's: with ModePostCopy pre-copy stops after the first round;
// with ModeAuto where it would stop unconverged.
func (pc *postCopy) decide(v Verdict, round int) Verdict {
	if pc == nil {
		return v
	}
	switch {
	case pc.mode == ModePostCopy && round >= 1:
		v.Stop, v.Reason = true, "post-copy"
	case pc.mode == ModeAuto && v.Stop && v.Reason != "converged":
		v.Reason += ", post-copy"
	default:
		return v
	}
	pc.active, pc.reason = true, v.Reason
	return v
}

// skipsRound0 says whether pre-copy's first round leaves the pages of v
// to post-copy: with ModePostCopy, those of every area that can miss
// pages (they would otherwise go twice: in round 0, and again after the
// resume for those written meanwhile, which the target must drop first).
func (pc *postCopy) skipsRound0(v *core.VMA) bool {
	return pc != nil && pc.mode == ModePostCopy && deferrable(v)
}

// dataRuns returns the runs of pages of area v that hold data (present
// or swapped), from the pagemap.
func (s *pageSink) dataRuns(v *core.VMA) ([]PageRange, error) {
	const chunk = 1 << 30
	var out []PageRange
	for at := v.Start; at < v.End; at += chunk {
		stop := min(at+chunk, v.End)
		ents, err := s.pm.Read(at, stop, s.ents)
		if err != nil {
			return nil, fmt.Errorf("process %d: pagemap of %#x-%#x: %w", s.d.pid, at, stop, err)
		}
		s.ents = ents
		for i, e := range ents {
			if !e.Present() && !e.Swapped() {
				continue
			}
			a := at + uint64(i)*pageSize
			if n := len(out); n > 0 && out[n-1].End == a {
				out[n-1].End = a + pageSize
			} else {
				out = append(out, PageRange{Start: a, End: a + pageSize})
			}
		}
	}
	return out, nil
}

// deferrable says whether the pages of v can be left missing: private
// anonymous writable memory, not locked, not a stack that grows (what
// userfaultfd's missing mode covers and the target can drop).
// The frozen layout's quick read (readVMAsQuick) has no flags of smaps
// yet: the main stack is known by its name, and checkMissing checks the
// missing pages again against the final layout.
func deferrable(v *core.VMA) bool {
	return v.Kind == core.VMAAnon && v.Prot&unix.PROT_WRITE != 0 && v.Lock == "" && v.Flags&unix.MAP_GROWSDOWN == 0 && v.Name != "[stack]"
}

// checkMissing checks that the missing pages lie in areas of the final
// layout vmas (with smaps' flags) whose pages can be missing: an area
// locked, say, is refused here rather than by the target.
func (pc *postCopy) checkMissing(vmas []core.VMA) error {
	for _, r := range pc.missing {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > r.Start })
		if i == len(vmas) || vmas[i].Start > r.Start || r.End > vmas[i].End || !deferrable(&vmas[i]) {
			return fmt.Errorf("post-copy: pages %#x-%#x were left missing in an area that cannot miss pages (its flags came after the final round)", r.Start, r.End)
		}
	}
	return nil
}

// split takes the deferrable parts of ranges (in layout vmas, sorted) as
// the missing pages, and returns the rest, for the final round.
func (pc *postCopy) split(vmas []core.VMA, ranges []PageRange) []PageRange {
	ranges = mergeRanges(ranges)
	var send []PageRange
	var perArea [][]PageRange
	for _, r := range ranges {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > r.Start })
		for ; i < len(vmas) && vmas[i].Start < r.End; i++ {
			v := &vmas[i]
			c := PageRange{Start: max(r.Start, v.Start), End: min(r.End, v.End)}
			if !deferrable(v) {
				send = append(send, c)
				continue
			}
			if n := len(perArea); n > 0 && perArea[n-1][0].Start >= v.Start && perArea[n-1][0].Start < v.End {
				perArea[n-1] = append(perArea[n-1], c)
			} else {
				perArea = append(perArea, []PageRange{c})
			}
		}
	}
	pc.missing = coalesceSpans(perArea, maxMissingSpans)
	var pages uint64
	for _, r := range pc.missing {
		pages += r.Pages()
	}
	pc.rep.MissingPages = pages
	return send
}

// coalesceSpans merges the ranges of each area (sorted, each area's
// sorted) across ever wider gaps until there are at most max of them;
// ranges of two areas are never merged (the gap between them may be
// another area).
func coalesceSpans(perArea [][]PageRange, max int) []PageRange {
	for gap := uint64(0); ; gap = 2*gap + 16*pageSize {
		var out []PageRange
		for _, rs := range perArea {
			first := len(out)
			for _, r := range rs {
				if n := len(out); n > first && r.Start-out[n-1].End <= gap {
					out[n-1].End = r.End
					continue
				}
				out = append(out, r)
			}
		}
		if len(out) <= max || len(out) <= len(perArea) {
			return out
		}
	}
}

// state is what the target needs to know of the post-copy.
func (pc *postCopy) state() *handoff.PostCopyState {
	if pc == nil || !pc.active {
		return nil
	}
	st := &handoff.PostCopyState{}
	for _, r := range pc.missing {
		st.Missing = append(st.Missing, handoff.PageSpan{Start: r.Start, End: r.End})
	}
	return st
}

// FinishPostCopy serves the pages the target lacks until it has them
// all: its requests first, the rest in the background
// (handoff.PostCopySource).
func (a *liveSource) FinishPostCopy() error {
	pc := a.postCopy
	if pc == nil || !pc.active {
		return nil
	}
	start := time.Now()
	err := a.servePostCopy(pc)
	pc.rep.CompleteMS = ms(time.Since(start))
	pc.rep.FinishedOnTarget = err == nil
	if err != nil {
		return fmt.Errorf("after %d of %d missing pages (%d on demand, %d in the background): %w",
			pc.rep.OnDemandPages+pc.rep.BackgroundPages, pc.rep.MissingPages, pc.rep.OnDemandPages, pc.rep.BackgroundPages, err)
	}
	a.d.log.Info("post-copy done", "missing", pc.rep.MissingPages, "on_demand", pc.rep.OnDemandPages,
		"background", pc.rep.BackgroundPages, "ms", pc.rep.CompleteMS)
	return nil
}

// pcServer serves one post-copy: a goroutine answers the target's
// requests, another sends the rest in the background and gives way to
// the requests.
type pcServer struct {
	pid int
	pc  *postCopy
	mu  sync.Mutex
	// sent are the missing pages not yet sent; inflight counts the
	// requests being answered (the background waits for them).
	sent     *pagestream.PageSet
	inflight int
	cond     *sync.Cond
	done     bool
	// queued are the pages the background wrote, applied those the
	// target says it took in: the background keeps at most
	// backgroundAhead pages between them.
	queued, applied uint64
}

// backgroundAhead bounds the background's pages on their way (8 MiB): an
// answer queues behind no more (the session's windows would let 16 MiB
// a stream wait before it).
const backgroundAhead = 2048

func (a *liveSource) servePostCopy(pc *postCopy) error {
	runs := make([]pagestream.Run, 0, len(pc.missing))
	for _, r := range pc.missing {
		runs = append(runs, pagestream.Run{Addr: r.Start, Pages: int(r.Pages())})
	}
	set, err := pagestream.NewPageSet(runs)
	if err != nil {
		return err
	}
	s := &pcServer{pid: pc.pid, pc: pc, sent: set}
	s.cond = sync.NewCond(&s.mu)
	req, err := a.sess.OpenStream(transport.KindPostCopy)
	if err != nil {
		return fmt.Errorf("open the request stream: %w", err)
	}
	defer req.Close()
	bg, err := a.sess.OpenStream(transport.KindPages)
	if err != nil {
		return fmt.Errorf("open the background stream: %w", err)
	}
	defer bg.Close()
	var w io.Writer = bg
	if a.budget != nil {
		w = &limitedWriter{w: bg, b: a.budget}
	}
	bgErr := make(chan error, 1)
	go func() { bgErr <- s.background(w, a.d.codec) }()
	err = s.answer(req)
	s.mu.Lock()
	s.done = true
	s.cond.Broadcast()
	s.mu.Unlock()
	if err != nil {
		bg.Close() // the background stops at its next write
		<-bgErr
		return err
	}
	// The target has every page: what the background still sends is
	// of no use.
	bg.Close()
	<-bgErr
	return nil
}

// answer serves the requests of the target until its done.
func (s *pcServer) answer(c io.ReadWriter) error {
	msg := make([]byte, pagestream.PostCopyMsgSize)
	buf := make([]byte, pagestream.MaxRequestPages*pageSize)
	out := make([]byte, 0, pagestream.ReplyHeaderSize)
	for {
		if _, err := io.ReadFull(c, msg); err != nil {
			return fmt.Errorf("the target's requests: %w", err)
		}
		m, err := pagestream.DecodePostCopyMsg(msg)
		if err != nil {
			return err
		}
		if m.Kind == pagestream.MsgApplied {
			s.mu.Lock()
			s.applied = max(s.applied, m.Applied)
			s.cond.Broadcast()
			s.mu.Unlock()
			continue
		}
		if m.Kind == pagestream.MsgDone {
			r := &s.pc.rep
			r.Faults = m.Faults
			if m.Faults > 0 && m.LatencySumUS/m.Faults < 1<<40 {
				r.FaultLatencyMS = float64(m.LatencySumUS/m.Faults) / 1000
			}
			if m.LatencyMaxUS < 1<<40 {
				r.FaultLatencyMax = float64(m.LatencyMaxUS) / 1000
			}
			return nil
		}
		// Only pages that were left missing: nothing else of the
		// original is read for a peer.
		for p := uint32(0); p < m.Pages; p++ {
			if !s.sent.Within(m.Addr + uint64(p)*pageSize) {
				return fmt.Errorf("the target asked for page %#x, which is not one it lacks", m.Addr+uint64(p)*pageSize)
			}
		}
		s.mu.Lock()
		s.inflight++
		s.mu.Unlock()
		data := buf[:int(m.Pages)*pageSize]
		var wire int
		err = readPages(s.pid, m.Addr, data)
		if err == nil {
			h := pagestream.ReplyHeader{Addr: m.Addr, Pages: m.Pages, Zero: isZero(data)}
			wire = pagestream.ReplyHeaderSize + h.DataLen()
			if !h.Zero {
				h.CRC = pagestream.ReplyCRC(data)
			}
			out = h.Encode(out[:0])
			if _, err = c.Write(out); err == nil && !h.Zero {
				_, err = c.Write(data)
			}
		}
		s.mu.Lock()
		s.inflight--
		n := s.sent.Remove(m.Addr, int(m.Pages))
		s.pc.rep.OnDemandPages += uint64(n)
		s.pc.rep.BytesWire += uint64(wire)
		s.cond.Broadcast()
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("answer the request for %d pages at %#x: %w", m.Pages, m.Addr, err)
		}
	}
}

// backgroundPages is the size of the background's reads and frames:
// small, so that an answer to a request queues behind little of it on
// the connection.
const backgroundPages = 32

// background sends the missing pages not sent yet, in address order, as
// a page stream; it waits while requests are answered.
func (s *pcServer) background(w io.Writer, codec pagestream.Codec) error {
	pw, err := pagestream.NewWriter(w, pagestream.WriterOptions{Codec: codec, Workers: 1})
	if err != nil {
		return err
	}
	defer pw.Abort()
	var at uint64
	for {
		s.mu.Lock()
		for (s.inflight > 0 || s.queued-s.applied > backgroundAhead) && !s.done {
			s.cond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return nil
		}
		r, ok := s.sent.NextIn(at, backgroundPages)
		if ok {
			s.sent.Remove(r.Addr, r.Pages)
		}
		s.mu.Unlock()
		if !ok {
			break
		}
		data := pagestream.GetBuffer(r.Pages * pageSize)
		if err := readPages(s.pid, r.Addr, data); err != nil {
			return err
		}
		if err := pw.WritePages(0, r.Addr, data); err != nil {
			return err
		}
		s.mu.Lock()
		s.pc.rep.BackgroundPages += uint64(r.Pages)
		s.queued += uint64(r.Pages)
		s.mu.Unlock()
		if err := pw.Flush(); err != nil {
			return err
		}
		at = r.Addr + uint64(r.Pages)*pageSize
	}
	if err := pw.Close(); err != nil {
		return err
	}
	s.mu.Lock()
	s.pc.rep.BytesWire += pw.Stats().BytesWire
	s.mu.Unlock()
	return nil
}

// readPages reads the pages at addr of the frozen process pid into data.
func readPages(pid int, addr uint64, data []byte) error {
	n, err := ptrace.ReadMem(pid, addr, data)
	if err != nil {
		return err
	}
	if n != len(data) {
		return fmt.Errorf("process %d: read %d of %d bytes at %#x", pid, n, len(data), addr)
	}
	return nil
}

var zeroPage [pageSize]byte

// isZero says whether data is all zeros.
func isZero(data []byte) bool {
	for len(data) >= pageSize {
		if !bytes.Equal(data[:pageSize], zeroPage[:]) {
			return false
		}
		data = data[pageSize:]
	}
	return true
}
