package source

import (
	"testing"
	"time"
)

// simulate runs the policy against a process that dirties pages at a given
// rate while each round sends at a given throughput.
func simulate(p Policy, totalPages uint64, dirtyPerSec float64, bytesPerSec float64) (rounds int, v Verdict) {
	var hist []RoundStat
	send := totalPages
	for {
		took := time.Duration(float64(send*pageSize) / bytesPerSec * float64(time.Second))
		hist = append(hist, RoundStat{Dirty: send, Bytes: send * pageSize, Duration: took})
		dirty := uint64(dirtyPerSec * took.Seconds())
		if dirty > totalPages {
			dirty = totalPages
		}
		v = p.Next(hist, dirty)
		if v.Stop {
			return len(hist), v
		}
		send = dirty
	}
}

func TestPolicyIdleConverges(t *testing.T) {
	n, v := simulate(DefaultPolicy, 262144, 0, 3e9)
	if n != 1 || v.Reason != "converged" {
		t.Fatalf("idle process: %d rounds, %q; want 1, converged", n, v.Reason)
	}
}

func TestPolicySlowWriterConverges(t *testing.T) {
	// 1 GiB, 50 MB/s of writes, 3 GB/s to send: shrinks ~60x a round.
	n, v := simulate(DefaultPolicy, 262144, 50e6/pageSize, 3e9)
	if v.Reason != "converged" || n > 3 {
		t.Fatalf("slow writer: %d rounds, %q; want converged within 3", n, v.Reason)
	}
	if v.Estimate > DefaultPolicy.TargetDowntime {
		t.Fatalf("converged with estimate %v over target %v", v.Estimate, DefaultPolicy.TargetDowntime)
	}
}

func TestPolicyFastWriterStalls(t *testing.T) {
	// Writes as fast as the link: the dirty set never shrinks.
	n, v := simulate(DefaultPolicy, 262144, 3e9/pageSize, 3e9)
	if v.Reason != "stalled" {
		t.Fatalf("fast writer: %q after %d rounds, want stalled", v.Reason, n)
	}
	if n != 1+DefaultPolicy.Patience {
		t.Fatalf("fast writer stopped after %d rounds, want %d", n, 1+DefaultPolicy.Patience)
	}
}

func TestPolicyMaxRounds(t *testing.T) {
	p := DefaultPolicy
	p.MaxRounds = 3
	p.TargetDowntime = 0
	p.MinShrink = 0.01
	// Shrinks by half each round but never reaches zero quickly.
	n, v := simulate(p, 1<<30, 0.5*3e9/pageSize, 3e9)
	if v.Reason != "max rounds" || n != 3 {
		t.Fatalf("%d rounds, %q; want 3, max rounds", n, v.Reason)
	}
}

func TestPolicySequences(t *testing.T) {
	r := func(dirty uint64) RoundStat {
		return RoundStat{Dirty: dirty, Bytes: dirty * pageSize, Duration: time.Duration(dirty) * time.Microsecond}
	}
	p := Policy{MaxRounds: 10, TargetDowntime: time.Millisecond, MinShrink: 0.2, Patience: 2}
	cases := []struct {
		hist []RoundStat
		now  uint64
		stop bool
		why  string
	}{
		{[]RoundStat{r(1000)}, 0, true, "converged"},
		{[]RoundStat{r(1000)}, 64, true, "converged"},          // 1 µs a page: 64 µs <= 1 ms
		{[]RoundStat{r(1000)}, 500, false, ""},                 // 500 µs at round 0's rate, but not measured on scattered pages
		{[]RoundStat{r(1000), r(600)}, 500, true, "converged"}, // measured: 500 µs <= 1 ms
		{[]RoundStat{r(100000)}, 50000, false, ""},             // 50 ms estimate, first dirty set
		{[]RoundStat{r(100000), r(50000)}, 49000, false, ""},   // one flat round is within patience
		{[]RoundStat{r(100000), r(50000), r(49000)}, 48000, true, "stalled"},
		{[]RoundStat{r(100000), r(50000), r(49000)}, 30000, false, ""}, // shrank enough
	}
	for i, c := range cases {
		v := p.Next(c.hist, c.now)
		if v.Stop != c.stop || v.Reason != c.why {
			t.Errorf("case %d: got stop=%v %q, want %v %q (estimate %v)", i, v.Stop, v.Reason, c.stop, c.why, v.Estimate)
		}
	}
}

// TestPolicyRateOfDirtyRounds: the estimate uses the rate of the rounds
// that sent dirty pages, not round 0's (whole areas, much faster).
func TestPolicyRateOfDirtyRounds(t *testing.T) {
	p := Policy{MaxRounds: 10, TargetDowntime: 20 * time.Millisecond, MinShrink: 0.2, Patience: 2}
	hist := []RoundStat{
		{Dirty: 262144, Bytes: 1 << 30, Duration: 350 * time.Millisecond},         // ~3 GB/s
		{Dirty: 10000, Bytes: 10000 * pageSize, Duration: 100 * time.Millisecond}, // ~400 MB/s
	}
	v := p.Next(hist, 3000)
	if v.Stop || v.Estimate < 25*time.Millisecond || v.Estimate > 35*time.Millisecond {
		t.Fatalf("3000 pages at 100 pages/ms: stop=%v, estimate %v; want going on, ~30 ms", v.Stop, v.Estimate)
	}
	if v := p.Next(hist, 1500); !v.Stop || v.Reason != "converged" {
		t.Fatalf("1500 pages at 100 pages/ms (15 ms): %+v, want converged", v)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{{MaxRounds: 0, Patience: 1}, {MaxRounds: 1, MinShrink: 1, Patience: 1}, {MaxRounds: 1, TargetDowntime: -1, Patience: 1}, {MaxRounds: 1}} {
		if p.Validate() == nil {
			t.Errorf("%+v validated", p)
		}
	}
	if err := DefaultPolicy.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestAutoConverge: a writer as fast as the link never converges on its
// own; with AutoConverge, the throttle goes up a step each time the dirty
// set stalls (a throttled writer writes only while it runs), until
// pre-copy converges, within the rounds the steps allow.
func TestAutoConverge(t *testing.T) {
	p := DefaultPolicy
	p.AutoConverge = true
	const total, link = 262144, 1e9
	writer := 2e9 / pageSize // pages a second, unthrottled
	step := -1
	level := func() float64 {
		if step < 0 {
			return 0
		}
		return throttleSteps[step]
	}
	c := newConvergence(p, func() bool {
		if step+1 >= len(throttleSteps) {
			return false
		}
		step++
		return true
	})
	var hist []RoundStat
	var levels []float64
	send := uint64(total)
	for {
		took := time.Duration(float64(send*pageSize) / link * float64(time.Second))
		hist = append(hist, RoundStat{Dirty: send, Bytes: send * pageSize, Duration: took})
		dirty := min(uint64(writer*(1-level())*took.Seconds()), total)
		v, raised := c.next(hist, dirty)
		if raised {
			levels = append(levels, level())
		}
		if v.Stop {
			if v.Reason != "converged" {
				t.Fatalf("stopped %q after %d rounds at throttle %v (steps %v), want converged", v.Reason, len(hist), level(), levels)
			}
			break
		}
		if len(hist) > p.MaxRounds+len(throttleSteps)*(p.Patience+1) {
			t.Fatalf("%d rounds: more than the budget", len(hist))
		}
		send = dirty
	}
	if len(levels) == 0 || levels[len(levels)-1] != level() {
		t.Fatalf("throttle steps %v, final level %v", levels, level())
	}
	for i := 1; i < len(levels); i++ {
		if levels[i] <= levels[i-1] {
			t.Errorf("throttle steps %v not rising", levels)
		}
	}
	t.Logf("converged after %d rounds, throttle steps %v", len(hist), levels)

	// Without AutoConverge the same writer stalls; with it but at the
	// top of the steps, pre-copy stops as before.
	c = newConvergence(DefaultPolicy, func() bool { t.Fatal("raise without AutoConverge"); return false })
	if v, raised := c.next([]RoundStat{{Dirty: total, Bytes: total * pageSize, Duration: time.Second}, {Dirty: total}, {Dirty: total}}, total); !v.Stop || raised {
		t.Errorf("without AutoConverge: %+v, raised %v; want a stop", v, raised)
	}
	c = newConvergence(p, func() bool { return false })
	if v, raised := c.next([]RoundStat{{Dirty: total, Bytes: total * pageSize, Duration: time.Second}, {Dirty: total}, {Dirty: total}}, total); !v.Stop || raised || v.Reason != "stalled" {
		t.Errorf("throttle at its top: %+v, raised %v; want stalled", v, raised)
	}
}

// TestPolicyFirstRoundRate: after round 0 alone, whose rate (whole
// areas) is not that of scattered pages, a dirty set of more than a few
// pages gets a round of its own before the freeze, even where round 0's
// rate says it would fit (redis: 509 pages estimated at 9.3 ms took
// 18.7 frozen).
func TestPolicyFirstRoundRate(t *testing.T) {
	p := DefaultPolicy
	round0 := RoundStat{Dirty: 22957, Bytes: 94031872, Duration: 458 * time.Millisecond} // 205 MB/s
	v := p.Next([]RoundStat{round0}, 509)
	if v.Stop || v.Estimate > p.TargetDowntime {
		t.Fatalf("509 pages after round 0: %+v; want going on, estimated within %v", v, p.TargetDowntime)
	}
	if v := p.Next([]RoundStat{round0}, firstRoundConverges); !v.Stop || v.Reason != "converged" {
		t.Fatalf("%d pages after round 0: %+v; want converged", firstRoundConverges, v)
	}
	round1 := RoundStat{Dirty: 509, Bytes: 509 * pageSize, Duration: 25 * time.Millisecond} // ~83 MB/s
	if v := p.Next([]RoundStat{round0, round1}, 40); !v.Stop || v.Reason != "converged" {
		t.Fatalf("40 pages after a measured round: %+v; want converged", v)
	}
	if v := p.Next([]RoundStat{round0, round1}, 509); v.Stop {
		t.Fatalf("509 pages at the measured ~83 MB/s (~25 ms, target %v): %+v; want going on", p.TargetDowntime, v)
	}
}
