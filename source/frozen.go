package source

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/par"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/source/track"
)

// The state of frozen processes is collected in phases, in this order, by
// the offline dump (dump) and by the final state of a live migration
// (liveSource.FinalState):
//
//  1. read:     what ptrace and /proc tell, nothing changed in the process:
//     identity, executable, auxv, threads with their registers, signals,
//     credentials and cgroups, the memory layout, the fds (file locks
//     read, sockets described, TCP connections noted) and pipe buffers. An
//     fd or mapping that cannot move is refused here.
//  2. network:  the network lock on, then each noted TCP connection read in
//     repair mode (which stays on).
//  3. injected: what only the process can tell, by system calls run inside
//     it with a scratch page for their results: brk, signal actions,
//     alternate stacks, interval and POSIX timers, resource limits,
//     scheduling and other attributes.
//  4. memory:   the final pages (the dirty pages of the last round after a
//     pre-copy, or all of them).
//  5. blobs:    the contents of deleted files, pipe and socket buffers,
//     System V shared memory segments.
//
// What the two callers do differently within a phase is set in the fields
// of frozenState; the order is collect's alone, but for one overlap: a
// live migration (overlap) starts its final round, the memory phase, on a
// goroutine of its own as soon as phase 1 has read every layout, and it
// runs beside the rest of phase 1, phase 2 and phase 3; phase 4 joins it.
//
// Why that round sends what it would send after phase 3:
//
//   - It needs nothing ptrace does, only the layouts (read frozen, in
//     phase 1, after stepOutOfVDSO, the last thing that ran the processes'
//     own code) and the trackers. The processes stay frozen throughout:
//     nothing of theirs runs, and what the frozen window itself does to
//     them after the layouts are read writes only the scratch page. The
//     injected calls write their results there and nowhere else
//     (collectInjected, collectInjectedAttrs, collectTimers); the mmap that
//     maps it and brk(0) change no page of the layout; a queued SIGSTOP
//     (liveSource.FinalState's injectedDone) writes nothing.
//   - The scratch page is not in the layouts: its address was free when
//     they were read, and the round scans and sends the areas of those
//     layouts only, so a scan before or after the mmap sees the same
//     pages. The kernel may merge the scratch mmap into an adjacent
//     private anonymous area (same flags, no userfaultfd context: never an
//     area uffd-wp tracks, whose VM_UFFD_WP and context differ); the
//     merged area then shows soft-dirty as a whole (mmap sets VM_SOFTDIRTY
//     on the area it extends), so a soft-dirty scan after the mmap may send
//     that area's clean pages too: more pages, never fewer, each as it
//     reads now. brk(0) moves no break.
//   - The mmap lock: PAGEMAP_SCAN and the pagemap reads take the process's
//     mmap lock for reading, the injected mmap and brk for writing, so the
//     two wait for each other, a process at a time; neither changes what
//     the other sees. mmGate has the walks wait while such a call is due,
//     so that it waits for one walk of a few MiB at most.
//   - The trackers borrow the freeze without looking at the threads
//     (track.Frozen): a thread running an injected call is in our stop all
//     the same.
//   - The round's layout message lists the layouts with smaps' flags:
//     phase 1 adds them (layoutRead) where the areas are those smaps
//     showed before the freeze, as they were added after the injected brk
//     before, so the areas it sends (sentAreas) are those the state lists
//     and handoff.LeaveOutSame leaves them out of the state as before. The
//     processes it describes are copies taken as each process's task is
//     read (layoutRead; beforeFinal hands them over as the round starts;
//     their MM zero: "not collected yet" until the injected brk), for
//     phases 1 and 3 go on filling in the originals; the state has them
//     whole.
//   - Post-copy splits the root's pages (postCopy.split) on the same
//     layout; the state, built after the join, lists those areas.
//   - On an error (a refusal in phase 1, an injected call failed, the
//     target aborted) collect stops the round (its context cancelled) and
//     waits for it before it returns: the caller's rollback (ResumeOriginal
//     aborting the sinks and closing the trackers) never runs beside it.

// frozenState collects the state of frozen processes (collect), phase
// after phase.
//
// Preconditions: every process of all is frozen (seized).
type frozenState struct {
	ss  *session
	all []*dumper // the processes, parents first
	// cu, if not nil, takes the undo of what a phase changes in the
	// processes or the host (the network lock, repair mode, the scratch
	// page): the offline dump's rollback. Without it the caller undoes
	// them itself (a live migration's ResumeOriginal).
	cu *undo
	// quickLayout reads the memory layout from maps, without the flags
	// only smaps shows (see readVMAsQuick): the caller adds them.
	quickLayout bool
	// lockNetwork puts the network lock on for the connections noted in
	// the read phase (ss.tcp) and such listening ports as the caller
	// wants locked.
	lockNetwork func() error
	// keepScratch leaves the scratch pages mapped after the injected calls
	// (a killed original needs no munmap; a rollback unmaps them).
	keepScratch bool
	// injectedDone, if set, runs once the injected calls are done.
	injectedDone func()
	// keepTracking leaves the dirty tracking on after the final round
	// (taking it off a GiB of memory costs tens of milliseconds; the
	// caller turns it off once the original is killed or resumes).
	keepTracking bool
	// frozen is when the processes were frozen.
	frozen time.Time
	// landlock, if set, has the processes tested for Landlock after the
	// read phase (checkLandlock): a dump's, all of them; a live
	// migration's, those untracked (landlockTested says which were tested
	// as their tracking started).
	landlock       *landlockProbes
	landlockTested func(*dumper) bool
	// overlap starts the final round (the memory phase of the tracked
	// processes) once phase 1 has read every layout, on a goroutine of
	// its own, joined in phase 4 (see the top of this file). Only with
	// every process tracked and keepTracking (a live migration).
	overlap bool
	// layoutRead, if set, runs on each process's layout as soon as phase 1
	// read it (on its tracer thread, the processes at the same time).
	layoutRead func(d *dumper) error
	// beforeFinal, if set, runs on the collecting goroutine just before
	// an overlapped final round starts: what the round needs of the
	// processes that the phases after change, it copies.
	beforeFinal func() error
	// refs are the files the layouts map, looked at once for all the
	// processes (quickLayout).
	refs *fileRefs
	// fin is the overlapped final round in flight; mm, while it is,
	// keeps its walks of a process's page tables out of the way of the
	// injected calls that take its mmap lock for writing (mmGate).
	fin *finalRun
	mm  map[*dumper]*sync.Mutex
	// steps name the phases in the report (Step); the read and injected
	// phases are "read state" and "injected calls" for both callers. An
	// empty name laps nothing: the time goes to the next step. The
	// network phase is named only when it read a connection, unless
	// networkAlways.
	networkStep   string
	networkAlways bool
	memoryStep    string

	// Results: the page stream's counts and the memory phase's time; the
	// clocks and the XSAVE features, read with the threads; the steps of
	// an overlapped final round (its own, beside the other phases').
	stats      pagestream.Stats
	memTime    time.Duration
	clocks     *core.Clocks
	cpu        *core.CPUFeatures
	finalSteps []Step
}

// finalRun is a final round running beside phases 1 to 3.
type finalRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	// Once done is closed: its error, or the counts of each process's
	// page stream, ended (pageSink.finish).
	err   error
	stats []pagestream.Stats
	steps stepClock
}

// collect runs the phases in order. On an error the processes are left
// for the caller's rollback (cu, or its own) to undo, and an overlapped
// final round is over.
func (f *frozenState) collect(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			f.stopFinal()
		}
	}()
	if err := f.read(ctx); err != nil {
		return err
	}
	if err := f.testLandlock(); err != nil {
		return err
	}
	if err := f.network(); err != nil {
		return err
	}
	if err := f.injected(ctx); err != nil {
		return err
	}
	if err := f.memory(ctx); err != nil {
		return err
	}
	return f.blobs()
}

// close lets go of the duplicates of the processes' fds.
func (f *frozenState) close() {
	for _, d := range f.all {
		if d.fdset != nil {
			d.fdset.close()
			d.fdset = nil
		}
	}
}

// read is phase 1. Everything that cannot fail on the process itself
// comes first, so an unsupported fd or mapping is refused before any
// injection.
func (f *frozenState) read(ctx context.Context) error {
	ss := f.ss
	defer func() {
		for _, d := range f.all {
			d.fdsRead = nil // collectFDs took it, or an error ended the read
		}
	}()
	// The host's System V semaphores and queues the frozen tree used
	// (precheckMappings looked before pre-copy; this is exact).
	pids := make([]int, len(f.all))
	for i, d := range f.all {
		pids[i] = d.pid
	}
	// Beside the rest of the read (it reads the host's objects, nothing
	// of the processes), its refusal given before phase 1 ends.
	hostIPC := make(chan error, 1)
	go func() { hostIPC <- precheckHostIPC(pids) }()
	defer func() {
		if hostIPC != nil {
			<-hostIPC
		}
	}()
	// The ptrace work runs on the tracer threads, each next to the
	// threads of its processes (see ptrace.Proc.Pin), the processes of
	// different tracers at the same time (eachProcess).
	cpus := tracerCPUs(f.all)
	f.refs = newFileRefs()
	err := eachProcess(f.all, func(d *dumper) error {
		d.ownLapped = time.Now()
		if cpu, ok := cpus[d.p.Tracer()]; ok {
			if err := d.p.PinOn(cpu); err != nil {
				ss.log.Debug("threads not pinned", "pid", d.pid, "err", err)
			}
		}
		// The layout first: stepOutOfVDSO finds the vdso in it, and the
		// threads' registers are read after they left it.
		if err := f.readLayout(d); err != nil {
			return err
		}
		d.ownLap("read: layout")
		if err := d.stepOutOfVDSO(); err != nil {
			return err
		}
		if err := d.collectTask(); err != nil {
			return err
		}
		d.ownLap("read: task")
		if f.layoutRead != nil {
			if err := f.layoutRead(d); err != nil {
				return err
			}
		}
		d.ownLap("read: layout")
		if err := d.p.FindGadgetIn(codeAreas(d.proc.VMAs)); err != nil {
			return fmt.Errorf("process %d: %w", d.pid, err)
		}
		d.ownLap("read: gadget")
		d.prefetchFDs()
		d.ownLap("read: fds' /proc")
		return nil
	})
	if err != nil {
		return err
	}
	if f.overlap {
		if err := f.startFinal(ctx); err != nil {
			return err
		}
	}
	// The sockets the tree holds are listed once for all its unix
	// sockets' peers (dumpedSockets): frozen, it holds the same ones
	// throughout.
	f.ss.dumpedSocks = nil
	defer func() { f.ss.dumpedSocks = nil }()
	socks := map[uint64]bool{}
	for _, d := range f.all {
		if d.fdsRead == nil {
			socks = nil // dumpedSockets reads them
			break
		}
		socketInodes(d.fdsRead.links, socks)
	}
	f.ss.dumpedSocks = socks
	if err := f.readFDs(ctx, socks != nil); err != nil {
		return err
	}
	if err := f.readClocks(); err != nil {
		return err
	}
	if err := ss.resolvePipes(); err != nil {
		return err
	}
	if err := ss.readSysV(f.all); err != nil {
		return err
	}
	if err := ss.readMounts(f.all); err != nil {
		return err
	}
	if err := checkFDRefs(f.all); err != nil {
		return err
	}
	err, hostIPC = <-hostIPC, nil
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ss.lap("read state")
	return nil
}

// readFDs describes the fds of the tree's processes (collectFDs): what
// they share is found one process after the other, parents first
// (prepareFDs), the rest of the description done for every process at
// the same time (describeFDs), and gathered in the tree's
// order (mergeFDs). parallel false (the socket inodes of the tree not
// listed yet, which a description would list) has each process described
// whole in turn.
func (f *frozenState) readFDs(ctx context.Context, parallel bool) error {
	if !parallel || len(f.all) == 1 {
		for _, d := range f.all {
			d.ownLapped = time.Now()
			err := d.p.Tracer().Do(func() error {
				var err error
				d.fdset, err = d.collectFDs(ctx)
				return err
			})
			d.ownLap("read: fds")
			if err != nil {
				return err
			}
		}
		return nil
	}
	sets := make([]*fdSet, len(f.all))
	defer func() {
		for _, set := range sets {
			if set != nil {
				set.close() // not described: an error
			}
		}
	}()
	for i, d := range f.all {
		d.ownLapped = time.Now()
		set, err := d.prepareFDs(ctx)
		d.ownLap("read: fds, shared")
		if err != nil {
			return err
		}
		sets[i] = set
	}
	// On goroutines, not the tracers: nothing of it needs ptrace, and a
	// tracer bound to its CPU (ptrace.Proc.PinOn) waited for it while the
	// final round ran there (1.6-5.9 ms for an nginx tree's three
	// processes, against 1.5-3.5 on goroutines).
	errs := make([]error, len(f.all))
	par.Do(len(f.all), min(runtime.GOMAXPROCS(0), 4), func(i int) {
		d := f.all[i]
		d.ownLapped = time.Now()
		errs[i] = d.describeFDs(ctx, sets[i])
		d.ownLap("read: fds")
	})
	var first error
	for i, d := range f.all {
		d.mergeFDs(sets[i])
		if errs[i] == nil {
			d.fdset, sets[i] = sets[i], nil
		} else if first == nil {
			first = errs[i] // the first process's in the tree's order
		}
	}
	return first
}

// readClocks reads the clocks of the processes' time namespace, which
// they must share, and the XSAVE features their threads hold.
func (f *frozenState) readClocks() error {
	var pids []int
	var procs []*core.Process
	for _, d := range f.all {
		pids = append(pids, d.pid)
		procs = append(procs, d.proc)
	}
	if err := checkTimeNamespaces(pids); err != nil {
		return err
	}
	var err error
	if f.clocks, err = readClocks(pids); err != nil {
		return err
	}
	f.cpu = f.ss.cpuFeatures(procs)
	return nil
}

func (f *frozenState) readLayout(d *dumper) error {
	if !f.quickLayout {
		return d.collectVMAs()
	}
	vmas, err := readVMAsQuick(d.pid, f.refs)
	if err != nil {
		return err
	}
	d.proc.VMAs = vmas
	return nil
}

// network is phase 2: the network lock, then the TCP connections in
// repair mode.
func (f *frozenState) network() error {
	ss := f.ss
	if f.cu != nil {
		f.cu.Add(func() {
			if err := ss.unrepairTCP(); err != nil {
				ss.log.Error("rollback: TCP connections", "err", err)
			}
			ss.unlock()
		})
	}
	if err := f.lockNetwork(); err != nil {
		return err
	}
	if err := ss.repairTCP(); err != nil {
		return err
	}
	if f.networkStep != "" && (f.networkAlways || ss.tcp.Len() > 0) {
		ss.lap(f.networkStep)
	}
	return nil
}

// testLandlock refuses a process sandboxed by Landlock (f.landlock):
// after the read phase, which changes nothing in the processes, so what
// it refuses is refused first; before the network lock.
func (f *frozenState) testLandlock() error {
	if f.landlock == nil {
		return nil
	}
	// The probes are done with after this (a container's one lives in
	// its PID namespace).
	defer f.landlock.close()
	// Only the processes not tested yet go to their tracers: a tracer
	// woken for nothing waited for its CPU all the same, behind the final
	// round (0.1-2.4 ms of an nginx tree's frozen window, every process
	// tested as its tracking started).
	var untested []*dumper
	for _, d := range f.all {
		if f.landlockTested == nil || !f.landlockTested(d) {
			untested = append(untested, d)
		}
	}
	if len(untested) == 0 {
		return nil
	}
	return eachProcess(untested, func(d *dumper) error {
		why, err := checkLandlock(d.p, f.landlock)
		if why != "" {
			d.log.Info("Landlock not tested", "pid", d.pid, "reason", why)
		}
		return err
	})
}

// injected is phase 3: the injected calls, with a scratch page for their
// results, gone on every path (but with keepScratch).
func (f *frozenState) injected(ctx context.Context) error {
	ss := f.ss
	var mu sync.Mutex // f.cu
	scratch := func(d *dumper) error {
		d.ownLapped = time.Now()
		unlock := f.mmGate(d)
		err := d.mapScratch()
		unlock()
		if err != nil {
			return err
		}
		if f.cu != nil {
			mu.Lock()
			f.cu.Add(func() {
				if err := d.unmapScratch(); err != nil {
					ss.log.Error("rollback: unmap scratch page", "pid", d.pid, "err", err)
				}
			})
			mu.Unlock()
		}
		d.ownLap("injected: scratch page")
		return nil
	}
	calls := func(d *dumper) error {
		d.ownLapped = time.Now()
		// brk, the first of the injected calls, takes the mmap lock:
		// mmapDone says it is done.
		unlock := f.mmGate(d)
		done := d.mmapDone
		d.mmapDone = func() {
			unlock()
			if done != nil {
				done()
			}
		}
		err := d.collectInjected()
		d.mmapDone = done
		unlock()
		if err != nil {
			return err
		}
		if !f.keepScratch {
			return d.unmapScratch()
		}
		return nil
	}
	// One pass of the tracers: each process's calls follow its own
	// scratch page, and nothing of them needs another's. A second pass
	// woke the tracers again, each waiting for its CPU behind the final
	// round. The tests' stage hook between the two (every scratch page
	// mapped, no call made yet) keeps two.
	var err error
	if ss.opts.testHook == nil {
		err = eachProcess(f.all, func(d *dumper) error {
			if err := scratch(d); err != nil {
				return err
			}
			return calls(d)
		})
	} else {
		err = eachProcess(f.all, scratch)
		if err == nil {
			err = ss.hook(stageScratch)
		}
		if err == nil {
			err = eachProcess(f.all, calls)
		}
	}
	if err != nil {
		return err
	}
	if err := ss.hook(stageInjected); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.injectedDone != nil {
		f.injectedDone()
	}
	ss.lap("injected calls")
	return nil
}

// mmGate keeps the walks of process d's page tables by an overlapped
// final round waiting, until the returned unlock (which may be called
// more than once), for an injected call that takes d's mmap lock for
// writing (the scratch page's mmap, brk): the walks take it for reading,
// one after the other, and the kernel may let a walk that comes while the
// call waits for the one before it go first (a reader steals the lock
// from a waiting writer until a timeout). The call then waits for one
// walk at most (a few MiB: track's scanChunk).
func (f *frozenState) mmGate(d *dumper) (unlock func()) {
	mu := f.mm[d]
	if mu == nil {
		return func() {}
	}
	mu.Lock()
	return sync.OnceFunc(mu.Unlock)
}

// memory is phase 4: the final round of a pre-copy (one for the whole
// tree), or every page.
func (f *frozenState) memory(ctx context.Context) error {
	start := time.Now()
	// The processes pre-copy tracked (all of a live migration's tree; of
	// an offline dump, the root and not a child it forked since).
	var tracked []*dumper
	for _, d := range f.all {
		if d.tracker != nil {
			tracked = append(tracked, d)
		}
	}
	if f.fin != nil {
		return f.memoryBeside()
	}
	if len(tracked) > 0 {
		if err := f.ss.finalRound(ctx, tracked, f.frozen, f.ss.lap, false); err != nil {
			return err
		}
	}
	for _, d := range f.all {
		rounds := len(f.all[0].rounds)
		if d.tracker != nil {
			if !f.keepTracking {
				// Tracking is over: the process is left with nothing of it.
				if err := d.tracker.Close(); err != nil {
					return err
				}
			}
		} else {
			if d.sink == nil {
				var err error
				if d.sink, err = d.openSink(f.ss.codec); err != nil {
					return err
				}
			}
			m := d.sink.meter(0)
			var planned uint64
			if f.ss.opts.Transfer != nil {
				planned = residentPages([]*dumper{d})
			}
			w := watchTransfer(f.ss.opts.Transfer, 0, []*dumper{d}, planned)
			err := d.dumpMemory(ctx, d.sink, 0)
			w.end()
			if err != nil {
				return err
			}
			rep, err := m.done(d.sink.pages)
			if err != nil {
				return err
			}
			rep.Frozen = true
			d.rounds = append(d.rounds, rep)
			rounds = len(d.rounds)
		}
		st, err := d.finishPages(d.sink, rounds)
		if err != nil {
			return err
		}
		f.stats.Pages += st.Pages
		f.stats.ZeroPages += st.ZeroPages
		f.stats.BytesRaw += st.BytesRaw
		f.stats.BytesWire += st.BytesWire
	}
	f.memTime = time.Since(start)
	if f.memoryStep != "" {
		f.ss.lap(f.memoryStep)
	}
	return nil
}

// memoryBeside is phase 4 of an overlapped final round: it waits for
// the round (and the end of the page streams) and records it.
func (f *frozenState) memoryBeside() error {
	fin := f.fin
	if err := f.joinFinal(); err != nil {
		return err
	}
	rounds := len(f.all[0].rounds)
	for i, d := range f.all {
		if !f.keepTracking {
			if err := d.tracker.Close(); err != nil {
				return err
			}
		}
		st := fin.stats[i]
		d.recordPages(d.sink, st, rounds)
		f.stats.Pages += st.Pages
		f.stats.ZeroPages += st.ZeroPages
		f.stats.BytesRaw += st.BytesRaw
		f.stats.BytesWire += st.BytesWire
	}
	f.ss.lap("final round: wait")
	return nil
}

// startFinal starts the final round of every process (all tracked) on a
// goroutine of its own: see the top of this file for why it may run
// beside phases 1 to 3.
//
// Preconditions: every process is frozen and its layout read
// (d.proc.VMAs, which nothing changes until the round is joined).
func (f *frozenState) startFinal(ctx context.Context) error {
	for _, d := range f.all {
		if d.tracker == nil {
			return nil // (not a live migration's) phase 4 does it all
		}
	}
	if f.beforeFinal != nil {
		if err := f.beforeFinal(); err != nil {
			return err
		}
	}
	f.mm = make(map[*dumper]*sync.Mutex, len(f.all))
	for _, d := range f.all {
		track.Frozen(d.tracker)
		mu := &sync.Mutex{}
		f.mm[d] = mu
		track.BeforeWalks(d.tracker, func() { mu.Lock(); mu.Unlock() })
	}
	ctx, cancel := context.WithCancel(ctx)
	fin := &finalRun{cancel: cancel, done: make(chan struct{}), steps: stepClock{lapped: time.Now()}}
	f.fin = fin
	go func() {
		defer close(fin.done)
		if fin.err = f.ss.finalRound(ctx, f.all, f.frozen, fin.steps.lap, true); fin.err != nil {
			return
		}
		// The page streams end here too (their last frames flushed).
		fin.stats = make([]pagestream.Stats, len(f.all))
		for i, d := range f.all {
			if fin.stats[i], fin.err = d.sink.finish(); fin.err != nil {
				return
			}
		}
		fin.steps.lap("final round: end of the page streams")
	}()
	return nil
}

// joinFinal waits for the overlapped final round and returns its error.
func (f *frozenState) joinFinal() error {
	fin := f.fin
	if fin == nil {
		return nil
	}
	<-fin.done
	fin.cancel()
	f.fin = nil
	f.finalSteps = fin.steps.steps
	return fin.err
}

// stopFinal stops an overlapped final round still in flight (an error
// elsewhere ends the collection) and waits for it to end.
func (f *frozenState) stopFinal() {
	if f.fin == nil {
		return
	}
	f.fin.cancel()
	if err := f.joinFinal(); err != nil {
		f.ss.log.Debug("the final round in flight stopped", "err", err)
	}
}

// blobs is phase 5: file contents and buffers stored as blobs.
func (f *frozenState) blobs() error {
	for _, d := range f.all {
		if err := d.fdset.writeBlobs(d); err != nil {
			return err
		}
	}
	return f.ss.writeSysV()
}

// codeAreas are the executable areas of vmas, the [vdso] first: where an
// injected system call finds its instruction (ptrace.Proc.FindGadgetIn).
func codeAreas(vmas []core.VMA) []ptrace.Area {
	var vdso, code []ptrace.Area
	for _, v := range vmas {
		switch {
		case v.Prot&unix.PROT_EXEC == 0:
		case v.Kind == core.VMAVDSO:
			vdso = append(vdso, ptrace.Area{Start: v.Start, End: v.End})
		default:
			code = append(code, ptrace.Area{Start: v.Start, End: v.End})
		}
	}
	return append(vdso, code...)
}
