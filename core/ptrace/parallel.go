package ptrace

import (
	"sync"
	"sync/atomic"
)

// Each runs work(i) for i from 0 to n-1 on the tracer thread of item i,
// tracerOf(i): the items of one tracer one after the other, in order,
// each tracer's in one Do; those of different tracers at the same time.
// Once work fails for one item it starts on no other. The error is that
// of the first item (the lowest i) that failed.
func Each(n int, tracerOf func(i int) *Tracer, work func(i int) error) error {
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
