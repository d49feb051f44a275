package target

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/proc"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/transport"
)

// newLiveBuilder creates the processes a live migration announces in its
// first layout (the root, and the tree's others): what can be checked
// before the freeze is (executable, mapped files, directories, vdso, PIDs
// free); blobs come with the state.
func newLiveBuilder(ctx context.Context, ll *handoff.LiveLayout, log *slog.Logger, o buildOptions) (*Builder, error) {
	img := layoutImage(ll) // checked by decodeLayout
	dir, err := os.MkdirTemp("", "migrate-recv-")
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(dir, core.FilesDir), 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b, err := newBuilder(ctx, dir, img, log, func(_ string, img *core.Image) error { return validateLive(img) }, o)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b.tmp = dir
	return b, nil
}

// decodeLayout decodes and checks the body of a Layout: every layout, the
// first (which builds the process) and those of later rounds (which
// relayout it). Decoding is bounded (core.DecodeBounded), the areas it
// leaves out filled in from prev, those of the layout before
// (handoff.FillSame; nil before the first), and the process checked by
// checkIncoming.
func decodeLayout(body []byte, pid int, prev map[int][]core.VMA) (*handoff.LiveLayout, error) {
	var ll handoff.LiveLayout
	if err := core.DecodeBounded(body, &ll, core.DefaultDecodeBudget); err != nil {
		return nil, err
	}
	if err := handoff.FillSame(handoff.Procs(&ll.Process, ll.Tree), ll.SameVMAs, prev); err != nil {
		return nil, err
	}
	ll.SameVMAs = nil
	if ll.Process.PID != pid {
		return nil, fmt.Errorf("layout of process %d, the session is for %d", ll.Process.PID, pid)
	}
	if ll.Streams < 0 || ll.Streams > handoff.MaxPageStreams {
		return nil, fmt.Errorf("%d page streams a process, want 1..%d", ll.Streams, handoff.MaxPageStreams)
	}
	if err := checkIncoming(layoutImage(&ll)); err != nil {
		return nil, err
	}
	return &ll, nil
}

// member is a process of the tree a live migration builds, as the latest
// layout named it.
type member struct {
	ppid   int
	zombie bool
}

// layoutMembers lists the processes of a layout.
func layoutMembers(ll *handoff.LiveLayout) map[int]member {
	m := map[int]member{ll.Process.PID: {ppid: ll.Process.PPID}}
	for _, p := range ll.Tree {
		m[p.PID] = member{ppid: p.PPID, zombie: p.Zombie != nil}
	}
	return m
}

// pagesIn is a page stream of a live migration, for one process.
type pagesIn struct {
	pid int
	// barrier is the latest round whose pages are all in (-1 before
	// any; a stream that joins at round k begins at k-1).
	barrier int
	rd      *pagestream.Reader // once it began
	ended   bool               // it ended (its end frame, or cut short)
	// left: its process left the tree or exited; the stream no longer
	// counts, and nothing more of it is written.
	left bool
	// applyNS is the time this stream spent writing pages (its apply
	// goroutine's own).
	applyNS int64
}

// decodeState decodes and checks the body of the State: bounded, the areas
// it leaves out filled in from prev, those of the last layout
// (handoff.FillSame), the image checked by checkIncoming, and its blobs
// only those the image refers to.
func decodeState(body []byte, pid int, prev map[int][]core.VMA) (*handoff.LiveState, error) {
	var ls handoff.LiveState
	if err := core.DecodeBounded(body, &ls, core.DefaultDecodeBudget); err != nil {
		return nil, err
	}
	img := &ls.Image
	if err := handoff.FillSame(handoff.Procs(&img.Process, img.Tree), ls.SameVMAs, prev); err != nil {
		return nil, err
	}
	ls.SameVMAs = nil
	if err := checkIncoming(img); err != nil {
		return nil, err
	}
	if img.Process.PID != pid {
		return nil, fmt.Errorf("state of process %d, the session is for %d", img.Process.PID, pid)
	}
	refs := map[string]bool{}
	for _, pp := range img.Processes() {
		for _, b := range pp.Process.BlobNames() {
			refs[b] = true
		}
	}
	for _, b := range img.Mounts.BlobNames() {
		refs[b] = true
	}
	for name := range ls.Blobs {
		if !refs[name] { // so every name was checked by core.Image.Validate
			return nil, fmt.Errorf("blob %q that the image does not refer to", name)
		}
	}
	for id, path := range ls.Inherit {
		if !core.ValidExternal(id) || !filepath.IsAbs(path) || len(path) > 4095 || strings.IndexByte(path, 0) >= 0 {
			return nil, fmt.Errorf("inherit %q=%q: not an object and an absolute path", id, path)
		}
	}
	return &ls, nil
}

// layoutImage is the image of a layout's processes, for checkIncoming.
func layoutImage(ll *handoff.LiveLayout) *core.Image {
	return &core.Image{Kind: core.ImageKind, Version: core.ImageVersion, Process: ll.Process, Tree: ll.Tree, Shm: ll.Shm,
		Namespaces: ll.Namespaces, Pages: core.PagesInfo{File: core.PagesFile}, Clocks: ll.Clocks, CPU: ll.CPU, Mounts: ll.Mounts,
		CgroupLimits: ll.CgroupLimits}
}

// validateLive is validate without the files of an image directory.
func validateLive(img *core.Image) error {
	seen := mappedFiles{}
	for _, pp := range img.Processes() {
		if err := validateLiveProcess(newPathRoot(img.Mounts), pp.Process, seen); err != nil {
			return err
		}
	}
	if err := checkBindSources(img.Mounts); err != nil {
		return err
	}
	// In the frozen window: no wait for a dead holder (the first layout
	// waited; a PID taken since is taken).
	if err := pidTaken(img.Process.PID); err != nil {
		return err
	}
	for _, p := range img.Tree {
		if err := pidTaken(p.PID); err != nil {
			return err
		}
	}
	return nil
}

// validateLiveProcess checks what process p of a live migration needs
// here before it is created: its directories, executable, mapped files
// and vdso. The mapped files seen holds are taken as checked.
func validateLiveProcess(pr *pathRoot, p *core.Process, seen mappedFiles) error {
	for _, d := range []string{p.Cwd, p.Root} {
		var st unix.Stat_t
		if err := pr.stat(d, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return &core.ImageError{File: d, Reason: fmt.Sprintf("directory of process %d is missing here", p.PID), Err: err}
		}
	}
	if err := sameFile(pr, &p.Exe, fmt.Sprintf("executable of process %d", p.PID)); err != nil {
		return err
	}
	if err := checkMappedFiles(pr, p, seen); err != nil {
		return err
	}
	return vdsoServed(p.VMAs)
}

// mappedFiles are the mapped files checkMappedFiles found the same as
// the source's, by what sameFile compares of them.
type mappedFiles map[mappedFile]bool

type mappedFile struct {
	path, sha256 string
	size, mtime  int64
}

// checkMappedFiles checks that the files p maps are here, the same as
// the source's (size and modification time, or contents), each file once:
// those seen holds are not looked at again, those checked are added. A
// tree's processes map the same libraries, each in several areas
// (PostgreSQL's seven: ~1000 areas of ~60 files), and a stat each was
// ~5 ms of the frozen window's final layout and as much of its
// validation.
func checkMappedFiles(pr *pathRoot, p *core.Process, seen mappedFiles) error {
	for _, v := range p.VMAs {
		if v.File == nil || v.File.Deleted {
			continue
		}
		k := mappedFile{v.File.Path, v.File.SHA256, v.File.Size, v.File.Mtime}
		if seen[k] {
			continue
		}
		if err := sameFile(pr, v.File, fmt.Sprintf("file mapped at %#x", v.Start)); err != nil {
			return err
		}
		seen[k] = true
	}
	return nil
}

// WriteFrame writes the pages of a live frame into process pid. An area
// that was not writable (PROT_NONE, mapped so as not to charge a large
// reservation) is made writable for it; protections are set at the end.
func (b *Builder) WriteFrame(pid int, fr *pagestream.Frame) error {
	r := b.byPID[pid]
	if r == nil || r.p == nil {
		return fmt.Errorf("no process %d being built", pid)
	}
	end := fr.Addr + uint64(fr.Pages)*pageSize
	i := sort.Search(len(r.mapped), func(i int) bool { return r.mapped[i].End > fr.Addr })
	if i == len(r.mapped) || r.mapped[i].Start > fr.Addr || end > r.mapped[i].End || !holdsPages(r.mapped[i].Kind) && r.mapped[i].Kind != core.VMASysV {
		return fmt.Errorf("pages at %#x-%#x of round %d lie outside the areas that hold pages", fr.Addr, end, fr.Round)
	}
	v := &r.mapped[i]
	if v.Kind == core.VMASysV {
		return b.ss.writeSysV(v, fr)
	}
	skip := r.skipZeros(fr, v, true)
	err := writeFrame(r.pid, fr, skip)
	if err != nil && errors.Is(err, unix.EFAULT) {
		if _, perr := r.sys("mprotect", unix.SYS_MPROTECT, fr.Addr, end-fr.Addr, unix.PROT_READ|unix.PROT_WRITE); perr == nil {
			r.writtenMu.Lock()
			r.opened = append(r.opened, addrRange{fr.Addr, end})
			r.writtenMu.Unlock()
			err = writeFrame(r.pid, fr, skip)
		}
	}
	return err
}

// Reprotect gives the ranges WriteFrame opened for pages (in areas mapped
// as they stay, not writable: the read-only data of a library, say, whose
// pages come in the first round) the protection of their area back, once
// a round's pages are in: so that the frozen window's protect finds them
// as they stay, where it would take an injected call for each. A range
// whose area changed since is left to protect, which sets every area's
// protection in any case.
//
// Preconditions: no page is being written (between rounds).
func (b *Builder) Reprotect() error {
	for _, r := range b.all {
		if r.p == nil {
			continue
		}
		r.writtenMu.Lock()
		opened := r.opened
		r.opened = nil
		r.writtenMu.Unlock()
		for _, o := range opened {
			i := sort.Search(len(r.mapped), func(i int) bool { return r.mapped[i].End > o.start })
			if i == len(r.mapped) || r.mapped[i].Start > o.start || o.end > r.mapped[i].End {
				continue
			}
			if _, err := r.sys("mprotect", unix.SYS_MPROTECT, o.start, o.end-o.start, uint64(r.mapped[i].Prot)); err != nil {
				return fmt.Errorf("process %d: area %#x-%#x: %w", r.pid, o.start, o.end, err)
			}
		}
	}
	return nil
}

// liveTarget does the process work of one incoming live migration.
type liveTarget struct {
	sess *transport.Session
	// sync writes the files the source copies, if it names some
	// (handoff.LiveLayout.Sync).
	sync *syncIn
	log  *slog.Logger
	pid  int
	b    *Builder
	// areas are the areas of each process as the last layout listed
	// them (copies), which a later layout or the State may leave out
	// (handoff.FillSame).
	areas map[int][]core.VMA
	// xcr0 are this CPU's XSAVE features (ServeOptions.XCR0).
	xcr0 uint64
	// cgroupRoot and applyCgroupLimits are ServeOptions.CgroupRoot
	// and ApplyCgroupLimits.
	cgroupRoot        string
	applyCgroupLimits bool
	// ignoreCgroups is ServeOptions.IgnoreCgroups.
	ignoreCgroups bool
	// vdsoProxy is ServeOptions.VDSOProxy.
	vdsoProxy bool
	// netAttach is ServeOptions.NetAttach.
	netAttach string

	// members are the processes of the latest layout, zombies too;
	// tree: the page streams begin with their PID; changes: the
	// membership may change from round to round (LiveLayout.Members).
	members       map[int]member
	tree, changes bool
	// streams is how many page streams each process has
	// (LiveLayout.Streams, at least 1).
	streams int
	// writeFrame puts a frame's pages into its process: nil is
	// b.WriteFrame (a test records the order instead).
	writeFrame func(pid int, fr *pagestream.Frame) error

	mu     sync.Mutex
	cond   *sync.Cond
	layout int   // latest round whose layout is in place, -1 before any
	err    error // of a page stream
	// ins are the page streams, streams for each process with pages (and
	// those of processes that left).
	ins []*pagesIn

	stateAt   time.Time // when the state arrived (the source froze just before)
	resumedAt time.Time
	hooks     *hook.Set
	// steps time the downtime's part here, from the state's arrival.
	steps []Step
	// applyNS is the time the page streams spent writing pages: that
	// of the busiest stream (they write in parallel), from each
	// stream's own (pagesIn.applyNS).
	applyNS atomic.Int64
	lapped  time.Time
	img     *core.Image   // the state's image, once restored
	lock    *netlock.Lock // this side's, on the connections until the resume
	// ahead is the network lock installed, empty, as the first layout
	// came (startAhead): the restore puts the connections under it.
	ahead   *aheadLock
	hold    *netlock.Hold // what lock drops
	aborted bool
	// notify, if set, is told of the session's steps (ServeOptions.OnSession).
	notify func(SessionEvent)
	// postCopy: the source may end in post-copy; uffd is the userfaultfd
	// made in the process for it (-1: none), pc the fill once the state
	// says post-copy (postcopy.go).
	postCopy bool
	uffd     int
	pc       *pcFill
	// container: the source's hello says the process is a container's
	// init (transport.FeatureContainer), whose PID taken here is judged
	// at the first layout. outer, for a container (as its first layout
	// says), maps the PIDs outside it the source names to those its
	// processes and threads have here; renumbered is what it changed,
	// for the report ("resumed").
	container  bool
	outer      *outerPIDs
	renumbered []handoff.Renumbered
}

// here is the root's PID here: the source's, unless the container's
// PIDs were renumbered.
func (t *liveTarget) here() int {
	if t.outer != nil {
		if n, ok := t.outer.local(t.pid); ok {
			return n
		}
	}
	return t.pid
}

// event tells notify of a step of the session.
func (t *liveTarget) event(kind SessionEventKind, err error) {
	if t.notify != nil {
		t.notify(SessionEvent{Kind: kind, Session: t.sess.ID(), Peer: t.sess.Peer().String(), PID: t.pid, Here: t.here(), Err: err})
	}
}

// hookEnv describes the session to the hooks.
func (t *liveTarget) hookEnv(extra ...string) map[string]string {
	env := map[string]string{
		"MIGRATE_PID":     strconv.Itoa(t.here()),
		"MIGRATE_SESSION": t.sess.ID(),
		"MIGRATE_SOURCE":  t.sess.Peer().String(),
	}
	if t.img != nil {
		env["MIGRATE_LOCAL_ADDRS"] = strings.Join(core.LocalAddrs(t.img), " ")
	}
	if t.b != nil && len(t.b.ss.netHosts) > 0 {
		env["MIGRATE_NET_HOST"] = strings.Join(t.b.ss.netHosts, " ")
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// ResumedBody is what the target measured, sent with Resumed.
func (t *liveTarget) ResumedBody() json.RawMessage {
	steps := t.steps
	b, _ := json.Marshal(struct {
		DowntimeMS float64 `json:"target_downtime_ms"` // state received to resumed
		Steps      []Step  `json:"target_steps,omitempty"`
		// ApplyMS is the time spent writing pages into the processes,
		// summed over the page streams (the source's "apply" stage).
		ApplyMS float64 `json:"apply_ms,omitempty"`
		// Renumbered are the container's processes and threads whose
		// PIDs outside it are others here.
		Renumbered []handoff.Renumbered `json:"renumbered,omitempty"`
		// SinceResumedMS is the time from the resume to this answer,
		// for the source to date the resume on its own clock.
		SinceResumedMS float64 `json:"since_resumed_ms,omitempty"`
	}{float64(t.resumedAt.Sub(t.stateAt).Microseconds()) / 1000, steps, float64(t.applyNS.Load()) / 1e6, t.renumbered,
		float64(time.Since(t.resumedAt).Microseconds()) / 1000})
	return b
}

func newLiveTarget(sess *transport.Session, log *slog.Logger) *liveTarget {
	t := &liveTarget{sess: sess, log: log, layout: -1, xcr0: hostXCR0(), uffd: -1}
	t.cond = sync.NewCond(&t.mu)
	return t
}

func (t *liveTarget) Prepare(ctx context.Context, h *transport.Hello) error {
	t.pid = h.PID
	t.postCopy = h.HasFeature(transport.FeaturePostCopy) && t.PostCopyReady()
	t.event(SessionStarted, nil)
	if t.container = h.HasFeature(transport.FeatureContainer); t.container {
		// Its PIDs outside may be others here: the first layout says.
		return nil
	}
	return pidFree(h.PID)
}

func (t *liveTarget) Layout(ctx context.Context, l *transport.Layout) error {
	ll, err := decodeLayout(l.Body, t.pid, t.areas)
	if err == nil {
		// As decoded: what the next layout may leave out.
		t.areas = handoff.AreasOf(handoff.Procs(&ll.Process, ll.Tree))
		// Every layout: the first, before anything is built here or
		// frozen there.
		err = checkCPU(ll.CPU, t.xcr0)
	}
	if err != nil {
		return fmt.Errorf("layout of round %d: %w", l.Round, err)
	}
	if t.b == nil && ll.Namespaces != nil && ll.Namespaces.PID != nil {
		// A container: only its PIDs inside matter to its processes.
		t.outer = newOuterPIDs()
	}
	if t.outer != nil {
		// Every layout, read with the PIDs here from now on.
		if err := t.outer.layout(ll); err != nil {
			return fmt.Errorf("layout of round %d: %w", l.Round, err)
		}
	}
	procs := []*core.Process{&ll.Process}
	for i := range ll.Tree {
		procs = append(procs, &ll.Tree[i])
	}
	if t.cgroupRoot != "" {
		relocate(t.cgroupRoot, ll.CgroupLimits, procs...)
		relocateCgroupNS(t.cgroupRoot, ll.Namespaces)
	}
	if t.ignoreCgroups {
		if err := dropCgroups(&ll.CgroupLimits, ll.Namespaces, procs...); err != nil {
			return fmt.Errorf("layout of round %d: %w", l.Round, err)
		}
	}
	if ll.FDs > 0 {
		// Room in this process's fd table for what the restore of the
		// fds opens (a socket and its duplicate for a TCP connection):
		// grown in the frozen window, the table would cost an RCU grace
		// period at each doubling (see proc.ReserveFDs).
		if err := proc.ReserveFDs(3*min(ll.FDs, 1<<20) + 64); err != nil {
			t.log.Debug("no room made for the process's fds", "err", err)
		}
	}
	if t.b != nil && max(ll.Streams, 1) != max(t.streams, 1) {
		return fmt.Errorf("layout of round %d: %d page streams a process, the first layout said %d", l.Round, max(ll.Streams, 1), max(t.streams, 1))
	}
	if t.b == nil && t.outer == nil {
		// The tree's PIDs as the root's (Prepare; here, if the hello
		// said a container the layout is not).
		if t.container {
			if err := pidFree(ll.Process.PID); err != nil {
				return err
			}
		}
		for _, p := range ll.Tree {
			if err := pidFree(p.PID); err != nil {
				return err
			}
		}
	}
	if t.b == nil {
		if len(ll.Sync) > 0 {
			if t.sync, err = newSyncIn(ll.Sync, t.sess.ID()); err != nil {
				return fmt.Errorf("layout of round %d: %w", l.Round, err)
			}
		}
		o := buildOptions{live: true, applyCgroupLimits: t.applyCgroupLimits, vdsoProxy: t.vdsoProxy, netAttach: t.netAttach}
		if t.outer != nil {
			o.moved = t.outer.move
		}
		b, err := newLiveBuilder(ctx, ll, t.log, o)
		if err != nil {
			return err
		}
		t.b = b
		if ll.FDs > 0 {
			path, _ := b.ss.netNS()
			t.ahead = startAhead(path)
		}
		if err := t.acceptPages(ctx, ll); err != nil {
			return err
		}
		if t.postCopy && len(ll.Tree) == 0 {
			if t.uffd, err = b.takeUffd(); err != nil {
				return err
			}
		}
		if t.sync != nil {
			// The synced files' stream, opened after the page streams.
			kind, st, err := t.sess.AcceptStream(ctx)
			if err != nil {
				return err
			}
			if kind != transport.KindFiles {
				st.Close()
				return fmt.Errorf("expected the synced files' stream, got a %v stream", kind)
			}
			t.sync.run(st, ll.Sync)
		}
	} else {
		joined, err := t.regroup(ctx, ll, int(l.Round))
		if err != nil {
			return fmt.Errorf("layout of round %d: %w", l.Round, err)
		}
		procs := append([]core.Process{ll.Process}, ll.Tree...)
		seen := mappedFiles{}
		for i := range procs {
			p := &procs[i]
			if p.Zombie != nil || joined[p.PID] {
				continue
			}
			// A later round's layout may map files the first did not.
			if err := checkMappedFiles(newPathRoot(ll.Mounts), p, seen); err != nil {
				return fmt.Errorf("layout of round %d: process %d: %w", l.Round, p.PID, err)
			}
			if err := t.b.Relayout(p.PID, p.VMAs); err != nil {
				return fmt.Errorf("process %d: %w", p.PID, err)
			}
		}
	}
	t.mu.Lock()
	t.layout = int(l.Round)
	t.cond.Broadcast()
	t.mu.Unlock()
	return nil
}

// acceptPages takes the page streams the first layout ll announces: one,
// or with a tree one for each process with pages, which begins with its
// PID (handoff.LiveLayout.Tree); a goroutine applies each.
func (t *liveTarget) acceptPages(ctx context.Context, ll *handoff.LiveLayout) error {
	t.members = layoutMembers(ll)
	t.tree, t.changes = len(ll.Tree) > 0 || ll.Members, ll.Members
	t.streams = max(ll.Streams, 1)
	pids := []int{ll.Process.PID}
	for _, p := range ll.Tree {
		if p.Zombie == nil {
			pids = append(pids, p.PID)
		}
	}
	return t.acceptStreams(ctx, pids, 0)
}

// acceptStreams takes a page stream for each of pids (processes with
// pages that begin at round: the first layout's, or joined at a later
// one), in whatever order they come; with a tree each names its process
// first, which must be one of pids without a stream yet.
func (t *liveTarget) acceptStreams(ctx context.Context, pids []int, round int) error {
	// Each process has t.streams of them (LiveLayout.Streams).
	streams := max(t.streams, 1)
	want := map[int]int{}
	for _, pid := range pids {
		want[pid] = streams
	}
	for range len(pids) * streams {
		kind, pages, err := t.sess.AcceptStream(ctx)
		if err != nil {
			return err
		}
		if kind != transport.KindPages {
			pages.Close()
			return fmt.Errorf("expected a page stream, got a %v stream", kind)
		}
		pid := pids[0]
		if t.tree {
			var b [handoff.PagesPIDLen]byte
			if _, err := io.ReadFull(pages, b[:]); err != nil {
				pages.Close()
				return fmt.Errorf("page stream: its process: %w", err)
			}
			pid = int(binary.LittleEndian.Uint32(b[:]))
			if t.outer != nil {
				// The source's PID: the process's here, if of the tree.
				if here, ok := t.outer.local(pid); ok {
					pid = here
				} else {
					pid = 0
				}
			}
			if want[pid] == 0 {
				pages.Close()
				return fmt.Errorf("a page stream for process %d, which is not of the tree, not new to it, or has its %d already", pid, streams)
			}
			want[pid]--
		}
		in := &pagesIn{pid: pid, barrier: round - 1}
		t.mu.Lock()
		t.ins = append(t.ins, in)
		t.mu.Unlock()
		go t.apply(in, pages)
	}
	return nil
}

// apply writes page stream in into its process, round by round: the
// pages of a round wait for its layout, and for every stream's pages of
// the rounds before (a page of memory shared across the tree may come in
// several streams: the latest round's is the one that stays). A stream
// whose process left stops there.
func (t *liveTarget) apply(in *pagesIn, r io.ReadCloser) {
	defer r.Close()
	pid := in.pid
	defer func() {
		t.mu.Lock()
		in.ended = true
		t.cond.Broadcast()
		t.mu.Unlock()
	}()
	fail := func(err error) {
		t.mu.Lock()
		if t.err == nil {
			t.err = err
		}
		t.cond.Broadcast()
		t.mu.Unlock()
	}
	// Packed: written from where they were decompressed (writeFrame).
	rd, err := pagestream.NewReader(r, pagestream.ReaderOptions{Packed: true})
	if err != nil {
		fail(err)
		return
	}
	defer rd.Close()
	t.mu.Lock()
	in.rd = rd
	t.mu.Unlock()
	for {
		fr, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			if t.tree {
				err = fmt.Errorf("process %d: %w", pid, err)
			}
			fail(fmt.Errorf("page stream: %w", err))
			return
		}
		t.mu.Lock()
		for (t.layout < int(fr.Round) || t.lowBarrier() < int(fr.Round)-1) && t.err == nil && !in.left {
			t.cond.Wait()
		}
		stop := t.err != nil || in.left
		t.mu.Unlock()
		if stop {
			return
		}
		switch fr.Kind {
		case pagestream.FramePages:
			at := time.Now()
			write := t.writeFrame
			if write == nil {
				write = t.b.WriteFrame
			}
			err := write(pid, fr)
			in.applyNS += int64(time.Since(at))
			for {
				cur := t.applyNS.Load()
				if in.applyNS <= cur || t.applyNS.CompareAndSwap(cur, in.applyNS) {
					break
				}
			}
			if err != nil {
				fail(err)
				return
			}
		case pagestream.FrameBarrier:
			t.mu.Lock()
			in.barrier = int(fr.Round)
			t.cond.Broadcast()
			t.mu.Unlock()
		}
	}
}

// lowBarrier is the latest round whose pages are all in, on every stream.
//
// Preconditions: t.mu is held.
func (t *liveTarget) lowBarrier() int {
	low, first := -1, true
	for _, in := range t.ins {
		if !in.left && (first || in.barrier < low) {
			low, first = in.barrier, false
		}
	}
	return low
}

func (t *liveTarget) RoundDone(ctx context.Context, rd *transport.RoundDone) error {
	if err := t.sync.wait(ctx, rd.Round); err != nil {
		return fmt.Errorf("round %d: %w", rd.Round, err)
	}
	stop := context.AfterFunc(ctx, func() {
		t.mu.Lock()
		t.cond.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	if err := t.roundIn(ctx, rd.Round); err != nil {
		return err
	}
	// The round's pages are in, and the next round's wait for its
	// layout, which comes after this.
	if t.b == nil {
		return fmt.Errorf("round %d done before any layout", rd.Round)
	}
	if err := t.b.Reprotect(); err != nil {
		return fmt.Errorf("round %d: %w", rd.Round, err)
	}
	return nil
}

// roundIn waits until every page stream passed the barrier of round.
func (t *liveTarget) roundIn(ctx context.Context, round uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.ins) == 0 || t.lowBarrier() < int(round) {
		if t.err != nil {
			return t.err
		}
		for _, in := range t.ins {
			if in.ended && !in.left && in.barrier < int(round) {
				return fmt.Errorf("round %d: the page stream of process %d ended before its barrier", round, in.pid)
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("round %d: the page streams did not reach its barrier: %w", round, ctx.Err())
		}
		t.cond.Wait()
	}
	return nil
}

// received returns the counts of the page streams so far, if one began.
func (t *liveTarget) received() (pagestream.Stats, bool) {
	t.mu.Lock()
	var streams []*pagestream.Reader
	for _, in := range t.ins {
		if in.rd != nil {
			streams = append(streams, in.rd)
		}
	}
	t.mu.Unlock()
	var sum pagestream.Stats
	began := false
	for _, rd := range streams {
		began = true
		sum.Add(rd.Stats())
	}
	return sum, began
}

// lap ends a step of the downtime.
func (t *liveTarget) lap(name string) { t.lapAt(name, time.Now()) }

// lapAt ends a step of the downtime at at.
func (t *liveTarget) lapAt(name string, at time.Time) {
	t.steps = append(t.steps, Step{Name: name, MS: float64(at.Sub(t.lapped).Microseconds()) / 1000})
	t.lapped = at
}

func (t *liveTarget) Restore(ctx context.Context, st *transport.State) error {
	t.stateAt = time.Now()
	t.lapped = t.stateAt
	ls, err := decodeState(st.Body, t.pid, t.areas)
	if err == nil {
		// With the components the threads held at the freeze.
		err = checkCPU(ls.Image.CPU, t.xcr0)
	}
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if t.cgroupRoot != "" {
		if err := relocateCgroups(&ls.Image, t.cgroupRoot); err != nil {
			return err
		}
	}
	if t.ignoreCgroups {
		if err := dropImageCgroups(&ls.Image); err != nil {
			return fmt.Errorf("state: %w", err)
		}
	}
	if t.b == nil {
		return errors.New("state before any layout")
	}
	img := &ls.Image
	if t.outer != nil {
		// The state's threads too get PIDs here.
		if err := t.outer.image(img); err != nil {
			return fmt.Errorf("state: %w", err)
		}
		if t.renumbered = t.outer.moved(); len(t.renumbered) > 0 {
			msg := describeMoves(t.renumbered)
			t.b.ss.warn("%s", msg)
			t.log.Warn(msg)
		}
	}
	// decodeState checked the image (checkIncoming); the attributes a
	// restore needs too.
	for _, pp := range img.Processes() {
		if err := checkAttrs(pp.Process); err != nil {
			return fmt.Errorf("state: %w", err)
		}
	}
	for name, data := range ls.Blobs {
		// decodeState checked the names; the sizes here (a hash of a
		// dozen MiB would cost the frozen window ~10 ms, and the session
		// is authenticated and checksummed).
		if info, ok := img.Blobs[name]; !ok || info.Size != int64(len(data)) {
			return fmt.Errorf("state: blob %q of %d bytes, not as the image lists it (%+v)", name, len(data), info)
		}
	}
	// The blobs stay in memory (a file each would cost hundreds of file
	// creations with many connections, each with its queues).
	t.b.ss.blobs = ls.Blobs
	t.lap("decode state")
	if t.sync != nil {
		// The files as they were at the freeze, in place before the
		// restore opens them.
		if err := t.sync.commit(ctx); err != nil {
			return err
		}
		t.lap("synced files")
	}
	// Until the commit the rebuilt connections must not take a byte from
	// their peers: once the service address is here (the pre-resume
	// hook) a repair-mode socket would acknowledge data that an abort then
	// throws away, while the original waits for it. A network lock on
	// this side drops their packets until the process runs; the peers
	// send them again. It is installed while the tree's layout and
	// protections are restored, and waited for before the first socket
	// is made (Builder.beforeFiles).
	if conns := imageConns(img); len(conns) > 0 {
		done := make(chan error, 1)
		path, socket := t.b.ss.netNS()
		go func() { done <- t.installLock(path, socket, conns) }()
		var lockErr error
		waited := false
		wait := func() error {
			if !waited {
				lockErr, waited = <-done, true
			}
			return lockErr
		}
		t.b.beforeFiles = wait
		// Whatever happens to the restore, the lock is in t.lock (or
		// failed) before Restore returns: Discard removes it.
		defer func() {
			wait()
			t.b.beforeFiles = nil
		}()
	}
	// The files given for the objects outside the tree: each of the
	// image's, and no other (decodeState checked the names and paths).
	var inh []Inherit
	for id, path := range ls.Inherit {
		inh = append(inh, Inherit{ID: id, Path: path})
	}
	if t.b.ss.inherit, err = checkInherit(img, inh); err != nil {
		return err
	}
	n := len(t.b.steps)
	if err := t.b.Finish(ctx, img); err != nil {
		return err
	}
	// The process is compared with its image before the source is told
	// it is ready: one that differs is refused, and the original runs on.
	if err := t.b.Check(); err != nil {
		return err
	}
	t.steps = append(t.steps, t.b.steps[n:]...)
	t.lapped = time.Now()
	t.img = img
	if ls.PostCopy != nil {
		if err := t.preparePostCopy(ls.PostCopy, img); err != nil {
			return err
		}
	} else {
		t.closeUffd()
	}
	// The process is whole and stopped: the operator's pre-resume hook
	// (bring the service address here, say). A failure aborts.
	err = t.hooks.Run(ctx, hook.PreResume, t.hookEnv())
	if t.hooks.Has(hook.PreResume) {
		t.lap("pre-resume hook")
	}
	if err == nil {
		t.event(SessionRestored, nil)
	}
	return err
}

func (t *liveTarget) Resume() error {
	if t.b == nil {
		return errors.New("nothing to resume")
	}
	t.lap("ready, wait for commit")
	// The lock is lifted (quick) before the connections leave repair
	// mode, for what they send then to go out, and removed (a dozen
	// milliseconds) off the downtime's path; what it dropped is handed to
	// them once they are live.
	l := t.lock
	t.lock = nil
	if l != nil {
		if lerr := l.Lift(); lerr != nil {
			t.log.Warn("lift the network lock", "table", l.Name(), "err", lerr)
		}
	}
	if l != nil {
		t.lap("lift the lock")
	}
	// What the lock held goes to the connections as soon as they are
	// live, before the processes run (connected): the client's request
	// is in its socket when its process runs, not after the resume and
	// the release of the restore's files and tracers (~10 ms of a
	// PostgreSQL tree's on 2 CPUs, where the processes already run).
	replay := func() {
		if t.hold == nil {
			return
		}
		pkts, dropped := t.hold.Finish()
		n, herr := t.hold.Replay(pkts)
		t.hold = nil
		t.log.Info("packets held during the restore sent on", "held", len(pkts), "sent", n, "no_room", dropped, "err", herr)
	}
	t.b.connected = replay
	// The tracers and files go once the source is told (AfterResumed).
	_, err := t.b.ResumeHeld()
	// The resume ends as the last process is let go: what migrate's own
	// threads do after that, waiting for a CPU the processes took, is not
	// the processes' downtime.
	at := t.b.ResumedAt()
	if err != nil || at.IsZero() {
		at = time.Now()
	}
	t.lapAt("resume", at)
	replay() // if the resume failed before the connections were live
	if l != nil {
		go func() {
			if err := l.Unlock(); err != nil {
				t.log.Error("remove the network lock", "table", l.Name(), "err", err)
			}
		}()
	}
	t.resumedAt = at
	t.sync.close(false)
	t.sync = nil
	if err == nil {
		t.event(SessionCommitted, nil)
		t.startPostCopy(context.Background())
	}
	if err == nil && t.hooks.Has(hook.PostResume) {
		go func() {
			if err := t.hooks.Run(context.Background(), hook.PostResume, t.hookEnv()); err != nil {
				t.log.Warn("post-resume hook", "err", err)
			}
		}()
	}
	return err
}

// AfterResumed lets go of what the resume kept for after the source
// was told (see Builder.ResumeHeld).
func (t *liveTarget) AfterResumed() {
	if t.b != nil {
		t.b.Release()
	}
	if a := t.ahead; a != nil {
		// Not taken: the processes hold no TCP connection.
		go a.drop(t.log)
	}
}

func (t *liveTarget) Discard() error {
	// The abort hook first: while the service address is here, a peer's
	// packet for a connection of the process is answered with a reset
	// once its socket is gone.
	if !t.aborted && t.pid != 0 {
		t.aborted = true
		if err := t.hooks.Run(context.Background(), hook.Abort, t.hookEnv()); err != nil {
			t.log.Warn("abort hook", "err", err)
		}
	}
	if t.b != nil {
		t.b.Discard()
	}
	t.closeUffd()
	if f := t.pc; f != nil && f.started.IsZero() {
		unix.Close(f.uffd)
		unix.Close(f.pidfd)
		t.pc = nil
	}
	t.sync.close(true)
	t.sync = nil
	if t.hold != nil {
		t.hold.Finish()
		t.hold.CloseRaw()
		t.hold = nil
	}
	t.unlock()
	t.ahead.drop(t.log)
	t.mu.Lock()
	if t.err == nil {
		t.err = errors.New("discarded")
	}
	t.cond.Broadcast()
	t.mu.Unlock()
	return nil
}

// unlock removes this side's network lock, if on.
func (t *liveTarget) unlock() {
	if t.lock == nil {
		return
	}
	if err := t.lock.Unlock(); err != nil {
		t.log.Error("remove the network lock", "table", t.lock.Name(), "err", err)
	}
	t.lock = nil
}

// installLock installs this side's network lock for conns in the network
// namespace netns (see Restore), and starts keeping what it drops (its
// sockets made by socket). It runs while the restore goes on: it reads
// nothing of the builder.
func (t *liveTarget) installLock(netns string, socket netlock.SocketFunc, conns []netlock.Conn) error {
	spec := netlock.Spec{Conns: conns}
	var l *netlock.Lock
	var err error
	if t.ahead != nil && t.ahead.netns != netns {
		// Installed in another namespace than the processes' now (a
		// container whose PIDs outside were renumbered, say): not used.
		go t.ahead.drop(t.log)
	} else if l, err = t.ahead.take(); err != nil {
		t.log.Debug("no network lock installed ahead", "err", err)
	}
	if l != nil {
		if err := l.Add(spec); err != nil {
			t.log.Warn("the network lock installed ahead took no connections: another one", "err", err)
			go l.Unlock()
			l = nil
		}
	}
	if l == nil {
		if l, err = netlock.Install(netns, spec, netlock.Options{}); err != nil {
			return fmt.Errorf("network lock for %d TCP connections here: %w", len(conns), err)
		}
	}
	t.lock = l
	// What the lock drops is kept and handed to the connections at the
	// resume (a peer's tail-loss probe, sent as the service address
	// arrives, would otherwise wait for its retransmission timer).
	if t.hold, err = netlock.StartHold(socket, conns, nil); err != nil {
		t.log.Warn("packets dropped by the network lock here are not kept", "err", err)
	}
	return nil
}

// aheadLock is a network lock installed, empty, before the freeze, for
// the restore to put the connections under (netlock.Lock.Add, one short
// netlink batch): its install, a table with its chains, sets and rules
// (~1.5 ms of CPU), is then out of the downtime. Empty, it drops nothing.
type aheadLock struct {
	netns string // where it is (netlock.Install's path)
	done  chan struct{}
	lock  *netlock.Lock
	err   error
	once  sync.Once
}

// startAhead installs an empty lock in the network namespace at netns
// (see netlock.Install) in the background.
func startAhead(netns string) *aheadLock {
	a := &aheadLock{netns: netns, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.lock, a.err = netlock.Install(netns, netlock.Spec{}, netlock.Options{})
	}()
	return a
}

// take waits for the install and returns the lock (or why there is
// none), to the first caller only: later ones get nil.
func (a *aheadLock) take() (l *netlock.Lock, err error) {
	if a == nil {
		return nil, nil
	}
	<-a.done
	a.once.Do(func() { l, err = a.lock, a.err })
	return l, err
}

// drop removes the lock installed ahead if no one took it.
func (a *aheadLock) drop(log *slog.Logger) {
	if l, _ := a.take(); l != nil {
		if err := l.Unlock(); err != nil {
			log.Error("remove the network lock", "table", l.Name(), "err", err)
		}
	}
}

// imageConns lists the TCP connections of the image's processes.
func imageConns(img *core.Image) []netlock.Conn {
	var out []netlock.Conn
	for _, p := range img.Processes() {
		for _, f := range p.Process.FDs {
			s := f.Socket
			if s == nil || s.TCP == nil {
				continue
			}
			l, err1 := netip.ParseAddrPort(s.Local)
			r, err2 := netip.ParseAddrPort(s.Remote)
			if err1 == nil && err2 == nil {
				out = append(out, netlock.Conn{Local: l, Remote: r})
			}
		}
	}
	return out
}
