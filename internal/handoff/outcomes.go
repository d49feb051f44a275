package handoff

import (
	"fmt"
	"sync"
	"time"

	"github.com/procmig/migrate/transport"
)

// DefaultOutcomeTTL is how long Outcomes remembers a session after it
// ended. A source asks for at most its RecoverTimeout (2 minutes by
// default) after losing the link; an operator's `migrate recover` should
// come within this time too.
const DefaultOutcomeTTL = 10 * time.Minute

// Outcomes remembers what became of each session, so that a source whose
// link died after it sent the commit can ask (transport.StatusQuery, on a
// new connection) instead of guessing. It is the single place where a
// session's fate is decided: a session moves from undecided to committed
// (then resumed, or aborted if the resume failed and the husk was killed)
// or to aborted, once, under one lock; a question about an undecided
// session decides it (aborted), so that every answer is final.
//
// It is safe for concurrent use. It lives in memory only: a restarted
// service answers unknown, which the source treats as "cannot know".
type Outcomes struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[string]*outcomeRec
}

type outcomeRec struct {
	// state is OutcomeUnknown while the session runs undecided.
	state transport.Outcome
	// cancel, while the session runs, stops it (a question decided it).
	cancel func()
	live   bool
	ended  time.Time // when the session returned
}

// NewOutcomes returns an empty record that forgets a session ttl after it
// ended (0: DefaultOutcomeTTL), reading the time from now (nil: time.Now).
func NewOutcomes(ttl time.Duration, now func() time.Time) *Outcomes {
	if ttl <= 0 {
		ttl = DefaultOutcomeTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Outcomes{ttl: ttl, now: now, m: make(map[string]*outcomeRec)}
}

// Query answers a StatusQuery: what became of session id. A session that
// runs and has not committed is aborted on the spot (it is stopped, its
// husk discarded, and a Commit arriving later is refused), so that the
// answer can never change. Unknown means the session is not (or no longer)
// known here.
func (o *Outcomes) Query(id string) transport.Outcome {
	o.mu.Lock()
	o.sweep()
	r, ok := o.m[id]
	if !ok {
		o.mu.Unlock()
		return transport.OutcomeUnknown
	}
	var cancel func()
	if r.state == transport.OutcomeUnknown {
		r.state = transport.OutcomeAborted
		cancel = r.cancel
	}
	state := r.state
	o.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return state
}

// Lookup returns what is recorded for session id, deciding nothing: ok is
// false for a session not known here; OutcomeUnknown with ok means it runs,
// undecided.
func (o *Outcomes) Lookup(id string) (_ transport.Outcome, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sweep()
	r, ok := o.m[id]
	if !ok {
		return transport.OutcomeUnknown, false
	}
	return r.state, true
}

// begin records a new session, undecided; cancel stops it if a question
// decides it. A session ID already known is refused: a session runs once.
func (o *Outcomes) begin(id string, cancel func()) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sweep()
	if _, ok := o.m[id]; ok {
		return fmt.Errorf("session %s is already known here", id)
	}
	o.m[id] = &outcomeRec{cancel: cancel, live: true}
	return nil
}

// commit moves an undecided session to committed, and says whether it
// did: false means it was aborted first (by a question).
func (o *Outcomes) commit(id string) bool {
	return o.move(id, transport.OutcomeUnknown, transport.OutcomeCommitted)
}

// abort moves an undecided session to aborted, and says whether the
// session is aborted now: false means it committed.
func (o *Outcomes) abort(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.m[id]
	if !ok {
		return false
	}
	if r.state == transport.OutcomeUnknown {
		r.state = transport.OutcomeAborted
	}
	return r.state == transport.OutcomeAborted
}

// settle records how a commit ended: resumed, or aborted (the resume
// failed and the husk was killed).
func (o *Outcomes) settle(id string, to transport.Outcome) bool {
	return o.move(id, transport.OutcomeCommitted, to)
}

func (o *Outcomes) move(id string, from, to transport.Outcome) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.m[id]
	if !ok || r.state != from {
		return false
	}
	r.state = to
	return true
}

// end records that the session's goroutine returned; its record is
// forgotten ttl later. A session that ends undecided is aborted (it never
// committed).
func (o *Outcomes) end(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.m[id]
	if !ok {
		return
	}
	if r.state == transport.OutcomeUnknown {
		r.state = transport.OutcomeAborted
	}
	r.live, r.cancel, r.ended = false, nil, o.now()
}

// sweep forgets the sessions that ended more than ttl ago.
// Preconditions: o.mu is held.
func (o *Outcomes) sweep() {
	now := o.now()
	for id, r := range o.m {
		if !r.live && now.Sub(r.ended) > o.ttl {
			delete(o.m, id)
		}
	}
}
