package source

import (
	"sync"
	"time"

	"github.com/procmig/migrate/core/ptrace"
)

// throttleSteps are the shares of time auto-converge keeps the processes
// stopped, one step more each time pre-copy stops converging.
var throttleSteps = []float64{0.2, 0.4, 0.6, 0.8, 0.9, 0.95}

// throttlePeriod is one stop-and-run cycle of the throttle: short enough
// that a request to the service waits at most this long, long enough
// that the stops themselves (a ptrace seize of every thread) cost little.
const throttlePeriod = 50 * time.Millisecond

// throttle slows the processes of a pre-copy down while a round sends
// their pages (Policy.AutoConverge), so that a process that writes memory
// faster than it can be sent dirties less of it each round and pre-copy
// converges. It stops every thread for a share of each throttlePeriod and
// lets them run for the rest: the same ptrace stop the freeze uses, which
// neither the process nor its parent can see (no SIGSTOP, no wait status),
// and which ends by itself if migrate dies (the kernel detaches a dead
// tracer's tracees and they run on).
type throttle struct {
	tr   *ptrace.Tracer
	step int // index in throttleSteps of the level; -1: not throttled
	quit chan struct{}
	done sync.WaitGroup
	// stopped is how long the processes were held in the running round,
	// longest the longest of those holds.
	stopped, longest time.Duration
}

func newThrottle(tr *ptrace.Tracer) *throttle {
	return &throttle{tr: tr, step: -1}
}

// level is the share of time the processes are stopped, 0 if not
// throttled.
func (t *throttle) level() float64 {
	if t == nil || t.step < 0 {
		return 0
	}
	return throttleSteps[t.step]
}

// raise takes the throttle one step up; false if it is at its top.
func (t *throttle) raise() bool {
	if t == nil || t.step+1 >= len(throttleSteps) {
		return false
	}
	t.step++
	return true
}

// start begins the stop-and-run cycles of the current level on the
// processes of all (the round's tree), until stop.
func (t *throttle) start(all []*dumper) {
	if t.level() == 0 || t.quit != nil {
		return
	}
	pids := make([]int, len(all))
	for i, d := range all {
		pids[i] = d.pid
	}
	t.quit = make(chan struct{})
	t.stopped, t.longest = 0, 0
	hold := time.Duration(t.level() * float64(throttlePeriod))
	t.done.Add(1)
	go func() {
		defer t.done.Done()
		for {
			held := time.Now()
			procs := t.seize(pids)
			select {
			case <-t.quit:
			case <-time.After(hold):
			}
			for _, p := range procs {
				p.Detach() // a process gone meanwhile: the round finds it so
			}
			h := time.Since(held)
			t.stopped += h
			t.longest = max(t.longest, h)
			select {
			case <-t.quit:
				return
			case <-time.After(throttlePeriod - hold):
			}
		}
	}()
}

// seize stops every process of the tree; one that cannot be stopped
// (gone) is left out.
func (t *throttle) seize(pids []int) []*ptrace.Proc {
	var procs []*ptrace.Proc
	for _, pid := range pids {
		if p, err := t.tr.Seize(pid); err == nil {
			procs = append(procs, p)
		}
	}
	return procs
}

// stop ends the cycles; once it returns every process runs (or, stopped by
// job control before, is stopped as it was) and none is traced by the
// throttle. It returns how long the processes were held since start, and
// the longest hold.
func (t *throttle) stop() (total, longest time.Duration) {
	if t == nil || t.quit == nil {
		return 0, 0
	}
	close(t.quit)
	t.done.Wait()
	t.quit = nil
	return t.stopped, t.longest
}
