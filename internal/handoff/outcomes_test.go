package handoff

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/transport"
)

// fakeNow is a clock the test moves by hand.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeNow) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeNow) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestOutcomes(ttl time.Duration) (*Outcomes, *fakeNow) {
	clk := &fakeNow{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return NewOutcomes(ttl, clk.now), clk
}

func TestHandoffOutcomesTransitions(t *testing.T) {
	o, _ := newTestOutcomes(0)
	cancels := 0
	if err := o.begin("a", func() { cancels++ }); err != nil {
		t.Fatal(err)
	}
	if err := o.begin("a", nil); err == nil {
		t.Errorf("a session ID began twice")
	}
	if st, ok := o.Lookup("a"); !ok || st != transport.OutcomeUnknown {
		t.Errorf("Lookup of a running session: %v, %v", st, ok)
	}
	if !o.commit("a") {
		t.Fatalf("commit of an undecided session refused")
	}
	if o.commit("a") {
		t.Errorf("a second commit was taken")
	}
	if o.abort("a") {
		t.Errorf("a committed session was aborted")
	}
	if got := o.Query("a"); got != transport.OutcomeCommitted {
		t.Errorf("Query while resuming: %v, want committed", got)
	}
	if !o.settle("a", transport.OutcomeResumed) {
		t.Errorf("settle refused")
	}
	if o.settle("a", transport.OutcomeAborted) {
		t.Errorf("a resumed session was settled again")
	}
	o.end("a")
	if got := o.Query("a"); got != transport.OutcomeResumed {
		t.Errorf("Query after the end: %v, want resumed", got)
	}
	if cancels != 0 {
		t.Errorf("a committed session was cancelled")
	}
	if got := o.Query("never"); got != transport.OutcomeUnknown {
		t.Errorf("Query of an unknown session: %v", got)
	}
}

// TestHandoffOutcomesQueryDecides: a question about an undecided session
// aborts it, stops it, and a later commit is refused.
func TestHandoffOutcomesQueryDecides(t *testing.T) {
	o, _ := newTestOutcomes(0)
	cancels := 0
	o.begin("a", func() { cancels++ })
	if got := o.Query("a"); got != transport.OutcomeAborted {
		t.Fatalf("Query of an undecided session: %v, want aborted", got)
	}
	if cancels != 1 {
		t.Errorf("the session was cancelled %d times, want 1", cancels)
	}
	if o.commit("a") {
		t.Errorf("a commit after the question was taken")
	}
	if !o.abort("a") {
		t.Errorf("abort of an aborted session says it is not aborted")
	}
	if got := o.Query("a"); got != transport.OutcomeAborted || cancels != 1 {
		t.Errorf("second Query: %v, cancels %d", got, cancels)
	}
}

func TestHandoffOutcomesEndUndecided(t *testing.T) {
	o, _ := newTestOutcomes(0)
	o.begin("a", nil)
	o.end("a")
	if got := o.Query("a"); got != transport.OutcomeAborted {
		t.Errorf("a session that ended undecided: %v, want aborted", got)
	}
}

// TestHandoffOutcomesTTL: an ended session is remembered for the TTL, a
// running one for as long as it runs.
func TestHandoffOutcomesTTL(t *testing.T) {
	o, clk := newTestOutcomes(time.Minute)
	o.begin("ended", nil)
	o.commit("ended")
	o.settle("ended", transport.OutcomeResumed)
	o.end("ended")
	o.begin("running", nil)

	clk.advance(time.Minute)
	if got := o.Query("ended"); got != transport.OutcomeResumed {
		t.Errorf("at the TTL: %v, want resumed", got)
	}
	clk.advance(time.Nanosecond)
	if got := o.Query("ended"); got != transport.OutcomeUnknown {
		t.Errorf("past the TTL: %v, want unknown", got)
	}
	if err := o.begin("ended", nil); err != nil {
		t.Errorf("a forgotten session ID cannot begin again: %v", err)
	}
	clk.advance(time.Hour)
	if st, ok := o.Lookup("running"); !ok || st != transport.OutcomeUnknown {
		t.Errorf("a running session was forgotten: %v, %v", st, ok)
	}
	if o, _ := newTestOutcomes(0); o.ttl != DefaultOutcomeTTL {
		t.Errorf("default TTL %v", o.ttl)
	}
}

// TestHandoffOutcomesRace: commits and questions race on many sessions;
// each session is decided exactly once, both sides agreeing.
func TestHandoffOutcomesRace(t *testing.T) {
	o := NewOutcomes(0, nil)
	const n = 200
	var wg sync.WaitGroup
	committed := make([]bool, n)
	answers := make([]transport.Outcome, n)
	cancelled := make([]int, n)
	var mu sync.Mutex
	for i := range n {
		id := fmt.Sprintf("s%d", i)
		o.begin(id, func() { mu.Lock(); cancelled[i]++; mu.Unlock() })
		wg.Add(2)
		go func() {
			defer wg.Done()
			if o.commit(id) {
				committed[i] = true
				o.settle(id, transport.OutcomeResumed)
			}
		}()
		go func() {
			defer wg.Done()
			answers[i] = o.Query(id)
		}()
	}
	wg.Wait()
	for i := range n {
		switch {
		case committed[i] && (answers[i] == transport.OutcomeCommitted || answers[i] == transport.OutcomeResumed) && cancelled[i] == 0:
		case !committed[i] && answers[i] == transport.OutcomeAborted && cancelled[i] == 1:
		default:
			t.Errorf("session %d: committed %v, answer %v, cancelled %d", i, committed[i], answers[i], cancelled[i])
		}
	}
}
