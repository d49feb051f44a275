package handoff

// Tests of both state machines together: RunSource against RunTarget over
// fake links (harness_test.go), with a fault injected at every message,
// every action and every status question. Every test runs in a synctest
// bubble: time is virtual, timeouts fire exactly when everything is stuck,
// and nothing sleeps.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/procmig/migrate/transport"
)

// world is a source and a target service joined by fake links.
type world struct {
	rec  *recorder
	plan *plan
	out  *Outcomes
	sAct *fakeActions
	tAct *tActions
	// The status service: down refuses connections; forget answers from
	// a restarted service that remembers nothing.
	down, forget bool
	redials      int
	statusWork   *recorder // what status sessions did (nothing)
}

func newWorld(faults map[msgKey]faultKind) *world {
	rec := &recorder{}
	return &world{rec: rec, plan: newPlan(faults), out: NewOutcomes(0, nil),
		sAct: &fakeActions{rec: rec, prefix: "src ", rounds: 2}, tAct: &tActions{rec: rec}, statusWork: &recorder{}}
}

func (w *world) redial(ctx context.Context) (Conn, error) {
	synctest.Wait() // reconnecting takes a while: what is in flight lands
	w.redials++
	if w.down {
		return nil, errInjected
	}
	out := w.out
	if w.forget {
		out = NewOutcomes(0, nil)
	}
	s, tg := newLink(w.rec, w.plan)
	go RunTarget(context.Background(), TargetConfig{SessionID: transport.NewSessionID()}, &tActions{rec: w.statusWork}, tg, out)
	return s, nil
}

func (w *world) srcConfig() SourceConfig {
	return SourceConfig{SessionID: testSession, PID: 42, Target: "b:7070", Redial: w.redial}
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
		res, err := RunTarget(ctx, TargetConfig{SessionID: testSession}, w.tAct, tg, w.out)
		ch <- tresult{res, err}
	}()
	out, err := RunSource(ctx, w.srcConfig(), w.sAct, s)
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
		var he *SourceError
		if !errors.As(o.srcErr, &he) {
			t.Errorf("source error %v, want a *SourceError", o.srcErr)
		}
	default:
		var ue *UndecidedError
		if !errors.As(o.srcErr, &ue) {
			t.Errorf("source says %v with %v, want an *UndecidedError", o.src, o.srcErr)
		}
		if origRuns || c("src KillOriginal") != 0 || c("src LeaveFrozen") != 1 {
			t.Errorf("undecided: original runs %v, killed %d, left frozen %d", origRuns, c("src KillOriginal"), c("src LeaveFrozen"))
		}
	}
	// The target's own account agrees.
	if c("tgt Prepare") == 1 {
		st, _ := w.out.Lookup(testSession)
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
		if keys := transcript(w.rec, "tgt→ "); len(keys) != 13 {
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
		main = transcript(w.rec, "tgt→ ")
	})
	lostResumed := msgKey{transport.RoleTarget, transport.TypeResumed, 0}
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(map[msgKey]faultKind{lostResumed: fDrop})
		w.run(t.Context())
		for _, k := range transcript(w.rec, "tgt→ ") {
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
					var pe *PeerError
					if !errors.As(o.srcErr, &pe) || !pe.Abort {
						t.Errorf("the source's error %v does not carry the target's reason", o.srcErr)
					}
				}
			})
		})
	}
}

// TestHandoffBothUndecided: when the target cannot be asked, the original
// stays frozen; the operator's `migrate recover` (QueryOutcome)
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
				var ue *UndecidedError
				if !errors.As(o.srcErr, &ue) {
					t.Fatalf("got %v, %v; want undecided", o.src, o.srcErr)
				}
				if c.forget != errors.Is(o.srcErr, ErrForgotten) {
					t.Errorf("error %v", o.srcErr)
				}
				if d := time.Since(start); d > DefaultResumedTimeout+DefaultRecoverTimeout {
					t.Errorf("gave up after %v", d)
				}
				// The operator, later, with the service reachable again.
				w.down, w.forget = false, false
				cfg := w.srcConfig()
				got, err := QueryOutcome(t.Context(), cfg)
				if got != c.truth || err != nil {
					t.Errorf("recover: %v, %v; want %v", got, err, c.truth)
				}
			})
		})
	}
}
