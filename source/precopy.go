package source

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/source/track"
)

// RoundReport says what one round of a dump did. Pre-copy rounds run while
// the process runs; the last round runs with it frozen.
type RoundReport struct {
	Round      int     `json:"round"`
	PagesDirty uint64  `json:"pages_dirty"` // pages the tracker reported (round 0: pages present)
	PagesSent  uint64  `json:"pages_sent"`
	BytesRaw   uint64  `json:"bytes_raw"`
	BytesWire  uint64  `json:"bytes_wire"`
	MS         float64 `json:"ms"`
	// HeldMS is how long the round stopped the process: zero for
	// pre-copy rounds with hash tracking, the scan of the dirty pages for
	// uffd-wp, the pagemap read for soft-dirty, the whole round for the
	// final one; with auto-converge, its stops too.
	HeldMS float64 `json:"held_ms"`
	// MaxHoldMS is the longest of those stops (a process of the tree
	// stopped once by its tracker, or once by a throttle cycle): the
	// longest a request to the service waited in the round, on top of its
	// work.
	MaxHoldMS float64 `json:"max_hold_ms"`
	Frozen    bool    `json:"frozen"`
	// Throttle is the share of time auto-converge kept the processes
	// stopped while the round sent (Policy.AutoConverge): 0 unthrottled.
	Throttle float64 `json:"throttle,omitempty"`
	// Stop is why pre-copy ended after this round, on the last pre-copy one.
	Stop string `json:"stop,omitempty"`
	// EstimateMS is the policy's estimate, when the round began, of how
	// long a final round would take (the downtime if frozen then).
	EstimateMS float64 `json:"estimate_ms,omitempty"`
}

// roundMeter measures one round through the sink's counters.
type roundMeter struct {
	s     *pageSink
	round int
	start time.Time
	pages uint64
	raw   uint64
	wire  uint64
}

func (s *pageSink) meter(round int) *roundMeter {
	st := s.w.Stats()
	return &roundMeter{s: s, round: round, start: time.Now(), pages: s.pages, raw: st.BytesRaw, wire: st.BytesWire}
}

// done flushes the round's frames and reports it.
func (m *roundMeter) done(dirty uint64) (RoundReport, error) {
	if err := m.s.w.Flush(); err != nil {
		return RoundReport{}, fmt.Errorf("write %s: %w", m.s.path, err)
	}
	st := m.s.w.Stats()
	return RoundReport{
		Round:      m.round,
		PagesDirty: dirty,
		PagesSent:  m.s.pages - m.pages,
		BytesRaw:   (m.s.pages - m.pages) * pageSize,
		BytesWire:  st.BytesWire - m.wire,
		MS:         ms(time.Since(m.start)),
	}, nil
}

// sendDirty sends the stored pages of ranges that fall in vmas (sorted),
// zeros for pages sent before that are gone. It returns the number of
// dirty pages inside areas that hold pages. Nearby ranges of an area share
// one read of the pagemap: scattered single pages would cost a read each.
func (s *pageSink) sendDirty(ctx context.Context, round uint32, vmas []core.VMA, ranges []PageRange) (uint64, error) {
	const maxGap = 64 * pageSize // of pagemap read for nothing, between two ranges
	const maxSpan = 1 << 30      // of address space per pagemap read
	ranges = mergeRanges(ranges)
	var dirty uint64
	// The ranges of one area, clipped to it, wait in group until a range
	// too far from them (or in another area) comes.
	var group []PageRange
	var gv *core.VMA
	sendGroup := func() error {
		if len(group) == 0 {
			return nil
		}
		defer func() { group = group[:0] }()
		if len(group) == 1 {
			return s.sendRange(ctx, round, gv, group[0].Start, group[0].End, true)
		}
		from, to := group[0].Start, group[len(group)-1].End
		t := time.Now()
		ents, err := s.pm.Read(from, to, s.ents)
		s.readTime += time.Since(t)
		if err != nil {
			return fmt.Errorf("process %d: pagemap of %#x-%#x: %w", s.d.pid, from, to, err)
		}
		s.ents = ents
		for _, r := range group {
			i, j := (r.Start-from)/pageSize, (r.End-from)/pageSize
			if err := s.sendEntries(ctx, round, gv, r.Start, ents[i:j], true); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range ranges {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > r.Start })
		for ; i < len(vmas) && vmas[i].Start < r.End; i++ {
			v := &vmas[i]
			if !s.d.holds(v.Kind) {
				continue
			}
			c := PageRange{Start: max(r.Start, v.Start), End: min(r.End, v.End)}
			dirty += c.Pages()
			if len(group) > 0 && (gv != v || c.Start-group[len(group)-1].End > maxGap || c.End-group[0].Start > maxSpan) {
				if err := sendGroup(); err != nil {
					return dirty, err
				}
			}
			gv = v
			group = append(group, c)
		}
	}
	if err := sendGroup(); err != nil {
		return dirty, err
	}
	return dirty, s.drain(ctx)
}

// precopy copies the memory of the processes of all (the tree, parents
// first; each with its sink) while they run: a first round sends every
// page, later rounds the pages written since, until the policy, looking
// at the whole tree's dirty pages, says the rest is small enough (or will
// not get smaller). It leaves the processes running and untraced, with
// their trackers armed, and each dumper's pending set the dirty pages the
// policy stopped on, which the final round must send. The rounds are the
// tree's, reported in all[0].rounds.
func (ss *session) precopy(ctx context.Context, all []*dumper) (err error) {
	pol := ss.opts.Policy
	if pol == (Policy{}) {
		pol = DefaultPolicy
	}
	if err := pol.Validate(); err != nil {
		return err
	}
	root := all[0]
	defer func() {
		for _, d := range all {
			if d.sink == nil {
				continue
			}
			d.sink.racy = false
			if d.sink.skipped > 0 {
				ss.log.Debug("pre-copy: pages gone before they were read, skipped", "pid", d.pid, "pages", d.sink.skipped)
			}
		}
	}()

	// Start tracking with each process briefly stopped: backends inject.
	// A live migration's tree is taken as it is now (ss.regroup), every
	// process tracked and with a sink.
	if ss.regroup != nil {
		if all, err = ss.regroup(ctx, all); err != nil {
			return err
		}
	} else {
		for _, d := range all {
			if d.tracker != nil {
				continue // a live migration's process alone (liveSource.join)
			}
			if err := d.track(); err != nil {
				return err
			}
			d.armSink()
		}
	}
	layouts := make([][]core.VMA, len(all))
	var heldStart, longestStart time.Duration
	for i, d := range all {
		layouts[i] = d.preLayout
		d.pending = nil // all of it goes now
		heldStart += d.startHeld
		longestStart = max(longestStart, d.startHeld)
		d.startHeld = 0
	}

	var hist []RoundStat
	if err := ss.roundStart(layouts); err != nil {
		return err
	}
	m := ss.meter(all, 0)
	if ss.opts.Transfer != nil {
		m.watch(ss, all, residentPages(all))
		defer m.end()
	}
	var present uint64
	for i, d := range all {
		before := d.sink.pages
		var err error
		for j := range layouts[i] {
			if v := &layouts[i][j]; i == 0 && ss.postCopy.skipsRound0(v) {
				// Post-copy sends it after the resume.
				var rs []PageRange
				if rs, err = d.sink.dataRuns(v); err != nil {
					break
				}
				d.pending = append(d.pending, rs...)
				continue
			}
			if err = d.sink.sendArea(ctx, 0, &layouts[i][j]); err != nil {
				break
			}
		}
		if err = ss.endRound(d, i, 0, err); err != nil {
			return err
		}
		present += d.sink.pages - before
	}
	rep, err := m.done(present)
	if err != nil {
		return err
	}
	rep.HeldMS, rep.MaxHoldMS = ms(heldStart), ms(longestStart)
	root.rounds = append(root.rounds, rep)
	if err := ss.roundEnd(rep); err != nil {
		return err
	}
	hist = append(hist, RoundStat{Dirty: present, Bytes: rep.BytesRaw, Duration: time.Since(m.start)})
	ss.log.Info("pre-copy round", "round", 0, "pages", rep.PagesSent, "ms", rep.MS)

	// Auto-converge: the throttle, raised by conv.
	var thr *throttle
	if pol.AutoConverge {
		thr = newThrottle(ss.tr)
		defer thr.stop()
	}
	conv := newConvergence(pol, thr.raise)
	for round := 1; ; round++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if ss.regroup != nil {
			// Processes forked since join the round, those gone leave.
			if all, err = ss.regroup(ctx, all); err != nil {
				return err
			}
		}
		m := ss.meter(all, round)
		layouts := make([][]core.VMA, len(all))
		ranges := make([][]PageRange, len(all))
		var dirty uint64
		for i, d := range all {
			vmas, err := readVMAs(d.pid)
			var rs []PageRange
			if err == nil {
				rs, err = d.tracker.Dirty(vmas)
			}
			if i > 0 && ss.regroup != nil && exited(d.pid) {
				// It exited since the tree was read: it leaves at the
				// next round; nothing of it is read now.
				vmas, rs, err = d.preLayout, nil, nil
			}
			if err != nil {
				return fmt.Errorf("process %d: pre-copy round %d: %w", d.pid, round, err)
			}
			d.preLayout, layouts[i] = vmas, vmas
			for _, r := range clip(rs, vmas, ss.holds) {
				dirty += r.Pages()
			}
			if len(d.pending) > 0 {
				// It joined the tree: all its memory, counted as its
				// resident pages (the areas may be larger).
				var whole uint64
				for _, r := range clip(d.pending, vmas, ss.holds) {
					whole += r.Pages()
				}
				dirty += min(whole, d.status.VmRSS/pageSize+1)
				rs = append(rs, d.pending...)
				d.pending = nil
			}
			ranges[i] = rs
		}
		v, raised := conv.next(hist, dirty)
		v = ss.postCopy.decide(v, round)
		if raised {
			ss.log.Info("pre-copy: auto-converge throttles the processes", "stopped_share", thr.level(), "dirty", dirty)
		}
		root.estimate = v.Estimate
		if v.Stop {
			root.rounds[len(root.rounds)-1].Stop = v.Reason
			ss.log.Info("pre-copy done", "reason", v.Reason, "dirty", dirty, "estimate", v.Estimate)
			for i, d := range all {
				d.pending = ranges[i]
			}
			return nil
		}
		if err := ss.roundStart(layouts); err != nil {
			return err
		}
		m.watch(ss, all, dirty)
		defer m.end()
		thr.start(all)
		var held, longest time.Duration
		for i, d := range all {
			_, err := d.sink.sendDirty(ctx, uint32(round), layouts[i], ranges[i])
			if err = ss.endRound(d, i, uint32(round), err); err != nil {
				return err
			}
			// (A process that joined the round was stopped to start
			// its tracking.)
			held += d.tracker.Held() + d.startHeld
			longest = max(longest, track.Longest(d.tracker), d.startHeld)
			d.startHeld = 0
		}
		throttled, cycle := thr.stop()
		held += throttled
		longest = max(longest, cycle)
		rep, err := m.done(dirty)
		if err != nil {
			return err
		}
		rep.HeldMS, rep.MaxHoldMS = ms(held), ms(longest)
		rep.Throttle = thr.level()
		rep.EstimateMS = ms(v.Estimate)
		root.rounds = append(root.rounds, rep)
		if err := ss.roundEnd(rep); err != nil {
			return err
		}
		hist = append(hist, RoundStat{Dirty: dirty, Bytes: rep.BytesRaw, Duration: time.Since(m.start)})
		ss.log.Info("pre-copy round", "round", round, "dirty", dirty, "pages", rep.PagesSent, "ms", rep.MS)
	}
}

// endRound ends round of process d (the i-th of the tree) on its sink,
// after its pages were sent with the error err. A process of a live
// migration's tree (not the root) that exited meanwhile ends its round
// with what was sent (it leaves the tree at the next round).
func (ss *session) endRound(d *dumper, i int, round uint32, err error) error {
	if err == nil {
		err = d.sink.endRound(round)
	}
	if err != nil && i > 0 && ss.regroup != nil && notCancelled(err) && exited(d.pid) {
		ss.log.Debug("pre-copy: a process exited as its pages were read", "pid", d.pid, "err", err)
		d.sink.forget()
		err = d.sink.endRound(round)
	}
	return err
}

// notCancelled says whether err is not a cancellation.
func notCancelled(err error) bool {
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// track starts tracking the dirty pages of process d (the tracker of the
// session's options), briefly stopped; d.preLayout is its layout then.
func (d *dumper) track() error {
	name := d.opts.Tracker
	if name == "" {
		name = TrackerAuto
	}
	var err error
	if d.tracker, err = track.New(name, d.pid); err != nil {
		return fmt.Errorf("process %d: %w", d.pid, err)
	}
	d.preLayout, d.startHeld, err = d.startTracking()
	return err
}

// armSink readies the sink of d, tracked, for pre-copy: a tracker that
// keeps what was sent sees it, and as the process runs until the final
// round, what it unmaps while a round reads is skipped (see
// pageSink.racy).
func (d *dumper) armSink() {
	if ct, ok := d.tracker.(track.ContentTracker); ok {
		d.sink.onSent = ct.Sent
	}
	d.sink.racy = true
}

// startTracking starts the process's tracker with the process briefly
// stopped (what a tracker can do with it running, it does after:
// track.StartRunning), and returns its layout then and how long it was
// stopped.
//
// smaps, which walks the page tables (~15 ms a GiB, many more on a busy
// machine), is read before the stop; stopped, the layout is read from
// maps and takes smaps' flags where no area changed since (else smaps is
// read again). The flags of this first layout matter only for how the
// target maps the areas ahead: the final layout is read frozen.
func (d *dumper) startTracking() ([]core.VMA, time.Duration, error) {
	early, _ := proc.ReadSmaps(d.pid)
	var lp landlockProbes
	lp.prepare(d.pid)
	defer lp.close()
	t := time.Now()
	var held time.Duration
	p, err := d.tr.Seize(d.pid)
	if err != nil {
		return nil, 0, fmt.Errorf("process %d: %w", d.pid, err)
	}
	detach := func() error {
		err := p.Detach()
		held = time.Since(t)
		return err
	}
	seized := time.Since(t)
	vmas, err := readVMAsQuick(d.pid, nil)
	if err == nil && (early == nil || addVmFlags(d.pid, vmas, early, 0, 0) != nil) {
		vmas, err = readVMAs(d.pid)
	}
	laid := time.Since(t)
	if err == nil {
		err = p.FindGadget()
	}
	if err == nil {
		var why string
		if why, err = checkLandlock(p, &lp); why != "" {
			d.log.Info("Landlock not tested", "pid", d.pid, "reason", why)
		}
		d.landlockTested = err == nil
	}
	if err == nil {
		err = track.StartRunning(d.tracker, p, vmas, detach)
	} else if derr := detach(); derr != nil {
		d.log.Debug("detach", "pid", d.pid, "err", derr)
	}
	if err != nil {
		return nil, held, fmt.Errorf("process %d: start %s tracking: %w", d.pid, d.tracker.Name(), err)
	}
	d.log.Debug("tracking started", "pid", d.pid, "tracker", d.tracker.Name(), "seize", seized, "layout", laid-seized, "held", held, "armed", time.Since(t)-held)
	return vmas, held, nil
}

// treeMeter measures one round of the tree through its sinks' counters,
// and reports its progress while it runs (DumpOptions.Transfer).
type treeMeter struct {
	ms    []*roundMeter
	start time.Time
	w     *transferWatch
}

// meter starts measuring round.
func (ss *session) meter(all []*dumper, round int) *treeMeter {
	m := &treeMeter{start: time.Now()}
	for _, d := range all {
		m.ms = append(m.ms, d.sink.meter(round))
	}
	return m
}

// watch starts the round's progress reports (DumpOptions.Transfer), once
// its pages begin to go: planned are the pages it is expected to send.
// Its end (or done) must be called.
func (m *treeMeter) watch(ss *session, all []*dumper, planned uint64) {
	m.w = watchTransfer(ss.opts.Transfer, m.ms[0].round, all, planned)
}

// end stops the round's progress reports (done does too).
func (m *treeMeter) end() { m.w.end() }

// done flushes the round's frames of every sink and reports the round.
func (m *treeMeter) done(dirty uint64) (RoundReport, error) {
	m.end()
	var rep RoundReport
	for _, rm := range m.ms {
		r, err := rm.done(dirty)
		if err != nil {
			return RoundReport{}, err
		}
		rep.Round, rep.PagesDirty = r.Round, r.PagesDirty
		rep.PagesSent += r.PagesSent
		rep.BytesRaw += r.BytesRaw
		rep.BytesWire += r.BytesWire
	}
	rep.MS = ms(time.Since(m.start))
	return rep, nil
}

// clip keeps the parts of ranges inside areas whose pages are sent
// (holds).
func clip(ranges []PageRange, vmas []core.VMA, holds func(string) bool) []PageRange {
	var out []PageRange
	for _, r := range ranges {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > r.Start })
		for ; i < len(vmas) && vmas[i].Start < r.End; i++ {
			if holds(vmas[i].Kind) {
				out = append(out, PageRange{Start: max(r.Start, vmas[i].Start), End: min(r.End, vmas[i].End)})
			}
		}
	}
	return out
}

// finalRound sends, with the processes of all frozen, the pages each
// dirtied since the last pre-copy round plus those the policy stopped on
// (its pending set): one round for the tree.
//
// Its steps are lapped with lap: the session's (ss.lap), or those of a
// round that runs beside the rest of the frozen window (frozenState's
// overlap, beside says so), which must not touch the session's clock.
//
// Preconditions: the processes are frozen; each d.proc.VMAs is its
// layout.
func (ss *session) finalRound(ctx context.Context, all []*dumper, frozen time.Time, lap func(string), beside bool) error {
	root := all[0]
	round := len(root.rounds)
	if pc := ss.postCopy; pc != nil && pc.active && len(all) > 1 {
		// Processes joined the tree since: post-copy serves one.
		ss.log.Warn("post-copy: the tree has more than one process now; it moves in pre-copy", "processes", len(all))
		pc.active = false
	}
	layouts := make([][]core.VMA, len(all))
	for i, d := range all {
		layouts[i] = d.proc.VMAs
	}
	if err := ss.roundStart(layouts); err != nil {
		return err
	}
	if ss.onRoundStart != nil {
		lap("final round: layout")
	}
	m := ss.meter(all, round)
	ranges, err := finalDirty(all, layouts, beside)
	if err != nil {
		return err
	}
	lap("final round: dirty pages")
	if ss.opts.Transfer != nil { // only then: this is downtime
		var planned uint64
		for i, d := range all {
			for _, r := range clip(ranges[i], layouts[i], ss.holds) {
				planned += r.Pages()
			}
			for _, r := range clip(d.pending, layouts[i], ss.holds) {
				planned += r.Pages()
			}
		}
		m.watch(ss, all, planned)
		defer m.end()
	}
	var dirty uint64
	for i, d := range all {
		rs := append(ranges[i], d.pending...)
		if pc := ss.postCopy; pc != nil && pc.active && d == root {
			rs = pc.split(layouts[i], rs) // the rest is left missing
		}
		n, err := d.sink.sendDirty(ctx, uint32(round), layouts[i], rs)
		if err != nil {
			return err
		}
		dirty += n
	}
	lap("final round: send")
	for _, d := range all {
		if err := d.sink.endRound(uint32(round)); err != nil {
			return err
		}
	}
	rep, err := m.done(dirty)
	if err != nil {
		return err
	}
	rep.Frozen = true
	rep.HeldMS = ms(time.Since(frozen))
	rep.MaxHoldMS = rep.HeldMS
	rep.EstimateMS = ms(root.estimate)
	root.rounds = append(root.rounds, rep)
	return ss.roundEnd(rep)
}

// finalDirty asks the tracker of each process of all (frozen) for the
// pages written since its last round, in layouts: each walk of a
// process's page tables is its own (a tracker each, held by nothing else
// now), so they go on at the same time, a few at once.
//
// Beside the injected calls (beside), one walk at a time, from the last
// process to the first: the tracer threads keep the other CPUs, and the
// injected mmap and brk, which take a process's mmap lock for writing
// (a walk holds it for reading) and go from the first process to the
// last, meet the walks about once instead of following them.
func finalDirty(all []*dumper, layouts [][]core.VMA, beside bool) ([][]PageRange, error) {
	ranges := make([][]PageRange, len(all))
	errs := make([]error, len(all))
	workers := min(runtime.GOMAXPROCS(0), maxTracers, len(all))
	order := func(n int) int { return n }
	if beside {
		workers = 1
		order = func(n int) int { return len(all) - 1 - n }
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	walk := func() {
		for {
			n := int(next.Add(1) - 1)
			if n >= len(all) {
				return
			}
			i := order(n)
			d := all[i]
			if ft, ok := d.tracker.(track.FinalTracker); ok {
				ranges[i], errs[i] = ft.FinalDirty(layouts[i])
			} else {
				ranges[i], errs[i] = d.tracker.Dirty(layouts[i])
			}
			if errs[i] != nil {
				errs[i] = fmt.Errorf("process %d: final round: %w", d.pid, errs[i])
			}
		}
	}
	if workers == 1 {
		walk()
	} else {
		for range workers {
			wg.Go(walk)
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return ranges, nil
}

// mergeRanges sorts ranges and merges those that overlap or touch, so no
// page is sent twice in one round.
func mergeRanges(ranges []PageRange) []PageRange {
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].Start < ranges[j].Start })
	out := ranges[:0]
	for _, r := range ranges {
		if n := len(out); n > 0 && r.Start <= out[n-1].End {
			out[n-1].End = max(out[n-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}
