package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/source/sockets"
)

// undo is a stack of rollback steps (gVisor's cleanup idea): Clean runs them
// in reverse unless Release was called.
type undo struct{ fns []func() }

func (u *undo) Add(f func()) { u.fns = append(u.fns, f) }
func (u *undo) Release()     { u.fns = nil }
func (u *undo) Clean() {
	for i := len(u.fns) - 1; i >= 0; i-- {
		u.fns[i]()
	}
	u.fns = nil
}

// session is the state one dump shares among the processes of the tree.
type session struct {
	opts DumpOptions
	// dumpedSocks caches dumpedSockets while the fds are read.
	dumpedSocks map[uint64]bool
	// sockDefaults are a new socket's options of each kind, read once
	// for all the processes of the session.
	sockDefaults sockets.Defaults
	log          *slog.Logger
	dir          string
	tr           *ptrace.Tracer
	// tracers are the tracer threads of a tree, tr first (tracerFor),
	// at most maxTracers of them.
	tracers    []*ptrace.Tracer
	maxTracers int
	codec      pagestream.Codec
	blobs      int
	// shm are the System V segments the processes attach (readSysV).
	shm []core.ShmSegment
	// innerPIDs are the PIDs inside the container of the processes of
	// its tree, as each was seen when it joined (noteInner): a round's
	// layout names a process that exited since with it.
	innerPIDs map[int]int
	// container is set when the root is the init of a PID namespace of
	// its own, which the dump carries with its whole tree; ipcNS is then
	// the root's PID if it has an IPC namespace of its own, whose System
	// V objects are read there (inIPC).
	container bool
	ipcNS     int
	// ownNet: the container has a network namespace of its own.
	ownNet bool
	// mounts is the processes' mount namespace, if not migrate's (readMounts).
	mounts *core.MountNS
	// blobSums are the blobs stored so far, for Image.Blobs.
	blobSums map[string]core.Blob
	// blobMu serializes copyBlob.
	blobMu sync.Mutex
	steps  []Step
	lapped time.Time
	// fds seen so far in the tree, to find open file descriptions shared
	// between fds and processes, and pipe ends.
	fds   []fdRecord
	pipes map[uint64][]pipeEnd
	// tables are the processes whose fd tables were read, to find one
	// shared between processes (see refuseFDTable).
	tables []int
	// tcp are the TCP connections of the tree, noted while collecting
	// fds; lock keeps the host from answering them (and the listening
	// ports) while they are taken apart and until they run elsewhere.
	tcp  sockets.Conns
	lock *netlock.Lock
	// memBlobs, if not nil, holds the blobs instead of files under dir:
	// a live migration sends them with the state, and a file each (with
	// its fsync, a disk flush) cost ~0.4 ms a TCP connection with queued
	// bytes.
	memBlobs map[string][]byte
	// probe: the fds are read only to find those the dump would refuse,
	// from a process that runs (see precheckFDs): nothing is read that
	// a read could change (queues, timers), nothing is kept, and what may
	// change before the freeze (a connection still connecting, an accept
	// queue) is left to the dump itself.
	probe bool
	// onRoundStart and onRoundEnd, if set, see each round of pages begin
	// (with the layout of each process of the tree, in its order) and
	// end: a live migration announces rounds to the target.
	onRoundStart func(layouts [][]core.VMA) error
	onRoundEnd   func(rep RoundReport) error
	// regroup, if set, takes the tree a live migration moves as it is
	// now, at the start of each round of pre-copy: it returns the
	// processes to track, parents first, each tracked (track) and with a
	// sink; one that joined since the last round has all its memory in
	// pending (liveSource.regroup). A process of it (not the root) that
	// exits is then no error: it leaves at the next round.
	regroup func(ctx context.Context, all []*dumper) ([]*dumper, error)
	// postCopy, if set, may end a live migration's pre-copy in post-copy
	// (postcopy.go).
	postCopy *postCopy
	// freezer, if set, is the cgroup freezer freezeTree uses
	// (prepareFreezer); froze says what stopped the tree ("cgroup" or
	// "ptrace"), freezeTime how long it took.
	freezer    *cgroupFreezer
	froze      string
	freezeTime time.Duration
}

// dumper holds the state of the dump of one process of the tree.
type dumper struct {
	*session
	pid int
	// landlockTested: a live migration tested it for Landlock as its
	// tracking started (a process that joins at the freeze is tested
	// then).
	landlockTested bool
	p              *ptrace.Proc
	proc           *core.Process
	pages          *core.PagesInfo
	stat           *proc.Stat
	status         *proc.Status
	// frozenStatus is status as collectTask read it frozen (nil if it
	// could not): mapScratch's VmLck before its mmap.
	frozenStatus *proc.Status
	fdset        *fdSet
	// fdsRead are the process's fds and their fdinfo, read while the
	// frozen tree's processes are read side by side (prefetchFDs), for
	// collectFDs, which takes them.
	fdsRead *fdsRead
	sink    *pageSink
	// scratch is a page mapped in the tracee for results of injected calls.
	scratch uint64
	tracker Tracker
	// rounds are the rounds of pages: the tree's, on the root's dumper.
	rounds []RoundReport
	// pending are the pages the pre-copy left to the final round (or,
	// for a process that joined a live migration's tree, all of them,
	// for its first round).
	pending []PageRange
	// preLayout is the layout of the last round of pre-copy, startHeld
	// how long its tracking's start stopped it (counted by the round it
	// joined).
	preLayout []core.VMA
	startHeld time.Duration
	// estimate is the policy's last estimate of the final round's time.
	estimate time.Duration
	// mmapDone, if set, is called once the injected calls that take the
	// process's mmap lock are done.
	mmapDone func()
	// ownSteps are where the frozen window's time went for this process
	// alone (ProcessSteps), lapped from ownLapped.
	ownSteps  []Step
	ownLapped time.Time
}

// ownLap records the time this process's own work took since its
// previous lap as step name (see ProcessSteps).
func (d *dumper) ownLap(name string) {
	now := time.Now()
	if !d.ownLapped.IsZero() {
		d.ownSteps = append(d.ownSteps, Step{Name: name, MS: ms(now.Sub(d.ownLapped))})
	}
	d.ownLapped = now
}

func (s *session) roundStart(layouts [][]core.VMA) error {
	if s.onRoundStart == nil {
		return nil
	}
	return s.onRoundStart(layouts)
}

func (s *session) roundEnd(rep RoundReport) error {
	if s.onRoundEnd == nil {
		return nil
	}
	return s.onRoundEnd(rep)
}

// lap records the time since the previous lap as step name.
func (s *session) lap(name string) {
	now := time.Now()
	s.steps = append(s.steps, Step{Name: name, MS: ms(now.Sub(s.lapped))})
	s.lapped = now
}

// stepClock laps the steps of work that runs beside the session's, on a
// clock of its own (session.lap is the session's).
type stepClock struct {
	steps  []Step
	lapped time.Time
}

// lap records the time since the previous lap as step name.
func (c *stepClock) lap(name string) {
	now := time.Now()
	c.steps = append(c.steps, Step{Name: name, MS: ms(now.Sub(c.lapped))})
	c.lapped = now
}

// Stages at which DumpOptions.testHook is called.
const (
	stageSeized   = "seized"   // all threads stopped, nothing changed yet
	stageScratch  = "scratch"  // scratch page mapped in the tracee
	stageInjected = "injected" // injected calls done, scratch page gone
	stageMemory   = "memory"   // after the first pages are written
	stageMeta     = "meta"     // before the metadata file is written
	// stageCgroupFrozen: the cgroup freezer froze the tree, nothing
	// seized yet (only when the freezer is used).
	stageCgroupFrozen = "cgroup-frozen"
)

func (s *session) hook(stage string) error {
	if s.opts.testHook == nil {
		return nil
	}
	return s.opts.testHook(stage)
}

// pagesFile names the page stream of a process: the root's is
// core.PagesFile, each descendant's carries its PID.
func pagesFile(pid int, root bool) string {
	if root {
		return core.PagesFile
	}
	return fmt.Sprintf("pages-%d.img", pid)
}

func dump(ctx context.Context, opts DumpOptions) (rep *DumpReport, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ThawStale(log)
	codec, err := pagestream.ParseCodec(opts.Codec)
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		return nil, errors.New("no image directory given")
	}
	ss := &session{opts: opts, log: log, dir: opts.Dir, codec: codec, lapped: start, pipes: map[uint64][]pipeEnd{}}
	root := &dumper{session: ss, pid: opts.PID}
	root.stat, root.status, err = checkTarget(opts.PID)
	if err != nil {
		return nil, err
	}
	if err := ss.noteContainer(&opts); err != nil {
		return nil, err
	}
	// An fd that cannot move is refused before the process is frozen
	// (and before pre-copy).
	if err := precheckFDs(ctx, opts); err != nil {
		return nil, err
	}
	if err := precheckMappings(opts); err != nil {
		return nil, err
	}
	// The probes of the Landlock test, started before the freeze.
	var landlock landlockProbes
	landlock.prepare(opts.PID)
	defer landlock.close()
	if err := os.MkdirAll(filepath.Join(ss.dir, core.FilesDir), 0o700); err != nil {
		return nil, fmt.Errorf("image directory: %w", err)
	}
	img := &core.Image{
		Kind:    core.ImageKind,
		Version: core.ImageVersion,
		Created: time.Now().UTC(),
		Arch:    runtime.GOARCH,
		Pages:   core.PagesInfo{File: core.PagesFile, Codec: codec.String()},
	}
	img.Host, _ = os.Hostname()
	img.Kernel = kernelRelease()
	root.proc, root.pages = &img.Process, &img.Pages

	// The tracer outlives every rollback step (defers run last-in, first
	// out): detaching needs it.
	ss.tr = ptrace.NewTracer()
	defer ss.closeTracers()
	// The duplicates of the TCP connections too: the rollback turns their
	// repair mode off through them.
	defer ss.closeTCP()
	var cu undo
	defer cu.Clean()
	var all []*dumper // the tree, parents first; grows as it is frozen
	// A tree's pre-copy follows the tree as it runs (tf): processes that
	// fork join it, with a page file of their own, those that exit leave.
	var tf *treeFollow
	// Files this dump creates go away if it fails.
	cu.Add(func() {
		var procs []*dumper
		if tf != nil {
			procs = append(slices.Clone(tf.all), tf.left...)
		}
		for _, d := range append(procs, all...) {
			if d.sink != nil {
				d.sink.abort()
			}
			os.Remove(filepath.Join(ss.dir, d.pages.File))
		}
		os.RemoveAll(filepath.Join(ss.dir, core.FilesDir))
		os.Remove(filepath.Join(ss.dir, "."+core.MetaFile+".tmp"))
	})
	all = append(all, root)
	if root.sink, err = root.openSink(codec); err != nil {
		return nil, err
	}

	if opts.PreCopy {
		cu.Add(func() {
			procs := all
			if tf != nil {
				procs = tf.all
			}
			for _, d := range procs {
				if d.tracker != nil {
					if err := d.tracker.Close(); err != nil {
						log.Error("rollback: stop dirty tracking", "pid", d.pid, "err", err)
					}
				}
			}
		})
		if opts.Tree {
			tf = ss.followTree(root, codec)
			ss.regroup = tf.regroup
		}
		if err = ss.precopy(ctx, all); err != nil {
			return nil, err
		}
		if tf != nil {
			all = slices.Clone(tf.all)
		}
		ss.lap("pre-copy")
	}

	// Freeze: the root, then (with opts.Tree) its descendants, until no
	// process of the tree has a child that is not frozen.
	cu.Add(func() {
		for _, d := range all {
			if d.p != nil {
				if err := d.p.Detach(); err != nil {
					log.Error("rollback: detach", "pid", d.pid, "err", err)
				}
			}
		}
	})
	if err := ss.prepareFreezer(root.pid); err != nil {
		return nil, err
	}
	defer ss.freezer.close()
	zombies, err := freezeTree(ctx, ss, &all, img)
	if err == nil && tf != nil {
		// The tree as it is now: forked since the last round, a process
		// joins with all its memory; one that exited leaves.
		if _, err = tf.settleFrozen(all, zombies); err == nil {
			all, zombies = slices.Clone(tf.all), tf.zombies
		}
	}
	if err != nil {
		return nil, err
	}
	frozen := time.Now()
	ss.lap("freeze")
	log.Info("frozen", "pid", root.pid, "processes", len(all), "threads", len(root.p.Threads))
	if err := ss.hook(stageSeized); err != nil {
		return nil, err
	}

	// The state, in phases (frozen.go). A lock whose process is to die
	// outlives this dump: the restore removes it.
	f := &frozenState{ss: ss, all: all, cu: &cu, frozen: frozen, landlock: &landlock,
		networkStep: "tcp repair", memoryStep: "memory"}
	f.lockNetwork = func() error {
		// The listening ports are locked too when connections are (the
		// restore is expected soon, and a client then gets through
		// instead of a reset); a dump with no connection leaves nothing
		// locked behind it (its image may never be restored).
		var listeners []netip.AddrPort
		if !opts.LeaveRunning && ss.tcp.Len() > 0 {
			listeners = tcpListeners(all)
		}
		return ss.lockNetwork(root.pid, listeners, !opts.LeaveRunning)
	}
	defer f.close()
	if err := f.collect(ctx); err != nil {
		return nil, err
	}
	img.NetLock = lockName(ss.lock)
	img.Clocks, img.CPU = f.clocks, f.cpu
	stats, memTime := f.stats, f.memTime
	for _, d := range all[1:] {
		img.Tree = append(img.Tree, *d.proc)
	}
	img.Tree = append(img.Tree, zombies...)
	if ss.container {
		if img.Namespaces, err = ss.readNamespaces(img, true); err != nil {
			return nil, err
		}
	}
	if err := ss.hook(stageMeta); err != nil {
		return nil, err
	}
	// Last chance to give up: once the metadata is written, the image is
	// whole and the process is gone.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	img.Blobs = ss.blobSums
	img.Shm = ss.shm
	img.Mounts = ss.mounts
	if img.CgroupLimits, err = readCgroupLimits(append([]core.Process{img.Process}, img.Tree...)); err != nil {
		return nil, err
	}
	if err := core.WriteImage(ss.dir, img); err != nil {
		return nil, fmt.Errorf("write image metadata: %w", err)
	}
	if err := syncDir(ss.dir); err != nil {
		return nil, err
	}

	// The image is complete: from here on nothing is undone.
	cu.Release()
	ss.lap("files and metadata")
	var size int64
	for _, d := range all {
		size += d.pages.Size
	}
	rep = &DumpReport{
		PID: root.pid, Dir: ss.dir, Comm: root.proc.Comm, Processes: len(all) + len(zombies),
		Threads: len(root.proc.Threads), VMAs: len(root.proc.VMAs), FDs: len(root.proc.FDs),
		Pages: stats.Pages, ZeroPages: stats.ZeroPages, BytesRaw: stats.BytesRaw,
		BytesImage: size, BytesWire: uint64(size), Codec: codec.String(),
		LeftRunning: opts.LeaveRunning, Rounds: root.rounds, Stages: stages(all, stats.BytesRaw, 0),
		Freezer: ss.froze, FreezeMS: ms(ss.freezeTime),
	}
	if root.tracker != nil {
		rep.Tracker = root.tracker.Name()
	}
	// Frozen time ends when the process runs again, or, when it is to die,
	// once its image is complete.
	rep.Frozen = time.Since(frozen)
	if opts.LeaveRunning {
		// Connections back to their process before it runs.
		err = ss.unrepairTCP()
		ss.unlock()
	} else if ss.lock != nil {
		log.Info("network lock stays on until the restore", "table", ss.lock.Name())
		ss.lock.Disown()
	}
	// Children first when killing, so no parent sees a child die and acts
	// on it; any order when letting them run.
	for i := len(all) - 1; i >= 0; i-- {
		d := all[i]
		var e error
		if opts.LeaveRunning {
			e = d.p.Detach()
		} else {
			// In a container, the init's death waits for every process
			// of it to be reaped: the tracer lets go of each zombie
			// (a wait, which hands it to its parent) before the init
			// dies; and of the init itself, unless migrate is its parent
			// (its launcher would not see it end before the tracer's
			// thread does).
			e = d.p.Kill(ss.container && (i > 0 || root.stat.PPID != os.Getpid()))
		}
		if err == nil {
			err = e
		}
	}
	if opts.LeaveRunning {
		rep.Frozen = time.Since(frozen)
	}
	ss.lap("release")
	rep.Steps = ss.steps
	rep.Total = time.Since(start)
	rep.FrozenMS = ms(rep.Frozen)
	rep.TotalMS = ms(rep.Total)
	rep.MemoryMS = ms(memTime)
	if err != nil {
		return rep, fmt.Errorf("image written, but: %w", err)
	}
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func kernelRelease() string {
	b, err := proc.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return b
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// newBlob creates a fresh file under files/ and returns its image name.
func (d *session) newBlob(kind string) (string, *os.File, error) {
	d.blobs++
	name := fmt.Sprintf("%s/%s-%d", core.FilesDir, kind, d.blobs)
	f, err := os.OpenFile(filepath.Join(d.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", nil, err
	}
	return name, f, nil
}

// copyBlob stores everything r yields as a blob. The processes of a
// tree described at the same time (describeFDs) store their sockets'
// queues with it: it takes blobMu.
func (d *session) copyBlob(kind string, r io.Reader) (string, error) {
	d.blobMu.Lock()
	defer d.blobMu.Unlock()
	if d.memBlobs != nil {
		d.blobs++
		name := fmt.Sprintf("%s/%s-%d", core.FilesDir, kind, d.blobs)
		b, err := io.ReadAll(r)
		if err != nil {
			return "", fmt.Errorf("store %s: %w", name, err)
		}
		sum, err := core.HashBlob(bytes.NewReader(b))
		if err != nil {
			return "", fmt.Errorf("store %s: %w", name, err)
		}
		d.memBlobs[name] = b
		d.noteBlob(name, sum)
		return name, nil
	}
	name, f, err := d.newBlob(kind)
	if err != nil {
		return "", err
	}
	// What is written is hashed: the restore reads no blob that differs.
	sum, err := core.HashBlob(io.TeeReader(r, f))
	if err != nil {
		f.Close()
		return "", fmt.Errorf("store %s: %w", name, err)
	}
	d.noteBlob(name, sum)
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("store %s: %w", name, err)
	}
	return name, f.Close()
}

// noteBlob records a stored blob's size and SHA-256 for Image.Blobs.
func (d *session) noteBlob(name string, sum core.Blob) {
	if d.blobSums == nil {
		d.blobSums = map[string]core.Blob{}
	}
	d.blobSums[name] = sum
}

// followTree is the tree a pre-copy dump follows as it runs: a process
// that joins is tracked (unless it joins frozen) and gets its page file,
// one that leaves has its file removed (the image does not name it).
// The root has its file already.
func (ss *session) followTree(root *dumper, codec pagestream.Codec) *treeFollow {
	tf := newTreeFollow(root, treeMember{start: root.stat.StartTime})
	tf.onJoin = func(d *dumper, tracked bool) error {
		if tracked {
			if err := d.track(); err != nil {
				return err
			}
		}
		if d.sink == nil {
			var err error
			if d.sink, err = d.openSink(codec); err != nil {
				return err
			}
		}
		if tracked {
			d.armSink()
		}
		return nil
	}
	tf.onLeave = func(d *dumper) {
		if d.sink != nil {
			d.sink.abort()
		}
		os.Remove(filepath.Join(ss.dir, d.pages.File))
	}
	return tf
}
