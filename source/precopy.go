package source

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/procmig/migrate/core"
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
	// pre-copy rounds with uffd-wp or hash tracking, the pagemap read for
	// soft-dirty, the whole round for the final one.
	HeldMS float64 `json:"held_ms"`
	Frozen bool    `json:"frozen"`
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
		ents, err := s.pm.Read(from, to, s.ents)
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
			if !holdsPages(v.Kind) {
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

// precopy copies memory while the process runs: a first round sends every
// page, later rounds the pages written since, until the policy says the
// rest is small enough (or will not get smaller). It leaves the process
// running and untraced, with the tracker armed, and returns the dirty set
// the policy stopped on, which the final round must send.
func (d *dumper) precopy(ctx context.Context, s *pageSink) (pending []PageRange, err error) {
	pol := d.opts.Policy
	if pol == (Policy{}) {
		pol = DefaultPolicy
	}
	if err := pol.Validate(); err != nil {
		return nil, err
	}
	name := d.opts.Tracker
	if name == "" {
		name = TrackerAuto
	}
	d.tracker, err = track.New(name, d.pid)
	if err != nil {
		return nil, err
	}
	if ct, ok := d.tracker.(track.ContentTracker); ok {
		s.onSent = ct.Sent
	}
	// The process runs until the final round: what it unmaps while a
	// round reads is skipped (see pageSink.racy).
	s.racy = true
	defer func() {
		s.racy = false
		if s.skipped > 0 {
			d.log.Debug("pre-copy: pages gone before they were read, skipped", "pages", s.skipped)
		}
	}()

	// Start tracking with the process briefly stopped: backends inject.
	held := time.Now()
	p, err := d.tr.Seize(d.pid)
	if err != nil {
		return nil, err
	}
	vmas, err := readVMAs(d.pid)
	if err == nil {
		if err = p.FindGadget(); err == nil {
			err = d.tracker.Start(p, vmas)
		}
	}
	if derr := p.Detach(); err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("start %s tracking: %w", d.tracker.Name(), err)
	}
	heldStart := time.Since(held)

	var hist []RoundStat
	if err := d.roundStart(vmas); err != nil {
		return nil, err
	}
	m := s.meter(0)
	var present uint64
	for i := range vmas {
		before := s.pages
		if err := s.sendArea(ctx, 0, &vmas[i]); err != nil {
			return nil, err
		}
		present += s.pages - before
	}
	if err := s.endRound(0); err != nil {
		return nil, err
	}
	rep, err := m.done(present)
	if err != nil {
		return nil, err
	}
	rep.HeldMS = ms(heldStart)
	d.rounds = append(d.rounds, rep)
	if err := d.roundEnd(rep); err != nil {
		return nil, err
	}
	hist = append(hist, RoundStat{Dirty: present, Bytes: rep.BytesRaw, Duration: time.Since(m.start)})
	d.log.Info("pre-copy round", "round", 0, "pages", rep.PagesSent, "ms", rep.MS)

	for round := 1; ; round++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if vmas, err = readVMAs(d.pid); err != nil {
			return nil, err
		}
		m := s.meter(round)
		ranges, err := d.tracker.Dirty(vmas)
		if err != nil {
			return nil, fmt.Errorf("pre-copy round %d: %w", round, err)
		}
		var dirty uint64
		for _, r := range clip(ranges, vmas) {
			dirty += r.Pages()
		}
		v := pol.Next(hist, dirty)
		d.estimate = v.Estimate
		if v.Stop {
			d.rounds[len(d.rounds)-1].Stop = v.Reason
			d.log.Info("pre-copy done", "reason", v.Reason, "dirty", dirty, "estimate", v.Estimate)
			return ranges, nil
		}
		if err := d.roundStart(vmas); err != nil {
			return nil, err
		}
		if _, err := s.sendDirty(ctx, uint32(round), vmas, ranges); err != nil {
			return nil, err
		}
		if err := s.endRound(uint32(round)); err != nil {
			return nil, err
		}
		rep, err := m.done(dirty)
		if err != nil {
			return nil, err
		}
		rep.HeldMS = ms(d.tracker.Held())
		rep.EstimateMS = ms(v.Estimate)
		d.rounds = append(d.rounds, rep)
		if err := d.roundEnd(rep); err != nil {
			return nil, err
		}
		hist = append(hist, RoundStat{Dirty: dirty, Bytes: rep.BytesRaw, Duration: time.Since(m.start)})
		d.log.Info("pre-copy round", "round", round, "dirty", dirty, "pages", rep.PagesSent, "ms", rep.MS)
	}
}

// clip keeps the parts of ranges inside areas that hold pages.
func clip(ranges []PageRange, vmas []core.VMA) []PageRange {
	var out []PageRange
	for _, r := range ranges {
		i := sort.Search(len(vmas), func(i int) bool { return vmas[i].End > r.Start })
		for ; i < len(vmas) && vmas[i].Start < r.End; i++ {
			if holdsPages(vmas[i].Kind) {
				out = append(out, PageRange{Start: max(r.Start, vmas[i].Start), End: min(r.End, vmas[i].End)})
			}
		}
	}
	return out
}

// finalRound sends, with the process frozen, the pages dirtied since the
// last pre-copy round plus those the policy stopped on.
//
// Preconditions: the process is frozen; d.proc.VMAs is its layout.
func (d *dumper) finalRound(ctx context.Context, s *pageSink, pending []PageRange, frozen time.Time) error {
	round := len(d.rounds)
	vmas := d.proc.VMAs
	if err := d.roundStart(vmas); err != nil {
		return err
	}
	m := s.meter(round)
	var ranges []PageRange
	var err error
	if ft, ok := d.tracker.(track.FinalTracker); ok {
		ranges, err = ft.FinalDirty(vmas)
	} else {
		ranges, err = d.tracker.Dirty(vmas)
	}
	if err != nil {
		return fmt.Errorf("final round: %w", err)
	}
	d.lap("final round: dirty pages")
	dirty, err := s.sendDirty(ctx, uint32(round), vmas, append(ranges, pending...))
	if err != nil {
		return err
	}
	d.lap("final round: send")
	if err := s.endRound(uint32(round)); err != nil {
		return err
	}
	rep, err := m.done(dirty)
	if err != nil {
		return err
	}
	rep.Frozen = true
	rep.HeldMS = ms(time.Since(frozen))
	rep.EstimateMS = ms(d.estimate)
	d.rounds = append(d.rounds, rep)
	return d.roundEnd(rep)
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
