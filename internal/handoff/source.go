package handoff

// The handoff: the source's half of the migration protocol, as a state
// machine over a control channel. DESIGN.md, "never two copies, never
// none", is the rule it implements:
//
//	send Hello          ─►                      wait Hello      (HelloTimeout)
//	PreCopy: Layout/RoundDone per round ─►      (an Abort from the target
//	                                             cancels the pre-copy)
//	Freeze, send Freeze ─►
//	FinalState: final round ─►, send State ─►
//	                                        ◄─  wait Ready      (ReadyTimeout)
//	  ── point of no return: the Commit is attempted ──
//	send Commit         ─►                      wait Resumed    (ResumedTimeout)
//	KillOriginal
//
// Before the Commit is attempted every failure (an action's error, a
// broken or silent link, an Abort or Error from the target, a message out
// of place, ctx cancelled) ends the same way: Abort to the target (best
// effort), ResumeOriginal, and a *SourceError naming the phase. The
// target resumes only on a Commit, so nothing runs there.
//
// The Commit carries a random nonce that the target's Resumed gives back:
// a Resumed without it (sent before the target had the commit, by a
// broken or hostile target) is not the answer, and the target is asked
// instead. The order in which the source's reader happens to receive it
// cannot tell: a message sent before the commit may arrive after it.
//
// Once the Commit is attempted (even if Send failed: the bytes may have
// left), the source no longer decides anything. Anything but Resumed
// closes the link, and QueryOutcome asks the target, on fresh
// connections, what became of the session: resumed → KillOriginal;
// aborted → ResumeOriginal; anything else (unreachable, still "committed"
// at the deadline, or a target that no longer knows the session) →
// LeaveFrozen and an *UndecidedError that tells the operator what to run.
// The caller's ctx is not honoured after that point: cancelling cannot
// undo a commit, and giving up early only leaves the process frozen; the
// time is bounded by ResumedTimeout + RecoverTimeout instead.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/procmig/migrate/transport"
)

// Defaults of SourceConfig (and DefaultHelloTimeout).
const (
	DefaultReadyTimeout   = 60 * time.Second
	DefaultResumedTimeout = 10 * time.Second
	DefaultQueryTimeout   = 5 * time.Second
	DefaultRecoverTimeout = 2 * time.Minute
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
)

// SourceActions is the process work the handoff drives. Each method is
// called from one goroutine at a time.
type SourceActions interface {
	// PreCopy copies memory while the process runs, announcing each round
	// through r, until the rounds converge. ctx is cancelled (with the
	// reason as its cause) if the target gives up meanwhile.
	PreCopy(ctx context.Context, r *Rounds) error
	// Freeze stops every thread and takes the network lock.
	Freeze(ctx context.Context) error
	// FinalState sends the final round (announced through r: at least one
	// Done) and returns the core state for the target.
	// Preconditions: the process is frozen.
	FinalState(ctx context.Context, r *Rounds) (json.RawMessage, error)
	// ResumeOriginal undoes the migration from whatever point it reached
	// (lock dropped, tracking torn down, detached): the original runs on
	// as if nothing happened. It is called at most once.
	ResumeOriginal() error
	// KillOriginal kills the frozen original; the target runs the process.
	// It is called at most once, and only after the target said resumed.
	KillOriginal() error
	// LeaveFrozen makes the freeze outlast this process (the tracer may
	// exit: the process must stay stopped, the network lock in place), for
	// an operator to settle later with `migrate recover`. It is called at
	// most once, when the outcome of a commit cannot be learned (or the
	// original could not be killed).
	LeaveFrozen() error
}

// SourceConfig configures one handoff. Zero durations take the defaults.
type SourceConfig struct {
	// SessionID is the transport session's ID: the target must echo it.
	SessionID string
	PID       int    // the process being migrated
	Target    string // HOST:PORT of the target, for the operator's advice

	// Redial opens a fresh control channel to the same target, to ask it
	// what became of the session when the commit's outcome is uncertain.
	// Without it, an uncertain commit is left to the operator.
	Redial func(ctx context.Context) (Conn, error)

	HelloTimeout   time.Duration // for the target's Hello
	ReadyTimeout   time.Duration // from State to Ready: the target's restore
	ResumedTimeout time.Duration // from Commit to Resumed
	QueryTimeout   time.Duration // one status question: dial, ask, answer
	// RecoverTimeout bounds the whole search for the outcome of an
	// uncertain commit. It must stay well below the time the target
	// remembers outcomes (DefaultOutcomeTTL).
	RecoverTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between two questions.
	BackoffMin, BackoffMax time.Duration

	// PostCopy announces that the migration may end in post-copy
	// (transport.FeaturePostCopy); Rounds.PostCopy says whether the
	// target can.
	PostCopy bool
	// Container announces the process as a container's init
	// (transport.FeatureContainer).
	Container bool

	Logger *slog.Logger
}

func (c SourceConfig) withDefaults() SourceConfig {
	orDefault(&c.HelloTimeout, DefaultHelloTimeout)
	orDefault(&c.ReadyTimeout, DefaultReadyTimeout)
	orDefault(&c.ResumedTimeout, DefaultResumedTimeout)
	orDefault(&c.QueryTimeout, DefaultQueryTimeout)
	orDefault(&c.RecoverTimeout, DefaultRecoverTimeout)
	orDefault(&c.BackoffMin, DefaultBackoffMin)
	orDefault(&c.BackoffMax, DefaultBackoffMax)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c SourceConfig) check() error {
	if !transport.ValidSessionID(c.SessionID) {
		return fmt.Errorf("source: handoff: session ID %q is not 32 lower-case hex digits", c.SessionID)
	}
	if c.PID <= 0 || c.PID > transport.MaxPID {
		return fmt.Errorf("source: handoff: PID %d out of range", c.PID)
	}
	return nil
}

// ErrForgotten: the target answered that it does not know the session (it
// was restarted, or forgot it after its TTL): the outcome cannot be
// learned from it any more.
var ErrForgotten = errors.New("the target does not know the session")

// SourceError: the migration failed at Phase; the target never resumed the
// process, and the original runs on (unless Rollback says resuming it
// failed).
type SourceError struct {
	Session  string
	Phase    string
	Err      error
	Rollback error // from ResumeOriginal; nil: the original runs
}

func (e *SourceError) Error() string {
	s := fmt.Sprintf("migration failed (%s, session %s): %v", e.Phase, e.Session, e.Err)
	if e.Rollback != nil {
		return s + fmt.Sprintf("; and resuming the original failed, it may still be stopped: %v", e.Rollback)
	}
	return s + "; the original process runs on"
}

func (e *SourceError) Unwrap() []error { return []error{e.Err, e.Rollback} }

// UndecidedError: the commit was sent, and what the target did with it
// could not be learned. The original is left frozen (not resumed, not
// killed): resuming it could make two copies, killing it none.
type UndecidedError struct {
	Session string
	PID     int
	Target  string
	// Last is the last outcome the target reported: unknown if it was never
	// reached (or forgot the session), committed if it was still resuming.
	Last transport.Outcome
	Err  error // why the outcome is not known
	// Freeze is LeaveFrozen's error: the freeze may not outlast this
	// process.
	Freeze error
}

func (e *UndecidedError) Error() string {
	target := e.Target
	if target == "" {
		target = "HOST:PORT"
	}
	s := fmt.Sprintf("the commit of process %d (session %s) was sent but its outcome is unknown (target's last word: %v): %v. "+
		"The original is left frozen on this host: do not resume or kill it by hand; run `migrate recover --to %s --session %s`, "+
		"which asks the target and then kills or resumes it", e.PID, e.Session, e.Last, e.Err, target, e.Session)
	if e.Freeze != nil {
		s += fmt.Sprintf(" (warning: keeping it frozen failed: %v)", e.Freeze)
	}
	return s
}

func (e *UndecidedError) Unwrap() []error { return []error{e.Err, e.Freeze} }

// KillError: the process runs on the target, but the frozen original
// could not be killed. It is left frozen; it must be killed, never resumed.
type KillError struct {
	PID    int
	Err    error
	Freeze error // LeaveFrozen's error
}

func (e *KillError) Error() string {
	s := fmt.Sprintf("the process runs on the target, but killing the frozen original (pid %d) failed: %v; kill it (kill -KILL %d), never resume it", e.PID, e.Err, e.PID)
	if e.Freeze != nil {
		s += fmt.Sprintf(" (warning: keeping it frozen failed: %v)", e.Freeze)
	}
	return s
}

func (e *KillError) Unwrap() []error { return []error{e.Err, e.Freeze} }

// Rounds announces the rounds of pages to the target: a Layout when a
// round starts with a new layout (the first round must), and Done once
// every page of the round is on the page streams. Rounds are numbered
// from 0 across pre-copy and the final round. Not for concurrent use.
type Rounds struct {
	s       *sourceRun
	ctx     context.Context // of the phase: cancelled when the target gives up
	next    uint32
	layout  bool // a Layout was sent for round next
	started bool // a Layout was ever sent
	frozen  bool // the process is frozen: these are final rounds
	final   int  // rounds done while frozen
}

// PostCopy says whether the migration may end in post-copy: the source
// asked for it (SourceConfig.PostCopy) and the target can serve it.
func (r *Rounds) PostCopy() bool { return r.s.postCopy }

// SameVMAs says whether a later layout and the State may leave out the
// areas of a process that are those of the last layout naming it
// (LiveLayout.SameVMAs, LiveState.SameVMAs): the target fills them in.
func (r *Rounds) SameVMAs() bool { return r.s.sameVMAs }

// Round is the number of the round in progress (the one the next Done
// ends); page frames carry it.
func (r *Rounds) Round() uint32 { return r.next }

// Layout sends the layout of the round in progress. At most one per round,
// and the first round needs one.
func (r *Rounds) Layout(body json.RawMessage) error {
	if r.layout {
		return fmt.Errorf("source: handoff: a second layout for round %d", r.next)
	}
	if len(body) == 0 {
		return fmt.Errorf("source: handoff: empty layout for round %d", r.next)
	}
	if err := r.live(); err != nil {
		return err
	}
	if err := r.s.send(&transport.Layout{Round: r.next, Body: body}); err != nil {
		return err
	}
	r.layout, r.started = true, true
	return nil
}

// Done says every page of the round in progress has been sent; the next
// round begins.
func (r *Rounds) Done(body json.RawMessage) error {
	if !r.started {
		return fmt.Errorf("source: handoff: round %d done before any layout", r.next)
	}
	if err := r.live(); err != nil {
		return err
	}
	if err := r.s.send(&transport.RoundDone{Round: r.next, Body: body}); err != nil {
		return err
	}
	r.next++
	r.layout = false
	if r.frozen {
		r.final++
	}
	return nil
}

func (r *Rounds) live() error {
	if r.ctx == nil {
		return errors.New("source: handoff: rounds announced outside PreCopy or FinalState")
	}
	if err := context.Cause(r.ctx); err != nil {
		return err
	}
	return nil
}

// inbound is what the reader goroutine got from the conn.
type inbound struct {
	m   transport.Msg
	err error
}

// sourceRun is one handoff in progress.
type sourceRun struct {
	cfg  SourceConfig
	act  SourceActions
	conn Conn
	log  *slog.Logger

	// acks: the target answers pre-copy rounds (FeatureRoundAcks);
	// acked counts the rounds it answered.
	acks       bool
	acked      uint32
	postCopy   bool          // both ends speak FeaturePostCopy
	sameVMAs   bool          // both ends speak FeatureSameVMAs
	in         chan inbound  // from the reader
	dead       error         // the link failed (the reader has stopped)
	stopReader func()        // stops the reader and closes conn; idempotent
	readerDone chan struct{} // closed when the reader returns
}

// RunSource migrates the process cfg.PID to the target at the other end of
// conn, driving act, and says where the process ended up:
//
//   - OutcomeResumed, nil: it runs on the target; the original was killed.
//   - OutcomeResumed, *KillError: it runs on the target; the original is
//     frozen here and must be killed.
//   - OutcomeAborted, *SourceError: the migration failed, the original
//     runs on here (unless SourceError.Rollback says otherwise).
//   - OutcomeUnknown or OutcomeCommitted, *UndecidedError: the commit was
//     sent and its outcome could not be learned; the original is left
//     frozen for `migrate recover`.
//
// RunSource owns conn and closes it before it returns.
func RunSource(ctx context.Context, cfg SourceConfig, act SourceActions, conn Conn) (transport.Outcome, error) {
	cfg = cfg.withDefaults()
	s := &sourceRun{
		cfg:        cfg,
		act:        act,
		conn:       conn,
		log:        cfg.Logger.With("session", cfg.SessionID, "pid", cfg.PID),
		in:         make(chan inbound),
		readerDone: make(chan struct{}),
	}
	// The reader outlives ctx: after the commit ctx no longer counts.
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	var once sync.Once
	s.stopReader = func() {
		once.Do(func() {
			rcancel()
			s.conn.Close()
			<-s.readerDone
		})
	}
	go s.read(rctx)
	defer s.stopReader()

	if err := cfg.check(); err != nil {
		return s.rollback(PhaseHello, err)
	}

	// Hello, both ways.
	s.log.Debug("handoff: hello")
	features := []string{transport.FeatureRoundAcks, transport.FeatureSameVMAs}
	if cfg.PostCopy {
		features = append(features, transport.FeaturePostCopy)
	}
	if cfg.Container {
		features = append(features, transport.FeatureContainer)
	}
	if err := s.send(&transport.Hello{Version: Version, SessionID: cfg.SessionID, Role: transport.RoleSource, PID: cfg.PID,
		Features: features}); err != nil {
		return s.rollback(PhaseHello, err)
	}
	m, err := s.next(ctx, cfg.HelloTimeout, "hello")
	if err != nil {
		return s.rollback(PhaseHello, err)
	}
	h, ok := m.(*transport.Hello)
	if !ok {
		return s.rollback(PhaseHello, unexpected(transport.RoleTarget, m, "hello"))
	}
	if err := checkHello(h, transport.RoleTarget, cfg.SessionID); err != nil {
		return s.rollback(PhaseHello, err)
	}
	s.acks = h.HasFeature(transport.FeatureRoundAcks)
	s.postCopy = cfg.PostCopy && h.HasFeature(transport.FeaturePostCopy)
	s.sameVMAs = h.HasFeature(transport.FeatureSameVMAs)

	// Pre-copy, while the process runs.
	s.log.Debug("handoff: pre-copy")
	r := &Rounds{s: s}
	if err := s.watch(ctx, func(ctx context.Context) error {
		r.ctx = ctx
		defer func() { r.ctx = nil }()
		return act.PreCopy(ctx, r)
	}); err != nil {
		return s.rollback(PhasePreCopy, err)
	}
	// The target has every pre-copy page in place before the freeze: what
	// it has not applied yet would be applied in the downtime.
	if s.acks && r.next > 0 {
		if err := s.waitAcks(ctx, r.next-1); err != nil {
			return s.rollback(PhasePreCopy, err)
		}
	}

	// Freeze, final round, core state.
	s.log.Debug("handoff: freeze")
	if err := act.Freeze(ctx); err != nil {
		return s.rollback(PhaseFreeze, err)
	}
	if err := s.send(&transport.Freeze{}); err != nil {
		return s.rollback(PhaseFreeze, err)
	}
	var state json.RawMessage
	r.frozen = true
	if err := s.watch(ctx, func(ctx context.Context) error {
		r.ctx = ctx
		defer func() { r.ctx = nil }()
		var err error
		state, err = act.FinalState(ctx, r)
		return err
	}); err != nil {
		return s.rollback(PhaseFinal, err)
	}
	if r.final == 0 {
		return s.rollback(PhaseFinal, errors.New("source: handoff: the final round was not announced (no Rounds.Done after the freeze)"))
	}
	if len(state) == 0 {
		return s.rollback(PhaseFinal, errors.New("source: handoff: empty core state"))
	}
	if err := s.send(&transport.State{Body: state}); err != nil {
		return s.rollback(PhaseFinal, err)
	}
	if h, ok := act.(interface{ StateSent(context.Context) error }); ok {
		// The operator's post-dump hook (the target restores meanwhile).
		if err := h.StateSent(ctx); err != nil {
			return s.rollback(PhaseFinal, err)
		}
	}

	// The target restores.
	m, err = s.next(ctx, cfg.ReadyTimeout, "ready")
	if err != nil {
		return s.rollback(PhaseReady, err)
	}
	if _, ok := m.(*transport.Ready); !ok {
		return s.rollback(PhaseReady, unexpected(transport.RoleTarget, m, "ready"))
	}
	if h, ok := act.(interface{ GotReady(context.Context) error }); ok {
		// Whatever ran alongside the target's restore (the post-dump
		// hook) must have gone well.
		if err := h.GotReady(ctx); err != nil {
			return s.rollback(PhaseReady, err)
		}
	}
	if err := context.Cause(ctx); err != nil {
		return s.rollback(PhaseReady, err)
	}
	return s.commit(context.WithoutCancel(ctx))
}

// read delivers what the conn receives to s.in, until the conn fails or
// ctx ends.
func (s *sourceRun) read(ctx context.Context) {
	defer close(s.readerDone)
	for {
		m, err := s.conn.Recv(ctx)
		select {
		case s.in <- inbound{m, err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

func (s *sourceRun) send(m transport.Msg) error {
	if err := s.conn.Send(m); err != nil {
		return &sendError{typ: m.MsgType(), err: err}
	}
	return nil
}

// sendError: a message could not be sent. The target has often said why
// just before (an Abort, then it closed the link).
type sendError struct {
	typ transport.MsgType
	err error
}

func (e *sendError) Error() string { return fmt.Sprintf("sending %v: %v", e.typ, e.err) }
func (e *sendError) Unwrap() error { return e.err }

// lastWordGrace bounds the wait for the target's last word after a send
// failed.
const lastWordGrace = time.Second

// take records what the reader delivered: a message, or the link's end.
func (s *sourceRun) take(r inbound) (transport.Msg, error) {
	if r.err != nil {
		s.dead = fmt.Errorf("control link lost: %w", r.err)
		return nil, s.dead
	}
	return r.m, nil
}

// next waits up to d for the next message from the target.
func (s *sourceRun) next(ctx context.Context, d time.Duration, want string) (transport.Msg, error) {
	if s.dead != nil {
		return nil, s.dead
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case r := <-s.in:
			if s.isAck(r) {
				continue
			}
			return s.take(r)
		case <-t.C:
			return nil, fmt.Errorf("%w: no %s from the target within %v", ErrTimeout, want, d)
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// isAck takes a target's answer to a pre-copy round (FeatureRoundAcks).
// Preconditions: one goroutine at a time reads s.in.
func (s *sourceRun) isAck(r inbound) bool {
	rd, ok := r.m.(*transport.RoundDone)
	if r.err != nil || !ok || !s.acks {
		return false
	}
	if rd.Round+1 > s.acked {
		s.acked = rd.Round + 1
	}
	return true
}

// waitAcks waits until the target has answered round last.
func (s *sourceRun) waitAcks(ctx context.Context, last uint32) error {
	if s.acked > last {
		return nil
	}
	if s.dead != nil {
		return s.dead
	}
	t := time.NewTimer(s.cfg.ReadyTimeout)
	defer t.Stop()
	for s.acked <= last {
		select {
		case r := <-s.in:
			if s.isAck(r) {
				continue
			}
			m, err := s.take(r)
			if err != nil {
				return err
			}
			return unexpected(transport.RoleTarget, m, "the answer to round "+strconv.Itoa(int(last)))
		case <-t.C:
			return fmt.Errorf("%w: the target did not apply round %d within %v", ErrTimeout, last, s.cfg.ReadyTimeout)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// watch runs f while watching the link: anything the target sends
// meanwhile (it should send nothing) or the link's failure cancels f's
// context, and becomes the error.
func (s *sourceRun) watch(ctx context.Context, f func(context.Context) error) error {
	if s.dead != nil {
		return s.dead
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	got := make(chan *inbound, 1)
	go func() {
		for {
			select {
			case r := <-s.in:
				if s.isAck(r) {
					continue
				}
				if r.err != nil {
					cancel(fmt.Errorf("control link lost: %w", r.err))
				} else {
					cancel(unexpected(transport.RoleTarget, r.m, "nothing"))
				}
				got <- &r
			case <-stop:
				got <- nil
			}
			return
		}
	}()
	err := f(wctx)
	close(stop)
	if r := <-got; r != nil {
		m, lerr := s.take(*r)
		if lerr == nil {
			lerr = unexpected(transport.RoleTarget, m, "nothing")
		}
		return lerr // the target's word explains f's failure, or fails a success
	}
	return err
}

// rollback ends a handoff that failed before the commit: the target is
// told, the original resumes.
func (s *sourceRun) rollback(phase string, cause error) (transport.Outcome, error) {
	var se *sendError
	if (errors.As(cause, &se) || errors.Is(cause, transport.ErrPeerGone)) && s.dead == nil {
		// The link broke under a send (of a control message, or on the
		// pages stream): if the target aborted first, its reason is the
		// better explanation, and it is already on its way.
		if m, err := s.next(context.Background(), lastWordGrace, "the target's last word"); err == nil {
			var pe *PeerError
			if errors.As(unexpected(transport.RoleTarget, m, "nothing"), &pe) {
				cause = fmt.Errorf("%w (then %v)", pe, cause)
			}
		}
	}
	s.log.Warn("handoff: failed before the commit; resuming the original", "phase", phase, "err", cause)
	if s.dead == nil {
		s.conn.Send(&transport.Abort{Reason: transport.ClipText(fmt.Sprintf("source: %s: %v", phase, cause))}) // best effort
	}
	s.stopReader()
	rerr := s.act.ResumeOriginal()
	if rerr != nil {
		s.log.Error("handoff: resuming the original failed", "err", rerr)
	}
	return transport.OutcomeAborted, &SourceError{Session: s.cfg.SessionID, Phase: phase, Err: cause, Rollback: rerr}
}

// commit sends the commit and settles its outcome. From here on the
// source never decides: it learns.
func (s *sourceRun) commit(ctx context.Context) (transport.Outcome, error) {
	s.log.Debug("handoff: commit")
	if c, ok := s.act.(interface{ Committing() }); ok {
		c.Committing()
	}
	nonce := transport.NewSessionID()
	why := s.send(&transport.Commit{Nonce: nonce})
	if why == nil {
		m, err := s.next(ctx, s.cfg.ResumedTimeout, "resumed")
		r, ok := m.(*transport.Resumed)
		switch {
		case err != nil:
			why = err
		case !ok:
			why = unexpected(transport.RoleTarget, m, "resumed")
		case r.Nonce != nonce:
			// Not the answer to this commit: sent before the target had
			// it, by a broken or hostile target. The target is asked
			// instead.
			why = protocolErr(transport.RoleTarget, "a resumed that does not answer the commit (its nonce %q)", transport.ClipText(r.Nonce))
		default:
			s.stopReader()
			// Actions that want what the target measured get it.
			if rb, ok := s.act.(interface{ Resumed(json.RawMessage) }); ok && len(r.Body) > 0 {
				rb.Resumed(r.Body)
			}
			return s.killOriginal()
		}
	}
	s.log.Warn("handoff: outcome of the commit uncertain; asking the target", "err", why)
	s.stopReader() // every further word comes on a fresh connection
	out, err := QueryOutcome(ctx, s.cfg)
	switch out {
	case transport.OutcomeResumed:
		return s.killOriginal()
	case transport.OutcomeAborted:
		s.log.Warn("handoff: the target aborted after the commit; resuming the original")
		rerr := s.act.ResumeOriginal()
		return transport.OutcomeAborted, &SourceError{Session: s.cfg.SessionID, Phase: PhaseCommit,
			Err: fmt.Errorf("the target aborted the session after the commit was sent (%v)", why), Rollback: rerr}
	}
	ferr := s.act.LeaveFrozen()
	s.log.Error("handoff: outcome unknown; the original is left frozen", "err", err, "freeze", ferr)
	return out, &UndecidedError{Session: s.cfg.SessionID, PID: s.cfg.PID, Target: s.cfg.Target, Last: out,
		Err: fmt.Errorf("%w (after: %v)", err, why), Freeze: ferr}
}

// killOriginal ends a handoff whose target runs the process: once the
// target has every page (post-copy), the original is killed.
func (s *sourceRun) killOriginal() (transport.Outcome, error) {
	if pc, ok := s.act.(PostCopySource); ok {
		if err := pc.FinishPostCopy(); err != nil {
			ferr := s.act.LeaveFrozen()
			s.log.Error("handoff: post-copy did not finish; the process is lost, the original left frozen", "err", err, "freeze", ferr)
			return transport.OutcomeResumed, &PostCopyError{PID: s.cfg.PID, Session: s.cfg.SessionID, Err: err, Freeze: ferr}
		}
	}
	if err := s.act.KillOriginal(); err != nil {
		ferr := s.act.LeaveFrozen()
		return transport.OutcomeResumed, &KillError{PID: s.cfg.PID, Err: err, Freeze: ferr}
	}
	s.log.Debug("handoff: done; the process runs on the target")
	return transport.OutcomeResumed, nil
}

// QueryOutcome asks the target, on fresh connections from cfg.Redial, what
// became of session cfg.SessionID, retrying with backoff for up to
// cfg.RecoverTimeout while it cannot be reached or answers "committed"
// (still resuming). It returns resumed or aborted, which are final, with a
// nil error; or else the last answer (unknown, committed) and why no final
// one came. An answer "unknown" is final too (ErrForgotten): a target that
// sent Ready knew the session, so it has since forgotten it.
//
// It is how `migrate recover` learns what to do with a frozen original.
func QueryOutcome(ctx context.Context, cfg SourceConfig) (transport.Outcome, error) {
	cfg = cfg.withDefaults()
	if cfg.Redial == nil {
		return transport.OutcomeUnknown, errors.New("no way to reach the target again (no Redial)")
	}
	if !transport.ValidSessionID(cfg.SessionID) {
		return transport.OutcomeUnknown, fmt.Errorf("session ID %q is not 32 lower-case hex digits", cfg.SessionID)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.RecoverTimeout)
	defer cancel()
	last, wait := transport.OutcomeUnknown, cfg.BackoffMin
	var lastErr error
	for attempt := 1; ; attempt++ {
		out, err := askOnce(ctx, cfg)
		switch {
		case err != nil:
			lastErr = err
		case out == transport.OutcomeResumed, out == transport.OutcomeAborted:
			return out, nil
		case out == transport.OutcomeUnknown:
			return out, ErrForgotten
		default: // committed: resuming; ask again
			last, lastErr = out, errors.New("the target had the commit but had not confirmed the resume")
		}
		cfg.Logger.Debug("handoff: status query", "attempt", attempt, "outcome", out, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return last, fmt.Errorf("no final answer within %v, %d questions: %w", cfg.RecoverTimeout, attempt, lastErr)
		}
		wait = min(2*wait, cfg.BackoffMax)
	}
}

// askOnce asks once, on a new connection.
func askOnce(ctx context.Context, cfg SourceConfig) (transport.Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	c, err := cfg.Redial(ctx)
	if err != nil {
		return transport.OutcomeUnknown, fmt.Errorf("redial: %w", err)
	}
	defer c.Close()
	if err := c.Send(&transport.StatusQuery{SessionID: cfg.SessionID}); err != nil {
		return transport.OutcomeUnknown, fmt.Errorf("sending the status query: %w", err)
	}
	m, err := c.Recv(ctx)
	if err != nil {
		return transport.OutcomeUnknown, fmt.Errorf("waiting for the status reply: %w", err)
	}
	switch m := m.(type) {
	case *transport.StatusReply:
		if m.SessionID != cfg.SessionID {
			return transport.OutcomeUnknown, protocolErr(transport.RoleTarget, "status reply for session %s, asked about %s", m.SessionID, cfg.SessionID)
		}
		return m.Outcome, nil
	}
	return transport.OutcomeUnknown, unexpected(transport.RoleTarget, m, "status-reply")
}

// QueryFiles asks the target on conn, before the Hello of a migration on
// it (or on a connection of its own), what it sees at the paths of the
// files a process writes: query and the answer are internal/filesync's
// Query and Reply. It changes nothing on either side, and leaves conn
// open: RunSource may follow on it.
func QueryFiles(ctx context.Context, conn Conn, query json.RawMessage, timeout time.Duration) (json.RawMessage, error) {
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := conn.Send(&transport.FilesQuery{Body: query}); err != nil {
		return nil, fmt.Errorf("files query: %w", err)
	}
	m, err := conn.Recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("files query: %w", linkErr(ctx, err))
	}
	if r, ok := m.(*transport.FilesReply); ok {
		return r.Body, nil
	}
	return nil, fmt.Errorf("files query: %w", unexpected(transport.RoleTarget, m, "files-reply"))
}
