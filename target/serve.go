package target

import (
	"context"
	"errors"
	"log/slog"
	"migrate/core/hook"
	"migrate/core/netlock"
	"migrate/core/reap"
	"net"
	"os"
	"sync"
	"time"

	"migrate/transport"
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
}

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
	// Network locks left by a crashed migrate of this namespace.
	if gone, err := netlock.CleanStale(""); err != nil {
		log.Debug("stale network locks not checked", "err", err)
	} else if len(gone) > 0 {
		log.Warn("removed stale network locks of migrations that crashed", "tables", gone)
	}
	ln, err := transport.Listen(opts.Listen, opts.Transport)
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
	outcomes := NewOutcomes(0, nil)
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
			log.Warn("refused a connection", "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sess.Close()
			serveSession(ctx, sess, outcomes, opts.Hooks, opts.Metrics, log.With("session", sess.ID(), "peer", sess.Peer().String()))
		}()
	}
}

// serveSession handles one connection: a migration, or a question about
// the outcome of an earlier one.
func serveSession(ctx context.Context, sess *transport.Session, outcomes *Outcomes, hooks *hook.Set, m *Metrics, log *slog.Logger) {
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
	t.hooks = hooks
	res, err := Handoff(ctx, HandoffConfig{SessionID: sess.ID(), Logger: log}, t, transport.NewControl(ctrl), outcomes)
	m.sessionDone(start, t, res, err)
	switch {
	case res.Query:
		log.Info("answered a status question", "about", res.Session, "outcome", res.Outcome)
	case err != nil:
		log.Warn("migration failed", "pid", t.pid, "outcome", res.Outcome, "err", err)
	default:
		log.Info("migration done", "pid", t.pid, "outcome", res.Outcome)
	}
}
