package target

// The handoff: the target's half of the migration protocol, as a state
// machine over one control connection. DESIGN.md, "never two copies, never
// none", is the rule it implements; the target's part of it is: resume
// only on a Commit, and remember what became of every session.
//
//	wait Hello (HelloTimeout) or StatusQuery → answer from Outcomes, done
//	Prepare (husk), send Hello
//	Layout/RoundDone per round, Freeze, the final round(s), State
//	Restore, send Ready
//	wait Commit (CommitTimeout)
//	  ── record committed, then Resume, record resumed ──
//	send Resumed, wait for the source to close (Linger)
//
// Before a Commit every failure (an action's error, the link lost or
// silent, an Abort or Error from the source, a message out of place or
// duplicated, ctx cancelled, a StatusQuery about this session on another
// connection) ends the same way: record aborted, Abort to the source (best
// effort), Discard the husk. After a Commit the source's link no longer
// matters: the resume goes on, and the source learns the outcome by asking.
//
// Outcomes is the single place where the fate of a session is decided,
// under one lock: a Commit that finds the session already aborted (by its
// timeout, or by a StatusQuery that came first) is refused, and a
// StatusQuery that finds it undecided aborts it. Committed is recorded
// before Resume, so that a question asked while (or after) the resume
// breaks down is never answered "aborted" while the process may run.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/procmig/migrate/transport"
)

// HandoffVersion is the version of the handoff protocol this side speaks.
const HandoffVersion = 1

// Phases of the handoff, as HandoffError.Phase names them.
const (
	PhaseHello   = "hello"   // waiting for and checking the source's Hello
	PhasePrepare = "prepare" // creating the husk
	PhaseRounds  = "rounds"  // layouts and rounds of pages, the freeze
	PhaseRestore = "restore" // the final restore
	PhaseReady   = "ready"   // restored, waiting for the commit
	PhaseResume  = "resume"  // resuming after the commit
)

// Defaults of HandoffConfig.
const (
	DefaultHelloTimeout  = 10 * time.Second
	DefaultCommitTimeout = 30 * time.Second
	DefaultLinger        = 2 * time.Second
)

// ControlConn is the control channel of one transport session, carrying
// transport control messages. Recv returns when a message arrives, the
// link fails, or ctx is done; after Send or Recv has failed the handoff
// only closes the conn. Close may be called while a Recv runs.
type ControlConn interface {
	Send(transport.Msg) error
	Recv(ctx context.Context) (transport.Msg, error)
	Close() error
}

// HandoffActions is the process work the handoff drives, from one
// goroutine.
type HandoffActions interface {
	// Prepare creates the stopped husk for the process hello announces;
	// it refuses a PID that is taken here (before the source freezes).
	Prepare(ctx context.Context, hello *transport.Hello) error
	// Layout lays out the memory of a round (the first, or one that
	// changed it).
	Layout(ctx context.Context, l *transport.Layout) error
	// RoundDone returns once every page of the round is in the husk.
	RoundDone(ctx context.Context, r *transport.RoundDone) error
	// Restore restores the rest of the process from its core state; it
	// stays stopped.
	Restore(ctx context.Context, st *transport.State) error
	// Resume lets the restored process run (detaches). Called at most
	// once, only after a Commit.
	Resume() error
	// Discard kills the husk, from whatever point the session reached
	// (Prepare may have failed half-way). Called at most once.
	Discard() error
}

// HandoffConfig configures the handling of one control connection. Zero
// durations take the defaults.
type HandoffConfig struct {
	// SessionID is the transport session's ID; a source's Hello must carry
	// it.
	SessionID     string
	HelloTimeout  time.Duration // for the first message
	CommitTimeout time.Duration // from Ready to Commit
	// Linger is how long, after the last message, to wait for the peer to
	// close the link (so that closing here cannot lose the message).
	Linger time.Duration
	Logger *slog.Logger
}

func (c HandoffConfig) withDefaults() HandoffConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HelloTimeout, DefaultHelloTimeout)
	def(&c.CommitTimeout, DefaultCommitTimeout)
	def(&c.Linger, DefaultLinger)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrPeerProtocol: the source sent a message the protocol does not allow
// where it came (out of order, duplicated, from the wrong role, for another
// session).
var ErrPeerProtocol = errors.New("the source broke the handoff protocol")

// ErrTimeout: the source did not send the next message in time.
var ErrTimeout = errors.New("the source did not send in time")

// ErrLinkLost: the control link to the source broke (closed, reset, or a
// message that does not decode).
var ErrLinkLost = errors.New("control link lost")

// ErrAbortedByQuery: a StatusQuery about the session came (on another
// connection) before its Commit, and aborted it.
var ErrAbortedByQuery = errors.New("a status query aborted the undecided session")

// HandoffResult says what a control connection was about and how it ended.
type HandoffResult struct {
	Session string // the session it concerned (for a query, the one asked about)
	// Query: the connection only asked about Session; Outcome is the
	// answer given.
	Query   bool
	Outcome transport.Outcome
}

// HandoffError: the session failed at Phase. With Outcome aborted the
// process never ran here and the husk is gone (unless Discard says
// otherwise); with Outcome committed the resume failed and the husk could
// not be killed: the process is in an unknown state here, and the source
// keeps its original frozen until an operator settles it.
type HandoffError struct {
	Session string
	Phase   string
	Outcome transport.Outcome
	Err     error
	Discard error // from Discard
}

func (e *HandoffError) Error() string {
	s := fmt.Sprintf("session %s failed (%s): %v", e.Session, e.Phase, e.Err)
	switch {
	case e.Outcome == transport.OutcomeCommitted:
		return s + fmt.Sprintf("; after the commit, and the husk could not be killed (%v): the process is in an unknown state on this host, its original is kept frozen on the source", e.Discard)
	case e.Discard != nil:
		return s + fmt.Sprintf("; discarding the husk failed (it never ran): %v", e.Discard)
	}
	return s
}

func (e *HandoffError) Unwrap() []error { return []error{e.Err, e.Discard} }

// PeerError is an Abort or an Error the source sent.
type PeerError struct {
	Abort bool   // an Abort; else an Error with Code
	Code  string // of an Error
	Text  string
}

func (e *PeerError) Error() string {
	if e.Abort {
		return "the source aborted: " + e.Text
	}
	return fmt.Sprintf("the source reported an error (%s): %s", e.Code, e.Text)
}

// Handoff serves one control connection, which it owns and closes before
// it returns. If the connection opens with a StatusQuery it answers from
// out (HandoffResult.Query), leaving act alone. If it opens with a Hello it
// receives that session, driving act, and records its outcome in out:
//
//   - OutcomeResumed, nil: the process runs here.
//   - OutcomeAborted, *HandoffError: the session failed before the process
//     ran; the husk is discarded.
//   - OutcomeCommitted, *HandoffError: the resume failed after the commit
//     and the husk could not be killed.
//
// Cancelling ctx aborts a session that has not committed; one that has
// goes on to resume.
func Handoff(ctx context.Context, cfg HandoffConfig, act HandoffActions, conn ControlConn, out *Outcomes) (HandoffResult, error) {
	defer conn.Close()
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("session", cfg.SessionID)
	res := HandoffResult{Session: cfg.SessionID}
	if !transport.ValidSessionID(cfg.SessionID) {
		return res, &HandoffError{Session: cfg.SessionID, Phase: PhaseHello,
			Err: fmt.Errorf("target: handoff: session ID %q is not 32 lower-case hex digits", cfg.SessionID)}
	}
	refuse := func(err error) (HandoffResult, error) {
		log.Warn("handoff: refused", "err", err)
		conn.Send(&transport.Abort{Reason: transport.ClipText("target: " + err.Error())}) // best effort
		return res, &HandoffError{Session: cfg.SessionID, Phase: PhaseHello, Err: err}
	}

	hctx, cancel := context.WithTimeoutCause(ctx, cfg.HelloTimeout, fmt.Errorf("%w: no hello within %v", ErrTimeout, cfg.HelloTimeout))
	m, err := conn.Recv(hctx)
	cancel()
	if err != nil {
		return res, &HandoffError{Session: cfg.SessionID, Phase: PhaseHello, Err: linkErr(hctx, err)}
	}
	switch m := m.(type) {
	case *transport.StatusQuery:
		res = HandoffResult{Session: m.SessionID, Query: true, Outcome: out.Query(m.SessionID)}
		log.Info("handoff: status query", "about", m.SessionID, "outcome", res.Outcome)
		if err := conn.Send(&transport.StatusReply{SessionID: m.SessionID, Outcome: res.Outcome}); err != nil {
			return res, fmt.Errorf("target: answering a status query: %w", err)
		}
		linger(ctx, conn, cfg.Linger)
		return res, nil
	case *transport.Hello:
		if err := checkHello(m, cfg.SessionID); err != nil {
			return refuse(err)
		}
	default:
		return refuse(unexpected(m, "hello or status-query"))
	}

	sctx, scancel := context.WithCancelCause(ctx)
	defer scancel(nil)
	if err := out.begin(cfg.SessionID, func() { scancel(ErrAbortedByQuery) }); err != nil {
		return refuse(fmt.Errorf("%w: %w", ErrPeerProtocol, err))
	}
	defer out.end(cfg.SessionID)
	t := &targetRun{cfg: cfg, act: act, conn: conn, out: out, log: log}
	res.Outcome, err = t.run(sctx, m.(*transport.Hello))
	return res, err
}

// targetRun is one session in progress.
type targetRun struct {
	cfg  HandoffConfig
	act  HandoffActions
	conn ControlConn
	out  *Outcomes
	log  *slog.Logger
	// acks: both ends speak FeatureRoundAcks.
	acks bool
}

func (t *targetRun) run(ctx context.Context, hello *transport.Hello) (transport.Outcome, error) {
	t.log.Info("handoff: incoming", "pid", hello.PID)
	if err := t.act.Prepare(ctx, hello); err != nil {
		return t.fail(ctx, PhasePrepare, err)
	}
	reply := &transport.Hello{Version: HandoffVersion, SessionID: t.cfg.SessionID, Role: transport.RoleTarget}
	if hello.HasFeature(transport.FeatureRoundAcks) {
		reply.Features = []string{transport.FeatureRoundAcks}
		t.acks = true
	}
	if err := t.send(reply); err != nil {
		return t.fail(ctx, PhaseHello, err)
	}
	st, phase, err := t.rounds(ctx)
	if err != nil {
		return t.fail(ctx, phase, err)
	}
	if err := t.act.Restore(ctx, st); err != nil {
		return t.fail(ctx, PhaseRestore, err)
	}
	if err := context.Cause(ctx); err != nil {
		return t.fail(ctx, PhaseRestore, err)
	}
	if err := t.send(&transport.Ready{}); err != nil {
		return t.fail(ctx, PhaseReady, err)
	}
	cctx, cancel := context.WithTimeoutCause(ctx, t.cfg.CommitTimeout, fmt.Errorf("%w: no commit within %v", ErrTimeout, t.cfg.CommitTimeout))
	m, err := t.conn.Recv(cctx)
	if err != nil {
		err = linkErr(cctx, err)
	}
	cancel()
	if err != nil {
		return t.fail(ctx, PhaseReady, err)
	}
	if _, ok := m.(*transport.Commit); !ok {
		return t.fail(ctx, PhaseReady, unexpected(m, "commit"))
	}
	return t.commit(ctx)
}

// rounds receives the layouts and rounds of pages, the freeze and the
// final round(s), up to the core state. Rounds are numbered from 0 and
// come in order; each may start with a Layout, the first must; after the
// Freeze at least one round must end before the State.
func (t *targetRun) rounds(ctx context.Context) (*transport.State, string, error) {
	var (
		next      uint32 // the round in progress
		hasLayout bool   // round next has its layout
		started   bool   // some round had a layout
		frozen    bool
		final     int // rounds done after the freeze
	)
	for {
		m, err := t.conn.Recv(ctx)
		if err != nil {
			return nil, PhaseRounds, linkErr(ctx, err)
		}
		switch m := m.(type) {
		case *transport.Layout:
			if m.Round != next || hasLayout {
				return nil, PhaseRounds, fmt.Errorf("%w: layout for round %d during round %d (layout already given: %v)", ErrPeerProtocol, m.Round, next, hasLayout)
			}
			if err := t.act.Layout(ctx, m); err != nil {
				return nil, PhaseRounds, err
			}
			hasLayout, started = true, true
		case *transport.RoundDone:
			if m.Round != next || !started {
				return nil, PhaseRounds, fmt.Errorf("%w: round %d done during round %d (layout seen: %v)", ErrPeerProtocol, m.Round, next, started)
			}
			if err := t.act.RoundDone(ctx, m); err != nil {
				return nil, PhaseRounds, err
			}
			if t.acks && !frozen {
				if err := t.send(&transport.RoundDone{Round: m.Round}); err != nil {
					return nil, PhaseRounds, err
				}
			}
			next++
			hasLayout = false
			if frozen {
				final++
			}
		case *transport.Freeze:
			if frozen {
				return nil, PhaseRounds, fmt.Errorf("%w: a second freeze", ErrPeerProtocol)
			}
			frozen = true
		case *transport.State:
			if !frozen || final == 0 {
				return nil, PhaseRounds, fmt.Errorf("%w: state before the freeze and its final round (frozen: %v, final rounds: %d)", ErrPeerProtocol, frozen, final)
			}
			return m, PhaseRestore, nil
		default:
			return nil, PhaseRounds, unexpected(m, "layout, round-done, freeze or state")
		}
	}
}

// commit resumes the process the source asked for. The source's link no
// longer matters, nor ctx.
func (t *targetRun) commit(ctx context.Context) (transport.Outcome, error) {
	if !t.out.commit(t.cfg.SessionID) {
		return t.fail(ctx, PhaseReady, fmt.Errorf("commit refused: %w", ErrAbortedByQuery))
	}
	t.log.Info("handoff: commit")
	if err := t.act.Resume(); err != nil {
		// The process may have started to run: kill it, and only then tell
		// the source (through Outcomes) that its original may run.
		t.log.Error("handoff: resume failed; killing the husk", "err", err)
		if derr := t.act.Discard(); derr != nil {
			t.conn.Send(&transport.Error{Code: "resume-failed", Text: transport.ClipText(err.Error())}) // best effort
			return transport.OutcomeCommitted, &HandoffError{Session: t.cfg.SessionID, Phase: PhaseResume,
				Outcome: transport.OutcomeCommitted, Err: err, Discard: derr}
		}
		t.out.settle(t.cfg.SessionID, transport.OutcomeAborted)
		t.conn.Send(&transport.Abort{Reason: transport.ClipText("target: resume failed, the husk is killed: " + err.Error())}) // best effort
		return transport.OutcomeAborted, &HandoffError{Session: t.cfg.SessionID, Phase: PhaseResume,
			Outcome: transport.OutcomeAborted, Err: err}
	}
	t.out.settle(t.cfg.SessionID, transport.OutcomeResumed)
	t.log.Info("handoff: resumed")
	resumed := &transport.Resumed{}
	if rb, ok := t.act.(interface{ ResumedBody() json.RawMessage }); ok {
		resumed.Body = rb.ResumedBody()
	}
	if err := t.send(resumed); err != nil {
		t.log.Warn("handoff: could not say resumed; the source will ask", "err", err)
		return transport.OutcomeResumed, nil
	}
	linger(ctx, t.conn, t.cfg.Linger)
	return transport.OutcomeResumed, nil
}

// fail ends a session before its commit: recorded aborted, the source
// told, the husk discarded.
func (t *targetRun) fail(ctx context.Context, phase string, cause error) (transport.Outcome, error) {
	if c := context.Cause(ctx); c != nil && !errors.Is(cause, c) {
		cause = fmt.Errorf("%w (%v)", c, cause)
	}
	if !t.out.abort(t.cfg.SessionID) {
		// Unreachable: fail runs only before the commit is recorded. Were
		// it reached, the process may run: it must not be discarded.
		t.log.Error("handoff: BUG: failure after the commit was recorded", "phase", phase, "err", cause)
		return transport.OutcomeCommitted, &HandoffError{Session: t.cfg.SessionID, Phase: phase,
			Outcome: transport.OutcomeCommitted, Err: cause}
	}
	t.log.Warn("handoff: aborted; discarding the husk", "phase", phase, "err", cause)
	t.conn.Send(&transport.Abort{Reason: transport.ClipText(fmt.Sprintf("target: %s: %v", phase, cause))}) // best effort
	derr := t.act.Discard()
	if derr != nil {
		t.log.Error("handoff: discarding the husk failed", "err", derr)
	}
	return transport.OutcomeAborted, &HandoffError{Session: t.cfg.SessionID, Phase: phase,
		Outcome: transport.OutcomeAborted, Err: cause, Discard: derr}
}

func (t *targetRun) send(m transport.Msg) error {
	if err := t.conn.Send(m); err != nil {
		return fmt.Errorf("sending %v: %w", m.MsgType(), err)
	}
	return nil
}

// linger waits up to d for the peer to close the link after our last
// message, discarding anything it sends.
func linger(ctx context.Context, conn ControlConn, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if _, err := conn.Recv(ctx); err != nil {
			return
		}
	}
}

// linkErr describes a failed Recv: ctx's cause if it ended, else a lost
// link.
func linkErr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil {
		return c
	}
	return fmt.Errorf("%w: %w", ErrLinkLost, err)
}

func checkHello(h *transport.Hello, session string) error {
	switch {
	case h.Role != transport.RoleSource:
		return fmt.Errorf("%w: hello from a %q, want a source", ErrPeerProtocol, h.Role)
	case h.SessionID != session:
		return fmt.Errorf("%w: hello for session %s on session %s", ErrPeerProtocol, h.SessionID, session)
	case h.Version != HandoffVersion:
		return fmt.Errorf("%w: the source speaks handoff version %d, this side %d", ErrPeerProtocol, h.Version, HandoffVersion)
	case h.PID <= 0:
		return fmt.Errorf("%w: hello without a PID", ErrPeerProtocol)
	}
	return nil
}

// unexpected turns a message that should not have come into an error: a
// *PeerError for Abort and Error, else a protocol violation.
func unexpected(m transport.Msg, want string) error {
	switch m := m.(type) {
	case *transport.Abort:
		return &PeerError{Abort: true, Text: m.Reason}
	case *transport.Error:
		return &PeerError{Code: m.Code, Text: m.Text}
	}
	return fmt.Errorf("%w: %v while expecting %s", ErrPeerProtocol, m.MsgType(), want)
}

// The transport's control channel is what a live migration hands over.
var _ ControlConn = (*transport.Control)(nil)
