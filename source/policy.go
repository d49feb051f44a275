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
//     keeps the pause near that target;
//   - stalled: the dirty set has not shrunk by at least MinShrink (a
//     fraction) for Patience rounds in a row — the process dirties memory
//     as fast as it is sent, and more rounds only cost time;
//   - MaxRounds pre-copy rounds are done.
type Policy struct {
	MaxRounds      int           // pre-copy rounds at most, the first full one included
	TargetDowntime time.Duration // the final round should take about this long
	MinShrink      float64       // a round must shrink the dirty set by this fraction...
	Patience       int           // ...within this many rounds, or pre-copy stops
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

// Next looks at the rounds so far (oldest first, at least one) and the
// number of pages dirty right now, and says whether to freeze.
func (p Policy) Next(rounds []RoundStat, dirtyNow uint64) Verdict {
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
	switch {
	case dirtyNow == 0 || (bytes > 0 && v.Estimate <= p.TargetDowntime):
		v.Stop, v.Reason = true, "converged"
	case len(rounds) >= p.MaxRounds:
		v.Stop, v.Reason = true, "max rounds"
	case p.stalled(rounds, dirtyNow):
		v.Stop, v.Reason = true, "stalled"
	}
	return v
}

// stalled: the dirty set did not shrink by MinShrink over the last
// Patience rounds. Round 0 sends everything, so it is not a dirty set.
func (p Policy) stalled(rounds []RoundStat, dirtyNow uint64) bool {
	// Dirty sets after round 0, oldest first, ending with dirtyNow.
	sets := make([]uint64, 0, len(rounds))
	for _, r := range rounds[1:] {
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
