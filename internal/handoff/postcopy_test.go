package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"testing/synctest"

	"github.com/procmig/migrate/transport"
)

// pcSource is fakeActions that may end in post-copy.
type pcSource struct {
	*fakeActions
	finish   error
	postCopy bool // what Rounds.PostCopy said
}

func (a *pcSource) FinishPostCopy() error {
	a.do("FinishPostCopy")
	return a.finish
}

// pcTarget is tActions that can serve post-copy (or not).
type pcTarget struct {
	*tActions
	ready bool
}

func (a *pcTarget) PostCopyReady() bool { return a.ready }

// runPostCopy runs a migration whose source asks for post-copy.
func runPostCopy(t *testing.T, ready bool, finish error) (*recorder, *pcSource, transport.Outcome, error) {
	rec := &recorder{}
	src := &pcSource{fakeActions: &fakeActions{rec: rec, prefix: "src "}, finish: finish}
	src.preCopy = func(ctx context.Context, r *Rounds) error {
		src.postCopy = r.PostCopy()
		if err := r.Layout(json.RawMessage(`{"vmas":3}`)); err != nil {
			return err
		}
		return r.Done(nil)
	}
	tgt := &pcTarget{tActions: &tActions{rec: rec}, ready: ready}
	s, tg := newLink(rec, newPlan(nil))
	done := make(chan struct{})
	go func() {
		RunTarget(t.Context(), TargetConfig{SessionID: testSession}, tgt, tg, NewOutcomes(0, nil))
		close(done)
	}()
	out, err := RunSource(t.Context(), SourceConfig{SessionID: testSession, PID: 42, Target: "b:7070", PostCopy: true}, src, s)
	<-done
	return rec, src, out, err
}

// TestHandoffPostCopy: the source serves the missing pages after the
// target said resumed and before it kills the original; if that fails,
// the original is left frozen (never killed, never resumed) and the error
// says the process is lost.
func TestHandoffPostCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec, src, out, err := runPostCopy(t, true, nil)
		if out != transport.OutcomeResumed || err != nil || !src.postCopy {
			t.Fatalf("got %v, %v (post-copy agreed: %v); %v", out, err, src.postCopy, rec)
		}
		if f, k := rec.index("src FinishPostCopy"), rec.index("src KillOriginal"); f < 0 || k < f || rec.index("tgt Resume") > f {
			t.Errorf("the original killed before post-copy finished: %v", rec)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		rec, _, out, err := runPostCopy(t, true, errInjected)
		var pe *PostCopyError
		if out != transport.OutcomeResumed || !errors.As(err, &pe) || !errors.Is(err, errInjected) || pe.PID != 42 {
			t.Fatalf("got %v, %v; %v", out, err, rec)
		}
		if rec.count("src KillOriginal") != 0 || rec.count("src ResumeOriginal") != 0 || rec.count("src LeaveFrozen") != 1 {
			t.Errorf("the original after a failed post-copy: %v", rec)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// A target that cannot serve post-copy does not echo it.
		_, src, out, err := runPostCopy(t, false, nil)
		if out != transport.OutcomeResumed || err != nil || src.postCopy {
			t.Fatalf("got %v, %v (post-copy agreed: %v)", out, err, src.postCopy)
		}
	})
}

// TestHandoffSameVMAs: the source offers FeatureSameVMAs and the target
// echoes it, so that Rounds.SameVMAs lets the source leave out the areas
// that did not change.
func TestHandoffSameVMAs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		src := &fakeActions{rec: rec, prefix: "src "}
		same := false
		src.preCopy = func(ctx context.Context, r *Rounds) error {
			same = r.SameVMAs()
			if err := r.Layout(json.RawMessage(`{"vmas":3}`)); err != nil {
				return err
			}
			return r.Done(nil)
		}
		s, tg := newLink(rec, newPlan(nil))
		done := make(chan struct{})
		go func() {
			RunTarget(t.Context(), TargetConfig{SessionID: testSession}, &tActions{rec: rec}, tg, NewOutcomes(0, nil))
			close(done)
		}()
		out, err := RunSource(t.Context(), SourceConfig{SessionID: testSession, PID: 42, Target: "b:7070"}, src, s)
		<-done
		if out != transport.OutcomeResumed || err != nil || !same {
			t.Fatalf("got %v, %v (areas left out: %v); %v", out, err, same, rec)
		}
	})
}
