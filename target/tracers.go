package target

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/ptrace"
)

// The work on a tree's processes once their state has come is nearly all
// ptrace round trips (an injected system call is two stops of the
// tracee), which one tracer thread makes one after the other: a tree is
// traced by several tracer threads, one for each CPU this process may run
// on (assignTracers), each process by one from its creation (a tracee
// answers only the thread that attached it: createTree hands each child
// forked out of its parent over to its own, ptrace.Proc.MoveTo, while it
// is still a copy of the husk). The per-process stages of Finish run on
// the tracers at the same time (Builder.parallel), each tracer bound to
// its own CPU with its processes (pinTree); the files, which the
// processes share, are opened in the agent first, one process after the
// other, and then installed at the same time (Builder.restoreFiles). A
// single process has one tracer as before.

// maxTracers bounds the tracer threads of a tree.
const maxTracers = 8

// assignTracers gives each process of all (the root first) that will
// live its tracer: the root ss.tr, the others one of the tracers, one for
// each CPU this process may run on (at most maxTracers), each tracer a
// run of processes next to each other in the tree's order.
// A zombie stays with its parent's (it exits as soon as it is forked), a
// process that joins later too (Builder.Join).
func (ss *session) assignTracers(all []*restorer) {
	live := 0
	for _, r := range all {
		if r.proc.Zombie == nil {
			live++
		}
	}
	n := 1
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		n = min(max(set.Count(), 1), maxTracers, max(live, 1))
	}
	ss.tracers = []*ptrace.Tracer{ss.tr}
	for range n - 1 {
		ss.tracers = append(ss.tracers, ptrace.NewTracer())
	}
	k := 0
	for _, r := range all {
		if r.proc.Zombie != nil {
			continue
		}
		r.tracer = ss.tracers[k*n/live]
		k++
	}
}

// closeTracers ends the tracer threads.
func (ss *session) closeTracers() {
	if ss.tr != nil {
		ss.tr.Close()
	}
	for _, t := range ss.tracers {
		t.Close()
	}
}

// running are the processes of the tree that run once resumed: built and
// not zombies.
func (b *Builder) running() []*restorer {
	out := make([]*restorer, 0, len(b.all))
	for _, r := range b.all {
		if r.p != nil && r.proc.Zombie == nil {
			out = append(out, r)
		}
	}
	return out
}

// pinTree binds each tracer, and its processes' threads, to one CPU while
// they are stopped (see ptrace.Proc.Pin): the root's tracer on the CPU
// the root last ran on, each other one on another CPU this process may
// run on. A process that cannot be pinned is left as it is.
func (b *Builder) pinTree() {
	live := b.running()
	if len(live) == 0 {
		return
	}
	cpus := map[*ptrace.Tracer]int{}
	root, err := ptrace.LastCPU(live[0].pid)
	if err != nil {
		b.ss.log.Debug("threads not pinned", "pid", live[0].pid, "err", err)
		return
	}
	cpus[live[0].p.Tracer()] = root
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		set = unix.CPUSet{}
	}
	cpu := 0
	for _, r := range live {
		t := r.p.Tracer()
		c, ok := cpus[t]
		if !ok {
			for cpu < len(set)*64 && (!set.IsSet(cpu) || cpu == root) {
				cpu++
			}
			if cpu >= len(set)*64 {
				c = root // no other CPU: next to the root
			} else {
				c = cpu
				cpu++
			}
			cpus[t] = c
		}
		if err := r.p.PinOn(c); err != nil {
			b.ss.log.Debug("threads not pinned", "pid", r.pid, "err", err)
		}
	}
}

// parallel is each with fn run on the tracer of each process, the
// processes of different tracers at the same time: for the stages whose
// work touches nothing another process's does.
func (b *Builder) parallel(ctx context.Context, fn func(*restorer, context.Context) error) func() error {
	return func() error {
		live := b.running()
		err := ptrace.Each(len(live), func(i int) *ptrace.Tracer { return live[i].p.Tracer() },
			func(i int) error {
				if err := fn(live[i], ctx); err != nil {
					if live[i] != b.all[0] {
						return fmt.Errorf("process %d: %w", live[i].pid, err)
					}
					return err
				}
				return nil
			})
		return err
	}
}

// restoreFiles restores the fds of the tree: every open file description
// first, in the agent, one process after the other in the tree's order (a
// description the processes share is opened by the first that has it,
// and given to the others: openDescs), then each process's fds on its
// tracer, the processes of different tracers at the same time
// (restoreFDs, which only reads the descriptions opened).
func (b *Builder) restoreFiles(ctx context.Context) func() error {
	install := b.parallel(ctx, (*restorer).restoreFDs)
	return func() error {
		for _, r := range b.running() {
			if err := r.openDescs(ctx); err != nil {
				if r != b.all[0] {
					return fmt.Errorf("process %d: %w", r.pid, err)
				}
				return err
			}
		}
		return install()
	}
}

// resumeTree detaches every built process, children first: a process
// runs only once every process below it in the tree does, as it was
// frozen (what it does at once, a signal to a child or a wait for one,
// finds the child running, never stopped by the restore). So one depth
// of the tree after the other, from the deepest, the processes of one
// depth on their tracers at the same time (they are not each other's
// children); each tracer's of a depth in the tree's order, the latest
// first. It stops at the first error.
//
// Each tracer is given its work once, in the real-time class
// (ptrace.EachUrgent: a process it lets go would preempt it otherwise):
// first what the detach of each of its processes does but the detach
// itself (registers, signals taken, CPU masks: ptrace.Proc.PrepareDetach),
// then the detaches, deepest first: the first once every process is put
// back (a failure there leaves every process stopped, none has run), each
// depth's once every deeper one is detached, which the tracers tell each
// other. A round trip through migrate's own goroutines between two
// depths waited for a CPU the processes just let go had taken (0.1-2.8 ms
// of an nginx tree's).
func (b *Builder) resumeTree() error {
	levels := byDepth(b.all)
	for _, rs := range levels {
		for _, r := range rs {
			if r.proc.Stopped {
				r.p.StopOnDetach()
			}
		}
	}
	type item struct {
		r       *restorer
		depth   int
		prepare bool
	}
	var items []item
	if len(levels) > 1 {
		for d := len(levels) - 1; d >= 0; d-- {
			for _, r := range levels[d] {
				items = append(items, item{r, d, true})
			}
		}
	}
	for d := len(levels) - 1; d >= 0; d-- {
		for _, r := range levels[d] {
			items = append(items, item{r, d, false})
		}
	}
	// left[d] counts the processes of depth d not detached yet; done[d]
	// opens once there are none. abort opens at the first error: a
	// tracer waiting for a depth stops waiting.
	left := make([]atomic.Int32, len(levels))
	done := make([]*latch, len(levels))
	for d := range levels {
		left[d].Store(int32(len(levels[d])))
		done[d] = newLatch()
	}
	// preparing counts the processes not put back yet; ready opens once
	// there are none.
	var preparing atomic.Int32
	ready := newLatch()
	for _, it := range items {
		if it.prepare {
			preparing.Add(1)
		}
	}
	if preparing.Load() == 0 {
		ready.open()
	}
	abort := newLatch()
	fail := func(err error) error {
		abort.open()
		return err
	}
	// (b.resumedAt is set by the tracer that lets the root go, and read
	// once EachUrgent returns, which waits for every tracer.)
	return ptrace.EachUrgent(len(items), func(i int) *ptrace.Tracer { return items[i].r.p.Tracer() }, func(i int) error {
		it := items[i]
		if it.prepare {
			if err := it.r.p.PrepareDetach(); err != nil {
				return fail(fmt.Errorf("restore pid %d: resume: %w", it.r.pid, err))
			}
			if preparing.Add(-1) == 0 {
				ready.open()
			}
			return nil
		}
		if !ready.wait(abort) || (it.depth+1 < len(levels) && !done[it.depth+1].wait(abort)) {
			return nil // another process's error is the one returned
		}
		if err := it.r.p.Detach(); err != nil {
			return fail(fmt.Errorf("restore pid %d: resume: %w", it.r.pid, err))
		}
		if left[it.depth].Add(-1) == 0 {
			if it.depth == 0 {
				b.resumedAt = time.Now() // with its monotonic reading
			}
			done[it.depth].open()
		}
		return nil
	})
}

// latch is a flag that opens once, for the tracers of a resume to tell
// each other that a depth of the tree is let go. A tracer waiting for
// one looks at it for up to latchSpin before it sleeps: woken through
// Go's scheduler, it waited for a thread of migrate's that waited for a
// CPU behind the processes just let go (a PostgreSQL tree's second
// tracer 3.7 ms for the first's processes; its postmaster 11 ms for its
// children). The tracers run in the real-time class, one a CPU, and
// yield between looks to a thread of their own priority.
type latch struct {
	set atomic.Bool
	ch  chan struct{}
}

// latchSpin is the longest a tracer looks at a latch before it sleeps.
const latchSpin = 2 * time.Millisecond

func newLatch() *latch { return &latch{ch: make(chan struct{})} }

// open opens l; the second time it does nothing.
func (l *latch) open() {
	if l.set.CompareAndSwap(false, true) {
		close(l.ch)
	}
}

// wait waits until l or abort opens, and says whether l did.
func (l *latch) wait(abort *latch) bool {
	for until := time.Now().Add(latchSpin); time.Now().Before(until); {
		if l.set.Load() {
			return true
		}
		if abort.set.Load() {
			return false
		}
		syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	}
	select {
	case <-l.ch:
		return true
	case <-abort.ch:
		return false
	}
}

// byDepth sorts the built processes of all (r.p set) by their depth in
// the tree (the root's 0, its children's 1, ...), each depth's in the
// reverse of all's order.
func byDepth(all []*restorer) [][]*restorer {
	depth := map[*restorer]int{}
	var depthOf func(r *restorer) int
	depthOf = func(r *restorer) int {
		if d, ok := depth[r]; ok {
			return d
		}
		d := 0
		if r.parent != nil {
			d = depthOf(r.parent) + 1
		}
		depth[r] = d
		return d
	}
	var levels [][]*restorer
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		if r.p == nil {
			continue
		}
		d := depthOf(r)
		for len(levels) <= d {
			levels = append(levels, nil)
		}
		levels[d] = append(levels[d], r)
	}
	return levels
}
