// Package par runs the items of a list on a few goroutines.
package par

import (
	"sync"
	"sync/atomic"
)

// Do calls fn(i) for every i in [0, n), on up to workers goroutines that
// take the next item as they finish one, and returns once all are done.
// With workers <= 1 (or a single item) fn runs on the caller's goroutine,
// one item after the other: a goroutine of its own would wait for a CPU,
// and the caller for it. fn must be safe to call concurrently for
// different items.
func Do(n, workers int, fn func(i int)) {
	if workers <= 1 || n <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}
