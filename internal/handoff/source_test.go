package handoff

// Unit tests of the source's handoff state machine. The target is a fake:
// a synchronous responder behind a fake control channel (fakeConn) that
// plays the protocol honestly, keeps its own record of the session's fate
// (resumed only on a commit; a status question decides an undecided
// session as aborted), and lets a fault plan drop, cut, fail, replace,
// duplicate, delay or reorder any one message in either direction. Every
// test runs in a synctest bubble: time is virtual, so the timeouts fire
// exactly when everything is stuck, and nothing sleeps.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/procmig/migrate/transport"
)

// fakeTarget is the target as the source sees it. Its methods run with
// the session conn's lock held, or (query) from a status conn.
type fakeTarget struct {
	rec *recorder

	mu      sync.Mutex
	began   bool
	state   transport.Outcome // unknown: undecided (or never began)
	phase   int               // tHello, tRounds, tReady, tResumed, tDone
	next    uint32
	layout  bool
	started bool
	frozen  bool
	final   int
	resumed int

	failOn   transport.MsgType // an action fails when this arrives: abort
	silent   bool              // never answers the hello
	onCommit func()            // runs when a commit is taken
	// The status service: forget answers unknown (restarted); committed
	// answers committed that many times first.
	forget    bool
	committed int
}

const (
	tHello = iota
	tRounds
	tReady
	tResumed
	tDone
)

// recv takes one message from the source; it returns the replies and
// whether the target then closes the link.
func (t *fakeTarget) recv(m transport.Msg) ([]transport.Msg, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.phase == tDone || t.phase == tResumed {
		return nil, false // gone, or lingering
	}
	switch m.(type) {
	case *transport.Abort, *transport.Error:
		t.end()
		return nil, true
	}
	if m.MsgType() == t.failOn {
		return t.abort("an action failed")
	}
	switch t.phase {
	case tHello:
		h, ok := m.(*transport.Hello)
		if !ok || h.Role != transport.RoleSource || h.SessionID != testSession || h.PID != 42 {
			return t.abort("bad hello")
		}
		t.began, t.phase = true, tRounds
		if t.silent {
			return nil, false
		}
		return []transport.Msg{&transport.Hello{Version: Version, SessionID: testSession, Role: transport.RoleTarget}}, false
	case tRounds:
		switch m := m.(type) {
		case *transport.Layout:
			if m.Round != t.next || t.layout {
				return t.abort("layout out of order")
			}
			t.layout, t.started = true, true
		case *transport.RoundDone:
			if m.Round != t.next || !t.started {
				return t.abort("round out of order")
			}
			t.next++
			t.layout = false
			if t.frozen {
				t.final++
			}
		case *transport.Freeze:
			if t.frozen {
				return t.abort("second freeze")
			}
			t.frozen = true
		case *transport.State:
			if !t.frozen || t.final == 0 {
				return t.abort("state too early")
			}
			t.phase = tReady
			return []transport.Msg{&transport.Ready{}}, false
		default:
			return t.abort("unexpected")
		}
		return nil, false
	case tReady:
		c, ok := m.(*transport.Commit)
		if !ok {
			return t.abort("unexpected")
		}
		if t.state != transport.OutcomeUnknown {
			return t.abort("already aborted") // a question decided it
		}
		if t.onCommit != nil {
			t.onCommit()
		}
		t.state, t.phase = transport.OutcomeResumed, tResumed
		t.resumed++
		t.rec.add("target resumed")
		return []transport.Msg{&transport.Resumed{Nonce: c.Nonce}}, false
	}
	panic("unreachable")
}

// abort: an action failed or the source broke the protocol.
// Preconditions: t.mu is held.
func (t *fakeTarget) abort(reason string) ([]transport.Msg, bool) {
	t.end()
	return []transport.Msg{&transport.Abort{Reason: reason}}, true
}

func (t *fakeTarget) end() {
	if t.state == transport.OutcomeUnknown && t.began {
		t.state = transport.OutcomeAborted
		t.rec.add("target aborted")
	}
	if t.phase != tResumed {
		t.phase = tDone
	}
}

// linkLost: the session's link broke.
func (t *fakeTarget) linkLost() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.end()
}

// sendFailed: sending m to the source failed; the real target gives up if
// it has not committed.
func (t *fakeTarget) sendFailed(m transport.Msg) ([]transport.Msg, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.phase == tResumed || t.phase == tDone {
		return nil, false
	}
	return t.abort("send failed")
}

// query answers a StatusQuery.
func (t *fakeTarget) query(id string) transport.Outcome {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.forget || !t.began || id != testSession {
		return transport.OutcomeUnknown
	}
	if t.committed > 0 && t.state == transport.OutcomeResumed {
		t.committed--
		return transport.OutcomeCommitted
	}
	if t.state == transport.OutcomeUnknown {
		t.state = transport.OutcomeAborted // the question decides it
		t.rec.add("target aborted")
		t.phase = tDone
	}
	return t.state
}

// fakeConn is the source's control channel to a fakeTarget.
type fakeConn struct {
	tg   *fakeTarget
	rec  *recorder
	plan *plan

	mu     sync.Mutex
	inbox  []transport.Msg // to the source
	notify chan struct{}
	down   chan struct{}
	closed bool
	held   map[transport.Role]transport.Msg
}

func newFakeConn(tg *fakeTarget, rec *recorder, p *plan) *fakeConn {
	return &fakeConn{tg: tg, rec: rec, plan: p, notify: make(chan struct{}, 1), down: make(chan struct{}),
		held: make(map[transport.Role]transport.Msg)}
}

func (c *fakeConn) Send(m transport.Msg) error {
	m = roundTrip(m)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errDown
	}
	c.rec.add("src→ %v", m.MsgType())
	held := c.held[transport.RoleSource]
	delete(c.held, transport.RoleSource)
	defer func() {
		if held != nil {
			c.toTarget(held)
		}
	}()
	return inject(wire{
		deliver: c.toTarget,
		cut:     c.closeLocked,
		hold:    func(m transport.Msg) { c.held[transport.RoleSource] = m },
		mu:      &c.mu, down: c.down,
	}, c.plan.take(transport.RoleSource, m.MsgType()), m)
}

// toTarget hands m to the target and routes its replies.
// Preconditions: c.mu is held.
func (c *fakeConn) toTarget(m transport.Msg) {
	if c.closed {
		return
	}
	replies, closeAfter := c.tg.recv(m)
	for _, r := range replies {
		c.fromTarget(r)
	}
	if closeAfter {
		c.closeLocked()
	}
}

// fromTarget delivers what the target sends, through the fault plan.
// Preconditions: c.mu is held.
func (c *fakeConn) fromTarget(m transport.Msg) {
	if c.closed {
		return
	}
	held := c.held[transport.RoleTarget]
	delete(c.held, transport.RoleTarget)
	defer func() {
		if held != nil {
			c.push(held)
		}
	}()
	err := inject(wire{
		deliver: c.push,
		cut:     c.closeLocked,
		hold:    func(m transport.Msg) { c.held[transport.RoleTarget] = m },
		mu:      &c.mu, down: c.down,
	}, c.plan.take(transport.RoleTarget, m.MsgType()), m)
	if err != nil {
		// The target's send failed: the real target gives up.
		replies, closeAfter := c.tg.sendFailed(m)
		for _, r := range replies {
			c.fromTarget(r)
		}
		if closeAfter {
			c.closeLocked()
		}
	}
}

// push queues m for the source. Preconditions: c.mu is held.
func (c *fakeConn) push(m transport.Msg) {
	if c.closed {
		return
	}
	c.inbox = append(c.inbox, roundTrip(m))
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *fakeConn) Recv(ctx context.Context) (transport.Msg, error) {
	m, err := recvFrom(ctx, &c.mu, &c.inbox, &c.closed, c.notify, c.down)
	if err == nil {
		c.rec.add("src← %v", m.MsgType())
	}
	return m, err
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
	return nil
}

// Preconditions: c.mu is held.
func (c *fakeConn) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	close(c.down)
	c.tg.linkLost()
}

// statusFault breaks the status service.
type statusFault int

const (
	sOK           statusFault = iota
	sDialFails                // Redial fails
	sNoReply                  // the query gets no answer
	sErrorReply               // the target answers with an Error
	sWrongSession             // the reply is about another session
	sClosed                   // the link breaks before the reply
)

// statusConn is a fresh connection to the fake target's status service.
type statusConn struct {
	tg    *fakeTarget
	fault statusFault
	mu    sync.Mutex
	reply transport.Msg
	ready chan struct{}
	down  chan struct{}
	once  sync.Once
}

func (c *statusConn) Send(m transport.Msg) error {
	q, ok := roundTrip(m).(*transport.StatusQuery)
	if !ok {
		panic(fmt.Sprintf("status conn: %v", m.MsgType()))
	}
	var r transport.Msg
	switch c.fault {
	case sOK:
		r = &transport.StatusReply{SessionID: q.SessionID, Outcome: c.tg.query(q.SessionID)}
	case sNoReply:
		return nil
	case sErrorReply:
		r = &transport.Error{Code: "busy", Text: "try later"}
	case sWrongSession:
		r = &transport.StatusReply{SessionID: strings.Repeat("f", 32), Outcome: transport.OutcomeAborted}
	case sClosed:
		c.Close()
		return nil
	}
	c.mu.Lock()
	c.reply = roundTrip(r)
	c.mu.Unlock()
	close(c.ready)
	return nil
}

func (c *statusConn) Recv(ctx context.Context) (transport.Msg, error) {
	select {
	case <-c.ready:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reply, nil
	case <-c.down:
		return nil, errDown
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (c *statusConn) Close() error {
	c.once.Do(func() { close(c.down) })
	return nil
}

// rig is one source handoff against a fake target.
type rig struct {
	rec     *recorder
	tg      *fakeTarget
	act     *fakeActions
	plan    *plan
	cfg     SourceConfig
	status  func(attempt int) statusFault // nil: always sOK
	redials int
}

func newRig() *rig {
	rec := &recorder{}
	r := &rig{rec: rec, tg: &fakeTarget{rec: rec}, act: &fakeActions{rec: rec, rounds: 2}, plan: newPlan(nil)}
	r.cfg = SourceConfig{SessionID: testSession, PID: 42, Target: "b:7070", Redial: r.redial}
	return r
}

func (r *rig) redial(ctx context.Context) (Conn, error) {
	r.redials++
	f := sOK
	if r.status != nil {
		f = r.status(r.redials)
	}
	r.rec.add("redial")
	if f == sDialFails {
		return nil, errInjected
	}
	return &statusConn{tg: r.tg, fault: f, ready: make(chan struct{}), down: make(chan struct{})}, nil
}

func (r *rig) run(ctx context.Context) (transport.Outcome, error) {
	return RunSource(ctx, r.cfg, r.act, newFakeConn(r.tg, r.rec, r.plan))
}

// checkInvariant asserts "never two copies, never none" over the logs:
// exactly one of the original and the target copy runs, or the handoff
// said, with an *UndecidedError, that the original is left frozen.
func (r *rig) checkInvariant(t *testing.T, out transport.Outcome, err error) {
	t.Helper()
	resumeOrig, kill, frozen := r.rec.count("ResumeOriginal"), r.rec.count("KillOriginal"), r.rec.count("LeaveFrozen")
	if resumeOrig > 1 || kill > 1 || frozen > 1 {
		t.Errorf("ResumeOriginal %d times, KillOriginal %d, LeaveFrozen %d: at most once each", resumeOrig, kill, frozen)
	}
	if kill > 0 && r.rec.index("KillOriginal") < r.rec.index("src→ commit") {
		t.Errorf("KillOriginal before the commit was sent")
	}
	if kill > 0 && r.rec.index("KillOriginal") < r.rec.index("target resumed") {
		t.Errorf("KillOriginal before the target resumed")
	}
	if r.tg.resumed > 1 {
		t.Errorf("the target resumed %d times", r.tg.resumed)
	}
	targetRuns := r.tg.resumed == 1
	switch out {
	case transport.OutcomeResumed:
		if !targetRuns || kill != 1 || resumeOrig != 0 {
			t.Errorf("outcome resumed: target runs %v, KillOriginal %d, ResumeOriginal %d; want true, 1, 0", targetRuns, kill, resumeOrig)
		}
		var ke *KillError
		if err != nil && !errors.As(err, &ke) {
			t.Errorf("outcome resumed with error %v", err)
		}
		if (ke != nil) != (frozen == 1) {
			t.Errorf("LeaveFrozen %d times, kill error %v", frozen, ke)
		}
	case transport.OutcomeAborted:
		var he *SourceError
		if !errors.As(err, &he) {
			t.Errorf("outcome aborted with error %v (%T), want a *SourceError", err, err)
		}
		if targetRuns || resumeOrig != 1 || kill != 0 || frozen != 0 {
			t.Errorf("outcome aborted: target runs %v, ResumeOriginal %d, KillOriginal %d, LeaveFrozen %d; want false, 1, 0, 0", targetRuns, resumeOrig, kill, frozen)
		}
	default:
		var ue *UndecidedError
		if !errors.As(err, &ue) {
			t.Errorf("outcome %v with error %v (%T), want an *UndecidedError", out, err, err)
		} else if ue.Session != testSession || ue.PID != 42 || !strings.Contains(ue.Error(), "migrate recover --to b:7070 --session "+testSession) {
			t.Errorf("undecided error lacks the operator's command: %v", ue)
		}
		if resumeOrig != 0 || kill != 0 || frozen != 1 {
			t.Errorf("undecided: ResumeOriginal %d, KillOriginal %d, LeaveFrozen %d; want 0, 0, 1", resumeOrig, kill, frozen)
		}
	}
	if t.Failed() {
		t.Logf("outcome %v, err %v", out, err)
		t.Logf("log: %s", strings.Join(r.rec.events(), " | "))
	}
}

func TestHandoffSourceHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig()
		start := time.Now()
		out, err := r.run(t.Context())
		if out != transport.OutcomeResumed || err != nil {
			t.Fatalf("got %v, %v; want resumed, nil", out, err)
		}
		r.checkInvariant(t, out, err)
		want := []string{
			"src→ hello", "src← hello", "PreCopy", "src→ layout", "src→ round-done", "src→ round-done",
			"Freeze", "src→ freeze", "FinalState", "src→ round-done", "src→ state", "src← ready",
			"src→ commit", "target resumed", "src← resumed", "KillOriginal",
		}
		if got := r.rec.events(); !slices.Equal(got, want) {
			t.Errorf("log\n got %q\nwant %q", got, want)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("the happy path took %v of virtual time, want 0: something waited for a timeout", d)
		}
		if r.redials != 0 {
			t.Errorf("%d redials on the happy path", r.redials)
		}
	})
}

// happyTranscript is every message of a clean handoff, by sender.
func happyTranscript(t *testing.T) []msgKey {
	var keys []msgKey
	synctest.Test(t, func(t *testing.T) {
		r := newRig()
		if out, err := r.run(t.Context()); out != transport.OutcomeResumed || err != nil {
			t.Fatalf("clean run: %v, %v", out, err)
		}
		keys = transcript(r.rec, "src← ")
	})
	return keys
}

// wantSourceOutcome is where the process must end up after fault f on
// message k, against an honest target.
func wantSourceOutcome(k msgKey, f faultKind) transport.Outcome {
	switch k.typ {
	case transport.TypeResumed:
		// The target resumed before it said so: whatever becomes of the
		// word, the source learns it by asking.
		return transport.OutcomeResumed
	case transport.TypeCommit:
		switch f {
		case fCloseAfter, fErrDelivered, fDuplicate:
			return transport.OutcomeResumed // the commit arrived
		}
		return transport.OutcomeAborted // it never did; the question decides
	case transport.TypeRoundDone:
		if k.nth == 1 && f == fHold {
			// The last live round ends after the Freeze instead of before:
			// the rounds still come in order and the final one still ends
			// before the State, so nothing is wrong.
			return transport.OutcomeResumed
		}
	case transport.TypeReady:
		if f == fDuplicate {
			// Ready, Ready, Resumed: the second Ready is out of place after
			// the commit, so the source asks, and learns "resumed".
			return transport.OutcomeResumed
		}
	}
	return transport.OutcomeAborted
}

// TestHandoffSourceMessageFaults drives every fault through every message
// of a clean handoff, in both directions.
func TestHandoffSourceMessageFaults(t *testing.T) {
	keys := happyTranscript(t)
	if len(keys) != 11 {
		t.Fatalf("transcript %v: want 11 messages", keys)
	}
	for _, k := range keys {
		for _, f := range allFaults {
			t.Run(fmt.Sprintf("%v/%v", k, f), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					r := newRig()
					r.plan = newPlan(map[msgKey]faultKind{k: f})
					start := time.Now()
					out, err := r.run(t.Context())
					r.checkInvariant(t, out, err)
					if want := wantSourceOutcome(k, f); out != want {
						t.Errorf("outcome %v (%v), want %v\nlog: %s", out, err, want, strings.Join(r.rec.events(), " | "))
					}
					limit := r.cfg.withDefaults()
					if d := time.Since(start); d > limit.HelloTimeout+limit.ReadyTimeout+limit.ResumedTimeout+limit.RecoverTimeout {
						t.Errorf("took %v of virtual time", d)
					}
				})
			})
		}
	}
}

// TestHandoffSourceActionFailures fails each action of the source in turn
// (a crash point), and each action of the target.
func TestHandoffSourceActionFailures(t *testing.T) {
	for _, name := range []string{"PreCopy", "Freeze", "FinalState"} {
		t.Run("source-"+name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				r.act.fail = map[string]error{name: errInjected}
				out, err := r.run(t.Context())
				r.checkInvariant(t, out, err)
				var he *SourceError
				if out != transport.OutcomeAborted || !errors.As(err, &he) || !errors.Is(err, errInjected) {
					t.Fatalf("got %v, %v; want aborted with the injected error", out, err)
				}
				if r.tg.state != transport.OutcomeAborted {
					t.Errorf("target %v, want aborted (told by the Abort)", r.tg.state)
				}
				if r.rec.count("src→ abort") != 1 {
					t.Errorf("Abort sent %d times, want 1", r.rec.count("src→ abort"))
				}
			})
		})
	}
	for _, typ := range []transport.MsgType{transport.TypeHello, transport.TypeLayout, transport.TypeRoundDone,
		transport.TypeFreeze, transport.TypeState, transport.TypeCommit} {
		t.Run("target-on-"+typ.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				r.tg.failOn = typ
				out, err := r.run(t.Context())
				r.checkInvariant(t, out, err)
				if out != transport.OutcomeAborted {
					t.Fatalf("got %v, %v; want aborted", out, err)
				}
				var pe *PeerError
				if typ != transport.TypeCommit && !errors.As(err, &pe) {
					t.Errorf("error %v does not carry the target's Abort", err)
				}
			})
		})
	}
	t.Run("rollback-fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.act.fail = map[string]error{"Freeze": errInjected, "ResumeOriginal": errDown}
			out, err := r.run(t.Context())
			var he *SourceError
			if out != transport.OutcomeAborted || !errors.As(err, &he) || !errors.Is(he.Rollback, errDown) {
				t.Fatalf("got %v, %v; want aborted with the rollback's error", out, err)
			}
		})
	})
	t.Run("kill-fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.act.fail = map[string]error{"KillOriginal": errInjected}
			out, err := r.run(t.Context())
			r.checkInvariant(t, out, err)
			var ke *KillError
			if out != transport.OutcomeResumed || !errors.As(err, &ke) || ke.PID != 42 {
				t.Fatalf("got %v, %v; want resumed with a *KillError", out, err)
			}
		})
	})
	t.Run("leave-frozen-fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.plan = newPlan(map[msgKey]faultKind{msgKey{transport.RoleTarget, transport.TypeResumed, 0}: fDrop})
			r.status = func(int) statusFault { return sDialFails }
			r.act.fail = map[string]error{"LeaveFrozen": errInjected}
			out, err := r.run(t.Context())
			r.checkInvariant(t, out, err)
			var ue *UndecidedError
			if !errors.As(err, &ue) || !errors.Is(ue.Freeze, errInjected) {
				t.Fatalf("got %v, %v; want undecided with the freeze's error", out, err)
			}
		})
	})
}

// TestHandoffSourceTargetAbortsDuringPreCopy: an Abort that arrives while
// the pre-copy runs cancels it at once, before anything is frozen.
func TestHandoffSourceTargetAbortsDuringPreCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig()
		r.tg.failOn = transport.TypeRoundDone
		r.act.preCopy = func(ctx context.Context, rd *Rounds) error {
			if err := rd.Layout(json.RawMessage(`{}`)); err != nil {
				return err
			}
			if err := rd.Done(nil); err != nil {
				return err // the link may already be closed
			}
			<-ctx.Done() // a long round, cut short
			return context.Cause(ctx)
		}
		out, err := r.run(t.Context())
		r.checkInvariant(t, out, err)
		var he *SourceError
		var pe *PeerError
		if out != transport.OutcomeAborted || !errors.As(err, &he) || he.Phase != PhasePreCopy || !errors.As(err, &pe) || !pe.Abort {
			t.Fatalf("got %v, %v; want aborted in pre-copy by the target's Abort", out, err)
		}
		if r.rec.count("Freeze") != 0 {
			t.Errorf("froze after the target aborted")
		}
	})
}

// TestHandoffSourceTargetAbortsPagesLost: the target refuses a layout and
// closes the link; the source's next write on the pages stream fails with
// the link lost before the reader has delivered the Abort. The error the
// operator gets is still the target's reason.
func TestHandoffSourceTargetAbortsPagesLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig()
		r.tg.failOn = transport.TypeLayout
		r.act.preCopy = func(ctx context.Context, rd *Rounds) error {
			if err := rd.Layout(json.RawMessage(`{}`)); err != nil {
				return err
			}
			return fmt.Errorf("write the page stream: %w: broken pipe", transport.ErrPeerGone)
		}
		out, err := r.run(t.Context())
		r.checkInvariant(t, out, err)
		var pe *PeerError
		if out != transport.OutcomeAborted || !errors.As(err, &pe) || !pe.Abort {
			t.Fatalf("got %v, %v; want aborted with the target's Abort", out, err)
		}
	})
}

// TestHandoffSourceTimeouts: a target that goes silent (the link up) is
// given up on at each wait.
func TestHandoffSourceTimeouts(t *testing.T) {
	t.Run("hello", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.tg.silent = true
			start := time.Now()
			out, err := r.run(t.Context())
			r.checkInvariant(t, out, err)
			var he *SourceError
			if !errors.As(err, &he) || he.Phase != PhaseHello || !errors.Is(err, ErrTimeout) {
				t.Fatalf("got %v, %v; want a hello timeout", out, err)
			}
			if d := time.Since(start); d != DefaultHelloTimeout {
				t.Errorf("gave up after %v, want %v", d, DefaultHelloTimeout)
			}
		})
	})
	t.Run("ready", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.plan = newPlan(map[msgKey]faultKind{msgKey{transport.RoleTarget, transport.TypeReady, 0}: fDrop})
			r.cfg.ReadyTimeout = 3 * time.Second
			start := time.Now()
			out, err := r.run(t.Context())
			r.checkInvariant(t, out, err)
			var he *SourceError
			if !errors.As(err, &he) || he.Phase != PhaseReady || !errors.Is(err, ErrTimeout) {
				t.Fatalf("got %v, %v; want a ready timeout", out, err)
			}
			if d := time.Since(start); d != 3*time.Second {
				t.Errorf("gave up after %v, want 3s", d)
			}
		})
	})
}

// TestHandoffSourceCancel: cancelling ctx before the commit rolls back;
// after it, the handoff finishes.
func TestHandoffSourceCancel(t *testing.T) {
	for _, at := range []string{"PreCopy", "Freeze", "FinalState"} {
		t.Run("before-"+at, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				ctx, cancel := context.WithCancelCause(t.Context())
				defer cancel(nil)
				stop := errors.New("operator pressed ctrl-c")
				switch at {
				case "PreCopy":
					r.act.preCopy = func(ctx context.Context, rd *Rounds) error {
						cancel(stop)
						if err := rd.Layout(json.RawMessage(`{}`)); err != nil {
							return err
						}
						return rd.Done(nil)
					}
				case "Freeze":
					r.act.preCopy = func(ctx context.Context, rd *Rounds) error {
						if err := rd.Layout(json.RawMessage(`{}`)); err != nil {
							return err
						}
						err := rd.Done(nil)
						cancel(stop)
						return err
					}
				case "FinalState":
					r.act.finalState = func(ctx context.Context, rd *Rounds) (json.RawMessage, error) {
						rd.Done(nil)
						cancel(stop)
						return json.RawMessage(`{}`), nil
					}
				}
				out, err := r.run(ctx)
				r.checkInvariant(t, out, err)
				if out != transport.OutcomeAborted || !errors.Is(err, stop) {
					t.Fatalf("got %v, %v; want aborted because of the cancel", out, err)
				}
			})
		})
	}
	t.Run("after-commit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			r.tg.onCommit = cancel
			out, err := r.run(ctx)
			r.checkInvariant(t, out, err)
			if out != transport.OutcomeResumed || err != nil {
				t.Fatalf("got %v, %v; want resumed despite the cancel after the commit", out, err)
			}
		})
	})
}

// TestHandoffSourceStatusQueries: after an uncertain commit, the source
// asks, and acts only on a final answer; without one it leaves the
// original frozen and says what the operator must run.
func TestHandoffSourceStatusQueries(t *testing.T) {
	type tc struct {
		name    string
		commit  faultKind // on the Commit (the target never gets it: aborted) ...
		resumed faultKind // ... or on the Resumed (the target runs it)
		status  func(attempt int) statusFault
		tweak   func(*rig)
		want    transport.Outcome
		last    transport.Outcome // of an undecided outcome
		errIs   error
		redials int // 0: do not check
	}
	failFirst := func(n int, f statusFault) func(int) statusFault {
		return func(a int) statusFault {
			if a <= n {
				return f
			}
			return sOK
		}
	}
	always := func(f statusFault) func(int) statusFault { return func(int) statusFault { return f } }
	cases := []tc{
		{name: "resumed/answer", resumed: fDrop, want: transport.OutcomeResumed, redials: 1},
		{name: "aborted/answer", commit: fDrop, want: transport.OutcomeAborted, redials: 1},
		{name: "resumed/dial-fails-3", resumed: fCloseBefore, status: failFirst(3, sDialFails), want: transport.OutcomeResumed, redials: 4},
		{name: "aborted/no-reply-2", commit: fCloseBefore, status: failFirst(2, sNoReply), want: transport.OutcomeAborted, redials: 3},
		{name: "resumed/error-reply", resumed: fDrop, status: failFirst(2, sErrorReply), want: transport.OutcomeResumed, redials: 3},
		{name: "resumed/wrong-session", resumed: fDrop, status: failFirst(1, sWrongSession), want: transport.OutcomeResumed, redials: 2},
		{name: "resumed/closed", resumed: fDrop, status: failFirst(1, sClosed), want: transport.OutcomeResumed, redials: 2},
		{name: "resumed/committed-first", resumed: fDrop, tweak: func(r *rig) { r.tg.committed = 3 }, want: transport.OutcomeResumed, redials: 4},
		{name: "unreachable", resumed: fDrop, status: always(sDialFails), want: transport.OutcomeUnknown, last: transport.OutcomeUnknown},
		{name: "unreachable-aborted", commit: fDrop, status: always(sNoReply), want: transport.OutcomeUnknown, last: transport.OutcomeUnknown},
		{name: "committed-forever", resumed: fDrop, tweak: func(r *rig) { r.tg.committed = 1 << 30 }, want: transport.OutcomeCommitted, last: transport.OutcomeCommitted},
		{name: "forgotten", resumed: fDrop, tweak: func(r *rig) { r.tg.forget = true }, want: transport.OutcomeUnknown, last: transport.OutcomeUnknown, errIs: ErrForgotten, redials: 1},
		{name: "no-redial", resumed: fDrop, tweak: func(r *rig) { r.cfg.Redial = nil }, want: transport.OutcomeUnknown, last: transport.OutcomeUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				if c.commit != 0 {
					r.plan = newPlan(map[msgKey]faultKind{msgKey{transport.RoleSource, transport.TypeCommit, 0}: c.commit})
				} else {
					r.plan = newPlan(map[msgKey]faultKind{msgKey{transport.RoleTarget, transport.TypeResumed, 0}: c.resumed})
				}
				r.status = c.status
				if c.tweak != nil {
					c.tweak(r)
				}
				start := time.Now()
				out, err := r.run(t.Context())
				r.checkInvariant(t, out, err)
				if out != c.want {
					t.Fatalf("got %v, %v; want %v", out, err, c.want)
				}
				var ue *UndecidedError
				if errors.As(err, &ue) && ue.Last != c.last {
					t.Errorf("undecided, last word %v, want %v", ue.Last, c.last)
				}
				if c.errIs != nil && !errors.Is(err, c.errIs) {
					t.Errorf("error %v, want %v", err, c.errIs)
				}
				if c.redials != 0 && r.redials != c.redials {
					t.Errorf("%d redials, want %d", r.redials, c.redials)
				}
				cfg := r.cfg.withDefaults()
				if d := time.Since(start); d > cfg.ResumedTimeout+cfg.RecoverTimeout {
					t.Errorf("took %v, more than ResumedTimeout + RecoverTimeout", d)
				}
			})
		})
	}
}

// TestHandoffSourceQueryBackoff: the questions back off, up to the cap,
// and stop at the deadline.
func TestHandoffSourceQueryBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var at []time.Duration
		start := time.Now()
		cfg := SourceConfig{SessionID: testSession, BackoffMin: time.Second, BackoffMax: 4 * time.Second, RecoverTimeout: 20 * time.Second,
			Redial: func(ctx context.Context) (Conn, error) {
				at = append(at, time.Since(start))
				return nil, errInjected
			}}
		out, err := QueryOutcome(t.Context(), cfg)
		if out != transport.OutcomeUnknown || !errors.Is(err, errInjected) {
			t.Fatalf("got %v, %v; want unknown with the last dial error", out, err)
		}
		want := []time.Duration{0, 1, 3, 7, 11, 15, 19}
		for i := range want {
			want[i] *= time.Second
		}
		if !slices.Equal(at, want) {
			t.Errorf("asked at %v, want %v", at, want)
		}
		if d := time.Since(start); d != 20*time.Second {
			t.Errorf("gave up after %v, want 20s", d)
		}
	})
}

// TestHandoffSourceProtocol: what the target says out of turn fails the
// handoff before the commit.
func TestHandoffSourceProtocol(t *testing.T) {
	hello := func(mod func(*transport.Hello)) transport.Msg {
		h := &transport.Hello{Version: Version, SessionID: testSession, Role: transport.RoleTarget}
		mod(h)
		return h
	}
	cases := []struct {
		name  string
		reply transport.Msg // instead of the target's Hello
	}{
		{"role", hello(func(h *transport.Hello) { h.Role = transport.RoleSource })},
		{"session", hello(func(h *transport.Hello) { h.SessionID = strings.Repeat("a", 32) })},
		{"version", hello(func(h *transport.Hello) { h.Version = Version + 1 })},
		{"ready", &transport.Ready{}},
		{"resumed", &transport.Resumed{}},
		{"status-reply", &transport.StatusReply{SessionID: testSession, Outcome: transport.OutcomeResumed}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				r.tg.silent = true
				conn := newFakeConn(r.tg, r.rec, r.plan)
				conn.mu.Lock()
				conn.push(c.reply)
				conn.mu.Unlock()
				out, err := RunSource(t.Context(), r.cfg, r.act, conn)
				r.checkInvariant(t, out, err)
				var he *SourceError
				if !errors.As(err, &he) || he.Phase != PhaseHello || !errors.Is(err, ErrPeerProtocol) {
					t.Fatalf("got %v, %v; want a protocol error at hello", out, err)
				}
			})
		})
	}
	t.Run("bad-config", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			r.cfg.SessionID = "nope"
			out, err := r.run(t.Context())
			r.checkInvariant(t, out, err)
			if out != transport.OutcomeAborted {
				t.Fatalf("got %v, %v", out, err)
			}
		})
	})
}

// TestHandoffSourceRoundsMisuse: the pre-copy code cannot announce rounds
// out of order.
func TestHandoffSourceRoundsMisuse(t *testing.T) {
	cases := map[string]func(ctx context.Context, r *Rounds) error{
		"done-before-layout": func(ctx context.Context, r *Rounds) error { return r.Done(nil) },
		"two-layouts": func(ctx context.Context, r *Rounds) error {
			r.Layout(json.RawMessage(`{}`))
			return r.Layout(json.RawMessage(`{}`))
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				r.act.preCopy = f
				out, err := r.run(t.Context())
				r.checkInvariant(t, out, err)
				if out != transport.OutcomeAborted {
					t.Fatalf("got %v, %v", out, err)
				}
			})
		})
	}
	for name, f := range map[string]func(ctx context.Context, r *Rounds) (json.RawMessage, error){
		"no-final-round": func(ctx context.Context, r *Rounds) (json.RawMessage, error) { return json.RawMessage(`{}`), nil },
		"empty-state": func(ctx context.Context, r *Rounds) (json.RawMessage, error) {
			return nil, r.Done(nil)
		},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig()
				r.act.finalState = f
				out, err := r.run(t.Context())
				r.checkInvariant(t, out, err)
				var he *SourceError
				if !errors.As(err, &he) || he.Phase != PhaseFinal {
					t.Fatalf("got %v, %v; want a failure in the final phase", out, err)
				}
			})
		})
	}
	t.Run("outside-phase", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig()
			var kept *Rounds
			r.act.preCopy = func(ctx context.Context, rd *Rounds) error {
				kept = rd
				rd.Layout(json.RawMessage(`{}`))
				return rd.Done(nil)
			}
			r.act.fail = map[string]error{}
			r.act.finalState = func(ctx context.Context, rd *Rounds) (json.RawMessage, error) {
				return json.RawMessage(`{}`), rd.Done(nil)
			}
			if _, err := r.run(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := kept.Done(nil); err == nil {
				t.Errorf("Rounds usable after the handoff")
			}
		})
	})
}

func TestHandoffSourceClipText(t *testing.T) {
	long := strings.Repeat("é", transport.MaxTextLen) + "\xff"
	got := transport.ClipText(long)
	if len(got) > transport.MaxTextLen || !utf8Valid(got) {
		t.Errorf("ClipText: %d bytes, valid %v", len(got), utf8Valid(got))
	}
	if _, err := transport.AppendMsg(nil, &transport.Abort{Reason: got}); err != nil {
		t.Error(err)
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "") == s }
