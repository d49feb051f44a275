package source

import "runtime"

// warmHeap readies, just before the freeze, free memory of the heap for
// what the frozen window allocates (0.4 MiB for one process, 1.7 MiB for
// an nginx tree's three, page buffers, /proc reads and descriptions):
// 4 MiB and 2 MiB a process, at most 64 MiB, allocated, written a byte a
// page, and freed by a collection.
//
// Why: `migrate --to` is a fresh process. Its heap is new, and what it
// freed the runtime gives back to the kernel (the scavenger, MADV_DONTNEED)
// so an allocation in the window often lands on pages the kernel must
// fault in again: on this 2-CPU host page faults were 15% of the source's
// CPU in an nginx tree's frozen window (perf). The runtime allocates
// lowest addresses first, so the warmed pages (those holes, faulted in by
// the writes) are what the window gets, written already. Measured with the
// warm-up on and off in alternate migrations of the same runs (18 each,
// medians): the source's frozen window 9.1 -> 7.5 ms for one nginx, 14.8 ->
// 13.6 for the nginx tree, 6.6 -> 6.4 for an idle process.
//
// The cost is a collection and a few MiB written while the processes
// still run, a few milliseconds before the freeze, and as much more
// memory until the scavenger takes it back.
func warmHeap(processes int) {
	n := min(4+2*processes, 64) << 20
	chunks := make([][]byte, 0, n>>20)
	for len(chunks) < cap(chunks) {
		c := make([]byte, 1<<20)
		for i := 0; i < len(c); i += 4096 {
			c[i] = 1
		}
		chunks = append(chunks, c)
	}
	runtime.KeepAlive(chunks)
	chunks = nil
	runtime.GC()
}
