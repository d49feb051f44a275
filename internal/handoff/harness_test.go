package handoff

// The fault-injection harness of the handoff tests, in one place for both
// sides: a recorder of what both sides did, fault kinds and plans that
// pick the message to break, and link, an in-memory control link between
// a source end and a target end that injects them. The source's own tests
// play the target with a synchronous fake (source_test.go) behind the same
// faults; the target's play the source by script over a link
// (target_test.go); both_test.go joins RunSource and RunTarget by links.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/procmig/migrate/transport"
)

const testSession = "0123456789abcdef0123456789abcdef"

var (
	errDown     = errors.New("fake link down")
	errInjected = errors.New("injected failure")
)

// lateBy delays a "late" message past every timeout of the handoff.
const lateBy = time.Hour

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
	return inject(wire{
		deliver: func(m transport.Msg) { l.push(to, m) },
		cut:     l.closeLocked,
		hold:    func(m transport.Msg) { l.held[e.i] = m },
		mu:      &l.mu, down: l.down,
	}, l.plan.take(endRoles[e.i], m.MsgType()), m)
}

// wire is one direction of a fake link, as a fault acts on it. Its
// functions run with mu held.
type wire struct {
	deliver func(m transport.Msg) // queue m at the other end
	cut     func()                // break the link
	hold    func(m transport.Msg) // deliver m after the next message this way
	mu      *sync.Mutex
	down    <-chan struct{} // closed when the link breaks
}

// inject sends m one way through fault kind (0: none), and returns what
// the sender's Send returns. Preconditions: w.mu is held.
func inject(w wire, kind faultKind, m transport.Msg) error {
	switch kind {
	case 0:
		w.deliver(m)
	case fDrop:
	case fCloseBefore:
		w.cut()
		return errDown
	case fCloseAfter:
		w.deliver(m)
		w.cut()
	case fErrLost:
		return errInjected
	case fErrDelivered:
		w.deliver(m)
		w.cut()
		return errInjected
	case fAbort:
		w.deliver(&transport.Abort{Reason: "injected"})
	case fError:
		w.deliver(&transport.Error{Code: "injected", Text: "injected"})
	case fDuplicate:
		w.deliver(m)
		w.deliver(m)
	case fLate:
		// Delivered after every timeout, unless the link is gone.
		go func() {
			t := time.NewTimer(lateBy)
			defer t.Stop()
			select {
			case <-t.C:
				w.mu.Lock()
				w.deliver(m)
				w.mu.Unlock()
			case <-w.down:
			}
		}()
	case fHold:
		w.hold(m)
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
	return recvFrom(ctx, &l.mu, &l.box[e.i], &l.closed, l.notify[e.i], l.down)
}

// recvFrom takes the first message of *box, waiting for one (notify) until
// the link is closed or ctx is done. mu guards box and closed.
func recvFrom(ctx context.Context, mu *sync.Mutex, box *[]transport.Msg, closed *bool, notify, down <-chan struct{}) (transport.Msg, error) {
	for {
		mu.Lock()
		if len(*box) > 0 {
			m := (*box)[0]
			*box = (*box)[1:]
			mu.Unlock()
			return m, nil
		}
		if *closed {
			mu.Unlock()
			return nil, errDown
		}
		mu.Unlock()
		select {
		case <-notify:
		case <-down:
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

// fakeActions records the source's process work, each action logged
// with prefix.
type fakeActions struct {
	rec    *recorder
	prefix string
	rounds int              // pre-copy rounds
	fail   map[string]error // by method name
	// Overrides of PreCopy and FinalState.
	preCopy    func(ctx context.Context, r *Rounds) error
	finalState func(ctx context.Context, r *Rounds) (json.RawMessage, error)
}

func (a *fakeActions) do(name string) error {
	a.rec.add("%s%s", a.prefix, name)
	return a.fail[name]
}

func (a *fakeActions) PreCopy(ctx context.Context, r *Rounds) error {
	if err := a.do("PreCopy"); err != nil {
		return err
	}
	if a.preCopy != nil {
		return a.preCopy(ctx, r)
	}
	if err := r.Layout(json.RawMessage(`{"vmas":3}`)); err != nil {
		return err
	}
	for range a.rounds {
		if err := r.Done(nil); err != nil {
			return err
		}
	}
	return nil
}

func (a *fakeActions) Freeze(ctx context.Context) error { return a.do("Freeze") }

func (a *fakeActions) FinalState(ctx context.Context, r *Rounds) (json.RawMessage, error) {
	if err := a.do("FinalState"); err != nil {
		return nil, err
	}
	if a.finalState != nil {
		return a.finalState(ctx, r)
	}
	if err := r.Done(json.RawMessage(`{"final":true}`)); err != nil {
		return nil, err
	}
	return json.RawMessage(`{"regs":"..."}`), nil
}

func (a *fakeActions) ResumeOriginal() error { return a.do("ResumeOriginal") }
func (a *fakeActions) KillOriginal() error   { return a.do("KillOriginal") }
func (a *fakeActions) LeaveFrozen() error    { return a.do("LeaveFrozen") }

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
	if h.PID != 42 || h.SessionID != testSession {
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

// transcript is every message of a run, by sender: the source's sends
// ("src→ "), and the target's as fromTarget prefixes them in the log.
func transcript(rec *recorder, fromTarget string) []msgKey {
	var keys []msgKey
	count := map[msgKey]int{}
	for _, e := range rec.events() {
		var from transport.Role
		var name string
		switch {
		case strings.HasPrefix(e, "src→ "):
			from, name = transport.RoleSource, strings.TrimPrefix(e, "src→ ")
		case strings.HasPrefix(e, fromTarget):
			from, name = transport.RoleTarget, strings.TrimPrefix(e, fromTarget)
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
