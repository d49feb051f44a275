package source

import (
	"runtime"
	"testing"
)

// TestWarmHeap: once warmHeap returns, the heap holds at least the
// memory it asked for free and not given back to the kernel (HeapIdle
// counts free memory, HeapReleased what of it was given back), for what
// the frozen window allocates next.
func TestWarmHeap(t *testing.T) {
	for _, procs := range []int{1, 3, 100} {
		runtime.GC()
		warmHeap(procs)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		want := uint64(min(4+2*procs, 64)) << 20
		// The scavenger may have taken a little back already: a page
		// of 64 KiB chunks at 1% of a CPU, not MiBs, in this time.
		if free := ms.HeapIdle - ms.HeapReleased; free < want*3/4 {
			t.Errorf("%d processes: %d KiB of the heap free and in memory, want about %d KiB", procs, free>>10, want>>10)
		}
	}
}
