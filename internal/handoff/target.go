package handoff

// The handoff: the target's half of the migration protocol, as a state
// machine over one control connection. DESIGN.md, "never two copies, never
// none", is the rule it implements; the target's part of it is: resume
// only on a Commit, and remember what became of every session.
//
//	wait Hello (HelloTimeout) or StatusQuery → answer from Outcomes, done
//	  (or FilesQuery → answer with TargetConfig.Files, then wait the
//	  Hello again: done if the source closes instead)
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

// Defaults of TargetConfig (and DefaultHelloTimeout).
const (
	DefaultCommitTimeout = 30 * time.Second
	DefaultLinger        = 2 * time.Second
)

// TargetActions is the process work the handoff drives, from one
// goroutine.
type TargetActions interface {
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

// AfterResumer is TargetActions that has work left once the source was
// told of the resume (or could not be): what the resume kept that the
// running processes do not need, let go of off the downtime.
type AfterResumer interface {
	AfterResumed()
}

// TargetConfig configures the handling of one control connection. Zero
// durations take the defaults.
type TargetConfig struct {
	// SessionID is the transport session's ID; a source's Hello must carry
	// it.
	SessionID     string
	HelloTimeout  time.Duration // for the first message
	CommitTimeout time.Duration // from Ready to Commit
	// Linger is how long, after the last message, to wait for the peer to
	// close the link (so that closing here cannot lose the message).
	Linger time.Duration
	Logger *slog.Logger
	// Files answers a FilesQuery, which may open a connection (the
	// source asks, before a migration, what this host sees at the paths
	// of the files the process writes; its Hello may follow): the reply's
	// body, or an error sent back as an Error. Nil: such a connection is
	// refused.
	Files func(ctx context.Context, query json.RawMessage) (json.RawMessage, error)
}

func (c TargetConfig) withDefaults() TargetConfig {
	orDefault(&c.HelloTimeout, DefaultHelloTimeout)
	orDefault(&c.CommitTimeout, DefaultCommitTimeout)
	orDefault(&c.Linger, DefaultLinger)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrLinkLost: the control link to the source broke (closed, reset, or a
// message that does not decode).
var ErrLinkLost = errors.New("control link lost")

// ErrAbortedByQuery: a StatusQuery about the session came (on another
// connection) before its Commit, and aborted it.
var ErrAbortedByQuery = errors.New("a status query aborted the undecided session")

// TargetResult says what a control connection was about and how it ended.
type TargetResult struct {
	Session string // the session it concerned (for a query, the one asked about)
	// Query: the connection only asked about Session; Outcome is the
	// answer given.
	Query   bool
	Outcome transport.Outcome
	// Files: the connection only asked a FilesQuery (and the source
	// went no further).
	Files bool
}

// TargetError: the session failed at Phase. With Outcome aborted the
// process never ran here and the husk is gone (unless Discard says
// otherwise); with Outcome committed the resume failed and the husk could
// not be killed: the process is in an unknown state here, and the source
// keeps its original frozen until an operator settles it.
type TargetError struct {
	Session string
	Phase   string
	Outcome transport.Outcome
	Err     error
	Discard error // from Discard
}

func (e *TargetError) Error() string {
	s := fmt.Sprintf("session %s failed (%s): %v", e.Session, e.Phase, e.Err)
	switch {
	case e.Outcome == transport.OutcomeCommitted:
		return s + fmt.Sprintf("; after the commit, and the husk could not be killed (%v): the process is in an unknown state on this host, its original is kept frozen on the source", e.Discard)
	case e.Discard != nil:
		return s + fmt.Sprintf("; discarding the husk failed (it never ran): %v", e.Discard)
	}
	return s
}

func (e *TargetError) Unwrap() []error { return []error{e.Err, e.Discard} }

// RunTarget serves one control connection, which it owns and closes before
// it returns. If the connection opens with a StatusQuery it answers from
// out (TargetResult.Query), leaving act alone. If it opens with a Hello it
// receives that session, driving act, and records its outcome in out:
//
//   - OutcomeResumed, nil: the process runs here.
//   - OutcomeAborted, *TargetError: the session failed before the process
//     ran; the husk is discarded.
//   - OutcomeCommitted, *TargetError: the resume failed after the commit
//     and the husk could not be killed.
//
// Cancelling ctx aborts a session that has not committed; one that has
// goes on to resume.
func RunTarget(ctx context.Context, cfg TargetConfig, act TargetActions, conn Conn, out *Outcomes) (TargetResult, error) {
	defer conn.Close()
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("session", cfg.SessionID)
	res := TargetResult{Session: cfg.SessionID}
	if !transport.ValidSessionID(cfg.SessionID) {
		return res, &TargetError{Session: cfg.SessionID, Phase: PhaseHello,
			Err: fmt.Errorf("target: handoff: session ID %q is not 32 lower-case hex digits", cfg.SessionID)}
	}
	refuse := func(err error) (TargetResult, error) {
		log.Warn("handoff: refused", "err", err)
		conn.Send(&transport.Abort{Reason: transport.ClipText("target: " + err.Error())}) // best effort
		Linger(ctx, conn, cfg.Linger)
		return res, &TargetError{Session: cfg.SessionID, Phase: PhaseHello, Err: err}
	}

	var hello *transport.Hello
	for hello == nil {
		hctx, cancel := context.WithTimeoutCause(ctx, cfg.HelloTimeout, fmt.Errorf("%w: no hello from the source within %v", ErrTimeout, cfg.HelloTimeout))
		m, err := conn.Recv(hctx)
		cancel()
		if err != nil && res.Files {
			// It asked about files, and went no further (it refused).
			log.Debug("handoff: no migration after the files query", "err", err)
			return res, nil
		}
		if err != nil {
			return res, &TargetError{Session: cfg.SessionID, Phase: PhaseHello, Err: linkErr(hctx, err)}
		}
		switch m := m.(type) {
		case *transport.StatusQuery:
			if res.Files {
				return refuse(unexpected(transport.RoleSource, m, "hello"))
			}
			res = TargetResult{Session: m.SessionID, Query: true, Outcome: out.Query(m.SessionID)}
			log.Info("handoff: status query", "about", m.SessionID, "outcome", res.Outcome)
			if err := conn.Send(&transport.StatusReply{SessionID: m.SessionID, Outcome: res.Outcome}); err != nil {
				return res, fmt.Errorf("target: answering a status query: %w", err)
			}
			Linger(ctx, conn, cfg.Linger)
			return res, nil
		case *transport.FilesQuery:
			if res.Files {
				return refuse(protocolErr(transport.RoleSource, "a second files query"))
			}
			res.Files = true
			if cfg.Files == nil {
				return refuse(protocolErr(transport.RoleSource, "a files query, which this target does not answer"))
			}
			body, err := cfg.Files(ctx, m.Body)
			if err != nil {
				log.Warn("handoff: files query refused", "err", err)
				conn.Send(&transport.Error{Code: "files-query", Text: transport.ClipText(err.Error())}) // best effort
				return res, fmt.Errorf("target: files query: %w", err)
			}
			if err := conn.Send(&transport.FilesReply{Body: body}); err != nil {
				return res, fmt.Errorf("target: answering a files query: %w", err)
			}
			// The Hello may follow, on the same connection.
		case *transport.Hello:
			if err := checkHello(m, transport.RoleSource, cfg.SessionID); err != nil {
				return refuse(err)
			}
			if m.PID <= 0 {
				return refuse(protocolErr(transport.RoleSource, "hello without a PID"))
			}
			hello, res.Files = m, false
		default:
			return refuse(unexpected(transport.RoleSource, m, "hello, status-query or files-query"))
		}
	}

	sctx, scancel := context.WithCancelCause(ctx)
	defer scancel(nil)
	if err := out.begin(cfg.SessionID, func() { scancel(ErrAbortedByQuery) }); err != nil {
		return refuse(fmt.Errorf("%w by the source: %w", ErrPeerProtocol, err))
	}
	defer out.end(cfg.SessionID)
	t := &targetRun{cfg: cfg, act: act, conn: conn, out: out, log: log}
	var err error
	res.Outcome, err = t.run(sctx, hello)
	return res, err
}

// targetRun is one session in progress.
type targetRun struct {
	cfg  TargetConfig
	act  TargetActions
	conn Conn
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
	reply := &transport.Hello{Version: Version, SessionID: t.cfg.SessionID, Role: transport.RoleTarget}
	if hello.HasFeature(transport.FeatureRoundAcks) {
		reply.Features = []string{transport.FeatureRoundAcks}
		t.acks = true
	}
	if hello.HasFeature(transport.FeatureSameVMAs) {
		// The target actions fill the areas in (LiveLayout.SameVMAs).
		reply.Features = append(reply.Features, transport.FeatureSameVMAs)
	}
	if pc, ok := t.act.(PostCopyTarget); ok && hello.HasFeature(transport.FeaturePostCopy) && pc.PostCopyReady() {
		reply.Features = append(reply.Features, transport.FeaturePostCopy)
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
	cctx, cancel := context.WithTimeoutCause(ctx, t.cfg.CommitTimeout, fmt.Errorf("%w: no commit from the source within %v", ErrTimeout, t.cfg.CommitTimeout))
	m, err := t.conn.Recv(cctx)
	if err != nil {
		err = linkErr(cctx, err)
	}
	cancel()
	if err != nil {
		return t.fail(ctx, PhaseReady, err)
	}
	c, ok := m.(*transport.Commit)
	if !ok {
		return t.fail(ctx, PhaseReady, unexpected(transport.RoleSource, m, "commit"))
	}
	return t.commit(ctx, c.Nonce)
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
				return nil, PhaseRounds, protocolErr(transport.RoleSource, "layout for round %d during round %d (layout already given: %v)", m.Round, next, hasLayout)
			}
			if err := t.act.Layout(ctx, m); err != nil {
				return nil, PhaseRounds, err
			}
			hasLayout, started = true, true
		case *transport.RoundDone:
			if m.Round != next || !started {
				return nil, PhaseRounds, protocolErr(transport.RoleSource, "round %d done during round %d (layout seen: %v)", m.Round, next, started)
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
				return nil, PhaseRounds, protocolErr(transport.RoleSource, "a second freeze")
			}
			frozen = true
		case *transport.State:
			if !frozen || final == 0 {
				return nil, PhaseRounds, protocolErr(transport.RoleSource, "state before the freeze and its final round (frozen: %v, final rounds: %d)", frozen, final)
			}
			return m, PhaseRestore, nil
		default:
			return nil, PhaseRounds, unexpected(transport.RoleSource, m, "layout, round-done, freeze or state")
		}
	}
}

// commit resumes the process the source asked for. The source's link no
// longer matters, nor ctx.
func (t *targetRun) commit(ctx context.Context, nonce string) (transport.Outcome, error) {
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
			return transport.OutcomeCommitted, &TargetError{Session: t.cfg.SessionID, Phase: PhaseResume,
				Outcome: transport.OutcomeCommitted, Err: err, Discard: derr}
		}
		t.out.settle(t.cfg.SessionID, transport.OutcomeAborted)
		t.conn.Send(&transport.Abort{Reason: transport.ClipText("target: resume failed, the husk is killed: " + err.Error())}) // best effort
		Linger(ctx, t.conn, t.cfg.Linger)
		return transport.OutcomeAborted, &TargetError{Session: t.cfg.SessionID, Phase: PhaseResume,
			Outcome: transport.OutcomeAborted, Err: err}
	}
	t.out.settle(t.cfg.SessionID, transport.OutcomeResumed)
	t.log.Info("handoff: resumed")
	resumed := &transport.Resumed{Nonce: nonce}
	if rb, ok := t.act.(interface{ ResumedBody() json.RawMessage }); ok {
		resumed.Body = rb.ResumedBody()
	}
	err := t.send(resumed)
	if ar, ok := t.act.(AfterResumer); ok {
		ar.AfterResumed()
	}
	if err != nil {
		t.log.Warn("handoff: could not say resumed; the source will ask", "err", err)
		return transport.OutcomeResumed, nil
	}
	Linger(ctx, t.conn, t.cfg.Linger)
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
		return transport.OutcomeCommitted, &TargetError{Session: t.cfg.SessionID, Phase: phase,
			Outcome: transport.OutcomeCommitted, Err: cause}
	}
	t.log.Warn("handoff: aborted; discarding the husk", "phase", phase, "err", cause)
	t.conn.Send(&transport.Abort{Reason: transport.ClipText(fmt.Sprintf("target: %s: %v", phase, cause)), Code: abortCode(cause)}) // best effort
	derr := t.act.Discard()
	if derr != nil {
		t.log.Error("handoff: discarding the husk failed", "err", derr)
	}
	// Until the source has read the Abort and closed: a link closed at
	// once, with the source's pages still coming in unread, is reset by
	// the kernel, which drops what it had not sent yet, the Abort too, and
	// the source then knew only that the link was lost
	// (TestLiveCPUFeatureRefused saw it, 1 run in 10).
	Linger(ctx, t.conn, t.cfg.Linger)
	return transport.OutcomeAborted, &TargetError{Session: t.cfg.SessionID, Phase: phase,
		Outcome: transport.OutcomeAborted, Err: cause, Discard: derr}
}

func (t *targetRun) send(m transport.Msg) error {
	if err := t.conn.Send(m); err != nil {
		return fmt.Errorf("sending %v: %w", m.MsgType(), err)
	}
	return nil
}

// Linger waits up to d for the peer to close the link after our last
// message, discarding anything it sends.
func Linger(ctx context.Context, conn Conn, d time.Duration) {
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
