package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/core/netlock"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/deepcopy"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/source/sockets"
	"github.com/procmig/migrate/transport"
)

// MigrateOptions configure a live migration to a target service.
type MigrateOptions struct {
	PID int
	// Tree moves PID with all its descendants (the CLI's default), each
	// with its PID, parent, process group and session, and the fds between
	// them: the tree as it is when it is frozen. A process that forks into
	// it during pre-copy joins it at the next round, one that exits
	// leaves it (a zombie moves as one). Only what a target cannot follow
	// aborts the migration with a *TreeChangedError (the original runs
	// on): a process that stays in the tree with another parent (the
	// root, a subreaper, took in an orphan), or a PID another process of
	// the tree took. Without Tree a process with children is refused.
	Tree      bool
	To        string           // HOST:PORT of `migrate serve`
	Transport transport.Config // authentication, timeouts
	Codec     string
	Tracker   string
	Policy    Policy
	Logger    *slog.Logger
	// Progress, if set, sees each round as it ends.
	Progress func(RoundReport)
	// Transfer, if set, is told how far each round has gone while it
	// runs (see DumpOptions.Transfer).
	Transfer func(Transfer)
	// Bandwidth caps the page stream in bytes a second (0: no cap).
	Bandwidth int64
	// Streams is how many page streams each process's pages are spread
	// over, each compressed, sent and written into the process on the
	// target on its own (pagestream.MultiWriter); 0 picks one a CPU, up
	// to 4. At most handoff.MaxPageStreams; a tree gets fewer when its
	// processes' streams would pass maxPendingStreams.
	Streams int
	// Hooks run at the source's stages: pre-freeze, post-dump,
	// post-resume, abort.
	Hooks *hook.Set
	// Notify, if set, is told of each milestone as the migration passes
	// it, from the migration's goroutine (Progress sees the rounds end).
	// From MilestoneFrozen on, its time is downtime.
	Notify func(Milestone)
	// Inherit names objects outside the tree its processes hold (as
	// /proc/PID/fd shows them: "pipe:[1234]", "socket:[5678]") and the
	// absolute path on the target that is opened in place of each, in the
	// access mode of the original fd (a FIFO, a file): their fds are
	// moved as external (DumpOptions.External) instead of refused.
	Inherit map[string]string
	// CPUInUseOnly has the target check only the XSAVE components
	// (AVX, AVX-512...) the threads hold at the freeze, not every one the
	// source CPU offers: for a process known to use no other (started
	// with glibc.cpu.hwcaps tunables that mask AVX-512, say) moving to a
	// CPU that lacks them. A program that chose code for the source's CPU
	// dies of SIGILL there: the operator vouches it did not.
	// --cpu-check=in-use (a live migration checks them at the freeze).
	CPUInUseOnly bool
	// Mode is how the migration ends: ModePreCopy ("": every page is on
	// the target before the process runs there), ModePostCopy or ModeAuto
	// (it may run there with pages still missing; if the link or this
	// side dies before the last page, the process is lost). Post-copy
	// moves a single process.
	Mode Mode
	// Sync are files and directory trees (absolute paths, no symlink on
	// the way) copied to the target at the same paths: whole at the
	// first round, the blocks that changed at each round after, and the
	// last changes in the frozen window, before the target restores. A
	// file the processes write outside them must be one the target
	// shares (*FilesNotSharedError otherwise).
	Sync []string
	// Freeze says how the processes are stopped (DumpOptions.Freeze).
	Freeze FreezeMode
}

// A Milestone is a point a live migration passed (MigrateOptions.Notify).
type Milestone struct {
	Kind    MilestoneKind
	Session string // the transport session's ID
	Round   int    // MilestoneRound: the round that begins
}

// MilestoneKind says which point a Milestone is.
type MilestoneKind int

// The milestones of a live migration, in order: MilestoneRound for each
// round (the last one after MilestoneFrozen).
const (
	MilestoneRound   MilestoneKind = iota + 1 // a round of pages begins
	MilestoneFrozen                           // every thread is stopped
	MilestoneCommit                           // the commit is sent: the point of no return
	MilestoneResumed                          // the target runs the process; the original is killed next (after post-copy, once the target has every page)
)

// MigrateReport says what a live migration did.
type MigrateReport struct {
	PID        int           `json:"pid"`
	Comm       string        `json:"comm"`
	Processes  int           `json:"processes"` // of the tree moved (zombies too)
	Target     string        `json:"target"`
	Session    string        `json:"session"`
	Outcome    string        `json:"outcome"`
	Tracker    string        `json:"tracker"`
	Codec      string        `json:"codec"`
	Streams    int           `json:"streams"` // page streams a process (MigrateOptions.Streams)
	Rounds     []RoundReport `json:"rounds"`
	Pages      uint64        `json:"pages"`
	BytesRaw   uint64        `json:"bytes_raw"`
	BytesWire  uint64        `json:"bytes_wire"`
	RSSBytes   uint64        `json:"rss_bytes"` // of the processes moved, summed (a page two share counts twice)
	Total      time.Duration `json:"-"`
	Downtime   time.Duration `json:"-"`
	TotalMS    float64       `json:"total_ms"`
	DowntimeMS float64       `json:"downtime_ms"` // first thread stopped to resumed (the target let the last process go), as the source saw it
	// TargetDowntimeMS is the target's own measure: from the state's
	// arrival to the process running.
	TargetDowntimeMS float64 `json:"target_downtime_ms"`
	// FrozenSteps is where the source's part of the downtime went, from
	// the first thread stopped ("freeze": stopping the whole tree) to the
	// state being ready to send.
	FrozenSteps []Step `json:"frozen_steps,omitempty"`
	// ProcessSteps is where the frozen window's work on each process
	// went (the read and injected phases), the root first.
	ProcessSteps []ProcessSteps `json:"process_steps,omitempty"`
	// FinalRoundSteps is where the final round's time went: it runs
	// beside the read, network and injected phases, so its steps are not
	// in FrozenSteps, which has the wait for it ("final round: wait").
	FinalRoundSteps []Step `json:"final_round_steps,omitempty"`
	// TargetSteps is where the target's time went (its restore steps, as
	// it reported them), and Handoff the rest of the downtime: state sent
	// to ready, commit to resumed, as the source saw it.
	TargetSteps []Step `json:"target_steps,omitempty"`
	Handoff     []Step `json:"handoff_steps,omitempty"`
	// Hooks is how long each of the source's hooks ran (the target's
	// pre-resume hooks are a step of TargetSteps).
	Hooks []hook.Timing `json:"hooks,omitempty"`
	// Stages is where the pages' time went: read, compress, wire here,
	// apply on the target (see StageReport).
	Stages []StageReport `json:"stages,omitempty"`
	// PostCopy is the post-copy phase, if the migration ended in one.
	PostCopy *PostCopyReport `json:"post_copy,omitempty"`
	// SyncBytes is what the stream of the synced files carried
	// (MigrateOptions.Sync), SyncSkipped what it did not copy (symlinks,
	// sockets, devices found in the trees).
	SyncBytes   int64    `json:"sync_bytes,omitempty"`
	SyncSkipped []string `json:"sync_skipped,omitempty"`
	// Renumbered are the processes and threads of a container that have
	// other PIDs outside it on the target (theirs were taken there; the
	// PIDs inside are the same), as the target said in its "resumed".
	Renumbered []Renumbered `json:"renumbered,omitempty"`
	// Freezer is what stopped the processes: "cgroup" (the cgroup
	// freezer, then ptrace) or "ptrace"; FreezeMS how long stopping
	// every thread of the tree took (the processes stop one after the
	// other in it; it is the first step of downtime_ms).
	Freezer  string  `json:"freezer,omitempty"`
	FreezeMS float64 `json:"freeze_ms,omitempty"`
}

// Renumbered is a process or thread of a container whose PID outside it
// on the target (TargetPID) is another than here (PID).
type Renumbered = handoff.Renumbered

// maxLiveBlobs caps the blobs carried in the State message.
const maxLiveBlobs = 12 << 20

// Migrate moves process opts.PID to the target: pre-copy rounds while it
// runs, then the freeze, the final round and its state, and the handoff
// (DESIGN.md: never two copies, never none).
func Migrate(ctx context.Context, opts MigrateOptions) (*MigrateReport, error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	codec, err := pagestream.ParseCodec(opts.Codec)
	if err != nil {
		return nil, err
	}
	stat, status, err := checkTarget(opts.PID)
	if err != nil {
		return nil, err
	}
	// A container moves whole.
	container, err := containerInit(opts.PID, status)
	if err != nil {
		return nil, err
	} else if container {
		opts.Tree = true
	}
	// Network locks left by a crashed migrate in the process's namespace.
	if gone, err := netlock.CleanStale(fmt.Sprintf("/proc/%d/ns/net", opts.PID)); err == nil && len(gone) > 0 {
		log.Warn("removed stale network locks of migrations that crashed", "tables", gone)
	}
	// The tree as it runs now, for the checks below (pre-copy takes it
	// again, round after round).
	pids, members := []int{opts.PID}, map[int]treeMember{opts.PID: {}}
	if opts.Tree {
		if pids, members, err = walkTree(opts.PID); err != nil {
			return nil, err
		}
	} else if kids, _ := childrenOf(opts.PID); len(kids) > 0 {
		return nil, &BadTargetError{PID: opts.PID, Reason: "it has child processes: move the whole tree (--tree), or only a process without children"}
	}
	// An fd that cannot move is refused now, before the target is even
	// asked, not at the freeze after every page went over.
	external, err := inheritIDs(opts.Inherit, pids)
	if err != nil {
		return nil, err
	}
	if err := precheckFDs(ctx, DumpOptions{PID: opts.PID, live: true, Tree: opts.Tree, External: external, Logger: opts.Logger}); err != nil {
		return nil, err
	}
	mode, err := ParseMode(string(opts.Mode))
	if err != nil {
		return nil, err
	}
	if mode != ModePreCopy && len(pids) > 1 {
		if mode == ModePostCopy {
			return nil, &BadTargetError{PID: opts.PID, Reason: fmt.Sprintf("post-copy moves a single process, and this tree has %d", len(pids))}
		}
		log.Info("--mode auto: a tree of processes moves in pre-copy only", "processes", len(pids))
		mode = ModePreCopy
	}
	var alive []int
	for _, pid := range pids {
		if members[pid].zombie {
			continue
		}
		if err := refuseDeletedMappings(pid); err != nil {
			if pid == opts.PID || !exited(pid) {
				return nil, err
			}
			continue // it exited: it leaves the tree
		}
		alive = append(alive, pid)
	}
	if err := precheckMappings(DumpOptions{PID: opts.PID, Tree: opts.Tree}); err != nil {
		return nil, err
	}
	mounts, err := liveMounts(alive)
	if err != nil {
		return nil, err
	}
	roots, err := syncRoots(opts.Sync)
	if err != nil {
		return nil, err
	}
	// A new connection to the target, for the questions asked outside
	// the migration's session.
	redial := func(ctx context.Context) (handoff.Conn, error) {
		c := opts.Transport
		c.SessionID = ""
		return dialControl(ctx, opts.To, c)
	}
	tmp, err := os.MkdirTemp("", "migrate-send-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(filepath.Join(tmp, core.FilesDir), 0o700); err != nil {
		return nil, err
	}

	sess, err := transport.Dial(ctx, opts.To, opts.Transport)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	ctrl, err := sess.OpenStream(transport.KindControl)
	if err != nil {
		return nil, err
	}
	cc := transport.NewControl(ctrl)
	// Files written that the target does not see, before anything is
	// touched: asked on the migration's connection, before its Hello.
	asked, err := checkShared(ctx, opts.PID, alive, mounts != nil, roots, cc)
	if err != nil {
		cc.Close()
		return nil, err
	}

	dopts := DumpOptions{PID: opts.PID, live: true, Tree: opts.Tree, Codec: opts.Codec, PreCopy: true, Tracker: opts.Tracker, Policy: opts.Policy, Logger: log,
		External: external, Transfer: opts.Transfer, CPUInUseOnly: opts.CPUInUseOnly, Freeze: opts.Freeze}
	ss := &session{opts: dopts, log: log, dir: tmp, codec: codec, lapped: start, pipes: map[uint64][]pipeEnd{}, memBlobs: map[string][]byte{}}
	if err := ss.noteContainer(&ss.opts); err != nil {
		return nil, err
	}
	if opts.Freeze == FreezeCgroup {
		// Refused now rather than at the freeze, after the pre-copy
		// (the freeze looks again).
		if err := ss.prepareFreezer(opts.PID); err != nil {
			return nil, err
		}
		ss.freezer.close()
		ss.freezer = nil
	}
	ss.tr = ptrace.NewTracer()
	defer ss.closeTracers()
	img := &core.Image{
		Kind: core.ImageKind, Version: core.ImageVersion, Created: time.Now().UTC(), Arch: runtime.GOARCH,
		Pages: core.PagesInfo{File: core.PagesFile, Codec: codec.String()},
	}
	img.Host, _ = os.Hostname()
	img.Kernel = kernelRelease()
	d := &dumper{session: ss, pid: opts.PID, stat: stat, status: status, proc: &img.Process, pages: &img.Pages}
	// The tree is taken at the first round (regroup): the root alone
	// until then.
	a := &liveSource{inherit: opts.Inherit, d: d, treeFollow: newTreeFollow(d, members[opts.PID]), tree: opts.Tree, mounts: mounts, sess: sess, pages: map[*dumper][]*pagesOut{}, streams: treeStreams(opts.Streams, len(members)),
		stopQueued: map[int]bool{}, img: img, progress: opts.Progress, notify: opts.Notify, hooks: opts.Hooks,
		hookEnv: map[string]string{"MIGRATE_PID": strconv.Itoa(opts.PID), "MIGRATE_SESSION": sess.ID(), "MIGRATE_TARGET": opts.To}}
	defer a.closePages()
	if mounts == nil {
		a.asked, a.redial = asked, redial
	}
	if len(roots) > 0 {
		a.sync = &syncOut{roots: roots}
		defer a.sync.close()
	}
	if opts.Bandwidth > 0 {
		a.budget = &rateBudget{rate: float64(opts.Bandwidth), start: time.Now()}
	}
	a.onJoin, a.onLeave = a.join, a.leave
	if opts.Tree {
		ss.regroup = a.regroup
	}
	if mode != ModePreCopy {
		a.postCopy = &postCopy{mode: mode, pid: opts.PID}
	}
	rep := &MigrateReport{PID: opts.PID, Comm: stat.Comm, Target: opts.To, Session: sess.ID(), Codec: codec.String(), Streams: treeStreams(opts.Streams, len(members))}
	cfg := handoff.SourceConfig{
		SessionID: sess.ID(), PID: opts.PID, Target: opts.To, Logger: log, PostCopy: mode != ModePreCopy, Redial: redial,
		Container: container,
	}
	hooksBefore := len(opts.Hooks.Timings())
	outcome, err := handoff.RunSource(ctx, cfg, a, cc)
	rep.Outcome = outcome.String()
	// The tree as it was moved (or as pre-copy last saw it).
	rep.Processes = len(a.all) + len(a.zombies)
	rep.Streams = a.streams
	for _, m := range a.all {
		rep.RSSBytes += m.status.VmRSS
	}
	rep.Rounds = d.rounds
	if d.tracker != nil {
		rep.Tracker = d.tracker.Name()
	}
	rep.Freezer, rep.FreezeMS = d.froze, ms(d.freezeTime)
	for _, r := range d.rounds {
		rep.Pages += r.PagesSent
		rep.BytesRaw += r.BytesRaw
		rep.BytesWire += r.BytesWire
	}
	rep.Total = time.Since(start)
	if !a.frozen.IsZero() {
		// From the first thread stopped: stopping the tree (freezeTime)
		// ends where a.frozen begins.
		rep.Downtime = a.resumed.Sub(a.frozen) + d.freezeTime
		if a.resumed.IsZero() {
			rep.Downtime = time.Since(a.frozen) + d.freezeTime
		}
	}
	rep.TotalMS, rep.DowntimeMS = ms(rep.Total), ms(rep.Downtime)
	rep.TargetDowntimeMS = a.targetDowntime
	if !a.frozen.IsZero() {
		rep.FrozenSteps = append([]Step{{Name: "freeze", MS: ms(d.freezeTime)}}, d.steps...)
	}
	for _, m := range a.all {
		if len(m.ownSteps) > 0 {
			rep.ProcessSteps = append(rep.ProcessSteps, ProcessSteps{PID: m.pid, Steps: m.ownSteps})
		}
	}
	rep.FinalRoundSteps = a.finalSteps
	rep.TargetSteps = a.targetSteps
	rep.Renumbered = a.renumbered
	rep.Stages = stages(append(slices.Clone(a.all), a.left...), rep.BytesRaw, a.targetApply)
	rep.Hooks = opts.Hooks.Timings()[hooksBefore:]
	if pc := a.postCopy; pc != nil && pc.active && !a.resumed.IsZero() {
		r := pc.rep
		r.Reason = pc.reason
		rep.PostCopy = &r
		rep.BytesWire += r.BytesWire
	}
	if a.sync != nil && a.sync.s != nil {
		rep.SyncBytes, rep.SyncSkipped = a.sync.s.Sent(), a.sync.s.Skipped
	}
	warnSlowHooks(log, rep, opts.Policy)
	if !a.stateSent.IsZero() && !a.ready.IsZero() {
		rep.Handoff = []Step{{Name: "state sent to ready", MS: ms(a.ready.Sub(a.stateSent))}}
		if !a.resumed.IsZero() {
			rep.Handoff = append(rep.Handoff, Step{Name: "ready to resumed", MS: ms(a.resumed.Sub(a.ready))})
		}
	}
	return rep, err
}

// warnSlowHooks warns of each hook that ran in the frozen window (the
// source's post-dump, the target's pre-resume) for longer than the
// downtime target: the process waited for it.
func warnSlowHooks(log *slog.Logger, rep *MigrateReport, pol Policy) {
	if pol == (Policy{}) {
		pol = DefaultPolicy
	}
	limit := ms(pol.TargetDowntime)
	for _, h := range rep.Hooks {
		if h.Stage == hook.PostDump && h.MS > limit {
			log.Warn("a post-dump hook ran longer than the downtime target, with the process frozen", "hook", h.Hook, "ms", h.MS, "target_ms", limit)
		}
	}
	for _, s := range rep.TargetSteps {
		if s.Name == "pre-resume hook" && s.MS > limit {
			log.Warn("the target's pre-resume hooks ran longer than the downtime target, with the process frozen", "ms", s.MS, "target_ms", limit)
		}
	}
}

// rateBudget is a rate in bytes a second that the page streams of one
// migration share.
type rateBudget struct {
	mu    sync.Mutex
	rate  float64
	start time.Time
	sent  float64
}

// limitedWriter writes at most its budget's rate on average, with the
// other writers of the budget: a write that runs ahead of the budget
// sleeps until it is due.
type limitedWriter struct {
	w io.Writer
	b *rateBudget
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.b.mu.Lock()
	l.b.sent += float64(len(p))
	due := l.b.start.Add(time.Duration(l.b.sent / l.b.rate * float64(time.Second)))
	l.b.mu.Unlock()
	if time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	return l.w.Write(p)
}

// sessionControl is a control channel that owns its session.
type sessionControl struct {
	*transport.Control
	s *transport.Session
}

// syncRoots are the synced trees, if any.
func (a *liveSource) syncRoots() []string {
	if a.sync == nil {
		return nil
	}
	return a.sync.roots
}

// dialControl opens a new session to the target at to, and its control
// stream.
func dialControl(ctx context.Context, to string, cfg transport.Config) (handoff.Conn, error) {
	s, err := transport.Dial(ctx, to, cfg)
	if err != nil {
		return nil, err
	}
	st, err := s.OpenStream(transport.KindControl)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &sessionControl{Control: transport.NewControl(st), s: s}, nil
}

func (c *sessionControl) Close() error {
	err := c.Control.Close()
	c.s.Close()
	return err
}

// liveSource does the process work of a live migration for the handoff.
type liveSource struct {
	inherit map[string]string // MigrateOptions.Inherit, for the target
	d       *dumper           // the root
	// treeFollow has the processes of the tree as the latest round (or
	// the freeze) took them (the root alone without MigrateOptions.Tree);
	// tree says the tree is moved (MigrateOptions.Tree).
	*treeFollow
	tree bool
	img  *core.Image
	// sess carries the page streams, a stream each process of all
	// (pages), opened as the process joins; budget is their shared
	// rate (MigrateOptions.Bandwidth).
	sess  *transport.Session
	pages map[*dumper][]*pagesOut
	// streams is how many page streams each process has
	// (MigrateOptions.Streams, at least 1).
	streams  int
	budget   *rateBudget
	progress func(RoundReport)
	notify   func(Milestone)
	mounts   *core.MountNS // the table the first layout announced, if not migrate's (no tmpfs files)
	sync     *syncOut      // the synced trees (MigrateOptions.Sync), or nil
	// asked are the files the target was asked about before pre-copy
	// (nil: none are, the processes have a mount namespace of their
	// own); the freeze asks, on a connection redial opens, about those
	// written since.
	asked   map[fileKey]bool
	redial  func(context.Context) (handoff.Conn, error)
	frozen  time.Time
	resumed time.Time
	// released are the listening sockets let go at the freeze (to be
	// listened on again on a rollback).
	released []releasedListener
	// targetDowntime is what the target measured (its Resumed message).
	targetDowntime float64
	hooks          *hook.Set
	hookEnv        map[string]string
	// hold keeps the packets the network lock drops, to send them on
	// once the process runs.
	hold *netlock.Hold
	// record is the file saying this migration is under way (record.go).
	record string
	// stopQueued: a SIGSTOP waits for the original process (see
	// FinalState).
	stopQueued map[int]bool
	// preLock holds the listening ports from just before the freeze
	// until the full lock is on (quiesce.go).
	preLock *netlock.Lock
	// preSmaps is /proc/PID/smaps of each process read just before the
	// freeze: its walk of the page tables (~15 ms a GiB) stays out of the
	// downtime when the frozen layout is the same.
	preSmaps map[int][]proc.Mapping
	// targetSteps: the target's restore steps; stateSent and ready time
	// the handoff.
	targetSteps      []Step
	renumbered       []Renumbered
	targetApply      time.Duration // the target's time writing pages
	stateSent, ready time.Time
	postDump         chan error // the post-dump hook's result, while it runs
	// shmIDs are the System V segments the first layout listed (nil
	// before it): the target made those, and no others.
	shmIDs []int
	shm    []core.ShmSegment // and as it listed them
	// sentAreas are the areas of each process as the last layout sent
	// listed them (copies): a later layout, and the State, leave out
	// those still the same (handoff.LeaveOutSame).
	sentAreas map[int][]core.VMA
	// postCopy, unless nil, may end the migration in post-copy
	// (MigrateOptions.Mode).
	postCopy *postCopy
	// frozenProcs, while the final round runs beside the rest of the
	// frozen window (FinalState), are the processes (a.all's) as its
	// layout describes them: copies taken as it started, for the
	// collection goes on filling in the originals. finalSteps are the
	// round's steps.
	frozenProcs []core.Process
	finalSteps  []Step
}

// milestone tells notify of a milestone.
func (a *liveSource) milestone(kind MilestoneKind, round int) {
	if a.notify != nil {
		a.notify(Milestone{Kind: kind, Session: a.hookEnv["MIGRATE_SESSION"], Round: round})
	}
}

// Committing: the commit is about to be sent.
func (a *liveSource) Committing() { a.milestone(MilestoneCommit, 0) }

// replayHeld sends on the packets the lock dropped (the lock is off): the
// process, here or on the target, takes them at once.
func (a *liveSource) replayHeld() {
	if a.hold == nil {
		return
	}
	pkts, dropped := a.hold.Finish()
	n, err := a.hold.Replay(pkts)
	a.hold = nil
	a.d.log.Info("packets held during the freeze sent on", "held", len(pkts), "sent", n, "no_room", dropped, "err", err)
}

// runHook runs the hooks of a stage with the session's environment.
func (a *liveSource) runHook(ctx context.Context, stage hook.Stage) error {
	if !a.hooks.Has(stage) {
		return nil
	}
	env := maps.Clone(a.hookEnv)
	env["MIGRATE_LOCAL_ADDRS"] = strings.Join(core.LocalAddrs(a.img), " ")
	return a.hooks.Run(ctx, stage, env)
}

// StateSent starts the post-dump hook: the state is on its way, the
// original frozen, the network lock on. It runs while the target
// restores, not in the downtime's path; GotReady waits for it.
func (a *liveSource) StateSent(ctx context.Context) error {
	a.stateSent = time.Now()
	if !a.hooks.Has(hook.PostDump) {
		return nil
	}
	ch := make(chan error, 1)
	a.postDump = ch
	go func() { ch <- a.runHook(ctx, hook.PostDump) }()
	return nil
}

// GotReady notes when the target said ready, and waits for the post-dump
// hook: a failed hook aborts the migration.
func (a *liveSource) GotReady(ctx context.Context) error {
	a.ready = time.Now()
	if a.postDump == nil {
		return nil
	}
	select {
	case err := <-a.postDump:
		a.postDump = nil
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Resumed takes what the target measured.
func (a *liveSource) Resumed(body json.RawMessage) {
	if a.postCopy != nil && a.postCopy.active {
		// The process runs there: the downtime ends now, not when its
		// last page is in (FinishPostCopy).
		a.resumed = time.Now()
		a.milestone(MilestoneResumed, 0)
	}
	var m struct {
		DowntimeMS float64      `json:"target_downtime_ms"`
		Steps      []Step       `json:"target_steps"`
		ApplyMS    float64      `json:"apply_ms"`
		Renumbered []Renumbered `json:"renumbered"`
		// SinceMS is the target's time from the resume to its answer.
		SinceMS float64 `json:"since_resumed_ms"`
	}
	if json.Unmarshal(body, &m) == nil {
		// A peer's list: sane, or none.
		if len(m.Renumbered) <= handoff.MaxRenumbered && !slices.ContainsFunc(m.Renumbered, func(r Renumbered) bool {
			return r.PID <= 0 || r.PID > transport.MaxPID || r.TargetPID <= 0 || r.TargetPID > transport.MaxPID
		}) {
			a.renumbered = m.Renumbered
		}
		a.targetDowntime = m.DowntimeMS
		if m.ApplyMS > 0 && m.ApplyMS < 1e9 { // a peer's figure: sane or none
			a.targetApply = time.Duration(m.ApplyMS * float64(time.Millisecond))
		}
		if len(m.Steps) > 64 {
			m.Steps = m.Steps[:64]
		}
		a.targetSteps = m.Steps
		// The downtime ends as the target let the processes go, not
		// when its answer came: the target's threads may have waited
		// for a CPU behind the processes in between. A peer's figure:
		// taken only within the time since the target said ready.
		since := time.Duration(m.SinceMS * float64(time.Millisecond))
		if now := time.Now(); a.resumed.IsZero() && since > 0 && !a.ready.IsZero() && since < now.Sub(a.ready) {
			a.resumed = now.Add(-since)
			a.milestone(MilestoneResumed, 0)
		}
	}
}

// releasedListener is a TCP listener of the original stopped at the
// freeze, so that the target can listen on its address (on the same host,
// or once the address moves). Its fd stays open and bound.
type releasedListener struct {
	fd      int // the agent's duplicate
	backlog int
	reuse   int // SO_REUSEADDR as it was
}

// releaseListeners stops the original's TCP listeners from listening,
// with SO_REUSEADDR on so that another socket may bind their address.
// Connections waiting in their accept queues were refused by the dump.
//
// Preconditions: the process is frozen and its fds collected.
func (a *liveSource) releaseListeners() error {
	seen := map[uint64]bool{} // a listener the tree's processes share goes once
	for _, d := range a.all {
		if err := a.releaseListenersOf(d, seen); err != nil {
			return err
		}
	}
	return nil
}

func (a *liveSource) releaseListenersOf(d *dumper, seen map[uint64]bool) error {
	for _, fd := range d.proc.FDs {
		s := fd.Socket
		if fd.Kind != core.FDSocket || s == nil || s.State != core.SockListen || (s.Family != unix.AF_INET && s.Family != unix.AF_INET6) {
			continue
		}
		dup := d.fdset.dups[fd.FD]
		if dup == nil || seen[s.Ino] {
			continue
		}
		seen[s.Ino] = true
		n := int(dup.Fd())
		reuse, err := unix.GetsockoptInt(n, unix.SOL_SOCKET, unix.SO_REUSEADDR)
		if err != nil {
			return fmt.Errorf("process %d: fd %d: %w", d.pid, fd.FD, err)
		}
		// A duplicate of our own, kept open to listen again on a rollback.
		own, err := unix.FcntlInt(dup.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.SetsockoptInt(own, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Shutdown(own, unix.SHUT_RD); err != nil {
			unix.Close(own)
			return fmt.Errorf("process %d: fd %d: stop listening: %w", d.pid, fd.FD, err)
		}
		a.released = append(a.released, releasedListener{fd: own, backlog: max(s.Backlog, 1), reuse: reuse})
	}
	return nil
}

// relisten makes the released listeners listen again (a rollback).
func (a *liveSource) relisten() error {
	var errs []error
	for _, l := range a.released {
		if err := unix.Listen(l.fd, l.backlog); err != nil {
			errs = append(errs, fmt.Errorf("listen again: %w", err))
		}
		unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, l.reuse)
		unix.Close(l.fd)
	}
	a.released = nil
	return errors.Join(errs...)
}

// announce ties the tree's rounds to the handoff's.
func (a *liveSource) announce(r *handoff.Rounds) {
	a.d.onRoundStart = func(layouts [][]core.VMA) error {
		a.milestone(MilestoneRound, int(r.Round()))
		ll := handoff.LiveLayout{Tree: a.treeOf(layouts), CPU: a.d.cpuFeatures(nil), Mounts: a.mounts, Members: a.tree}
		if a.streams > 1 {
			ll.Streams = a.streams // an older target refuses the unknown field
		}
		if a.sync != nil && a.sync.conn == nil {
			ll.Sync = a.sync.roots
		}
		var err error
		if ll.Shm, err = a.sysvOf(layouts); err != nil {
			return err
		}
		if ll.Clocks, err = readClocks([]int{a.d.pid}); err != nil {
			return err
		}
		if a.frozenProcs != nil {
			ll.Process = a.frozenProcs[0]
		} else {
			ll.Process = *a.d.proc
		}
		ll.Process.VMAs = layouts[0]
		if ll.CgroupLimits, err = readCgroupLimits(append([]core.Process{ll.Process}, ll.Tree...)); err != nil {
			return err
		}
		if a.d.container {
			// The namespaces to make, and the PIDs of the processes
			// inside: their threads and System V objects come with the
			// state.
			var err error
			if ll.Namespaces, err = a.d.readNamespaces(&core.Image{Process: ll.Process, Tree: ll.Tree}, false); err != nil {
				return err
			}
		}
		// The fds go with the state (the final round's layout comes
		// after the freeze read them, naming blobs that only the state
		// lists and carries).
		ll.Process.FDs = nil
		for _, d := range a.all {
			n, _ := proc.CountFDs(d.pid) // a hint: 0 if unknown
			ll.FDs += n
		}
		procs := handoff.Procs(&ll.Process, ll.Tree)
		areas := handoff.AreasOf(procs)
		if r.SameVMAs() && a.sentAreas != nil {
			ll.SameVMAs = handoff.LeaveOutSame(procs, a.sentAreas)
		}
		body, err := json.Marshal(ll)
		if err != nil {
			return err
		}
		a.sentAreas = areas
		if err := a.openPages(); err != nil {
			return err
		}
		if a.sync != nil && a.sync.conn == nil {
			// After the first round's page streams: the target takes
			// them in that order.
			if err := a.sync.open(a.sess, a.budget); err != nil {
				return err
			}
		}
		return r.Layout(body)
	}
	a.d.onRoundEnd = func(rep RoundReport) error {
		if a.frozen.IsZero() {
			// The synced files' changes of the round (the frozen
			// window's go last, in FinalState).
			if err := a.sync.round(r.Round(), false); err != nil {
				return err
			}
		}
		if a.progress != nil {
			a.progress(rep)
		}
		return r.Done(nil)
	}
}

// sysvOf lists the System V segments the processes attach in layouts,
// for the target to create at the first layout; a later layout must list
// the same ones (a *SysVChangedError otherwise).
func (a *liveSource) sysvOf(layouts [][]core.VMA) ([]core.ShmSegment, error) {
	procs := make([]attachments, len(layouts))
	for i := range layouts {
		procs[i] = attachments{a.all[i].pid, layouts[i]}
	}
	ss := a.d.session
	shm, err := ss.describeSysV(procs)
	if err != nil {
		return nil, err
	}
	if ss.ipcNS != 0 && len(shm) > 0 {
		// The target makes a container's segments in its new IPC
		// namespace: not for pages yet.
		v := attachedArea(layouts, shm[0].ID)
		return nil, &UnsupportedMappingError{PID: a.d.pid, Start: v.Start, End: v.End, Name: fmt.Sprintf("System V segment %d", shm[0].ID),
			Reason: "a container's System V shared memory does not move live yet (migrate dump and restore carry it)"}
	}
	for i := range shm {
		shm[i].Paged = true
	}
	ids := shmIDs(shm)
	if a.shmIDs == nil {
		a.shmIDs = append([]int{}, ids...)
		a.shm = shm
	} else if !slices.Equal(ids, a.shmIDs) {
		return nil, &SysVChangedError{Before: a.shmIDs, Now: ids}
	}
	return shm, nil
}

// attachedArea is the first area of layouts that attaches segment id.
func attachedArea(layouts [][]core.VMA, id int) core.VMA {
	for _, l := range layouts {
		for _, v := range l {
			if v.Kind == core.VMASysV && int(v.Shm) == id {
				return v
			}
		}
	}
	return core.VMA{}
}

// treeOf is the Tree of a layout: the processes but the root, with their
// layouts, then the zombies.
func (a *liveSource) treeOf(layouts [][]core.VMA) []core.Process {
	var out []core.Process
	for i, d := range a.all[1:] {
		var p core.Process
		if a.frozenProcs != nil {
			p = a.frozenProcs[i+1]
		} else {
			p = *d.proc
		}
		p.VMAs = layouts[i+1]
		p.FDs = nil
		out = append(out, p)
	}
	return append(out, a.zombies...)
}

// layoutCopy is a copy of p, without its areas and fds, for a layout
// built while the collection goes on writing p (frozenState.overlap):
// nothing of it shares memory with p. Its MM is zero, "not collected
// yet" (core's validateMM), as in the layouts before the freeze: the
// injected brk completes it, after the copy.
//
// A deep copy (internal/deepcopy), not a round trip through JSON, which
// took about 1.3 ms of CPU for an nginx tree's three processes in the
// frozen window, on the read's critical path (perf at 10 kHz).
func layoutCopy(p *core.Process) (core.Process, error) {
	c := *p
	c.VMAs, c.FDs, c.MM = nil, nil, core.MM{}
	out, err := deepcopy.Of(c)
	if err != nil {
		return core.Process{}, fmt.Errorf("process %d: %w", p.PID, err)
	}
	return out, nil
}

// identify fills in what the target needs to create process d before the
// freeze: its identity, executable, directories, cgroups and audit
// identity.
func identify(d *dumper) error {
	p := d.proc
	p.PID, p.PPID, p.PGID, p.SID, p.Comm = d.pid, d.stat.PPID, d.stat.PGRP, d.stat.Session, d.stat.Comm
	exe, err := fileRef(fmt.Sprintf("/proc/%d/exe", d.pid))
	if err != nil {
		return err
	}
	hashCode(fmt.Sprintf("/proc/%d/exe", d.pid), exe)
	p.Exe = *exe
	if p.Cwd, err = os.Readlink(fmt.Sprintf("/proc/%d/cwd", d.pid)); err != nil {
		return err
	}
	if p.Root, err = os.Readlink(fmt.Sprintf("/proc/%d/root", d.pid)); err != nil {
		return err
	}
	if p.Cgroups, err = readCgroups(d.pid, d.pid); err != nil {
		return err
	}
	if p.Audit, err = readAudit(d.pid); err != nil {
		return err
	}
	p.Threads = []core.Thread{{TID: d.pid}}
	return nil
}

// PreCopy sends pages in rounds while the processes run.
func (a *liveSource) PreCopy(ctx context.Context, r *handoff.Rounds) error {
	a.announce(r)
	if a.postCopy != nil && !r.PostCopy() {
		if a.postCopy.mode == ModePostCopy {
			return fmt.Errorf("the target at %s cannot serve post-copy (an older migrate serve, or userfaultfd refused there)", a.hookEnv["MIGRATE_TARGET"])
		}
		a.d.log.Info("--mode auto: the target cannot serve post-copy; pre-copy only")
		a.postCopy = nil
	}
	a.d.session.postCopy = a.postCopy
	if !a.tree {
		// The process alone: the tree's regroup does this for each
		// process that joins.
		if err := a.join(a.d, true); err != nil {
			return err
		}
	}
	return a.d.precopy(ctx, a.all)
}

// Freeze stops every thread.
func (a *liveSource) Freeze(ctx context.Context) error {
	if err := a.runHook(ctx, hook.PreFreeze); err != nil {
		return err
	}
	// The flags only smaps shows, read now while the process runs (see
	// FinalState), before the listening ports are locked (a page-table
	// walk, ~15 ms a GiB, that new connections need not wait out); a
	// failure only costs the read in the frozen window.
	a.preSmaps = map[int][]proc.Mapping{}
	for _, d := range a.all {
		if m, err := proc.ReadSmaps(d.pid); err == nil {
			a.preSmaps[d.pid] = m
		}
	}
	// The heap the frozen window allocates from, made ready while the
	// processes still run (warmHeap).
	warmHeap(len(a.all))
	if err := a.d.prepareFreezer(a.d.pid); err != nil {
		return err
	}
	defer a.d.freezer.close()
	a.reserveFDs()
	a.quiesceListeners(300 * time.Millisecond)
	// From the freeze a crash of this migrate leaves something to settle:
	// the record is written first, out of the downtime.
	var err error
	var tree []int
	for _, d := range a.all[1:] {
		tree = append(tree, d.pid)
	}
	if a.record, err = writeRecord(a.d.pid, a.hookEnv["MIGRATE_SESSION"], a.hookEnv["MIGRATE_TARGET"], tree, a.shm); err != nil {
		a.d.log.Warn("no record of this migration in "+RecordDir+": if this migrate dies, nothing will say so", "err", err)
	}
	// The whole tree at once, as an offline dump freezes it: a process
	// that forked or exited since the last round is found now, and taken
	// as it is (settleFrozen).
	all := slices.Clone(a.all)
	zombies, err := freezeTree(ctx, a.d.session, &all, a.img)
	if err == nil && a.tree {
		var changed bool
		if changed, err = a.settleFrozen(all, zombies); changed && err == nil && a.record != "" {
			// The record names the frozen tree (for `migrate recover`).
			var tree []int
			for _, d := range a.all[1:] {
				tree = append(tree, d.pid)
			}
			if rec, err := writeRecord(a.d.pid, a.hookEnv["MIGRATE_SESSION"], a.hookEnv["MIGRATE_TARGET"], tree, a.shm); err == nil {
				a.record = rec
			}
		}
	}
	if err != nil {
		for _, d := range all[len(a.all):] {
			if d.p != nil {
				d.p.Detach() // a newcomer: ResumeOriginal lets the others go
			}
		}
		return err
	}
	a.frozen = time.Now()
	a.milestone(MilestoneFrozen, 0)
	return nil
}

// reserveFDs makes room in this process's fd table, before the freeze,
// for the duplicates the dump takes of the process's fds (one each, and one
// more for a TCP connection): grown in the frozen window, the table would
// cost an RCU grace period at each doubling (see proc.ReserveFDs), tens of
// milliseconds with hundreds of connections.
func (a *liveSource) reserveFDs() {
	var n int
	var err error
	for _, d := range a.all {
		var c int
		c, err = proc.CountFDs(d.pid)
		if err != nil {
			break
		}
		n += c
	}
	if err == nil {
		err = proc.ReserveFDs(3*n + 64)
	}
	if err != nil {
		a.d.log.Debug("no room made for the process's fds", "err", err)
	}
}

// dropRecord forgets the record: the migration is settled.
func (a *liveSource) dropRecord() {
	if a.record != "" {
		os.Remove(a.record)
		a.record = ""
	}
}

// lockNetwork is the live final state's network phase (see frozenState):
// the listeners stop listening, then the network lock takes the
// connections and the listening ports, and keeps the packets it drops.
func (a *liveSource) lockNetwork() error {
	d := a.d
	if err := a.releaseListeners(); err != nil {
		return err
	}
	listeners := tcpListeners(a.all)
	if a.preLock != nil {
		// The lock on the listening ports taken before the freeze takes
		// the connections too.
		if err := a.preLock.Add(d.tcp.LockSpec(listeners)); err != nil {
			return fmt.Errorf("network lock for %d TCP connections: %w", d.tcp.Len(), err)
		}
		d.lock, a.preLock = a.preLock, nil
	} else if err := d.lockNetwork(d.pid, listeners, false); err != nil {
		return err
	}
	if d.lock != nil {
		var err error
		if a.hold != nil {
			a.hold.AddConns(d.tcp.LockSpec(nil).Conns)
		} else if a.hold, err = netlock.StartHold(sockets.NetnsSocket(d.pid), d.tcp.LockSpec(nil).Conns, listeners); err != nil {
			d.log.Warn("packets dropped by the network lock are not kept: peers will wait for their retransmission timers", "err", err)
		}
	}
	a.dropPreLock() // the full lock holds the listening ports now
	return nil
}

// FinalState collects the frozen processes, sends the final round and
// returns the image with its blobs.
func (a *liveSource) FinalState(ctx context.Context, r *handoff.Rounds) (json.RawMessage, error) {
	d := a.d
	d.lapped = a.frozen
	d.steps = nil
	defer d.lap("encode state")
	// The state, in phases (frozen.go). The network lock takes the
	// source's connections and listening ports, which fall silent until
	// the original is killed, or resumes; the tracker and the scratch page
	// stay until then: a rollback (ResumeOriginal) undoes them.
	// The final round goes on beside the rest (frozenState.overlap).
	f := &frozenState{ss: d.session, all: a.all, frozen: a.frozen,
		quickLayout: true, keepScratch: true, keepTracking: true, overlap: true,
		networkStep: "network lock, tcp repair", networkAlways: true, memoryStep: "final round"}
	defer f.close()
	// Landlock: each tracked process was tested as its tracking started;
	// one that joined the tree at the freeze is tested now (its probe
	// started then: there is seldom one).
	f.landlock = &landlockProbes{}
	defer f.landlock.close()
	f.landlockTested = func(d *dumper) bool { return d.landlockTested }
	f.lockNetwork = a.lockNetwork
	smaps := make(map[*dumper]*smapsFlags, len(a.all))
	for _, m := range a.all {
		smaps[m] = a.smapsAfterMmap(m)
	}
	// Each process's copy for the final round's layout is taken as soon
	// as its task is read, on its tracer beside the others' (nothing
	// changes it before the final round starts).
	procs := make([]core.Process, len(a.all))
	index := make(map[*dumper]int, len(a.all))
	for i, m := range a.all {
		index[m] = i
	}
	f.layoutRead = func(m *dumper) error {
		if err := smaps[m].layoutRead(); err != nil {
			return err
		}
		var err error
		procs[index[m]], err = layoutCopy(m.proc)
		return err
	}
	f.beforeFinal = func() error {
		a.frozenProcs = procs
		return nil
	}
	defer func() {
		for _, m := range a.all {
			m.mmapDone = nil
		}
		a.frozenProcs = nil
		a.finalSteps = f.finalSteps
	}()
	// No injection follows the injected calls (but on a rollback): a
	// SIGSTOP queued then stops the original where it is if this migrate
	// dies before the end (the kernel then lets it go, its connections
	// silent in repair mode), for `migrate recover` to settle. A rollback
	// takes it back.
	f.injectedDone = func() {
		for _, m := range a.all {
			if err := unix.Kill(m.pid, unix.SIGSTOP); err == nil {
				a.stopQueued[m.pid] = true
			}
		}
	}
	if err := f.collect(ctx); err != nil {
		return nil, err
	}
	if ids := shmIDs(d.shm); !slices.Equal(ids, a.shmIDs) {
		return nil, &SysVChangedError{Before: a.shmIDs, Now: ids}
	}
	for _, m := range a.all {
		if err := smaps[m].wait(); err != nil {
			return nil, err
		}
	}
	d.lap("blobs, smaps")
	if pc := a.postCopy; pc != nil && pc.active {
		if err := pc.checkMissing(d.proc.VMAs); err != nil {
			return nil, err
		}
	}
	if err := sameMountTable(a.mounts, d.mounts); err != nil {
		return nil, err
	}
	a.img.Mounts = d.mounts
	a.img.Blobs = d.blobSums
	a.img.Shm = d.shm
	a.img.Clocks, a.img.CPU = f.clocks, f.cpu
	a.img.Tree = nil
	for _, m := range a.all[1:] {
		a.img.Tree = append(a.img.Tree, *m.proc)
	}
	a.img.Tree = append(a.img.Tree, a.zombies...)
	var err error
	if a.img.CgroupLimits, err = readCgroupLimits(append([]core.Process{a.img.Process}, a.img.Tree...)); err != nil {
		return nil, err
	}
	if d.container {
		ns, err := d.readNamespaces(a.img, true)
		if err != nil {
			return nil, err
		}
		a.img.Namespaces = ns
	}
	st := handoff.LiveState{Image: *a.img, Blobs: d.memBlobs, Inherit: a.inherit, PostCopy: a.postCopy.state()}
	if r.SameVMAs() && a.sentAreas != nil {
		// The areas the final round's layout listed go no second time.
		st.Image.Tree = slices.Clone(st.Image.Tree)
		st.SameVMAs = handoff.LeaveOutSame(handoff.Procs(&st.Image.Process, st.Image.Tree), a.sentAreas)
	}
	total := 0
	for _, b := range st.Blobs {
		total += len(b)
	}
	if total > maxLiveBlobs {
		return nil, fmt.Errorf("more than %d bytes of file contents and buffers to send", maxLiveBlobs)
	}
	// Files opened for writing during pre-copy: the target was not
	// asked about them yet.
	if a.asked != nil {
		if err := recheckShared(ctx, a.img, a.asked, a.syncRoots(), a.redial); err != nil {
			return nil, err
		}
		d.lap("files written since asked")
	}
	// The synced files as they are at the freeze, before the state: the
	// target puts them in place before it restores.
	if a.sync != nil {
		if err := a.sync.round(r.Round(), true); err != nil {
			return nil, err
		}
		d.lap("synced files")
	}
	return json.Marshal(st)
}

// smapsFlags adds the flags only smaps has to the layout of a process,
// read quick from maps in the frozen window (see readVMAsQuick).
type smapsFlags struct {
	a *liveSource
	d *dumper
	// added: the flags are in the layout already (layoutRead).
	added bool
	// started: mmapDone ran; c then gets the result.
	started bool
	c       chan smapsResult
}

type smapsResult struct {
	maps []proc.Mapping
	// scratch, scratchLen: the scratch page, mapped when maps was read
	// (see addVmFlags).
	scratch, scratchLen uint64
	err                 error
}

// smapsAfterMmap arranges for the flags only smaps has to be added to the
// layout of process d: at once, from the smaps read just before the
// freeze, when the areas are still those (layoutRead); else from smaps
// read again on another goroutine while the injected calls and the final
// round go on: smaps holds the process's mmap lock, which the injected
// mmap and brk take, so it starts after them (mmapDone). wait waits for
// it, after the collection.
func (a *liveSource) smapsAfterMmap(d *dumper) *smapsFlags {
	s := &smapsFlags{a: a, d: d, c: make(chan smapsResult, 1)}
	d.mmapDone = s.mmapDone
	return s
}

// layoutRead runs as soon as the frozen layout is read (frozenState's
// layoutRead), before the final round lists it: where the areas are
// those smaps showed just before the freeze, its flags stand (only a
// madvise of a whole area in those few milliseconds would change one
// without changing the layout), and no walk of the page tables competes
// with the final round's. Added now, they are in the final round's
// layout too: it lists the areas as the layout before and the State do
// (handoff.LeaveOutSame).
func (s *smapsFlags) layoutRead() error {
	pre, ok := s.a.preSmaps[s.d.pid]
	if !ok || !sameAreas(s.d.proc.VMAs, pre) {
		return nil
	}
	if err := addVmFlags(s.d.pid, s.d.proc.VMAs, pre, 0, 0); err != nil {
		return err
	}
	s.added = true
	return nil
}

// mmapDone runs once the injected calls that take the mmap lock are done.
func (s *smapsFlags) mmapDone() {
	s.started = true
	if s.added {
		return
	}
	d := s.d
	d.log.Debug("the layout changed at the freeze: smaps read again", "pid", d.pid)
	scratch := d.scratch
	go func() {
		m, err := proc.ReadSmaps(d.pid)
		s.c <- smapsResult{maps: m, scratch: scratch, scratchLen: scratchSize, err: err}
	}()
}

// wait adds the flags read after the injected calls, if layoutRead did
// not.
func (s *smapsFlags) wait() error {
	if s.added {
		return nil
	}
	if !s.started {
		return fmt.Errorf("process %d: smaps not read", s.d.pid)
	}
	sm := <-s.c
	if sm.err != nil {
		return fmt.Errorf("process %d: %w", s.d.pid, sm.err)
	}
	return addVmFlags(s.d.pid, s.d.proc.VMAs, sm.maps, sm.scratch, sm.scratchLen)
}

// ResumeOriginal undoes everything: the original runs on.
func (a *liveSource) ResumeOriginal() error {
	var errs []error
	for _, d := range a.all {
		if d.sink != nil && !d.sink.closed {
			d.sink.abort()
		}
		if d.tracker != nil {
			errs = append(errs, d.tracker.Close())
		}
	}
	for _, d := range a.all {
		if d.p == nil {
			continue
		}
		if a.stopQueued[d.pid] && d.scratch == 0 {
			// An injection takes the queued SIGSTOP (the thread meets it
			// as it returns to user space)...
			if _, err := d.p.Syscall(d.p.Leader(), "getpid", unix.SYS_GETPID); err != nil {
				errs = append(errs, fmt.Errorf("process %d: take back the SIGSTOP queued at the freeze: %w", d.pid, err))
			}
		}
		errs = append(errs, d.unmapScratch())
		if a.stopQueued[d.pid] {
			// ... which Detach must not give back.
			d.p.DropStolen(unix.SIGSTOP)
			delete(a.stopQueued, d.pid)
		}
	}
	errs = append(errs, a.relisten())
	errs = append(errs, a.d.unrepairTCP())
	a.d.closeTCP()
	a.d.liftLock()
	a.dropPreLock()
	for _, d := range a.all {
		if d.p != nil {
			errs = append(errs, d.p.Detach())
		}
	}
	defer a.d.unlock()
	if a.postDump != nil {
		<-a.postDump // the abort hook undoes what it did: after it
		a.postDump = nil
	}
	a.dropRecord()
	// The operator's abort hook first (the service address back here, say),
	// then the held packets.
	if err := a.runHook(context.Background(), hook.Abort); err != nil {
		a.d.log.Warn("abort hook", "err", err)
	}
	a.replayHeld()
	return errors.Join(errs...)
}

// KillOriginal kills the frozen original tree, children first (no parent
// sees a child die and acts on it): the target runs the processes.
func (a *liveSource) KillOriginal() error {
	if a.resumed.IsZero() {
		a.resumed = time.Now()
		a.milestone(MilestoneResumed, 0)
	}
	for _, l := range a.released {
		unix.Close(l.fd)
	}
	a.released = nil
	// What the lock held since the freeze goes on at once: with the
	// service address gone from here (the post-dump hook, before the
	// target said ready) to the target, where the processes run; it
	// waited for the originals' teardown below (13-25 ms of a PostgreSQL
	// tree's, in the client's gap). The lock stays on until then: it
	// keeps the original's sockets from the peers, and drops these
	// packets again if the address is still here (the peers send them
	// again). Not from a network namespace of the tree's own, which
	// goes with it (leaveNetNS).
	if a.hold != nil && !a.d.ownNet {
		n, err := a.hold.Drain()
		a.d.log.Info("packets held since the freeze sent on before the original's teardown", "sent", n, "err", err)
	}
	// Killed in repair mode, its connections close without a word to their
	// peers; then the lock can go.
	var err error
	for i := len(a.all) - 1; i >= 0; i-- {
		if e := a.all[i].p.Kill(a.d.container && (i > 0 || a.d.stat.PPID != os.Getpid())); err == nil && e != nil { // see dump's
			err = fmt.Errorf("process %d: %w", a.all[i].pid, e)
		}
	}
	for _, d := range a.all {
		if d.tracker != nil {
			d.tracker.Close() // of a dead process: only the agent's fds
		}
	}
	// Their System V segments are the target's now: never two copies.
	if e := a.d.removeSysV(); err == nil {
		err = e
	}
	a.d.closeTCP()
	if a.d.ownNet {
		a.leaveNetNS()
		if err == nil {
			a.dropRecord()
		}
	} else {
		// The lock is lifted (quick) for the held packets to go, and
		// removed (a dozen milliseconds) after.
		a.d.liftLock()
		a.dropPreLock()
		if err == nil {
			a.dropRecord()
		}
		a.replayHeld()
		a.d.unlock()
	}
	if err := a.runHook(context.Background(), hook.PostResume); err != nil {
		a.d.log.Warn("post-resume hook", "err", err)
	}
	return err
}

// LeaveFrozen keeps the original stopped (SIGSTOP) after this process
// lets go of it, for an operator to settle with `migrate recover`.
func (a *liveSource) LeaveFrozen() error {
	if a.d.p == nil {
		return nil
	}
	// Its listeners listen again (it stays stopped): if the operator
	// finds the migration aborted, the original resumes whole.
	// Its connections stay in repair mode, silent: if the target runs the
	// process, a word from the original would reset them; if not, `migrate
	// recover` turns repair mode off before it lets the original run.
	var errs []error
	for _, d := range a.all {
		if d.p != nil {
			errs = append(errs, d.unmapScratch())
		}
	}
	errs = append(errs, a.relisten())
	for _, d := range a.all {
		if d.tracker != nil {
			// As when this process exits: the original, if it runs
			// again, runs untracked.
			errs = append(errs, d.tracker.Close())
		}
	}
	a.d.closeTCP()
	a.d.unlock()
	a.dropPreLock()
	if a.hold != nil {
		a.hold.Finish()
		a.hold.CloseRaw()
		a.hold = nil
	}
	for _, d := range a.all {
		if d.p != nil {
			d.p.StopOnDetach()
			errs = append(errs, d.p.Detach())
		}
	}
	return errors.Join(errs...)
}

// Recover settles a migration whose outcome the source could not learn
// (it left the original stopped): it asks the target, then kills the
// original if the target runs the process, or lets it run on (SIGCONT) if
// the migration was aborted. Anything else leaves it stopped and says so.
// It acts only on a process a record in RecordDir names for that session,
// with the same start time; otherwise it returns a *NotRecordedError
// before anything is done.
func Recover(ctx context.Context, to, session string, pid int, cfg transport.Config, log *slog.Logger) (string, error) {
	ThawStale(log)
	redial := func(ctx context.Context) (handoff.Conn, error) {
		return dialControl(ctx, to, cfg)
	}
	var rec *Record
	if pid > 0 {
		// Only a process a migration left: never whatever now has the PID.
		var err error
		if rec, err = recordedProcess(pid, session); err != nil {
			return "", err
		}
		if gone, err := netlock.CleanStale(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && len(gone) > 0 {
			log.Warn("removed stale network locks of migrations that crashed", "tables", gone)
		}
	}
	out, err := handoff.QueryOutcome(ctx, handoff.SourceConfig{SessionID: session, PID: pid, Target: to, Redial: redial, Logger: log})
	if err != nil {
		return out.String(), err
	}
	defer RemoveRecord(pid, session)
	// The other processes of a tree go as the root does; one that is gone
	// (or whose PID names another process now) is left alone.
	var tree []*Record
	if rec != nil {
		tree = treeRecords(rec)
	}
	member := func(m *Record, sig unix.Signal) {
		var nr *NotRecordedError
		if err := signalRecorded(m, sig); err != nil && !errors.Is(err, unix.ESRCH) && !errors.As(err, &nr) {
			log.Warn("a process of the original tree", "pid", m.PID, "signal", sig, "err", err)
		}
	}
	switch out {
	case transport.OutcomeResumed:
		if pid > 0 {
			// Children first: no parent sees a child die and acts on it.
			for i := len(tree) - 1; i >= 0; i-- {
				member(tree[i], unix.SIGKILL)
			}
			if err := signalRecorded(rec, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				return out.String(), fmt.Errorf("the target runs the process; killing the original %d: %w", pid, err)
			}
			// The target has the tree's System V segments: never two
			// copies.
			if err := removeRecordedSysV(rec.Shm); err != nil {
				log.Warn("the original tree's System V segments", "err", err)
			}
		}
	case transport.OutcomeAborted:
		if pid > 0 {
			for _, m := range append([]*Record{rec}, tree...) {
				if err := sockets.UnrepairProcess(m.PID); err != nil {
					log.Warn("the original's TCP connections", "pid", m.PID, "err", err)
				}
			}
			for _, m := range tree {
				member(m, unix.SIGCONT)
			}
			if err := signalRecorded(rec, unix.SIGCONT); err != nil {
				return out.String(), fmt.Errorf("the migration was aborted; resuming the original %d: %w", pid, err)
			}
		}
	default:
		return out.String(), fmt.Errorf("the target says %v: the original %d is left stopped", out, pid)
	}
	return out.String(), nil
}

// pageStreams is the number of page streams for MigrateOptions.Streams n:
// n itself, or with 0 one a CPU, up to 4 (each stream's goroutines want a
// CPU on both sides, where the other streams' compete for them).
func pageStreams(n int) int {
	if n > 0 {
		return min(n, handoff.MaxPageStreams)
	}
	return min(max(runtime.GOMAXPROCS(0), 1), 4)
}

// treeStreams is pageStreams(n) for a tree of processes processes (as
// walked before the migration): fewer streams a process for a tree of
// many, whose streams (one each already) keep the CPUs busy by themselves
// and must all wait, opened, for the target to take them at the first
// layout (maxPendingStreams).
func treeStreams(n, processes int) int {
	return max(1, min(pageStreams(n), maxPendingStreams/max(processes, 1)))
}
