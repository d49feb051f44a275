package target_test

// Tests of the target's handoff state machine, driven by a test that plays
// the source over a fake link, and of both state machines together
// (source.Handoff against target.Handoff) with a fault injected at every
// message, every action and every status question. Every test runs in a
// synctest bubble: time is virtual, timeouts fire exactly when everything
// is stuck, and nothing sleeps.

import (
	"bytes"
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

	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

const sid = "0123456789abcdef0123456789abcdef"

var (
	errDown     = errors.New("fake link down")
	errInjected = errors.New("injected failure")
)

const lateBy = time.Hour // past every timeout

// recorder is the ordered log of what both sides did.
type recorder struct {
	mu sync.Mutex
	ev []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.ev = append(r.ev, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ev)
}

func (r *recorder) count(ev string) int {
	n := 0
	for _, e := range r.events() {
		if e == ev {
			n++
		}
	}
	return n
}

func (r *recorder) index(ev string) int { return slices.Index(r.events(), ev) }

func (r *recorder) String() string { return strings.Join(r.events(), " | ") }

// faultKind is what happens to one message.
type faultKind int

const (
	fDrop         faultKind = iota + 1 // lost; the link stays up
	fCloseBefore                       // the link breaks instead; Send fails
	fCloseAfter                        // delivered, then the link breaks
	fErrLost                           // Send fails, nothing delivered, the link stays up
	fErrDelivered                      // delivered, then the link breaks and Send fails
	fAbort                             // an Abort arrives instead
	fError                             // an Error arrives instead
	fDuplicate                         // delivered twice
	fLate                              // delivered after every timeout
	fHold                              // delivered after the next message the same way
)

var allFaults = []faultKind{fDrop, fCloseBefore, fCloseAfter, fErrLost, fErrDelivered, fAbort, fError, fDuplicate, fLate, fHold}

func (k faultKind) String() string {
	return [...]string{"none", "drop", "close-before", "close-after", "err-lost", "err-delivered",
		"abort-instead", "error-instead", "duplicate", "late", "reorder"}[k]
}

// msgKey names one message: the nth of its type sent by one role (counted
// over every link sharing a plan).
type msgKey struct {
	from transport.Role
	typ  transport.MsgType
	nth  int
}

func (k msgKey) String() string { return fmt.Sprintf("%s-%v-%d", k.from, k.typ, k.nth) }

// plan injects faults at chosen messages, and counts messages.
type plan struct {
	mu     sync.Mutex
	faults map[msgKey]faultKind
	seen   map[msgKey]int
}

func newPlan(faults map[msgKey]faultKind) *plan {
	return &plan{faults: faults, seen: make(map[msgKey]int)}
}

func (p *plan) take(from transport.Role, typ transport.MsgType) faultKind {
	p.mu.Lock()
	defer p.mu.Unlock()
	base := msgKey{from, typ, 0}
	k := msgKey{from, typ, p.seen[base]}
	p.seen[base]++
	return p.faults[k]
}

// roundTrip encodes and decodes m: what the code sends must be a valid
// frame.
func roundTrip(m transport.Msg) transport.Msg {
	b, err := transport.AppendMsg(nil, m)
	if err != nil {
		panic(fmt.Sprintf("the handoff sent an invalid %v: %v", m.MsgType(), err))
	}
	out, err := transport.ReadMsg(bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	return out
}

// link is an in-memory control link between a source end (0) and a
// target end (1), with faults. Messages sent before the link breaks are
// still received before the break is seen, as on a stream.
type link struct {
	rec  *recorder
	plan *plan

	mu     sync.Mutex
	closed bool
	down   chan struct{}
	box    [2][]transport.Msg // box[i]: to end i
	notify [2]chan struct{}
	held   [2]transport.Msg // held[i]: from end i, until its next message
}

var endNames = [2]string{"src", "tgt"}
var endRoles = [2]transport.Role{transport.RoleSource, transport.RoleTarget}

// end is one side of a link; it implements source.ControlConn and
// target.ControlConn.
type end struct {
	l *link
	i int
}

func newLink(rec *recorder, p *plan) (src, tgt *end) {
	if p == nil {
		p = newPlan(nil)
	}
	l := &link{rec: rec, plan: p, down: make(chan struct{}),
		notify: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	return &end{l, 0}, &end{l, 1}
}

func (e *end) Send(m transport.Msg) error {
	m = roundTrip(m)
	l, to := e.l, 1-e.i
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errDown
	}
	l.rec.add("%s→ %v", endNames[e.i], m.MsgType())
	held := l.held[e.i]
	l.held[e.i] = nil
	defer func() {
		if held != nil {
			l.push(to, held)
		}
	}()
	switch l.plan.take(endRoles[e.i], m.MsgType()) {
	case 0:
		l.push(to, m)
	case fDrop:
	case fCloseBefore:
		l.closeLocked()
		return errDown
	case fCloseAfter:
		l.push(to, m)
		l.closeLocked()
	case fErrLost:
		return errInjected
	case fErrDelivered:
		l.push(to, m)
		l.closeLocked()
		return errInjected
	case fAbort:
		l.push(to, &transport.Abort{Reason: "injected"})
	case fError:
		l.push(to, &transport.Error{Code: "injected", Text: "injected"})
	case fDuplicate:
		l.push(to, m)
		l.push(to, m)
	case fLate:
		go func() {
			t := time.NewTimer(lateBy)
			defer t.Stop()
			select {
			case <-t.C:
				l.mu.Lock()
				l.push(to, m)
				l.mu.Unlock()
			case <-l.down:
			}
		}()
	case fHold:
		l.held[e.i] = m
	}
	return nil
}

// Preconditions: l.mu is held.
func (l *link) push(to int, m transport.Msg) {
	if l.closed {
		return
	}
	l.box[to] = append(l.box[to], roundTrip(m))
	select {
	case l.notify[to] <- struct{}{}:
	default:
	}
}

func (e *end) Recv(ctx context.Context) (transport.Msg, error) {
	l := e.l
	for {
		l.mu.Lock()
		if len(l.box[e.i]) > 0 {
			m := l.box[e.i][0]
			l.box[e.i] = l.box[e.i][1:]
			l.mu.Unlock()
			return m, nil
		}
		if l.closed {
			l.mu.Unlock()
			return nil, errDown
		}
		l.mu.Unlock()
		select {
		case <-l.notify[e.i]:
		case <-l.down:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

func (e *end) Close() error {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	e.l.closeLocked()
	return nil
}

// Preconditions: l.mu is held.
func (l *link) closeLocked() {
	if !l.closed {
		l.closed = true
		close(l.down)
	}
}

// tActions records the target's process work. An action with a gate
// waits for it to be closed (or for its ctx).
type tActions struct {
	rec  *recorder
	fail map[string]error
	gate map[string]chan struct{}
}

func (a *tActions) do(ctx context.Context, name string) error {
	a.rec.add("tgt %s", name)
	if g := a.gate[name]; g != nil {
		if ctx == nil {
			<-g
		} else {
			select {
			case <-g:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
	}
	return a.fail[name]
}

func (a *tActions) Prepare(ctx context.Context, h *transport.Hello) error {
	if h.PID != 42 || h.SessionID != sid {
		panic("Prepare got a bad hello")
	}
	return a.do(ctx, "Prepare")
}
func (a *tActions) Layout(ctx context.Context, l *transport.Layout) error {
	return a.do(ctx, "Layout")
}
func (a *tActions) RoundDone(ctx context.Context, r *transport.RoundDone) error {
	return a.do(ctx, "RoundDone")
}
func (a *tActions) Restore(ctx context.Context, st *transport.State) error {
	return a.do(ctx, "Restore")
}
func (a *tActions) Resume() error  { return a.do(nil, "Resume") }
func (a *tActions) Discard() error { return a.do(nil, "Discard") }

// Messages of a source.
func hello() *transport.Hello {
	return &transport.Hello{Version: 1, SessionID: sid, Role: transport.RoleSource, PID: 42}
}
func layout(r uint32) *transport.Layout {
	return &transport.Layout{Round: r, Body: json.RawMessage(`{"vmas":3}`)}
}
func done(r uint32) *transport.RoundDone { return &transport.RoundDone{Round: r} }

var (
	freeze = &transport.Freeze{}
	state  = &transport.State{Body: json.RawMessage(`{"regs":1}`)}
	commit = &transport.Commit{}
)

// step of a scripted source: send a message, or expect one.
type step struct {
	send   transport.Msg
	expect transport.MsgType
}

func snd(m transport.Msg) step       { return step{send: m} }
func exp(typ transport.MsgType) step { return step{expect: typ} }
func (s step) String() string {
	if s.send != nil {
		return "send-" + s.send.MsgType().String()
	}
	return "expect-" + s.expect.String()
}

// happyScript is a whole migration, as the source plays it.
var happyScript = []step{
	snd(hello()), exp(transport.TypeHello),
	snd(layout(0)), snd(done(0)), snd(done(1)), snd(freeze), snd(done(2)), snd(state), exp(transport.TypeReady),
	snd(commit), exp(transport.TypeResumed),
}

// trig runs target.Handoff against a scripted source.
type trig struct {
	rec  *recorder
	act  *tActions
	out  *target.Outcomes
	cfg  target.HandoffConfig
	plan *plan
	drv  *end // the source's end
	res  chan tresult
}

type tresult struct {
	res target.HandoffResult
	err error
}

func newTrig() *trig {
	rec := &recorder{}
	return &trig{rec: rec, act: &tActions{rec: rec}, out: target.NewOutcomes(0, nil), cfg: target.HandoffConfig{SessionID: sid}}
}

func (r *trig) start(ctx context.Context) {
	drv, tg := newLink(r.rec, r.plan)
	r.drv = drv
	r.res = make(chan tresult, 1)
	go func() {
		res, err := target.Handoff(ctx, r.cfg, r.act, tg, r.out)
		r.res <- tresult{res, err}
	}()
}

// play runs steps; it stops at the first one that fails and says which.
func (r *trig) play(steps []step) error {
	for i, s := range steps {
		if s.send != nil {
			if err := r.drv.Send(s.send); err != nil {
				return fmt.Errorf("step %d %v: %w", i, s, err)
			}
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), lateBy)
		m, err := r.drv.Recv(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d %v: %w", i, s, err)
		}
		if m.MsgType() != s.expect {
			return fmt.Errorf("step %d %v: got %v %+v", i, s, m.MsgType(), m)
		}
	}
	return nil
}

// next receives what the target sends next (nil when the link is gone).
func (r *trig) next() transport.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), lateBy)
	defer cancel()
	m, _ := r.drv.Recv(ctx)
	return m
}

func (r *trig) wait() tresult {
	res := <-r.res
	r.drv.Close()
	return res
}

// query asks about session id on a new connection to the same target.
func (r *trig) query(t *testing.T, id string) transport.Outcome {
	t.Helper()
	q, tg := newLink(r.rec, nil)
	done := make(chan tresult, 1)
	none := &tActions{rec: &recorder{}}
	go func() {
		res, err := target.Handoff(context.Background(), target.HandoffConfig{SessionID: transport.NewSessionID()}, none, tg, r.out)
		done <- tresult{res, err}
	}()
	defer func() {
		q.Close()
		if res := <-done; res.err != nil || !res.res.Query || res.res.Session != id {
			t.Errorf("status session: %+v, %v", res.res, res.err)
		}
		if ev := none.rec.events(); len(ev) != 0 {
			t.Errorf("a status session did process work: %v", ev)
		}
	}()
	if err := q.Send(&transport.StatusQuery{SessionID: id}); err != nil {
		t.Fatal(err)
	}
	m, err := q.Recv(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rep, ok := m.(*transport.StatusReply)
	if !ok || rep.SessionID != id {
		t.Fatalf("status reply %v %+v", m.MsgType(), m)
	}
	return rep.Outcome
}

// checkAborted: the session failed before the process ran; the husk was
// discarded once (if it was ever prepared), never resumed.
func (r *trig) checkAborted(t *testing.T, res tresult) {
	t.Helper()
	prepared := r.rec.count("tgt Prepare") == 1
	if res.res.Outcome != transport.OutcomeAborted && prepared {
		t.Errorf("outcome %v, want aborted", res.res.Outcome)
	}
	var he *target.HandoffError
	if !errors.As(res.err, &he) {
		t.Errorf("error %v (%T), want a *HandoffError", res.err, res.err)
	}
	wantDiscard := 0
	if prepared {
		wantDiscard = 1
	}
	if n := r.rec.count("tgt Discard"); n != wantDiscard {
		t.Errorf("Discard %d times, want %d", n, wantDiscard)
	}
	if n := r.rec.count("tgt Resume"); n != 0 {
		t.Errorf("Resume %d times, want 0", n)
	}
	st, ok := r.out.Lookup(sid)
	if prepared && (!ok || st != transport.OutcomeAborted) {
		t.Errorf("recorded %v (%v), want aborted", st, ok)
	}
	if !prepared && ok {
		t.Errorf("a session never prepared is recorded: %v", st)
	}
	if t.Failed() {
		t.Logf("err %v\nlog: %v", res.err, r.rec)
	}
}

func (r *trig) checkResumed(t *testing.T, res tresult) {
	t.Helper()
	if res.res.Outcome != transport.OutcomeResumed || res.err != nil {
		t.Errorf("got %v, %v; want resumed", res.res.Outcome, res.err)
	}
	if r.rec.count("tgt Resume") != 1 || r.rec.count("tgt Discard") != 0 {
		t.Errorf("Resume %d, Discard %d; want 1, 0", r.rec.count("tgt Resume"), r.rec.count("tgt Discard"))
	}
	if st, _ := r.out.Lookup(sid); st != transport.OutcomeResumed {
		t.Errorf("recorded %v, want resumed", st)
	}
	if t.Failed() {
		t.Logf("log: %v", r.rec)
	}
}

func TestHandoffTargetHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newTrig()
		r.start(t.Context())
		start := time.Now()
		if err := r.play(happyScript); err != nil {
			t.Fatal(err)
		}
		r.drv.Close() // as the source does after "resumed"
		res := r.wait()
		r.checkResumed(t, res)
		if res.res.Session != sid || res.res.Query {
			t.Errorf("result %+v", res.res)
		}
		// The target's side of the log (the source's sends interleave).
		want := []string{"tgt Prepare", "tgt→ hello", "tgt Layout", "tgt RoundDone", "tgt RoundDone", "tgt RoundDone",
			"tgt Restore", "tgt→ ready", "tgt Resume", "tgt→ resumed"}
		got := slices.DeleteFunc(r.rec.events(), func(e string) bool { return strings.HasPrefix(e, "src") })
		if !slices.Equal(got, want) {
			t.Errorf("log\n got %q\nwant %q", got, want)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("took %v of virtual time: the target waited for a timeout", d)
		}
		if got := r.query(t, sid); got != transport.OutcomeResumed {
			t.Errorf("status %v, want resumed", got)
		}
	})
}

// TestHandoffTargetCrashPoints fails each action in turn.
func TestHandoffTargetCrashPoints(t *testing.T) {
	for _, name := range []string{"Prepare", "Layout", "RoundDone", "Restore"} {
		for _, discardFails := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/discard-fails=%v", name, discardFails), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					r := newTrig()
					r.act.fail = map[string]error{name: errInjected}
					if discardFails {
						r.act.fail["Discard"] = errDown
					}
					r.start(t.Context())
					r.play(happyScript)
					res := r.wait()
					r.checkAborted(t, res)
					if !errors.Is(res.err, errInjected) {
						t.Errorf("error %v, want the action's", res.err)
					}
					var he *target.HandoffError
					if errors.As(res.err, &he) && (he.Discard != nil) != discardFails {
						t.Errorf("Discard error %v", he.Discard)
					}
					if r.rec.count("tgt→ abort") != 1 {
						t.Errorf("the source was not told: %v", r.rec)
					}
				})
			})
		}
	}
	t.Run("Resume", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.act.fail = map[string]error{"Resume": errInjected}
			r.start(t.Context())
			err := r.play(happyScript)
			if err == nil || !strings.Contains(err.Error(), "abort") {
				t.Errorf("script: %v, want an abort instead of resumed", err)
			}
			res := r.wait()
			var he *target.HandoffError
			if res.res.Outcome != transport.OutcomeAborted || !errors.As(res.err, &he) || he.Phase != target.PhaseResume {
				t.Fatalf("got %v, %v; want aborted in resume", res.res.Outcome, res.err)
			}
			if r.rec.count("tgt Discard") != 1 {
				t.Errorf("the husk was not killed")
			}
			if got := r.query(t, sid); got != transport.OutcomeAborted {
				t.Errorf("status %v, want aborted", got)
			}
		})
	})
	t.Run("Resume-and-Discard", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.act.fail = map[string]error{"Resume": errInjected, "Discard": errDown}
			r.start(t.Context())
			r.play(happyScript[:len(happyScript)-1])
			m := r.next()
			if e, ok := m.(*transport.Error); !ok || e.Code != "resume-failed" {
				t.Errorf("got %v, want Error resume-failed", m)
			}
			res := r.wait()
			var he *target.HandoffError
			if res.res.Outcome != transport.OutcomeCommitted || !errors.As(res.err, &he) || he.Outcome != transport.OutcomeCommitted {
				t.Fatalf("got %v, %v; want committed", res.res.Outcome, res.err)
			}
			// Never "aborted": the process may run. The source keeps its
			// original frozen for the operator.
			if got := r.query(t, sid); got != transport.OutcomeCommitted {
				t.Errorf("status %v, want committed", got)
			}
		})
	})
}

// TestHandoffTargetLinkLoss breaks the link after each step of the
// source's script: before the commit the husk goes; after it the process
// resumes all the same.
func TestHandoffTargetLinkLoss(t *testing.T) {
	for k := 0; k <= len(happyScript); k++ {
		name := "at-start"
		if k > 0 {
			name = "after-" + fmt.Sprint(k) + "-" + happyScript[k-1].String()
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newTrig()
				r.start(t.Context())
				if err := r.play(happyScript[:k]); err != nil {
					t.Fatal(err)
				}
				r.drv.Close()
				res := r.wait()
				if slices.ContainsFunc(happyScript[:k], func(s step) bool { return s.send == commit }) {
					r.checkResumed(t, res)
				} else {
					r.checkAborted(t, res)
				}
			})
		})
	}
	// The target's own sends failing.
	for _, typ := range []transport.MsgType{transport.TypeHello, transport.TypeReady, transport.TypeResumed} {
		for _, f := range []faultKind{fCloseBefore, fErrLost, fErrDelivered} {
			t.Run(fmt.Sprintf("target-%v/%v", typ, f), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					r := newTrig()
					r.plan = newPlan(map[msgKey]faultKind{{transport.RoleTarget, typ, 0}: f})
					r.start(t.Context())
					r.play(happyScript)
					res := r.wait()
					if typ == transport.TypeResumed {
						r.checkResumed(t, res)
					} else {
						r.checkAborted(t, res)
					}
				})
			})
		}
	}
}

// TestHandoffTargetPeerAborts: an Abort or an Error from the source in
// place of each message before the commit.
func TestHandoffTargetPeerAborts(t *testing.T) {
	commitAt := slices.IndexFunc(happyScript, func(s step) bool { return s.send == commit })
	for k, s := range happyScript[:commitAt+1] {
		if s.send == nil {
			continue
		}
		for _, m := range []transport.Msg{&transport.Abort{Reason: "operator"}, &transport.Error{Code: "disk-full", Text: "no"}} {
			t.Run(fmt.Sprintf("%d-%v/%v", k, s, m.MsgType()), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					r := newTrig()
					r.start(t.Context())
					steps := append(slices.Clone(happyScript[:k]), snd(m))
					if err := r.play(steps); err != nil {
						t.Fatal(err)
					}
					res := r.wait()
					r.checkAborted(t, res)
					var pe *target.PeerError
					if k > 0 && !errors.As(res.err, &pe) {
						t.Errorf("error %v does not carry the source's word", res.err)
					}
				})
			})
		}
	}
}

// TestHandoffTargetProtocol: messages duplicated, out of order, out of
// place or from the wrong role abort the session (or refuse it before
// anything was created).
func TestHandoffTargetProtocol(t *testing.T) {
	opened := []step{snd(hello()), exp(transport.TypeHello)}
	ready := []step{snd(hello()), exp(transport.TypeHello), snd(layout(0)), snd(done(0)), snd(freeze), snd(done(1)), snd(state), exp(transport.TypeReady)}
	with := func(prefix []step, ms ...transport.Msg) []step {
		s := slices.Clone(prefix)
		for _, m := range ms {
			s = append(s, snd(m))
		}
		return s
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"duplicate-hello", with(opened, hello())},
		{"layout-wrong-round", with(opened, layout(1))},
		{"done-before-layout", with(opened, done(0))},
		{"two-layouts", with(opened, layout(0), layout(0))},
		{"round-skipped", with(opened, layout(0), done(0), done(2))},
		{"round-repeated", with(opened, layout(0), done(0), done(0))},
		{"old-layout", with(opened, layout(0), done(0), layout(0))},
		{"second-freeze", with(opened, layout(0), done(0), freeze, freeze)},
		{"state-before-freeze", with(opened, layout(0), done(0), state)},
		{"state-without-final-round", with(opened, layout(0), done(0), freeze, state)},
		{"commit-during-rounds", with(opened, layout(0), done(0), commit)},
		{"commit-before-restore", with(opened, layout(0), done(0), freeze, done(1), commit)},
		{"ready-from-source", with(opened, &transport.Ready{})},
		{"resumed-from-source", with(opened, layout(0), &transport.Resumed{})},
		{"status-reply", with(opened, &transport.StatusReply{SessionID: sid, Outcome: transport.OutcomeResumed})},
		{"status-query-in-session", with(opened, &transport.StatusQuery{SessionID: sid})},
		{"state-again-after-ready", with(ready, state)},
		{"round-after-ready", with(ready, done(2))},
		{"hello-after-ready", with(ready, hello())},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newTrig()
				r.start(t.Context())
				if err := r.play(c.steps); err != nil {
					t.Fatal(err)
				}
				if m := r.next(); m == nil || m.MsgType() != transport.TypeAbort {
					t.Errorf("the target said %v, want abort", m)
				}
				res := r.wait()
				r.checkAborted(t, res)
				if !errors.Is(res.err, target.ErrPeerProtocol) {
					t.Errorf("error %v, want ErrPeerProtocol", res.err)
				}
			})
		})
	}
	// Refused before anything exists.
	bad := func(mod func(*transport.Hello)) *transport.Hello {
		h := hello()
		mod(h)
		return h
	}
	refused := []struct {
		name  string
		first transport.Msg
	}{
		{"layout-first", layout(0)},
		{"commit-first", commit},
		{"wrong-role", bad(func(h *transport.Hello) { h.Role = transport.RoleTarget })},
		{"wrong-session", bad(func(h *transport.Hello) { h.SessionID = strings.Repeat("b", 32) })},
		{"wrong-version", bad(func(h *transport.Hello) { h.Version = 2 })},
		{"no-pid", bad(func(h *transport.Hello) { h.PID = 0 })},
	}
	for _, c := range refused {
		t.Run("refused/"+c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newTrig()
				r.start(t.Context())
				if err := r.play([]step{snd(c.first), exp(transport.TypeAbort)}); err != nil {
					t.Fatal(err)
				}
				res := r.wait()
				r.checkAborted(t, res)
				if len(r.act.rec.events()) != 2 { // the two messages
					t.Errorf("work was done: %v", r.rec)
				}
			})
		})
	}
	t.Run("duplicate-commit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.start(t.Context())
			steps := slices.Insert(slices.Clone(happyScript), len(happyScript)-1, snd(commit))
			if err := r.play(steps); err != nil {
				t.Fatal(err)
			}
			r.checkResumed(t, r.wait())
		})
	})
	t.Run("bad-config", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.cfg.SessionID = "x"
			r.start(t.Context())
			res := r.wait()
			if res.err == nil || len(r.rec.events()) != 0 {
				t.Errorf("got %v; log %v", res.err, r.rec)
			}
		})
	})
}

// TestHandoffTargetTimeouts: a source that goes silent with the link up.
func TestHandoffTargetTimeouts(t *testing.T) {
	t.Run("hello", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			start := time.Now()
			r.start(t.Context())
			res := r.wait()
			if !errors.Is(res.err, target.ErrTimeout) || time.Since(start) != target.DefaultHelloTimeout {
				t.Errorf("got %v after %v", res.err, time.Since(start))
			}
			r.checkAborted(t, res)
		})
	})
	t.Run("commit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.cfg.CommitTimeout = 7 * time.Second
			r.start(t.Context())
			r.play(happyScript[:9]) // up to Ready
			start := time.Now()
			if m := r.next(); m == nil || m.MsgType() != transport.TypeAbort {
				t.Errorf("got %v, want abort", m)
			}
			if d := time.Since(start); d != 7*time.Second {
				t.Errorf("gave up after %v, want 7s", d)
			}
			r.drv.Send(commit) // too late: the link is closed
			res := r.wait()
			r.checkAborted(t, res)
			if !errors.Is(res.err, target.ErrTimeout) {
				t.Errorf("error %v, want ErrTimeout", res.err)
			}
		})
	})
}

// TestHandoffTargetQueryDecides: a status question about a session that
// has not committed aborts it, wherever it is, and a commit that comes
// later is refused; a question during the resume is answered "committed",
// never "aborted".
func TestHandoffTargetQueryDecides(t *testing.T) {
	t.Run("waiting-for-commit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.start(t.Context())
			r.play(happyScript[:9])
			if got := r.query(t, sid); got != transport.OutcomeAborted {
				t.Fatalf("status %v, want aborted", got)
			}
			if m := r.next(); m == nil || m.MsgType() != transport.TypeAbort {
				t.Errorf("the session said %v, want abort", m)
			}
			r.drv.Send(commit)
			res := r.wait()
			r.checkAborted(t, res)
			if !errors.Is(res.err, target.ErrAbortedByQuery) {
				t.Errorf("error %v, want ErrAbortedByQuery", res.err)
			}
		})
	})
	t.Run("commit-in-flight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// The Commit is on the wire (gate on Restore lets the question
			// come first): the question wins, the commit is refused.
			r := newTrig()
			gate := make(chan struct{})
			r.act.gate = map[string]chan struct{}{"Restore": gate}
			r.start(t.Context())
			r.play(happyScript[:8])
			synctest.Wait() // the session is in Restore
			if got := r.query(t, sid); got != transport.OutcomeAborted {
				t.Fatalf("status %v, want aborted", got)
			}
			close(gate)
			r.drv.Send(commit)
			res := r.wait()
			r.checkAborted(t, res)
		})
	})
	t.Run("during-resume", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			gate := make(chan struct{})
			r.act.gate = map[string]chan struct{}{"Resume": gate}
			r.start(t.Context())
			r.play(happyScript[:10])
			synctest.Wait() // the session is in Resume
			if got := r.query(t, sid); got != transport.OutcomeCommitted {
				t.Errorf("status during the resume %v, want committed", got)
			}
			close(gate)
			if err := r.play(happyScript[10:]); err != nil {
				t.Fatal(err)
			}
			r.checkResumed(t, r.wait())
			if got := r.query(t, sid); got != transport.OutcomeResumed {
				t.Errorf("status after %v, want resumed", got)
			}
		})
	})
	t.Run("unknown-and-forgotten", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.out = target.NewOutcomes(time.Minute, nil)
			if got := r.query(t, strings.Repeat("c", 32)); got != transport.OutcomeUnknown {
				t.Errorf("status of a stranger %v", got)
			}
			r.start(t.Context())
			r.play(happyScript)
			r.checkResumed(t, r.wait())
			time.Sleep(time.Minute)
			if got := r.query(t, sid); got != transport.OutcomeResumed {
				t.Errorf("status at the TTL %v", got)
			}
			time.Sleep(time.Second)
			if got := r.query(t, sid); got != transport.OutcomeUnknown {
				t.Errorf("status past the TTL %v, want unknown", got)
			}
		})
	})
}

// TestHandoffTargetSessionReuse: a second connection announcing a session
// that runs is refused, and the first goes on.
func TestHandoffTargetSessionReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newTrig()
		r.start(t.Context())
		r.play(happyScript[:4])
		r2 := &trig{rec: &recorder{}, out: r.out, cfg: r.cfg}
		r2.act = &tActions{rec: r2.rec}
		r2.start(t.Context())
		if err := r2.play([]step{snd(hello()), exp(transport.TypeAbort)}); err != nil {
			t.Fatal(err)
		}
		if res := r2.wait(); !errors.Is(res.err, target.ErrPeerProtocol) || r2.rec.count("tgt Prepare") != 0 {
			t.Errorf("second session: %v; log %v", res.err, r2.rec)
		}
		if err := r.play(happyScript[4:]); err != nil {
			t.Fatal(err)
		}
		r.checkResumed(t, r.wait())
	})
}

// TestHandoffTargetShutdown: cancelling ctx (the service stops) aborts a
// session before its commit, not after.
func TestHandoffTargetShutdown(t *testing.T) {
	for k := 1; k <= 9; k++ {
		t.Run(fmt.Sprintf("after-%d", k), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newTrig()
				ctx, cancel := context.WithCancel(t.Context())
				r.start(ctx)
				r.play(happyScript[:k])
				synctest.Wait()
				cancel()
				res := r.wait()
				r.checkAborted(t, res)
				if !errors.Is(res.err, context.Canceled) {
					t.Errorf("error %v", res.err)
				}
			})
		})
	}
	t.Run("during-resume", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			gate := make(chan struct{})
			r.act.gate = map[string]chan struct{}{"Resume": gate}
			ctx, cancel := context.WithCancel(t.Context())
			r.start(ctx)
			r.play(happyScript[:10])
			synctest.Wait()
			cancel()
			close(gate)
			r.checkResumed(t, r.wait())
		})
	})
}

// ---- Both sides together ----

// sActions records the source's process work.
type sActions struct {
	rec  *recorder
	fail map[string]error
}

func (a *sActions) do(name string) error {
	a.rec.add("src %s", name)
	return a.fail[name]
}

func (a *sActions) PreCopy(ctx context.Context, r *source.Rounds) error {
	if err := a.do("PreCopy"); err != nil {
		return err
	}
	if err := r.Layout(json.RawMessage(`{"vmas":3}`)); err != nil {
		return err
	}
	for range 2 {
		if err := r.Done(nil); err != nil {
			return err
		}
	}
	return nil
}

func (a *sActions) Freeze(ctx context.Context) error { return a.do("Freeze") }

func (a *sActions) FinalState(ctx context.Context, r *source.Rounds) (json.RawMessage, error) {
	if err := a.do("FinalState"); err != nil {
		return nil, err
	}
	return json.RawMessage(`{"regs":1}`), r.Done(nil)
}

func (a *sActions) ResumeOriginal() error { return a.do("ResumeOriginal") }
func (a *sActions) KillOriginal() error   { return a.do("KillOriginal") }
func (a *sActions) LeaveFrozen() error    { return a.do("LeaveFrozen") }

// world is a source and a target service joined by fake links.
type world struct {
	rec  *recorder
	plan *plan
	out  *target.Outcomes
	sAct *sActions
	tAct *tActions
	// The status service: down refuses connections; forget answers from
	// a restarted service that remembers nothing.
	down, forget bool
	redials      int
	statusWork   *recorder // what status sessions did (nothing)
}

func newWorld(faults map[msgKey]faultKind) *world {
	rec := &recorder{}
	return &world{rec: rec, plan: newPlan(faults), out: target.NewOutcomes(0, nil),
		sAct: &sActions{rec: rec}, tAct: &tActions{rec: rec}, statusWork: &recorder{}}
}

func (w *world) redial(ctx context.Context) (source.ControlConn, error) {
	synctest.Wait() // reconnecting takes a while: what is in flight lands
	w.redials++
	if w.down {
		return nil, errInjected
	}
	out := w.out
	if w.forget {
		out = target.NewOutcomes(0, nil)
	}
	s, tg := newLink(w.rec, w.plan)
	go target.Handoff(context.Background(), target.HandoffConfig{SessionID: transport.NewSessionID()}, &tActions{rec: w.statusWork}, tg, out)
	return s, nil
}

func (w *world) srcConfig() source.HandoffConfig {
	return source.HandoffConfig{SessionID: sid, PID: 42, Target: "b:7070", Redial: w.redial}
}

type outcome struct {
	src    transport.Outcome
	srcErr error
	tgt    tresult
}

func (w *world) run(ctx context.Context) outcome {
	s, tg := newLink(w.rec, w.plan)
	ch := make(chan tresult, 1)
	go func() {
		res, err := target.Handoff(ctx, target.HandoffConfig{SessionID: sid}, w.tAct, tg, w.out)
		ch <- tresult{res, err}
	}()
	out, err := source.Handoff(ctx, w.srcConfig(), w.sAct, s)
	return outcome{out, err, <-ch}
}

// check asserts "never two copies, never none" over both sides' logs:
// exactly one of the original and the target's copy runs; or the source
// said (*UndecidedError) that it left the original frozen, and then the
// target's record, asked later, settles it.
func (w *world) check(t *testing.T, o outcome) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("source %v, %v\ntarget %+v, %v\nlog: %v", o.src, o.srcErr, o.tgt.res, o.tgt.err, w.rec)
		}
	}()
	c := w.rec.count
	for _, a := range []string{"src ResumeOriginal", "src KillOriginal", "src LeaveFrozen", "tgt Prepare", "tgt Resume", "tgt Discard"} {
		if c(a) > 1 {
			t.Errorf("%s %d times", a, c(a))
		}
	}
	if ev := w.statusWork.events(); len(ev) > 0 {
		t.Errorf("status sessions did work: %v", ev)
	}
	origRuns := c("src ResumeOriginal") == 1 && w.sAct.fail["ResumeOriginal"] == nil
	targetRuns := c("tgt Resume") == 1 && w.tAct.fail["Resume"] == nil
	if c("tgt Resume") == 1 && w.rec.index("tgt Resume") < w.rec.index("src→ commit") {
		t.Errorf("the target resumed before the source committed")
	}
	if c("src KillOriginal") == 1 && w.rec.index("src KillOriginal") < w.rec.index("tgt Resume") {
		t.Errorf("the original was killed before the target resumed")
	}
	if targetRuns && c("tgt Discard") > 0 {
		t.Errorf("the resumed process was discarded")
	}
	if c("tgt Prepare") == 1 && c("tgt Resume")+c("tgt Discard") == 0 {
		t.Errorf("the husk was neither resumed nor discarded")
	}
	switch o.src {
	case transport.OutcomeResumed:
		if !targetRuns || origRuns || c("src KillOriginal") != 1 {
			t.Errorf("source says resumed: target runs %v, original runs %v, killed %d", targetRuns, origRuns, c("src KillOriginal"))
		}
	case transport.OutcomeAborted:
		if targetRuns || !origRuns || c("src KillOriginal") != 0 || c("src LeaveFrozen") != 0 {
			t.Errorf("source says aborted: target runs %v, original runs %v", targetRuns, origRuns)
		}
		var he *source.HandoffError
		if !errors.As(o.srcErr, &he) {
			t.Errorf("source error %v, want a *source.HandoffError", o.srcErr)
		}
	default:
		var ue *source.UndecidedError
		if !errors.As(o.srcErr, &ue) {
			t.Errorf("source says %v with %v, want an *UndecidedError", o.src, o.srcErr)
		}
		if origRuns || c("src KillOriginal") != 0 || c("src LeaveFrozen") != 1 {
			t.Errorf("undecided: original runs %v, killed %d, left frozen %d", origRuns, c("src KillOriginal"), c("src LeaveFrozen"))
		}
	}
	// The target's own account agrees.
	if c("tgt Prepare") == 1 {
		st, _ := w.out.Lookup(sid)
		if st != o.tgt.res.Outcome {
			t.Errorf("target returned %v, recorded %v", o.tgt.res.Outcome, st)
		}
		if (st == transport.OutcomeResumed) != targetRuns {
			t.Errorf("target recorded %v, runs %v", st, targetRuns)
		}
		if o.src == transport.OutcomeResumed || o.src == transport.OutcomeAborted {
			if st != o.src {
				t.Errorf("source says %v, target %v", o.src, st)
			}
		}
	} else if targetRuns || o.src == transport.OutcomeResumed {
		t.Errorf("resumed without a husk")
	}
}

// transcript is every message of a run, by sender.
func transcript(rec *recorder) []msgKey {
	var keys []msgKey
	count := map[msgKey]int{}
	for _, e := range rec.events() {
		var from transport.Role
		var name string
		switch {
		case strings.HasPrefix(e, "src→ "):
			from, name = transport.RoleSource, strings.TrimPrefix(e, "src→ ")
		case strings.HasPrefix(e, "tgt→ "):
			from, name = transport.RoleTarget, strings.TrimPrefix(e, "tgt→ ")
		default:
			continue
		}
		for typ := transport.TypeHello; typ <= transport.TypeError; typ++ {
			if typ.String() == name {
				base := msgKey{from, typ, 0}
				keys = append(keys, msgKey{from, typ, count[base]})
				count[base]++
			}
		}
	}
	return keys
}

// wantOutcome is where the process must end up after fault f on message k.
func wantOutcome(k msgKey, f faultKind) transport.Outcome {
	switch k.typ {
	case transport.TypeResumed, transport.TypeStatusQuery, transport.TypeStatusReply:
		// The target resumed before it said so; the source learns it by
		// asking (again, if a question or an answer was lost).
		return transport.OutcomeResumed
	case transport.TypeCommit:
		switch f {
		case fCloseAfter, fErrDelivered, fDuplicate:
			return transport.OutcomeResumed // the commit arrived
		}
		return transport.OutcomeAborted // it did not; the question decides
	case transport.TypeRoundDone:
		if k.from == transport.RoleTarget {
			// The target's answers to the pre-copy rounds (round-acks):
			// the source freezes once round 1 is answered. A later
			// answer stands for an earlier one; the last one lost (or
			// held behind a message that never comes) is a timeout
			// before the freeze.
			switch f {
			case fDuplicate:
				return transport.OutcomeResumed
			case fDrop, fHold, fLate:
				if k.nth == 0 {
					return transport.OutcomeResumed
				}
			}
			return transport.OutcomeAborted
		}
		if k.nth == 1 && f == fHold {
			// The source waits for the answer to round 1 before it
			// sends anything else: held behind nothing, it is a timeout.
			return transport.OutcomeAborted
		}
	case transport.TypeReady:
		if f == fDuplicate {
			// Ready, Ready: the second is out of place after the commit,
			// so the source asks, and learns "resumed".
			return transport.OutcomeResumed
		}
	}
	return transport.OutcomeAborted
}

func TestHandoffBothHappyPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(nil)
		start := time.Now()
		o := w.run(t.Context())
		w.check(t, o)
		if o.src != transport.OutcomeResumed || o.srcErr != nil || o.tgt.err != nil {
			t.Fatalf("got %v %v / %v", o.src, o.srcErr, o.tgt.err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("took %v of virtual time", d)
		}
		if keys := transcript(w.rec); len(keys) != 13 {
			t.Errorf("transcript %v", keys)
		}
	})
}

// TestHandoffBothMessageFaults injects every fault at every message of a
// clean migration, and of the status questions that follow a lost
// "resumed".
func TestHandoffBothMessageFaults(t *testing.T) {
	var main, status []msgKey
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(nil)
		w.run(t.Context())
		main = transcript(w.rec)
	})
	lostResumed := msgKey{transport.RoleTarget, transport.TypeResumed, 0}
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(map[msgKey]faultKind{lostResumed: fDrop})
		w.run(t.Context())
		for _, k := range transcript(w.rec) {
			if k.typ == transport.TypeStatusQuery || k.typ == transport.TypeStatusReply {
				status = append(status, k)
			}
		}
	})
	if len(main) != 13 || len(status) != 2 {
		t.Fatalf("transcripts %v, %v", main, status)
	}
	for _, k := range append(main, status...) {
		for _, f := range allFaults {
			t.Run(fmt.Sprintf("%v/%v", k, f), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					faults := map[msgKey]faultKind{k: f}
					if k.typ == transport.TypeStatusQuery || k.typ == transport.TypeStatusReply {
						faults[lostResumed] = fDrop
					}
					w := newWorld(faults)
					o := w.run(t.Context())
					w.check(t, o)
					if want := wantOutcome(k, f); o.src != want {
						t.Errorf("outcome %v (%v), want %v\nlog: %v", o.src, o.srcErr, want, w.rec)
					}
				})
			})
		}
	}
}

// TestHandoffBothCrashPoints fails each action of each side.
func TestHandoffBothCrashPoints(t *testing.T) {
	cases := []struct {
		name string
		src  map[string]error
		tgt  map[string]error
		want transport.Outcome
	}{
		{"src-PreCopy", map[string]error{"PreCopy": errInjected}, nil, transport.OutcomeAborted},
		{"src-Freeze", map[string]error{"Freeze": errInjected}, nil, transport.OutcomeAborted},
		{"src-FinalState", map[string]error{"FinalState": errInjected}, nil, transport.OutcomeAborted},
		{"src-KillOriginal", map[string]error{"KillOriginal": errInjected}, nil, transport.OutcomeResumed},
		{"tgt-Prepare", nil, map[string]error{"Prepare": errInjected}, transport.OutcomeAborted},
		{"tgt-Layout", nil, map[string]error{"Layout": errInjected}, transport.OutcomeAborted},
		{"tgt-RoundDone", nil, map[string]error{"RoundDone": errInjected}, transport.OutcomeAborted},
		{"tgt-Restore", nil, map[string]error{"Restore": errInjected}, transport.OutcomeAborted},
		{"tgt-Restore-and-Discard", nil, map[string]error{"Restore": errInjected, "Discard": errDown}, transport.OutcomeAborted},
		{"tgt-Resume", nil, map[string]error{"Resume": errInjected}, transport.OutcomeAborted},
		// The husk may run and cannot be killed: only an operator can
		// settle it; the original stays frozen.
		{"tgt-Resume-and-Discard", nil, map[string]error{"Resume": errInjected, "Discard": errDown}, transport.OutcomeCommitted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(nil)
				w.sAct.fail, w.tAct.fail = c.src, c.tgt
				o := w.run(t.Context())
				w.check(t, o)
				if o.src != c.want {
					t.Errorf("outcome %v (%v), want %v", o.src, o.srcErr, c.want)
				}
				if c.src == nil && c.want == transport.OutcomeAborted && c.name != "tgt-Resume" {
					var pe *source.PeerError
					if !errors.As(o.srcErr, &pe) || !pe.Abort {
						t.Errorf("the source's error %v does not carry the target's reason", o.srcErr)
					}
				}
			})
		})
	}
}

// TestHandoffBothUndecided: when the target cannot be asked, the original
// stays frozen; the operator's `migrate recover` (source.QueryOutcome)
// later learns the truth from the target's record.
func TestHandoffBothUndecided(t *testing.T) {
	cases := []struct {
		name   string
		fault  msgKey
		forget bool
		truth  transport.Outcome
	}{
		{"commit-lost", msgKey{transport.RoleSource, transport.TypeCommit, 0}, false, transport.OutcomeAborted},
		{"resumed-lost", msgKey{transport.RoleTarget, transport.TypeResumed, 0}, false, transport.OutcomeResumed},
		{"resumed-lost-target-restarted", msgKey{transport.RoleTarget, transport.TypeResumed, 0}, true, transport.OutcomeResumed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(map[msgKey]faultKind{c.fault: fCloseBefore})
				w.down, w.forget = !c.forget, c.forget
				start := time.Now()
				o := w.run(t.Context())
				w.check(t, o)
				var ue *source.UndecidedError
				if !errors.As(o.srcErr, &ue) {
					t.Fatalf("got %v, %v; want undecided", o.src, o.srcErr)
				}
				if c.forget != errors.Is(o.srcErr, source.ErrForgotten) {
					t.Errorf("error %v", o.srcErr)
				}
				if d := time.Since(start); d > source.DefaultResumedTimeout+source.DefaultRecoverTimeout {
					t.Errorf("gave up after %v", d)
				}
				// The operator, later, with the service reachable again.
				w.down, w.forget = false, false
				cfg := w.srcConfig()
				got, err := source.QueryOutcome(t.Context(), cfg)
				if got != c.truth || err != nil {
					t.Errorf("recover: %v, %v; want %v", got, err, c.truth)
				}
			})
		})
	}
}
