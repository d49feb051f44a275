package handoff

// Tests of the target's state machine (RunTarget), driven by a test that
// plays the source by script over a fake link (harness_test.go). Every
// test runs in a synctest bubble: time is virtual, timeouts fire exactly
// when everything is stuck, and nothing sleeps.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/procmig/migrate/transport"
)

// Messages of a source.
func hello() *transport.Hello {
	return &transport.Hello{Version: Version, SessionID: testSession, Role: transport.RoleSource, PID: 42}
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

// trig runs Handoff against a scripted source.
type trig struct {
	rec  *recorder
	act  *tActions
	out  *Outcomes
	cfg  TargetConfig
	plan *plan
	drv  *end // the source's end
	res  chan tresult
}

type tresult struct {
	res TargetResult
	err error
}

func newTrig() *trig {
	rec := &recorder{}
	return &trig{rec: rec, act: &tActions{rec: rec}, out: NewOutcomes(0, nil), cfg: TargetConfig{SessionID: testSession}}
}

func (r *trig) start(ctx context.Context) {
	drv, tg := newLink(r.rec, r.plan)
	r.drv = drv
	r.res = make(chan tresult, 1)
	go func() {
		res, err := RunTarget(ctx, r.cfg, r.act, tg, r.out)
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
		res, err := RunTarget(context.Background(), TargetConfig{SessionID: transport.NewSessionID()}, none, tg, r.out)
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
	var he *TargetError
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
	st, ok := r.out.Lookup(testSession)
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
	if st, _ := r.out.Lookup(testSession); st != transport.OutcomeResumed {
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
		if res.res.Session != testSession || res.res.Query {
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
		if got := r.query(t, testSession); got != transport.OutcomeResumed {
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
					var he *TargetError
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
			var he *TargetError
			if res.res.Outcome != transport.OutcomeAborted || !errors.As(res.err, &he) || he.Phase != PhaseResume {
				t.Fatalf("got %v, %v; want aborted in resume", res.res.Outcome, res.err)
			}
			if r.rec.count("tgt Discard") != 1 {
				t.Errorf("the husk was not killed")
			}
			if got := r.query(t, testSession); got != transport.OutcomeAborted {
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
			var he *TargetError
			if res.res.Outcome != transport.OutcomeCommitted || !errors.As(res.err, &he) || he.Outcome != transport.OutcomeCommitted {
				t.Fatalf("got %v, %v; want committed", res.res.Outcome, res.err)
			}
			// Never "aborted": the process may run. The source keeps its
			// original frozen for the operator.
			if got := r.query(t, testSession); got != transport.OutcomeCommitted {
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
					var pe *PeerError
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
		{"status-reply", with(opened, &transport.StatusReply{SessionID: testSession, Outcome: transport.OutcomeResumed})},
		{"status-query-in-session", with(opened, &transport.StatusQuery{SessionID: testSession})},
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
				if !errors.Is(res.err, ErrPeerProtocol) {
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
		{"wrong-version", bad(func(h *transport.Hello) { h.Version = Version + 1 })},
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
			if !errors.Is(res.err, ErrTimeout) || time.Since(start) != DefaultHelloTimeout {
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
			if !errors.Is(res.err, ErrTimeout) {
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
			if got := r.query(t, testSession); got != transport.OutcomeAborted {
				t.Fatalf("status %v, want aborted", got)
			}
			if m := r.next(); m == nil || m.MsgType() != transport.TypeAbort {
				t.Errorf("the session said %v, want abort", m)
			}
			r.drv.Send(commit)
			res := r.wait()
			r.checkAborted(t, res)
			if !errors.Is(res.err, ErrAbortedByQuery) {
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
			if got := r.query(t, testSession); got != transport.OutcomeAborted {
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
			if got := r.query(t, testSession); got != transport.OutcomeCommitted {
				t.Errorf("status during the resume %v, want committed", got)
			}
			close(gate)
			if err := r.play(happyScript[10:]); err != nil {
				t.Fatal(err)
			}
			r.checkResumed(t, r.wait())
			if got := r.query(t, testSession); got != transport.OutcomeResumed {
				t.Errorf("status after %v, want resumed", got)
			}
		})
	})
	t.Run("unknown-and-forgotten", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newTrig()
			r.out = NewOutcomes(time.Minute, nil)
			if got := r.query(t, strings.Repeat("c", 32)); got != transport.OutcomeUnknown {
				t.Errorf("status of a stranger %v", got)
			}
			r.start(t.Context())
			r.play(happyScript)
			r.checkResumed(t, r.wait())
			time.Sleep(time.Minute)
			if got := r.query(t, testSession); got != transport.OutcomeResumed {
				t.Errorf("status at the TTL %v", got)
			}
			time.Sleep(time.Second)
			if got := r.query(t, testSession); got != transport.OutcomeUnknown {
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
		if res := r2.wait(); !errors.Is(res.err, ErrPeerProtocol) || r2.rec.count("tgt Prepare") != 0 {
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

// TestFilesQuery: a FilesQuery that opens a connection is answered with
// TargetConfig.Files and does no process work; the source may close then
// (a files question only), or go on with its Hello on the same
// connection; without Files, or when it fails, QueryFiles gets an error.
func TestFilesQuery(t *testing.T) {
	type run struct {
		body  json.RawMessage
		res   TargetResult
		terr  error
		err   error
		works []string
	}
	ask := func(files func(context.Context, json.RawMessage) (json.RawMessage, error), hello bool) run {
		acts := &tActions{rec: &recorder{}}
		src, tg := newLink(&recorder{}, nil)
		id := testSession
		done := make(chan tresult, 1)
		go func() {
			res, err := RunTarget(context.Background(), TargetConfig{SessionID: id, Files: files, Linger: time.Millisecond}, acts, tg, NewOutcomes(0, nil))
			done <- tresult{res, err}
		}()
		var r run
		r.body, r.err = QueryFiles(context.Background(), src, json.RawMessage(`{"files":[]}`), 5*time.Second)
		if hello && r.err == nil {
			if err := src.Send(&transport.Hello{Version: Version, SessionID: id, Role: transport.RoleSource, PID: 42}); err != nil {
				t.Fatal(err)
			}
			// The target prepares and answers with its Hello.
			m, err := src.Recv(context.Background())
			if err != nil || m.MsgType() != transport.TypeHello {
				t.Errorf("after the files query, the hello was answered %v, %v", m, err)
			}
		}
		src.Close()
		res := <-done
		r.res, r.terr, r.works = res.res, res.err, acts.rec.events()
		return r
	}
	answer := func(_ context.Context, q json.RawMessage) (json.RawMessage, error) {
		if string(q) != `{"files":[]}` {
			t.Errorf("query %s", q)
		}
		return json.RawMessage(`{"files":[]}`), nil
	}
	r := ask(answer, false)
	if r.err != nil || r.terr != nil || string(r.body) != `{"files":[]}` || !r.res.Files || r.res.Query || len(r.works) != 0 {
		t.Errorf("answered: %+v", r)
	}
	r = ask(answer, true)
	if r.err != nil || r.res.Files || !slices.Contains(r.works, "tgt Prepare") {
		t.Errorf("a migration after the files query: %+v", r)
	}
	var pe *PeerError
	r = ask(func(context.Context, json.RawMessage) (json.RawMessage, error) { return nil, errors.New("bad query") }, false)
	if r.terr == nil || !errors.As(r.err, &pe) || pe.Code != "files-query" {
		t.Errorf("failed: %+v", r)
	}
	r = ask(nil, false)
	if r.terr == nil || !errors.As(r.err, &pe) || !pe.Abort {
		t.Errorf("not answered: %+v", r)
	}
}
