package handoff

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/procmig/migrate/transport"
)

// hostileScript is what a hostile target sends, on every connection to
// it (the session's, then the status questions' after an uncertain
// commit): frames, each after a pacing byte whose high 4 bits name the
// connection it goes to (0 the session's, n the n-th question's) and low 4
// bits the number of messages the source must have sent on it before the
// frame is delivered. The frames are decoded by the real codec (ReadMsg),
// as a transport.Control decodes them.
type hostileScript struct {
	mu    sync.Mutex
	r     *bytes.Reader
	conns int      // connections made
	log   []string // what happened, in order: "send T", "recv T", actions
	// nonce is the last Commit's: a Resumed of the script whose nonce is
	// echoNonce gets it, if the commit was sent before (as a target that
	// answers it would).
	nonce string
}

// echoNonce in a scripted Resumed stands for the nonce of the commit.
const echoNonce = "echo"

func (h *hostileScript) note(ev string) {
	h.mu.Lock()
	h.log = append(h.log, ev)
	h.mu.Unlock()
}

// errNotYours: the next frame is for another connection; this one gets
// nothing more.
var errNotYours = errors.New("the script goes on on another connection")

// next reads the next frame for connection id, and its pacing.
func (h *hostileScript) next(id int) (int, transport.Msg, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pace, err := h.r.ReadByte()
	if err != nil {
		return 0, nil, io.EOF
	}
	if int(pace>>4) != id {
		h.r.UnreadByte()
		return 0, nil, errNotYours
	}
	m, err := transport.ReadMsg(h.r)
	if err != nil {
		return 0, nil, err
	}
	return int(pace & 15), m, nil
}

// hostileConn is one connection to the hostile target.
type hostileConn struct {
	h      *hostileScript
	id     int
	mu     sync.Mutex
	sent   int
	kick   chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newHostileConn(h *hostileScript) *hostileConn {
	h.mu.Lock()
	id := h.conns
	h.conns++
	h.mu.Unlock()
	return &hostileConn{h: h, id: id, kick: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (c *hostileConn) Send(m transport.Msg) error {
	select {
	case <-c.closed:
		return errDown
	default:
	}
	// What the source sends must be well-formed.
	if _, err := transport.AppendMsg(nil, m); err != nil {
		return err
	}
	c.h.mu.Lock()
	if cm, ok := m.(*transport.Commit); ok {
		c.h.nonce = cm.Nonce
	}
	c.h.log = append(c.h.log, "send "+m.MsgType().String())
	c.h.mu.Unlock()
	c.mu.Lock()
	c.sent++
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

func (c *hostileConn) Recv(ctx context.Context) (transport.Msg, error) {
	need, m, err := c.h.next(c.id)
	if errors.Is(err, errNotYours) {
		// Silence on this connection, until it is given up.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.closed:
			return nil, errDown
		}
	}
	if err != nil {
		return nil, err
	}
	for {
		c.mu.Lock()
		n := c.sent
		c.mu.Unlock()
		if n >= need {
			break
		}
		select {
		case <-c.kick:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.closed:
			return nil, errDown
		}
	}
	ev := "recv " + m.MsgType().String()
	if r, ok := m.(*transport.StatusReply); ok {
		ev += " " + r.Outcome.String()
	}
	// The echo and the note under one lock, as the commit's send and
	// its note: a Resumed noted before the commit cannot have its nonce.
	c.h.mu.Lock()
	if r, ok := m.(*transport.Resumed); ok && r.Nonce == echoNonce && c.h.nonce != "" {
		r.Nonce = c.h.nonce
	}
	c.h.log = append(c.h.log, ev)
	c.h.mu.Unlock()
	return m, nil
}

func (c *hostileConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// fuzzActions does the process work of a migration that always succeeds,
// and keeps what the target measured (the source's decoder of it has its
// own fuzz test, source.FuzzResumedBody).
type fuzzActions struct {
	h       *hostileScript
	resumed json.RawMessage
}

func (a *fuzzActions) PreCopy(ctx context.Context, r *Rounds) error {
	if err := r.Layout(json.RawMessage(`{}`)); err != nil {
		return err
	}
	return r.Done(nil)
}
func (a *fuzzActions) Freeze(context.Context) error { a.h.note("freeze"); return nil }
func (a *fuzzActions) FinalState(ctx context.Context, r *Rounds) (json.RawMessage, error) {
	if err := r.Done(nil); err != nil {
		return nil, err
	}
	return json.RawMessage(`{}`), nil
}
func (a *fuzzActions) ResumeOriginal() error        { a.h.note("resume original"); return nil }
func (a *fuzzActions) KillOriginal() error          { a.h.note("kill original"); return nil }
func (a *fuzzActions) LeaveFrozen() error           { a.h.note("leave frozen"); return nil }
func (a *fuzzActions) Resumed(body json.RawMessage) { a.resumed = body }

func appendFrames(t testing.TB, b []byte, frames ...any) []byte {
	for i := 0; i < len(frames); i += 2 {
		b = append(b, byte(frames[i].(int)))
		var err error
		if b, err = transport.AppendMsg(b, frames[i+1].(transport.Msg)); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// hostileSeeds are scripts of well-behaved and failing targets, and the
// outcome each must give.
func hostileSeeds(t testing.TB) map[transport.Outcome][][]byte {
	hello := &transport.Hello{Version: Version, SessionID: testSession, Role: transport.RoleTarget,
		Features: []string{transport.FeatureRoundAcks}}
	resumedBody, _ := json.Marshal(map[string]any{"target_downtime_ms": 12.5,
		"target_steps": []map[string]any{{"name": "decode state", "ms": 0.4}}})
	return map[transport.Outcome][][]byte{
		transport.OutcomeResumed: {
			// Hello after the source's hello, the answer to round 0 after
			// its end, ready after the state, resumed after the commit.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 6, &transport.Ready{}, 7, &transport.Resumed{Nonce: echoNonce, Body: resumedBody}),
			// Silence after the commit; a status question answered resumed.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 6, &transport.Ready{},
				0x11, &transport.StatusReply{SessionID: testSession, Outcome: transport.OutcomeResumed}),
		},
		transport.OutcomeAborted: {
			// The target aborts at the freeze.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 4, &transport.Abort{Reason: "no"}),
			// An error for the commit; a status question answered aborted.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 6, &transport.Ready{}, 7, &transport.Error{Code: "x", Text: "y"},
				0x11, &transport.StatusReply{SessionID: testSession, Outcome: transport.OutcomeAborted}),
		},
		transport.OutcomeUnknown: {
			// Silence after the commit, and nobody answers questions.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 6, &transport.Ready{}),
			// A resumed after the commit that does not give its nonce
			// back (as one sent before the target had the commit): not
			// the answer; nobody answers the questions.
			appendFrames(t, nil, 1, hello, 3, &transport.RoundDone{Round: 0}, 6, &transport.Ready{}, 7, &transport.Resumed{Body: resumedBody}),
		},
	}
}

// runHostile runs a handoff against a hostile target playing script.
func runHostile(t *testing.T, script []byte) (out transport.Outcome, err error, log []string) {
	synctest.Test(t, func(t *testing.T) {
		h := &hostileScript{r: bytes.NewReader(script)}
		act := &fuzzActions{h: h}
		cfg := SourceConfig{SessionID: testSession, PID: 4242, Target: "target:7070",
			HelloTimeout: time.Second, ReadyTimeout: time.Second, ResumedTimeout: time.Second,
			QueryTimeout: time.Second, RecoverTimeout: 10 * time.Second,
			Redial: func(context.Context) (Conn, error) { return newHostileConn(h), nil }}
		out, err = RunSource(context.Background(), cfg, act, newHostileConn(h))
		log = h.log
	})
	return out, err, log
}

// TestHostileSeeds: the fuzz seeds end as they should (so the harness
// plays the protocol, and the fuzzer starts from real exchanges).
func TestHostileSeeds(t *testing.T) {
	for want, scripts := range hostileSeeds(t) {
		for i, script := range scripts {
			out, err, log := runHostile(t, script)
			checkHostileOutcome(t, log, out, err)
			if out != want {
				t.Errorf("%v seed %d: outcome %v (%v): %q", want, i, out, err, log)
			}
		}
	}
}

// FuzzSourceHandoff runs the source's handoff against a hostile target
// whose every word comes from the fuzzer, through the real frame decoder.
// Whatever it says, the source must never kill its original unless the
// target said resumed after the commit (on the session or in answer to a
// status question), never both resume and kill it, and always settle it
// one way: resumed, killed, or left frozen for the operator.
func FuzzSourceHandoff(f *testing.F) {
	for _, scripts := range hostileSeeds(f) {
		for _, s := range scripts {
			f.Add(s)
		}
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 1<<16 {
			return
		}
		out, err, log := runHostile(t, script)
		checkHostileOutcome(t, log, out, err)
	})
}

func checkHostileOutcome(t *testing.T, log []string, out transport.Outcome, err error) {
	t.Helper()
	count := map[string]int{}
	committed, saidResumed := false, false
	for _, ev := range log {
		count[ev]++
		switch ev {
		case "send commit":
			committed = true
		case "recv resumed", "recv status-reply resumed":
			if committed {
				saidResumed = true
			}
		}
	}
	kill, resume, frozen := count["kill original"], count["resume original"], count["leave frozen"]
	switch {
	case kill+resume+frozen != 1:
		t.Fatalf("the original was settled %d times (kill %d, resume %d, frozen %d): %q", kill+resume+frozen, kill, resume, frozen, log)
	case kill == 1 && !saidResumed:
		t.Fatalf("the original was killed without a resumed after the commit: %q", log)
	case kill == 1 && (out != transport.OutcomeResumed || err != nil):
		t.Fatalf("killed, but the outcome is %v, %v", out, err)
	case resume == 1 && out != transport.OutcomeAborted:
		t.Fatalf("resumed the original, but the outcome is %v", out)
	case frozen == 1 && !errors.As(err, new(*UndecidedError)):
		t.Fatalf("left frozen with %v, want an *UndecidedError", err)
	}
}
