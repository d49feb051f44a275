package par

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestDo: every item runs once, whatever the number of workers, and no
// more than workers run at the same time.
func TestDo(t *testing.T) {
	for _, c := range []struct{ n, workers int }{{0, 4}, {1, 4}, {5, 1}, {5, 0}, {100, 3}, {3, 8}} {
		seen := make([]atomic.Int32, c.n)
		var running, most atomic.Int32
		var mu sync.Mutex
		Do(c.n, c.workers, func(i int) {
			r := running.Add(1)
			mu.Lock()
			if r > most.Load() {
				most.Store(r)
			}
			mu.Unlock()
			seen[i].Add(1)
			running.Add(-1)
		})
		for i := range seen {
			if got := seen[i].Load(); got != 1 {
				t.Errorf("n %d, %d workers: item %d ran %d times", c.n, c.workers, i, got)
			}
		}
		if limit := int32(max(c.workers, 1)); most.Load() > limit {
			t.Errorf("n %d, %d workers: %d ran at once", c.n, c.workers, most.Load())
		}
	}
}
