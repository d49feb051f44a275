package target

import (
	"context"
	"errors"
	"fmt"
	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/core/netlock"
	"github.com/procmig/migrate/core/reap"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/transport"
)

// ServeOptions configure the target service.
type ServeOptions struct {
	Listen    string
	Transport transport.Config
	Logger    *slog.Logger
	// Ready, if set, is called with the listening address once the service
	// accepts sessions.
	Ready func(addr net.Addr)
	// Hooks run at the target's stages of each migration: pre-resume,
	// post-resume, abort.
	Hooks *hook.Set
	// Metrics, if set, count the service's sessions and their outcomes and
	// hold its health (serving from the moment it listens until ctx ends).
	// Serve does not serve them over HTTP: the caller does, with
	// Metrics.Handler.
	Metrics *Metrics
	// MaxSessions caps the sessions served at once (migrations and status
	// questions); 0 means DefaultMaxSessions. A session beyond it is told
	// the service is busy (an Abort, so its source resumes its original
	// before freezing anything) and closed.
	MaxSessions int
	// Listener, if set, is listened on instead of Listen; Serve owns it
	// and closes it.
	Listener net.Listener
	// OnSession, if set, is told of each migration's steps as the service
	// takes them, from the session's goroutine (sessions run at once).
	OnSession func(SessionEvent)
	// XCR0, if not zero, are the XSAVE features (bits of XCR0) this
	// host's CPU is taken to have, fewer than its own (xgetbv): those of
	// every host of a fleet, say. Serve refuses more than its own.
	XCR0 uint64
	// CgroupRoot and ApplyCgroupLimits are as in RestoreOptions, for
	// every migration served.
	CgroupRoot        string
	ApplyCgroupLimits bool
	// VDSOProxy is as in RestoreOptions, for every migration served.
	VDSOProxy bool
	// NetAttach is as in RestoreOptions, for every migration served.
	NetAttach string
	// IgnoreCgroups leaves the processes in the restorer's cgroups: the
	// image's are not joined, made or compared (a host whose cgroup
	// hierarchies differ, as a VM's cgroup v2 from a host's v1). The
	// processes then run under this host's limits and accounting, and
	// /proc/PID/cgroup shows other paths. --cgroups ignore.
	IgnoreCgroups bool
}

// SessionEvent is a step of an incoming migration (ServeOptions.OnSession).
type SessionEvent struct {
	Kind    SessionEventKind
	Session string // the transport session's ID
	Peer    string // the source's address
	PID     int    // the process, as the source names it
	// Here is the process's PID here: PID, unless it is a container's
	// init whose PIDs outside were taken here (and renumbered).
	Here int
	Err  error // SessionAborted: why
}

// SessionEventKind says which step a SessionEvent is.
type SessionEventKind int

// The steps of a migration, in order; SessionAborted may come after any
// step before SessionCommitted.
const (
	SessionStarted   SessionEventKind = iota + 1 // the source's hello was taken: the husk is made next
	SessionRestored                              // the process is whole and stopped: Ready is sent next
	SessionCommitted                             // the commit came and the process runs here
	SessionAborted                               // the session failed before the process ran; the husk is gone
	// SessionPostCopyDone: the post-copy of a process that resumed with
	// pages missing ended; with Err the pages could not all come and the
	// process was killed (lost).
	SessionPostCopyDone
)

// DefaultMaxSessions is the default of ServeOptions.MaxSessions. Each
// migration holds up to two control messages of transport.MaxMsgPayload
// and their decoded form (core.DefaultDecodeBudget), besides the process
// it builds.
const DefaultMaxSessions = 8

// ErrBusy: the service was serving MaxSessions sessions already.
var ErrBusy = errors.New("target busy: too many sessions in progress")

// Serve runs the target service until ctx ends: it accepts migrations,
// builds each incoming process while the source's pre-copy runs, restores
// the rest at the freeze and resumes it on commit. Sessions that have not
// committed when ctx ends are aborted (their sources resume their
// originals). When the service is PID 1 of its PID namespace, restored
// processes become its children: it reaps them when they exit.
func Serve(ctx context.Context, opts ServeOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CgroupRoot != "" {
		if err := core.ValidPath(opts.CgroupRoot); err != nil {
			return fmt.Errorf("cgroup root: %w", err)
		}
	}
	if opts.NetAttach != "" && !core.ValidLinkName(opts.NetAttach) {
		return fmt.Errorf("--net-attach %q: not an interface name", opts.NetAttach)
	}
	if extra := opts.XCR0 &^ hostXCR0(); extra != 0 {
		if opts.Listener != nil {
			opts.Listener.Close()
		}
		return fmt.Errorf("XSAVE features %#x: this CPU lacks %s", opts.XCR0, core.XSAVENames(extra))
	}
	// Network locks left by a crashed migrate of this namespace.
	if gone, err := netlock.CleanStale(""); err != nil {
		log.Debug("stale network locks not checked", "err", err)
	} else if len(gone) > 0 {
		log.Warn("removed stale network locks of migrations that crashed", "tables", gone)
	}
	tcfg := opts.Transport
	if tcfg.Logger == nil {
		tcfg.Logger = log
	}
	var ln *transport.Listener
	var err error
	if opts.Listener != nil {
		ln, err = transport.NewListener(opts.Listener, tcfg)
	} else {
		ln, err = transport.Listen(opts.Listen, tcfg)
	}
	if err != nil {
		return err
	}
	defer ln.Close()
	stopServing := opts.Metrics.serving(ctx)
	if opts.Ready != nil {
		opts.Ready(ln.Addr())
	}
	log.Info("serving", "addr", ln.Addr().String())
	if os.Getpid() == 1 {
		go reap.Orphans(ctx, 500*time.Millisecond)
	}
	outcomes := handoff.NewOutcomes(0, nil)
	maxSessions := opts.MaxSessions
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	slots := make(chan struct{}, maxSessions)
	// Sessions refused for want of a slot are told so by at most as many
	// goroutines again; beyond that they are closed without a word.
	busy := make(chan struct{}, maxSessions)
	var wg sync.WaitGroup
	defer wg.Wait()
	// Unhealthy from the moment no session is accepted any more, before
	// the wait for those in progress.
	defer stopServing()
	for {
		sess, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			opts.Metrics.handshakeRefused(err)
			// The listener logged it, at a bounded rate: a flood of
			// hostile connections must not flood the log.
			log.Debug("refused a connection", "err", err)
			continue
		}
		sessLog := log.With("session", sess.ID(), "peer", sess.Peer().String())
		select {
		case slots <- struct{}{}:
		default:
			opts.Metrics.sessionRefused(time.Now(), ReasonBusy)
			select {
			case busy <- struct{}{}:
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-busy }()
					defer sess.Close()
					refuseBusy(ctx, sess, maxSessions, sessLog)
				}()
			default:
				sessLog.Debug("busy; session closed", "max_sessions", maxSessions)
				sess.Close()
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer sess.Close()
			serveSession(ctx, sess, outcomes, opts, sessLog)
		}()
	}
}

// serveSession handles one connection: a migration, or a question about
// the outcome of an earlier one.
func serveSession(ctx context.Context, sess *transport.Session, outcomes *handoff.Outcomes, opts ServeOptions, log *slog.Logger) {
	hooks, m, notify := opts.Hooks, opts.Metrics, opts.OnSession
	start := time.Now()
	m.sessionStarted()
	defer m.sessionEnded()
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	kind, ctrl, err := sess.AcceptStream(actx)
	cancel()
	if err != nil {
		reason := ReasonRefused
		if ctx.Err() != nil {
			reason = ReasonShutdown
		}
		m.sessionRefused(start, reason)
		log.Warn("no control stream", "err", err)
		return
	}
	if kind != transport.KindControl {
		ctrl.Close()
		m.sessionRefused(start, ReasonProtocol)
		log.Warn("first stream is not the control stream", "kind", kind)
		return
	}
	t := newLiveTarget(sess, log)
	if opts.XCR0 != 0 {
		t.xcr0 = opts.XCR0
	}
	t.cgroupRoot, t.applyCgroupLimits, t.vdsoProxy = opts.CgroupRoot, opts.ApplyCgroupLimits, opts.VDSOProxy
	t.ignoreCgroups = opts.IgnoreCgroups
	t.netAttach = opts.NetAttach
	t.hooks = hooks
	t.notify = notify
	res, err := handoff.RunTarget(ctx, handoff.TargetConfig{SessionID: sess.ID(), Logger: log, Files: answerFiles}, t, transport.NewControl(ctrl), outcomes)
	if res.Outcome == transport.OutcomeResumed {
		// The session (its streams) lives until every page is here.
		if perr := t.waitPostCopy(); perr != nil {
			log.Error("migration lost in post-copy: the process was killed", "pid", t.pid, "err", perr)
		}
	}
	m.sessionDone(start, t, res, err)
	if t.pid != 0 && res.Outcome == transport.OutcomeAborted {
		t.event(SessionAborted, err)
	}
	switch {
	case res.Files:
		log.Info("answered a question about files", "err", err)
	case res.Query:
		log.Info("answered a status question", "about", res.Session, "outcome", res.Outcome)
	case err != nil:
		log.Warn("migration failed", "pid", t.pid, "outcome", res.Outcome, "err", err)
	default:
		log.Info("migration done", "pid", t.pid, "pid_here", t.here(), "outcome", res.Outcome)
	}
}

// refuseBusy answers the first message of a session that found the
// service busy with an Abort that says so.
func refuseBusy(ctx context.Context, sess *transport.Session, max int, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kind, st, err := sess.AcceptStream(ctx)
	if err != nil {
		return
	}
	defer st.Close()
	if kind != transport.KindControl {
		return
	}
	c := transport.NewControl(st)
	if _, err := c.Recv(ctx); err != nil {
		return
	}
	log.Warn("refused a session: busy", "max_sessions", max)
	c.Send(&transport.Abort{Reason: transport.ClipText(fmt.Sprintf("target: %v (%d; migrate serve --max-sessions)", ErrBusy, max))})
	// Until the source has read it and closed.
	handoff.Linger(ctx, c, handoff.DefaultLinger)
}
