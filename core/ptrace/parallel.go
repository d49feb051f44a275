package ptrace

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Each runs work(i) for i from 0 to n-1 on the tracer thread of item i,
// tracerOf(i): the items of one tracer one after the other, in order,
// each tracer's in one Do; those of different tracers at the same time.
// Once work fails for one item it starts on no other. The error is that
// of the first item (the lowest i) that failed.
func Each(n int, tracerOf func(i int) *Tracer, work func(i int) error) error {
	return each(n, tracerOf, work, false)
}

// EachUrgent is Each with each tracer thread in the real-time class
// (SCHED_FIFO, the lowest priority) while it works through its items:
// for work that wakes the tracees, the detach of a resume. A tracee woken
// on the tracer's CPU preempts it (the scheduler favours the woken), and
// the tracer's next process waited until the last one's work was done:
// a PostgreSQL tree resumed on 2 CPUs, 1-6 ms for one process in two,
// ~20 us each with this. The tracer's own class comes back after its
// last item. Where real-time scheduling is not allowed (no
// CAP_SYS_NICE, a cgroup without real-time time) it is Each.
func EachUrgent(n int, tracerOf func(i int) *Tracer, work func(i int) error) error {
	return each(n, tracerOf, work, true)
}

// raise puts the calling thread in SCHED_FIFO, priority 1, and returns
// what puts its class back; it does nothing where that is refused.
func raise() (restore func()) {
	old, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return func() {}
	}
	if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: 1}, 0); err != nil {
		return func() {}
	}
	return func() { unix.SchedSetAttr(0, old, 0) }
}

func each(n int, tracerOf func(i int) *Tracer, work func(i int) error, urgent bool) error {
	var tracers []*Tracer
	of := map[*Tracer][]int{}
	for i := range n {
		t := tracerOf(i)
		if _, ok := of[t]; !ok {
			tracers = append(tracers, t)
		}
		of[t] = append(of[t], i)
	}
	errs := make([]error, n)
	var failed atomic.Bool
	run := func(t *Tracer) {
		idx := of[t]
		err := t.Do(func() error {
			if urgent {
				defer raise()()
			}
			for _, i := range idx {
				if failed.Load() {
					return nil
				}
				if errs[i] = work(i); errs[i] != nil {
					failed.Store(true)
					return nil
				}
			}
			return nil
		})
		if err != nil {
			errs[idx[0]] = err
			failed.Store(true)
		}
	}
	if len(tracers) == 1 {
		run(tracers[0])
	} else {
		var wg sync.WaitGroup
		for _, t := range tracers {
			wg.Go(func() { run(t) })
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
