package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/par"
	"github.com/procmig/migrate/internal/raw"
)

// session is the state a restore shares among the processes of the tree.
type session struct {
	// mu guards files, warnings and atResume: TCP connections are
	// rebuilt by several goroutines (prebuildTCP); and the seals of the
	// recreated memfds, which the processes of a tree, restoring their
	// fds at the same time, may each add (seal).
	mu  sync.Mutex
	dir string
	img *core.Image
	log *slog.Logger
	tr  *ptrace.Tracer
	// tracers are the tracer threads of the tree's processes, tr first
	// (assignTracers).
	tracers []*ptrace.Tracer
	// files the agent opened for the processes; closed when the restore ends.
	files    []*os.File
	warnings []string
	// shmCreated are the System V segments this restore created (a
	// failed restore removes them).
	shmCreated []int
	// shmAt are the agent's own attachments of the segments of a live
	// migration, by ID: their pages are written through them (the
	// processes may attach them read-only).
	shmAt map[int][]byte
	// sysvLive: the segments are a live migration's (core.ShmSegment
	// Paged), created empty for the page streams to fill.
	sysvLive bool
	// shmem is where each shared anonymous object of the image (VMA.Shm)
	// was first mapped: the other areas that had it map that object too.
	shmem map[uint64]shmemArea
	// filled counts the pages written from page streams, for a reader on
	// another goroutine (RestoreOptions.Progress).
	filled atomic.Uint64
	// accepted are the differences from the image the restore made on
	// purpose and warned about (Check leaves them out).
	accepted map[accepted]bool
	// deletedFiles are the recreated deleted files and memfds, by dev/ino
	// of the original, shared by the mappings and fds that used it.
	deletedFiles map[fileKey]*os.File
	// descs are the open file descriptions by key (core.FD.Key, or
	// "PID:FD" of their first fd), shared by every fd that had them.
	descs map[string]*os.File
	// pipes are the recreated pipes by inode: read end, write end.
	pipes map[uint64][2]*os.File
	// inherit are the files given for the image's external objects, by ID.
	inherit map[string]*Inherit
	// atResume run just before the processes run: TCP connections leave
	// repair mode.
	atResume []func() error
	// blobs are the image's blobs by name, when they came in memory (a
	// live migration's state, sizes checked against Image.Blobs);
	// otherwise they are files under dir.
	blobs map[string][]byte
	// timens are the offsets of the time namespace made for the
	// processes; nil: they live in the restorer's (planTime).
	timens *core.TimeOffsets
	// afterBind, set by tests, runs after a unix socket is bound to a
	// path.
	afterBind func(path string)
	// inheritedAgentFD is, in a container, the fd of the pidfd for
	// migrate that the husk opened and every process inherited.
	inheritedAgentFD int
	// cgroupsMade are the cgroups the restore created (prepareCgroups),
	// removed if it fails.
	cgroupsMade []madeCgroup
	// applyCgroupLimits: a cgroup of the image this host has with other
	// limits gets the image's (RestoreOptions.ApplyCgroupLimits).
	applyCgroupLimits bool
	// forceVDSOProxy: the vdso goes through a proxy even where this
	// kernel's is the image's (RestoreOptions.VDSOProxy).
	forceVDSOProxy bool
	// vdsoProxied is set once a process got a vdso proxy.
	vdsoProxied atomic.Bool
	// netAttach is the bridge here the other ends of the container's
	// veths go on (RestoreOptions.NetAttach); netHosts are their names.
	netAttach string
	netHosts  []string
	// paths is where the paths of the image's files are opened (a
	// pivoted container's: see pathRoot).
	paths *pathRoot
	// moved is buildOptions.moved.
	moved func(map[int]int)
	// agentSock is the agent's end of the socket over which the
	// processes of a container with a user namespace of its own receive
	// their files (they cannot pidfd_getfd from migrate, outside it).
	agentSock *os.File
	// agentSockMu makes a file sent over agentSock and its receipt one
	// step: the processes share its other end, and those of different
	// tracers install files at the same time (a datagram one process
	// sent could otherwise reach another).
	agentSockMu sync.Mutex
}

// readBlob returns the contents of img's blob name: from memory, or read
// whole from the image directory and checked (see readBlob).
func (r *session) readBlob(img *core.Image, name string) ([]byte, error) {
	if b, ok := r.blobs[name]; ok {
		return b, nil
	}
	return readBlob(r.dir, img, name)
}

// openBlob opens img's blob name for reading: from memory, or from the
// image directory, checked as it is read (see openBlob).
func (r *session) openBlob(img *core.Image, name string) (io.ReadCloser, error) {
	if b, ok := r.blobs[name]; ok {
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return openBlob(r.dir, img, name)
}

// restorer holds the state of the restore of one process of the tree.
type restorer struct {
	*session
	proc      *core.Process
	pagesInfo *core.PagesInfo
	parent    *restorer
	husk      *exec.Cmd
	hp        *ptrace.Proc // the husk
	p         *ptrace.Proc // the process being built, with the original PID
	// tracer is the tracer thread the process is built by (assignTracers).
	tracer *ptrace.Tracer
	pid    int

	scratch uint64 // scratch area in the child for injected calls' arguments
	// agentFD is the child's pidfd for this agent, used to pull in fds;
	// in a user namespace of its own, its end of the agent's socket
	// (agentSock).
	agentFD int
	pages   uint64
	memTime time.Duration
	// sessionLeader is set once the process made its own session.
	sessionLeader bool
	// mapped is the layout built so far (without [vdso] and [vvar]);
	// written holds the pages written into it, whose zero copies must be
	// written too (elsewhere fresh memory is zero already).
	mapped  []core.VMA
	written core.PageSet
	// writtenMu guards written and opened: a live migration's page
	// streams of one process (LiveLayout.Streams) are applied by a
	// goroutine each.
	writtenMu sync.Mutex
	// opened are the ranges WriteFrame made writable for a page of a
	// live migration (an area mapped as it stays, not writable), which
	// Reprotect gives their protection back.
	opened []addrRange
	// vdsoHere is where this kernel's [vdso] and [vvar*] were put when
	// they could not go to the image's addresses (proxyVDSO): a later
	// layout must leave it alone.
	vdsoHere addrRange
	// live: pages come while pre-copy runs, before their counts are known.
	live bool
}

const scratchLen = 64 << 10

// scratchMapped is the scratch area with the page of batch code after it
// (ptrace.MapBatchCode), mapped and unmapped together.
const scratchMapped = scratchLen + ptrace.BatchCodeSize

// batchTable is the offset in the scratch area of the table of a batch of
// injected calls (ptrace.SyscallBatch), after the page of their arguments.
const batchTable = 4096

// stateArgs is the offset in the scratch area of the arguments of the
// calls batched with the signal actions (restoreState): past the table of
// those calls, which is at most 80 entries.
const stateArgs = 16 << 10

func restore(ctx context.Context, opts RestoreOptions) (*RestoreReport, error) {
	img, err := core.ReadImage(opts.Dir)
	if err != nil {
		return nil, err
	}
	inherit, err := checkInherit(img, opts.Inherit)
	if err != nil {
		return nil, err
	}
	renumbered, err := renumberContainer(img)
	if err != nil {
		return nil, err
	}
	if opts.NetAttach != "" && !core.ValidLinkName(opts.NetAttach) {
		return nil, fmt.Errorf("--net-attach %q: not an interface name", opts.NetAttach)
	}
	if opts.CgroupRoot != "" {
		if err := relocateCgroups(img, opts.CgroupRoot); err != nil {
			return nil, err
		}
	}
	if opts.IgnoreCgroups {
		if err := dropImageCgroups(img); err != nil {
			return nil, err
		}
	}
	check := func(dir string, img *core.Image) error { return validate(ctx, dir, img) }
	b, err := newBuilder(ctx, opts.Dir, img, opts.Logger, check, buildOptions{applyCgroupLimits: opts.ApplyCgroupLimits, vdsoProxy: opts.VDSOProxy, netAttach: opts.NetAttach})
	if err != nil {
		return nil, err
	}
	b.ss.inherit = inherit
	if renumbered != "" {
		b.ss.warn("%s", renumbered)
	}
	stop := b.watchFill(opts.Progress)
	err = b.FillFromImage(ctx)
	stop()
	if err != nil {
		b.Discard()
		return nil, err
	}
	if err := b.Finish(ctx, img); err != nil {
		b.Discard()
		return nil, err
	}
	if opts.Check {
		if err := b.Check(); err != nil {
			b.Discard()
			return nil, err
		}
	}
	// The dump's network lock, if this is its host: the connections are
	// here now, and go live at resume. (A failed restore leaves it, for
	// another try.)
	var lockErr error
	// (A container's own network namespace had it, gone with the original.)
	if img.NetLock != "" && !b.ss.ownNet() {
		lockErr = netlock.Remove("", img.NetLock)
	}
	rep, err := b.Resume()
	if err == nil && lockErr != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("network lock %s: %v", img.NetLock, lockErr))
	}
	return rep, err
}

// Builder builds the processes of an image in stages: NewBuilder checks
// the image and creates the processes, stopped, with their memory laid
// out; Relayout follows a layout that changed (between pre-copy rounds);
// pages are written as they come (FillFromImage reads them from the
// image's page streams); Finish restores everything else; Resume lets
// the processes run. Discard kills whatever was built. A restore from
// files runs all stages at once; a live migration spreads them over its
// rounds, so that the frozen time grows with the last round, not with the
// size of the process.
type Builder struct {
	// connected, if set, runs in Resume once the TCP connections are
	// live (out of repair mode), before any process runs.
	connected func()
	// resumedAt is when the resume let the last process go (the root).
	resumedAt time.Time

	ss    *session
	all   []*restorer // the tree, parents first
	byPID map[int]*restorer
	start time.Time
	steps []Step
	log   *slog.Logger
	done  bool // resumed or discarded
	// released: the tracers and files are let go of (release).
	released bool
	memTime  time.Duration
	tmp      string // a directory of the builder's own, removed at the end
	built    int    // processes created, joined ones too (see Join)
	// beforeFiles, if set, is waited for before Finish restores the
	// first fd (a live migration's network lock, installed meanwhile):
	// a stage of its own, "network lock", the time waited.
	beforeFiles func() error
}

// NewBuilder checks the image in dir (everything it names, before anything
// is created) and creates its processes, laid out as img says.
func NewBuilder(ctx context.Context, dir string, img *core.Image, log *slog.Logger) (*Builder, error) {
	check := func(dir string, img *core.Image) error { return validate(ctx, dir, img) }
	return newBuilder(ctx, dir, img, log, check, buildOptions{})
}

// buildOptions are newBuilder's choices: live builders map every area
// that may get pages writable; the others are RestoreOptions'.
type buildOptions struct {
	live, applyCgroupLimits, vdsoProxy bool
	netAttach                          string
	// moved, in a live migration, learns the PIDs outside of a rootless
	// container's tasks that moveOuter changed (old to here).
	moved func(map[int]int)
}

// newBuilder is NewBuilder with the check of the image given.
func newBuilder(ctx context.Context, dir string, img *core.Image, log *slog.Logger, check func(string, *core.Image) error, o buildOptions) (*Builder, error) {
	live := o.live
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Builder{start: time.Now(), log: log, byPID: map[int]*restorer{}}
	if err := check(dir, img); err != nil {
		return nil, err
	}
	// The page streams are checked at their ends here (CheckEnds) and
	// frame by frame as the fill reads them.
	b.steps = append(b.steps, Step{Name: "check image", MS: float64(time.Since(b.start).Microseconds()) / 1000})
	ss := &session{dir: dir, img: img, log: log, descs: map[string]*os.File{}, pipes: map[uint64][2]*os.File{}, sysvLive: live,
		applyCgroupLimits: o.applyCgroupLimits, forceVDSOProxy: o.vdsoProxy, netAttach: o.netAttach, paths: newPathRoot(img.Mounts), moved: o.moved}
	b.ss = ss
	root := &restorer{session: ss, proc: &img.Process, pagesInfo: &img.Pages, pid: img.Process.PID, agentFD: -1, live: live}
	b.all = []*restorer{root}
	b.byPID[root.pid] = root
	b.built = 1 + len(img.Tree)
	for i := range img.Tree {
		p := &img.Tree[i]
		r := &restorer{session: ss, proc: p, pagesInfo: p.Pages, pid: p.PID, agentFD: -1, parent: b.byPID[p.PPID], live: live}
		b.all = append(b.all, r)
		b.byPID[r.pid] = r
	}
	ss.tr = ptrace.NewTracer()
	ss.assignTracers(b.all)
	err := b.run(ctx, []stage{
		{"recreate deleted files", func() error { return ss.prepareDeleted(ctx, img) }},
		{"System V shared memory", func() error {
			if ss.ownIPC() {
				return nil // made in the container's namespace
			}
			return ss.prepareSysV(img)
		}},
		{"time namespace", ss.planTime},
		// Before the processes: a container's cgroup namespace is made
		// in its root cgroups as the root is created.
		{"cgroup limits", func() error { return ss.prepareCgroups(root.pid, img, ss.applyCgroupLimits) }},
		{"create processes", func() error {
			err := createTree(b.all)
			// (A process of a rootless container may have another PID
			// outside: moveOuter.)
			clear(b.byPID)
			for _, r := range b.all {
				b.byPID[r.pid] = r
			}
			return err
		}},
		{"network namespace", func() error {
			if !ss.ownNet() {
				return nil
			}
			return ss.prepareNet()
		}},
		{"IPC namespace", func() error {
			if !ss.ownIPC() {
				return nil
			}
			return ss.prepareIPC(img)
		}},
		{"join cgroups", b.each(ctx, (*restorer).joinProcessCgroups)},
		{"lay out memory", b.each(ctx, (*restorer).layout)},
	})
	if err != nil {
		b.Discard()
		return nil, err
	}
	return b, nil
}

type stage struct {
	name string
	fn   func() error
}

// run runs stages in order, timing each.
func (b *Builder) run(ctx context.Context, stages []stage) error {
	for _, s := range stages {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := time.Now()
		if err := s.fn(); err != nil {
			return fmt.Errorf("restore pid %d: %s: %w", b.all[0].pid, s.name, err)
		}
		b.steps = append(b.steps, Step{Name: s.name, MS: float64(time.Since(t).Microseconds()) / 1000})
		b.log.Info("restore step", "step", s.name, "ms", time.Since(t).Milliseconds())
	}
	return nil
}

// each runs fn for every live process of the tree.
func (b *Builder) each(ctx context.Context, fn func(*restorer, context.Context) error) func() error {
	return func() error {
		for _, r := range b.all {
			if r.proc.Zombie != nil {
				continue
			}
			if err := fn(r, ctx); err != nil {
				if r != b.all[0] {
					return fmt.Errorf("process %d: %w", r.pid, err)
				}
				return err
			}
		}
		return nil
	}
}

// Relayout changes the memory of process pid to the layout vmas, keeping
// the pages written into areas that did not change.
func (b *Builder) Relayout(pid int, vmas []core.VMA) error {
	r := b.byPID[pid]
	if r == nil || r.p == nil {
		return fmt.Errorf("no process %d being built", pid)
	}
	return r.relayout(vmas)
}

// progressEvery is how often a restore reports the pages it wrote.
var progressEvery = 250 * time.Millisecond // a variable for tests

// watchFill reports to f, every progressEvery until the returned stop is
// called, how many pages of the tree's page streams were written, of
// those the image holds. With f nil it does nothing.
func (b *Builder) watchFill(f func(pages, planned uint64, elapsed time.Duration)) (stop func()) {
	if f == nil {
		return func() {}
	}
	var planned uint64
	for _, r := range b.all {
		if r.pagesInfo != nil {
			planned += r.pagesInfo.Pages
		}
	}
	base, start := b.ss.filled.Load(), time.Now()
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				f(b.ss.filled.Load()-base, planned, time.Since(start))
			}
		}
	}()
	return func() { close(quit); <-done }
}

// FillFromImage writes the pages of every process from its page stream.
func (b *Builder) FillFromImage(ctx context.Context) error {
	t := time.Now()
	defer func() { b.memTime += time.Since(t) }()
	return b.run(ctx, []stage{{"fill memory", b.each(ctx, (*restorer).fillPages)}})
}

// Finish restores all but the memory, from img (the final image: its
// layout replaces the one built so far): protections, files, process and
// thread state. The processes stay stopped until Resume.
func (b *Builder) Finish(ctx context.Context, img *core.Image) error {
	if img != b.ss.img {
		// The deleted files first: an area of the final layout may map
		// one.
		if err := b.run(ctx, []stage{{"recreate deleted files", func() error { return b.ss.prepareDeleted(ctx, img) }}}); err != nil {
			return err
		}
		if err := b.ss.sameSysV(img); err != nil {
			return err
		}
		first := b.ss.img.Mounts
		if err := b.run(ctx, []stage{{"final layout", func() error { return b.adopt(img) }}}); err != nil {
			return err
		}
		if err := b.run(ctx, []stage{{"tmpfs files", func() error { return b.fillLiveMounts(first) }}}); err != nil {
			return err
		}
	}
	// The ptrace work runs on the tracer threads, each in one go next to
	// its processes' threads (pinTree: a process left on another CPU
	// would make each of its ptrace round trips cross two), the
	// processes of different tracers at the same time where they share
	// nothing (see tracers.go).
	stages := []stage{
		{"bind to CPUs", func() error { b.pinTree(); return nil }},
		{"System V semaphores and queues", func() error { return b.ss.restoreIPCObjects(img) }},
		{"set protections", b.parallel(ctx, (*restorer).protect)},
	}
	if b.beforeFiles != nil {
		stages = append(stages, stage{"network lock", b.beforeFiles})
	}
	return b.run(ctx, append(stages, []stage{
		{"restore files", b.restoreFiles(ctx)},
		{"restore process state", b.parallel(ctx, (*restorer).restoreState)},
		{"restore threads", b.parallel(ctx, (*restorer).restoreThreads)},
		// (Writes into cgroup files, no ptrace: no tracer.)
		{"join cgroups", b.each(ctx, (*restorer).joinAllCgroups)},
		{"System V segments removed", func() error { return b.ss.removeSysV(img) }},
	}...))
}

// adopt takes the final image's description of each process, and its
// layout, for the processes built from an earlier one.
func (b *Builder) adopt(img *core.Image) error {
	procs := map[int]*core.Process{img.Process.PID: &img.Process}
	for i := range img.Tree {
		procs[img.Tree[i].PID] = &img.Tree[i]
	}
	if len(procs) != len(b.all) || len(img.Tree)+1 != len(b.all) {
		return fmt.Errorf("the final image has %d processes, %d were built", len(img.Tree)+1, len(b.all))
	}
	for _, r := range b.all {
		p := procs[r.pid]
		if p == nil || (p.Zombie == nil) != (r.proc.Zombie == nil) {
			return fmt.Errorf("the final image has no process %d as the first one had", r.pid)
		}
		if p.Zombie == nil {
			if err := r.relayout(p.VMAs); err != nil {
				return fmt.Errorf("process %d: %w", r.pid, err)
			}
		}
		r.proc = p
	}
	b.ss.img = img
	return nil
}

// Resume lets every process run, children first, and reports. The
// tracers and the agent's files are let go of before it returns.
func (b *Builder) Resume() (*RestoreReport, error) {
	defer b.release()
	return b.resume()
}

// ResumeHeld is Resume for a caller that has something to tell once the
// processes run (a live migration's source, whose downtime ends there):
// the tracers, the agent's files and System V attachments are let go of
// by Release (or Discard), a millisecond or two of a tree's that the
// processes need not wait for. A failed resume lets go of them itself.
func (b *Builder) ResumeHeld() (*RestoreReport, error) {
	rep, err := b.resume()
	if err != nil {
		b.release()
	}
	return rep, err
}

// ResumedAt returns when the resume let the last process of the tree go,
// zero before.
func (b *Builder) ResumedAt() time.Time { return b.resumedAt }

// Release lets go of what ResumeHeld kept. It does nothing the second time.
func (b *Builder) Release() { b.release() }

func (b *Builder) resume() (*RestoreReport, error) {
	b.done = true
	root := b.all[0]
	if b.ss.ownNet() {
		if err := b.ss.attachNet(); err != nil {
			b.ss.warn("the container's network: %v", err)
		}
	}
	// The connections go live first, while the processes are still
	// stopped, a few at a time (hundreds take milliseconds one after the
	// other). A failure leaves that connection dead, not the process.
	fns := b.ss.atResume
	par.Do(len(fns), min(runtime.GOMAXPROCS(0), 4, (len(fns)+15)/16), func(i int) {
		if err := fns[i](); err != nil {
			b.ss.warn("%v", err)
		}
	})
	if b.connected != nil {
		b.connected()
	}
	dropZombieSIGCHLD(b.all)
	if err := b.resumeTree(); err != nil {
		return nil, err
	}
	if st, err := proc.ReadStat(root.pid); err != nil || st.State == 'Z' || st.State == 'X' {
		// (A stopped process shows 'T': alive.)
		return nil, fmt.Errorf("restore pid %d: the process died as soon as it resumed", root.pid)
	}
	var pages uint64
	for _, r := range b.all {
		pages += r.pages
	}
	rep := &RestoreReport{
		PID:       root.pid,
		Comm:      root.proc.Comm,
		Processes: len(b.all),
		Pages:     pages,
		Total:     time.Since(b.start),
		MemoryMS:  float64(b.memTime.Microseconds()) / 1000,
		Warnings:  b.ss.warnings,
		Steps:     b.steps,

		TimeNamespace: b.ss.timens,
		VDSOProxy:     b.ss.vdsoProxied.Load(),
	}
	rep.TotalMS = float64(rep.Total.Microseconds()) / 1000
	return rep, nil
}

// Discard kills whatever was built, children first: nothing of a failed
// restore runs on.
func (b *Builder) Discard() {
	if b.done {
		b.release() // (resumed: what ResumeHeld kept)
		return
	}
	b.done = true
	for i := len(b.all) - 1; i >= 0; i-- {
		b.all[i].abort()
	}
	b.ss.discardSysV()
	b.ss.discardCgroups()
	b.release()
}

// release lets go of the tracer and the agent's files, once.
func (b *Builder) release() {
	if b.released {
		return
	}
	b.released = true
	b.ss.closeFiles()
	b.ss.paths.close()
	b.ss.detachSysV()
	b.ss.closeTracers()
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

// accepted names a difference from the image the restore made on
// purpose: the process (and thread, 0 for the process) and Difference.What.
type accepted struct {
	pid, tid int
	what     string
}

// warnDiff is warn for a difference from the image that the restore
// makes on purpose: Check, which would refuse it, leaves it out.
func (r *session) warnDiff(pid, tid int, what string, format string, args ...any) {
	r.accept(pid, tid, what)
	r.warn(format, args...)
}

// accept records a difference from the image made on purpose (warnDiff).
func (r *session) accept(pid, tid int, what string) {
	r.mu.Lock()
	if r.accepted == nil {
		r.accepted = map[accepted]bool{}
	}
	r.accepted[accepted{pid, tid, what}] = true
	r.mu.Unlock()
}

func (r *session) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.warnings = append(r.warnings, msg)
	r.mu.Unlock()
	r.log.Info("warning", "msg", msg) // the report carries it to the user
}

// abort kills whatever was built. Nothing of a failed restore runs on.
func (r *restorer) abort() {
	if r.p != nil {
		// The process is a child of the husk, init or a restored parent:
		// its tracer waits it dead, its parent reaps it. In a container
		// the tracer's wait lets go of it first: its init, killed after
		// it, waits in the kernel for every process of its namespace to
		// be reaped, and cannot reap a zombie still traced.
		r.p.Kill(r.parent == nil || r.container())
	}
	if r.hp != nil {
		r.hp.Kill(true)
	}
	if r.husk != nil {
		r.husk.Process.Kill()
		waitHusk(r.husk)
	}
}

// waitHusk collects the husk's exit, which the tracer may have collected
// already (ptrace.Proc.Kill with reap): then Wait fails with ECHILD and
// keeps the process's pidfd open, which Release closes.
func waitHusk(cmd *exec.Cmd) {
	cmd.Wait()
	cmd.Process.Release()
}

func (r *session) closeFiles() {
	for _, f := range r.files {
		f.Close()
	}
	r.files = nil
}

// sys injects a system call into the restored process's leader.
func (r *restorer) sys(name string, nr uintptr, args ...uint64) (uint64, error) {
	return r.p.Syscall(r.p.Leader(), name, nr, args...)
}

// put writes b into the scratch area at off and returns its address.
func (r *restorer) put(off uint64, b []byte) (uint64, error) {
	if off+uint64(len(b)) > scratchLen {
		return 0, fmt.Errorf("%d bytes do not fit in the scratch area", len(b))
	}
	if _, err := ptrace.WriteMem(r.pid, r.scratch+off, b); err != nil {
		return 0, err
	}
	return r.scratch + off, nil
}

// cloneArgs is struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1).
type cloneArgs struct {
	Flags, Pidfd, ChildTID, ParentTID, ExitSignal, Stack, StackSize, TLS, SetTID, SetTIDSize uint64
}

// forkPID makes the process p (still laid out as a husk: its data page at
// huskData) fork a child with the given PID, and adopts the child, which is
// traced from birth. In a container (inner not 0) the child gets PID inner
// in its innermost PID namespace and pid in migrate's: flags
// CLONE_NEWPID makes that namespace (the root, inner 1); else p is inside
// it already. want is the PID clone3 returns, as p sees the child.
func forkPID(p *ptrace.Proc, pid, inner, want int, flags uint64) (*ptrace.Proc, error) {
	return forkPIDAt(p, pid, inner, want, flags, huskData)
}

// forkPIDAt is forkPID with clone3's arguments written at args, a
// writable place of p's of 256 bytes.
func forkPIDAt(p *ptrace.Proc, pid, inner, want int, flags uint64, args uint64) (*ptrace.Proc, error) {
	tids := []int32{int32(pid)}
	// From inside a user namespace of its own, p gives the PID inside
	// alone (userns.go).
	fromUserNS := inner != 0 && flags&unix.CLONE_NEWUSER == 0 && inOwnUserNS(p.PID)
	switch {
	case fromUserNS:
		tids = []int32{int32(inner)}
	case inner != 0:
		tids = []int32{int32(inner), int32(pid)}
	}
	ca := cloneArgs{Flags: flags, ExitSignal: uint64(unix.SIGCHLD), SetTID: args + 128, SetTIDSize: uint64(len(tids))}
	if _, err := ptrace.WriteMemForce(p.PID, args, raw.Bytes(&ca)); err != nil {
		return nil, fmt.Errorf("write clone_args into %d: %w", p.PID, err)
	}
	for i := range tids {
		if _, err := ptrace.WriteMemForce(p.PID, args+128+uint64(4*i), raw.Bytes(&tids[i])); err != nil {
			return nil, fmt.Errorf("write clone_args into %d: %w", p.PID, err)
		}
	}
	clone := func() (uint64, error) {
		return p.Syscall(p.Leader(), "clone3", unix.SYS_CLONE3, args, uint64(len(raw.Bytes(&ca))))
	}
	var child uint64
	var err error
	if fromUserNS {
		// A task made elsewhere on this host (a thread of migrate's
		// own) may take the PID in between: the child then has another
		// PID outside, which the caller takes (moveOuter) or refuses.
		if err := pidFree(pid); err != nil {
			return nil, err
		}
		err = withNextPID(pid, func() (err error) { child, err = clone(); return err })
		if err == nil && int(child) == want && !taskIs(pid, pid, inner) {
			stray := strayChild(p.PID, pid, inner)
			if stray == 0 {
				return nil, &PIDRaceError{PID: pid}
			}
			return p.Adopt(stray)
		}
	} else {
		child, err = clone()
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			if err := pidFree(pid); err != nil {
				return nil, err
			}
		}
		return nil, err
	}
	if int(child) != want {
		return nil, fmt.Errorf("clone3 made pid %d, want %d", child, want)
	}
	return p.Adopt(pid)
}

// createTree creates every process of the tree with its PID while all are
// still copies of the husk: the root forked out of a husk, which then dies
// (so the root is reparented to init or the nearest subreaper and outlives
// migrate), each other process forked out of its parent. A process that
// led its own session makes it before its children are forked, so they
// are born in it. Zombies are forked and made to exit as they had.
func createTree(all []*restorer) error {
	root := all[0]
	if err := root.createRoot(); err != nil {
		return err
	}
	if err := root.joinSession(); err != nil {
		return err
	}
	for _, r := range all[1:] {
		if r.parent == nil || r.parent.p == nil {
			return fmt.Errorf("process %d: its parent %d is not in the image", r.pid, r.proc.PPID)
		}
		var err error
		// In a container, its PID inside too, as clone3 returns it there.
		in, want := 0, r.pid
		if r.container() {
			if in = r.inner(r.pid); in == 0 {
				return fmt.Errorf("process %d: no PID inside the container in the image", r.pid)
			}
			want = in
		}
		if r.userNS() != nil {
			if err := r.ensureFreeOuter(r.pid, all); err != nil {
				return err
			}
		}
		if r.p, err = forkPID(r.parent.p, r.pid, in, want, 0); err != nil {
			return fmt.Errorf("process %d: %w", r.pid, err)
		}
		if err := r.moveOuter(r.pid, r.p.PID, all); err != nil {
			return err
		}
		if r.tracer != nil {
			// Still a copy of the husk: to the tracer that restores it.
			moved, err := r.p.MoveTo(r.tracer)
			if err != nil {
				return fmt.Errorf("process %d: %w", r.pid, err)
			}
			r.p = moved
		}
		if r.proc.Zombie != nil {
			if err := r.exitAsZombie(); err != nil {
				return fmt.Errorf("zombie %d: %w", r.pid, err)
			}
			continue
		}
		if err := r.joinSession(); err != nil {
			return fmt.Errorf("process %d: %w", r.pid, err)
		}
	}
	// Process groups once every process exists: a member joins a group its
	// leader made.
	for _, leaders := range []bool{true, false} {
		for _, r := range all {
			if r.proc.Zombie != nil || (r.proc.PGID == r.pid) != leaders || r.proc.SID == r.pid {
				continue
			}
			if err := r.joinGroup(); err != nil {
				return fmt.Errorf("process %d: %w", r.pid, err)
			}
		}
	}
	return nil
}

// dropZombieSIGCHLD forgets the SIGCHLD each zombie the restore made
// (exitAsZombie) sent its parent: an injection into the parent took it
// (ptrace.Thread.Stolen), and Detach would give it back, running the
// parent's handler for a child that had ended before the dump. A SIGCHLD
// the original had pending is in the image and queued from there.
func dropZombieSIGCHLD(all []*restorer) {
	zombies := map[*restorer]map[int32]bool{}
	for _, r := range all {
		if r.proc.Zombie != nil && r.parent != nil {
			if zombies[r.parent] == nil {
				zombies[r.parent] = map[int32]bool{}
			}
			zombies[r.parent][int32(r.pid)] = true
		}
	}
	for parent, pids := range zombies {
		if parent.p == nil {
			continue
		}
		for _, th := range parent.p.Threads {
			th.Stolen = slices.DeleteFunc(th.Stolen, func(si []byte) bool { return sigchldFrom(si, pids) })
		}
	}
}

// sigchldFrom says whether siginfo si is a SIGCHLD sent by the kernel for
// one of pids.
func sigchldFrom(si []byte, pids map[int32]bool) bool {
	le := binary.LittleEndian
	// siginfo: si_signo at 0, si_code at 8, si_pid at 16.
	return len(si) >= 20 && unix.Signal(le.Uint32(si)) == unix.SIGCHLD &&
		int32(le.Uint32(si[8:])) > 0 && pids[int32(le.Uint32(si[16:]))]
}

// createRoot starts the husk and forks the root out of it.
func (r *restorer) createRoot() error {
	var err error
	var inNS bool
	if r.husk, inNS, err = startHusk(r.timens); err != nil {
		return err
	}
	if r.hp, err = r.tr.SeizeOwned(r.husk.Process.Pid); err != nil {
		return fmt.Errorf("seize husk: %w", err)
	}
	r.hp.SetGadget(huskSyscall)
	if r.timens != nil && !inNS {
		if err := huskTimeNamespace(r.hp, *r.timens); err != nil {
			return err
		}
	}
	inner := 0
	if r.container() {
		// The root's children inherit its pidfd for migrate, which they
		// cannot open from inside the container (openAgentPidfd).
		if r.inheritedAgentFD, err = r.huskAgentPidfd(); err != nil {
			return err
		}
		inner = 1
	}
	if err := r.enterMountNS(); err != nil {
		return err
	}
	if r.p, err = forkPID(r.hp, r.pid, inner, r.pid, r.namespaceFlags()); err != nil {
		return err
	}
	if u := r.userNS(); u != nil {
		if err := writeUserNS(r.pid, u); err != nil {
			return err
		}
	}
	if err := r.paths.enter(r.pid); err != nil {
		return err
	}
	if r.container() {
		if err := r.setUTS(); err != nil {
			return err
		}
		// The cgroup namespace first: a cgroup hierarchy mounted inside
		// shows its root.
		if err := r.enterCgroupNS(); err != nil {
			return err
		}
		if err := r.mountInContainer(); err != nil {
			return err
		}
	}
	// The husk has done its job. Its death reparents the child to init
	// (or the nearest subreaper), so the process outlives migrate.
	if err := r.hp.Kill(true); err != nil {
		return err
	}
	r.hp = nil
	waitHusk(r.husk)
	r.husk = nil
	return nil
}

// exitAsZombie makes a freshly forked process end as the zombie it was:
// its parent finds it exited, with the same status.
func (r *restorer) exitAsZombie() error {
	status := r.proc.Zombie.ExitCode
	if sig := status & 0x7f; sig != 0 {
		// Killed by a signal: send it, still at its default action; the
		// signal lands on detach (SIGKILL at once: the injection ends
		// with the thread gone, as with exit_group below).
		if _, err := r.sys("kill", unix.SYS_KILL, uint64(r.inner(r.pid)), uint64(sig)); err != nil {
			if st, serr := proc.ReadStat(r.pid); sig == int(unix.SIGKILL) && serr == nil && (st.State == 'Z' || st.State == 'X') {
				r.p = nil
				return nil
			}
			return err
		}
		err := r.p.Detach()
		r.p = nil
		return err
	}
	// exit_group does not return: the injection ends with the thread gone.
	r.sys("exit_group", unix.SYS_EXIT_GROUP, uint64(status>>8&0xff))
	if st, err := proc.ReadStat(r.pid); err == nil && st.State != 'Z' && st.State != 'X' {
		return fmt.Errorf("still %c after exit_group", st.State)
	}
	r.p = nil
	return nil
}

// holes returns a free range of n bytes avoiding both the child's current
// mappings and the image's layout.
func holeFor(n uint64, busy [][2]uint64) (uint64, error) {
	sort.Slice(busy, func(i, j int) bool { return busy[i][0] < busy[j][0] })
	for _, base := range []uint64{1 << 32, 1 << 20} {
		at := base
		for _, b := range busy {
			if b[1] <= at {
				continue
			}
			if b[0] >= at+n {
				break
			}
			at = (b[1] + 0xffff) &^ 0xffff
		}
		if at+n < 1<<46 {
			return at, nil
		}
	}
	return 0, errors.New("no free address range for a scratch area")
}

// layout turns the child's address space (a copy of the husk's) into the
// image's: a scratch area, everything of the husk unmapped, vdso and vvar
// moved to their old addresses (or, if this kernel's vdso is not the
// image's, next to them with a proxy of the old vdso at its address:
// proxyVDSO), then every area mapped.
func (r *restorer) layout(context.Context) error {
	cur, err := proc.ReadMaps(r.pid)
	if err != nil {
		return err
	}
	var busy [][2]uint64
	for _, m := range cur {
		busy = append(busy, [2]uint64{m.Start, m.End})
	}
	for _, v := range r.proc.VMAs {
		busy = append(busy, [2]uint64{v.Start, v.End})
	}
	at, err := holeFor(scratchMapped, busy)
	if err != nil {
		return err
	}
	got, err := r.sys("mmap", unix.SYS_MMAP, at, scratchMapped, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil {
		return err
	}
	r.scratch = got
	busy = append(busy, [2]uint64{got, got + scratchMapped})
	if err := r.p.MapBatchCode(r.p.Leader(), got+scratchLen); err != nil {
		r.log.Debug("no batch code: injected calls go one by one", "pid", r.pid, "err", err)
	}

	// From now on system calls run at the syscall instruction of the vdso,
	// which stays mapped (and moves) while the husk's code goes away.
	special := specialAreas(cur)
	var vdso *proc.Mapping
	for i := range special {
		if special[i].Path == "[vdso]" {
			vdso = &special[i]
		}
	}
	if vdso == nil {
		return errors.New("the husk has no [vdso]")
	}
	off, err := syscallOffset()
	if err != nil {
		return err
	}
	r.p.SetGadget(vdso.Start + off)

	for _, m := range cur {
		if m.IsSpecial() || m.Start == r.scratch {
			continue
		}
		if _, err := r.sys("munmap", unix.SYS_MUNMAP, m.Start, m.End-m.Start); err != nil {
			return fmt.Errorf("unmap husk area %#x-%#x: %w", m.Start, m.End, err)
		}
	}
	if r.forceVDSOProxy || checkVDSO(r.proc.VMAs) != nil {
		// (validate found that the proxy serves it.)
		if err := r.proxyVDSO(special, busy, off); err != nil {
			return err
		}
		r.vdsoProxied.Store(true)
	} else if err := r.moveVDSO(special, busy, off); err != nil {
		return err
	}
	if err := r.openAgentPidfd(); err != nil {
		return err
	}
	r.mapped = ordinary(r.proc.VMAs)
	return r.mapAreas(r.mapped)
}

// syscallOffset finds a syscall instruction in this process's vdso, which
// is the same as the child's (the husk's exec mapped it).
func syscallOffset() (uint64, error) {
	_, img, err := kernel.OwnVDSO()
	if err != nil {
		return 0, err
	}
	if i := bytes.Index(img, []byte{0x0f, 0x05}); i >= 0 {
		return uint64(i), nil
	}
	return 0, ptrace.ErrNoGadget
}

// moveVDSO moves the child's [vvar*] and [vdso] to the image's addresses,
// through a free range first if old and new places overlap.
func (r *restorer) moveVDSO(cur []proc.Mapping, busy [][2]uint64, gadgetOff uint64) error {
	var want []core.VMA
	for _, v := range r.proc.VMAs {
		if v.Kind == core.VMAVDSO || v.Kind == core.VMAVVar {
			want = append(want, v)
		}
	}
	if len(want) != len(cur) {
		return &VDSOMismatchError{Reason: fmt.Sprintf("%d areas in the image, %d in the husk", len(want), len(cur))}
	}
	from := make([]uint64, len(cur))
	for i, m := range cur {
		from[i] = m.Start
	}
	move := func(to func(i int) uint64) error {
		for i, m := range cur {
			size := m.End - m.Start
			dst := to(i)
			if dst == from[i] {
				continue
			}
			if _, err := r.sys("mremap", unix.SYS_MREMAP, from[i], size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst); err != nil {
				return fmt.Errorf("move %s from %#x to %#x: %w", m.Path, from[i], dst, err)
			}
			from[i] = dst
			if m.Path == "[vdso]" {
				r.p.SetGadget(dst + gadgetOff)
			}
		}
		return nil
	}
	overlap := false
	for i := range cur {
		for j := range want {
			if cur[i].Start < want[j].End && want[j].Start < cur[i].End && cur[i].Start != want[j].Start {
				overlap = true
			}
		}
	}
	if overlap {
		span := cur[len(cur)-1].End - cur[0].Start
		tmp, err := holeFor(span, busy)
		if err != nil {
			return err
		}
		base := cur[0].Start
		if err := move(func(i int) uint64 { return tmp + cur[i].Start - base }); err != nil {
			return err
		}
	}
	return move(func(i int) uint64 { return want[i].Start })
}

// fileKey identifies a file for sharing one open fd among many mappings.
type fileKey struct {
	dev, ino uint64
	write    bool
}

// mapAreas maps the areas vmas (none of them [vdso] or [vvar]). Areas with
// pages to write are mapped writable; protect sets the final protections.
// (Not every area: a PROT_NONE reservation of many GiB mapped writable
// would be charged to the commit limit and could be refused.) In a live
// migration, whose pages are not counted yet, a file's area that is not
// writable (code, read-only data: pages of it come rarely, from a process
// that wrote to its copy) is mapped as it will stay too; a page that
// comes for it opens it (WriteFrame).
func (r *restorer) mapAreas(vmas []core.VMA) error {
	childFD := map[fileKey]int{}
	var temps []int
	defer func() {
		for _, fd := range temps {
			r.sys("close", unix.SYS_CLOSE, uint64(fd))
		}
	}()
	for i := range vmas {
		v := &vmas[i]
		prot := v.Prot
		if holdsPages(v.Kind) && (v.Pages > 0 || r.live && v.Prot != unix.PROT_NONE && !(v.Kind == core.VMAFile && v.Prot&unix.PROT_WRITE == 0)) {
			prot |= unix.PROT_WRITE | unix.PROT_READ
		}
		flags := v.Flags&(unix.MAP_SHARED|unix.MAP_PRIVATE|unix.MAP_GROWSDOWN|unix.MAP_NORESERVE) | unix.MAP_FIXED
		fd := ^uint64(0)
		switch v.Kind {
		case core.VMASysV:
			// One shmat for the areas of an attachment (split by
			// mprotect), then each area's protection.
			if v.Offset == 0 {
				if err := r.attachSysV(v); err != nil {
					return err
				}
			}
			if _, err := r.sys("mprotect", unix.SYS_MPROTECT, v.Start, v.Len(), uint64(v.Prot)); err != nil {
				return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
			}
			continue
		case core.VMAAnon:
			flags |= unix.MAP_ANONYMOUS
		case core.VMASharedAnon:
			first, ok := r.shmem[v.Shm]
			if v.Shm == 0 || !ok {
				flags |= unix.MAP_ANONYMOUS
				break
			}
			// The object an area mapped before (this process's, or
			// another's of the tree): through its map_files link.
			cfd, ok := childFD[fileKey{0, v.Shm, true}]
			if !ok {
				f, err := os.OpenFile(fmt.Sprintf("/proc/%d/map_files/%x-%x", first.pid, first.start, first.end), os.O_RDWR, 0)
				if errors.Is(err, os.ErrNotExist) && first.pid == r.pid {
					// This process's own first area, remapped since (a
					// later round's layout): a fresh object.
					delete(r.shmem, v.Shm)
					flags |= unix.MAP_ANONYMOUS
					break
				}
				if err != nil {
					return fmt.Errorf("area %#x-%#x: the shared memory of process %d at %#x: %w", v.Start, v.End, first.pid, first.start, err)
				}
				cfd, err = r.install(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
				}
				childFD[fileKey{0, v.Shm, true}] = cfd
				temps = append(temps, cfd)
			}
			fd = uint64(cfd)
		case core.VMAFile, core.VMASharedFile:
			// A shared mapping may be made writable later only if its
			// file was opened for writing: open it as it was.
			write := v.Kind == core.VMASharedFile && (v.Prot&unix.PROT_WRITE != 0 || v.MayWrite)
			key := fileKey{v.File.Dev, v.File.Ino, write}
			cfd, ok := childFD[key]
			if !ok {
				f, err := r.openMapped(v.File, write)
				if err != nil {
					return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
				}
				if cfd, err = r.install(f); err != nil {
					return fmt.Errorf("area %#x-%#x: %w", v.Start, v.End, err)
				}
				childFD[key] = cfd
				temps = append(temps, cfd)
			}
			fd = uint64(cfd)
		}
		got, err := r.sys("mmap", unix.SYS_MMAP, v.Start, v.Len(), uint64(prot), uint64(flags), fd, v.Offset)
		if err != nil {
			return fmt.Errorf("map area %#x-%#x (%s %s): %w", v.Start, v.End, v.Kind, v.Name, err)
		}
		if got != v.Start {
			return fmt.Errorf("area %#x-%#x mapped at %#x", v.Start, v.End, got)
		}
		if v.Kind == core.VMASharedAnon && v.Shm != 0 {
			if _, ok := r.shmem[v.Shm]; !ok {
				if r.shmem == nil {
					r.shmem = map[uint64]shmemArea{}
				}
				r.shmem[v.Shm] = shmemArea{pid: r.pid, start: v.Start, end: v.End}
			}
		}
	}
	return nil
}

// shmemArea is an area of a restored process that maps a shared
// anonymous object.
type shmemArea struct {
	pid        int
	start, end uint64
}

// holdsPages says whether an area of this kind has pages in an image.
func holdsPages(kind string) bool {
	return kind == core.VMAAnon || kind == core.VMASharedAnon || kind == core.VMAFile
}

// openAgentPidfd gives the child a pidfd for this agent, at an fd number
// (64 or above) that no fd to restore has, and the RLIMIT_NOFILE that its
// highest fd needs.
func (r *restorer) openAgentPidfd() error {
	var fd uint64
	if r.container() {
		// Migrate is outside the container: the pidfd the husk opened,
		// which every process of it inherited, is kept.
		fd = uint64(r.inheritedAgentFD)
		if fd > 0 {
			if _, err := r.sys("close_range", unix.SYS_CLOSE_RANGE, 0, fd-1, 0); err != nil {
				return err
			}
		}
		if _, err := r.sys("close_range", unix.SYS_CLOSE_RANGE, fd+1, 0xffffffff, 0); err != nil {
			return err
		}
		if err := r.roomForFDs(); err != nil {
			return err
		}
	} else {
		if _, err := r.sys("close_range", unix.SYS_CLOSE_RANGE, 0, 0xffffffff, 0); err != nil {
			return err
		}
		if err := r.roomForFDs(); err != nil {
			return err
		}
		var err error
		if fd, err = r.sys("pidfd_open", unix.SYS_PIDFD_OPEN, uint64(os.Getpid()), 0); err != nil {
			return err
		}
	}
	taken := make(map[int]bool, len(r.proc.FDs))
	for _, f := range r.proc.FDs {
		taken[f.FD] = true
	}
	high := 64
	for taken[high] {
		high++
	}
	moved, err := r.sys("fcntl(F_DUPFD_CLOEXEC)", unix.SYS_FCNTL, fd, unix.F_DUPFD_CLOEXEC, uint64(high))
	if err != nil {
		return err
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, fd); err != nil {
		return err
	}
	r.agentFD = int(moved)
	return nil
}

// install pulls the agent's open file f into the child (pidfd_getfd) and
// returns its fd number there (the lowest free one, close-on-exec).
func (r *restorer) install(f *os.File) (int, error) {
	if r.agentSock != nil {
		// In a user namespace of its own: over the agent's socket.
		r.agentSockMu.Lock()
		defer r.agentSockMu.Unlock()
		got, err := r.passFDs(int(r.agentSock.Fd()), r.agentFD, []int{int(f.Fd())}, true)
		if err != nil {
			return 0, err
		}
		if len(got) != 1 {
			return 0, fmt.Errorf("the child received %d fds of 1", len(got))
		}
		return got[0], nil
	}
	fd, err := r.sys("pidfd_getfd", unix.SYS_PIDFD_GETFD, uint64(r.agentFD), uint64(f.Fd()), 0)
	if err != nil {
		return 0, err
	}
	return int(fd), nil
}

// keep remembers a file the agent opened for the child.
func (r *session) keep(f *os.File) *os.File {
	r.mu.Lock()
	r.files = append(r.files, f)
	r.mu.Unlock()
	return f
}

// openMapped opens a mapped file: the file itself, or for a deleted one, a
// copy made from the image.
func (r *restorer) openMapped(ref *core.FileRef, write bool) (*os.File, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	if ref.Deleted {
		f := r.deletedFiles[fileKey{ref.Dev, ref.Ino, false}]
		if f == nil {
			return nil, fmt.Errorf("deleted file %s mapped, but the image has no copy of it", ref.Path)
		}
		// Reopened for the access the mapping needs: a mapping holds its
		// file, and one open for writing would keep the copy from being
		// executed (ETXTBSY) as long as it lives.
		g, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), flag|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		return r.keep(g), nil
	}
	f, err := openMappable(r.paths, ref.Path, flag)
	if err != nil {
		return nil, err
	}
	return r.keep(f), nil
}
