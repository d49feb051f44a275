package source

import (
	"fmt"
	"time"
)

// Policy decides when pre-copy stops and the process is frozen for the
// final round. Pre-copy stops at the first of:
//
//   - converged: the pages dirtied in the last round could be sent within
//     TargetDowntime at the throughput measured so far, so freezing now
//     keeps the pause near that target (after round 0 alone, whose rate
//     is not that of scattered pages, only a dirty set of a few pages:
//     firstRoundConverges);
//   - stalled: the dirty set has not shrunk by at least MinShrink (a
//     fraction) for Patience rounds in a row — the process dirties memory
//     as fast as it is sent, and more rounds only cost time;
//   - MaxRounds pre-copy rounds are done.
//
// With AutoConverge, stalled and MaxRounds do not stop pre-copy while the
// processes can be slowed down more: each time, they are throttled one
// step more (stopped for a growing share of the time while a round
// sends, see throttleSteps) and given Patience+1 more rounds, so that a
// process that writes faster than its pages go dirties less each round.
type Policy struct {
	MaxRounds      int           // pre-copy rounds at most, the first full one included
	TargetDowntime time.Duration // the final round should take about this long
	MinShrink      float64       // a round must shrink the dirty set by this fraction...
	Patience       int           // ...within this many rounds, or pre-copy stops
	AutoConverge   bool          // throttle the processes rather than stop unconverged
}

// DefaultPolicy is what `migrate dump --pre-copy` uses unless told otherwise.
var DefaultPolicy = Policy{MaxRounds: 8, TargetDowntime: 20 * time.Millisecond, MinShrink: 0.2, Patience: 2}

// Validate refuses settings that cannot work.
func (p Policy) Validate() error {
	switch {
	case p.MaxRounds < 1:
		return fmt.Errorf("pre-copy: max rounds %d, need at least 1", p.MaxRounds)
	case p.TargetDowntime < 0:
		return fmt.Errorf("pre-copy: negative target downtime %v", p.TargetDowntime)
	case p.MinShrink < 0 || p.MinShrink >= 1:
		return fmt.Errorf("pre-copy: min shrink %v not in [0, 1)", p.MinShrink)
	case p.Patience < 1:
		return fmt.Errorf("pre-copy: patience %d, need at least 1", p.Patience)
	}
	return nil
}

// RoundStat is what the policy learns from one pre-copy round.
type RoundStat struct {
	Dirty    uint64        // pages found dirty at the start of the round (all pages in round 0)
	Bytes    uint64        // raw bytes the round sent
	Duration time.Duration // how long the round took
}

// Verdict is the policy's answer after a round.
type Verdict struct {
	Stop   bool
	Reason string // "converged", "stalled", "max rounds"; "" while going on
	// Estimate is the expected duration of a final round now.
	Estimate time.Duration
}

// firstRoundConverges is the most pages dirty after round 0 alone that
// pre-copy freezes on (see Policy.next): 256 KiB, a millisecond or two
// of a final round.
const firstRoundConverges = 64

// Next looks at the rounds so far (oldest first, at least one) and the
// number of pages dirty right now, and says whether to freeze.
func (p Policy) Next(rounds []RoundStat, dirtyNow uint64) Verdict {
	return p.next(rounds, 1, p.MaxRounds, dirtyNow)
}

// next is Next with the rounds that count for a stall beginning at
// rounds[from] (from >= 1: the rounds since the throttle last changed),
// and a budget of maxRounds rounds.
func (p Policy) next(rounds []RoundStat, from, maxRounds int, dirtyNow uint64) Verdict {
	// The final round sends pages written since the last round: scattered
	// ones, slower to read and send than round 0's whole areas (with
	// their zero pages and long runs). Its rate is measured on the rounds
	// that sent such pages, when there are any.
	measured := rounds
	if len(rounds) > 1 {
		measured = rounds[1:]
	}
	var bytes uint64
	var took time.Duration
	for _, r := range measured {
		bytes += r.Bytes
		took += r.Duration
	}
	var v Verdict
	if bytes > 0 && took > 0 {
		rate := float64(bytes) / took.Seconds() // bytes per second
		v.Estimate = time.Duration(float64(dirtyNow*pageSize) / rate * float64(time.Second))
	}
	// After round 0 alone the estimate is round 0's rate, two to three
	// times the final round's: redis's 509 pages dirtied during its
	// first round were estimated at 9.3 ms and took 18.7 frozen,
	// PostgreSQL's 315 at 6.1 and 16.4. So a dirty set of more than
	// firstRoundConverges pages gets a round of its own first, live: it
	// takes about that long, measures the rate of scattered pages, and
	// leaves the final round what is written meanwhile.
	unmeasured := len(rounds) == 1 && dirtyNow > firstRoundConverges
	switch {
	case dirtyNow == 0 || (bytes > 0 && v.Estimate <= p.TargetDowntime && !unmeasured):
		v.Stop, v.Reason = true, "converged"
	case len(rounds) >= maxRounds:
		v.Stop, v.Reason = true, "max rounds"
	case p.stalled(rounds, from, dirtyNow):
		v.Stop, v.Reason = true, "stalled"
	}
	return v
}

// stalled: the dirty set did not shrink by MinShrink over the last
// Patience rounds, of those from rounds[from] on. Round 0 sends
// everything, so it is not a dirty set: from is at least 1.
func (p Policy) stalled(rounds []RoundStat, from int, dirtyNow uint64) bool {
	// Dirty sets from rounds[from], oldest first, ending with dirtyNow.
	sets := make([]uint64, 0, len(rounds))
	for _, r := range rounds[max(from, 1):] {
		sets = append(sets, r.Dirty)
	}
	sets = append(sets, dirtyNow)
	if len(sets) <= p.Patience {
		return false
	}
	for i := len(sets) - p.Patience; i < len(sets); i++ {
		if float64(sets[i]) <= float64(sets[i-1])*(1-p.MinShrink) {
			return false // it shrank enough at least once
		}
	}
	return true
}

// convergence is pre-copy's decision after each round, auto-converge
// included: it asks the policy, and where the policy would stop
// unconverged (stalled, or out of rounds) it has the processes throttled
// one step more instead, while raise can.
type convergence struct {
	pol Policy
	// raise throttles the processes one step more, false at the top; nil
	// without auto-converge.
	raise func() bool
	// stallFrom is the first round a stall is judged on (the first since
	// the throttle last changed); budget the rounds allowed so far.
	stallFrom, budget int
}

func newConvergence(pol Policy, raise func() bool) *convergence {
	if !pol.AutoConverge {
		raise = nil
	}
	return &convergence{pol: pol, raise: raise, stallFrom: 1, budget: pol.MaxRounds}
}

// next says whether to freeze after the rounds hist, with dirty pages
// dirty now; raised says the throttle went one step up instead of a stop.
func (c *convergence) next(hist []RoundStat, dirty uint64) (v Verdict, raised bool) {
	v = c.pol.next(hist, c.stallFrom, c.budget, dirty)
	if !v.Stop || v.Reason == "converged" || c.raise == nil || !c.raise() {
		return v, false
	}
	c.stallFrom = len(hist)
	c.budget = max(c.budget, len(hist)) + c.pol.Patience + 1
	return Verdict{Estimate: v.Estimate}, true
}
