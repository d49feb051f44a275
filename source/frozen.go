package source

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/pagestream"
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
// of frozenState; the order is collect's alone.

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
	// landlock, if set, has every process tested for Landlock after the
	// read phase (checkLandlock), a dump's; a live migration tests each
	// as its tracking starts.
	landlock *landlockProbes
	// steps name the phases in the report (Step); the read and injected
	// phases are "read state" and "injected calls" for both callers. An
	// empty name laps nothing: the time goes to the next step. The
	// network phase is named only when it read a connection, unless
	// networkAlways.
	networkStep   string
	networkAlways bool
	memoryStep    string

	// Results: the page stream's counts and the memory phase's time; the
	// clocks and the XSAVE features, read with the threads.
	stats   pagestream.Stats
	memTime time.Duration
	clocks  *core.Clocks
	cpu     *core.CPUFeatures
}

// collect runs the phases in order. On an error the processes are left
// for the caller's rollback (cu, or its own) to undo.
func (f *frozenState) collect(ctx context.Context) error {
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
	// The host's System V semaphores and queues the frozen tree used
	// (precheckMappings looked before pre-copy; this is exact).
	pids := make([]int, len(f.all))
	for i, d := range f.all {
		pids[i] = d.pid
	}
	if err := precheckHostIPC(pids); err != nil {
		return err
	}
	// The ptrace work runs on the tracer threads, each next to the
	// threads of its processes (see ptrace.Proc.Pin), the processes of
	// different tracers at the same time (eachProcess).
	cpus := tracerCPUs(f.all)
	err := eachProcess(f.all, func(d *dumper) error {
		d.ownLapped = time.Now()
		if cpu, ok := cpus[d.p.Tracer()]; ok {
			if err := d.p.PinOn(cpu); err != nil {
				ss.log.Debug("threads not pinned", "pid", d.pid, "err", err)
			}
		}
		if err := d.stepOutOfVDSO(); err != nil {
			return err
		}
		if err := d.collectTask(); err != nil {
			return err
		}
		d.ownLap("read: task")
		if err := f.readLayout(d); err != nil {
			return err
		}
		d.ownLap("read: layout")
		if err := d.p.FindGadgetIn(codeAreas(d.proc.VMAs)); err != nil {
			return fmt.Errorf("process %d: %w", d.pid, err)
		}
		d.ownLap("read: gadget")
		return nil
	})
	if err != nil {
		return err
	}
	// The fds one process after the other, parents first: what the
	// processes share is found in that order.
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
	if err := ctx.Err(); err != nil {
		return err
	}
	ss.lap("read state")
	return nil
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
	vmas, err := readVMAsQuick(d.pid)
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
	return eachProcess(f.all, func(d *dumper) error {
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
	err := eachProcess(f.all, func(d *dumper) error {
		d.ownLapped = time.Now()
		if err := d.mapScratch(); err != nil {
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
	})
	if err != nil {
		return err
	}
	if err := ss.hook(stageScratch); err != nil {
		return err
	}
	err = eachProcess(f.all, func(d *dumper) error {
		d.ownLapped = time.Now()
		if err := d.collectInjected(); err != nil {
			return err
		}
		if !f.keepScratch {
			return d.unmapScratch()
		}
		return nil
	})
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
	if len(tracked) > 0 {
		if err := f.ss.finalRound(ctx, tracked, f.frozen); err != nil {
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
